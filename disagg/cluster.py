"""A P/D (or collocated) cluster on one host: instances, the dispatcher, and the scaling controller.

    python -m disagg.cluster --model-path M --prefill 1 --decode 1 --port 30000 --autoscale \\
        -- --dtype float32 --sleep-on-idle --max-total-tokens 8192 --schedule-policy multi-slo

Starts the first instance from disk, every other one with its weights from the first (D2D; the
plugin falls back to disk if that fails), then serves the dispatcher's API on ``--port``
(``/generate``, ``/v1/...``, ``/dispatcher/...``) plus ``GET /cluster/state`` (the controller's
instances, instance-seconds and scaling events). With ``--autoscale`` the controller adds,
removes and switches instances (``disagg/controller.py``). Everything after ``--`` goes to every
``sglang.launch_server``. Ctrl-C / SIGTERM stops every instance it started.

NOTE: Mooncake's transfer engine and torch's TCP store listen on all interfaces; tests run this
inside a loopback-only network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from disagg.admin import POOL, SESSION, error_response
from disagg.controller import ScalingController
from disagg.dispatcher import make_app
from disagg.fleet import Fleet, PortPlan, pool_instance
from disagg.instances import Role
from disagg.launcher import LocalProcessLauncher
from disagg.scaling import PD_ROLES, Decision, ScalingConfig, ScalingPolicy

CONTROLLER: web.AppKey[ScalingController] = web.AppKey("controller", ScalingController)
FLEET: web.AppKey[Fleet] = web.AppKey("fleet", Fleet)
ROLE_SWITCH = "--enable-pd-role-switch"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--prefill", type=int, default=0, help="prefill instances at start")
    p.add_argument("--decode", type=int, default=0, help="decode instances at start")
    p.add_argument("--collocated", type=int, default=0, help="plain servers (no P/D)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000, help="the dispatcher's port")
    p.add_argument("--instance-port-base", type=int, default=31000, help="10 ports each")
    p.add_argument("--policy", default="slo", help="dispatch policy (see disagg.dispatcher)")
    p.add_argument("--log-dir", type=Path, default=Path("cluster-logs"))
    p.add_argument("--no-d2d", action="store_true", help="new instances load weights from disk")
    p.add_argument("--cpu-cores-per-instance", type=int, default=-1, help="CPU hosts: bind each "
                   "instance's threads to this many cores, round-robin (-1: all cores split "
                   "among the first instances; 0: no binding)")  # fmt: skip
    p.add_argument("--autoscale", action="store_true", help="run the scaling controller")
    p.add_argument("--scale-interval-s", type=float, default=1.0)
    p.add_argument("--scale-ttft-ms", type=float, default=2000.0, help="prefill pressure = "
                   "predicted queue wait / this")  # fmt: skip
    p.add_argument("--scale-tpot-ms", type=float, default=200.0, help="decode pressure = "
                   "predicted step time / this")  # fmt: skip
    p.add_argument("--scale-high", type=float, default=0.8)
    p.add_argument("--scale-low", type=float, default=0.3)
    p.add_argument("--scale-sustain", type=int, default=3)
    p.add_argument("--scale-cooldown-s", type=float, default=30.0)
    p.add_argument("--min-instances", type=int, default=1, help="per role")
    p.add_argument("--max-instances", type=int, default=4, help="all roles together")
    p.add_argument("server_args", nargs="*", help="after --: flags for every instance")
    return p


def scaling_config(args: argparse.Namespace) -> ScalingConfig:
    return ScalingConfig(
        ttft_s=args.scale_ttft_ms / 1000, tpot_s=args.scale_tpot_ms / 1000,
        high=args.scale_high, low=args.scale_low, sustain=args.scale_sustain,
        cooldown_s=args.scale_cooldown_s, min_instances=args.min_instances,
        max_instances=args.max_instances,
    )  # fmt: skip


def host_cpus() -> tuple[int, ...]:
    """The cores this process may use (a container's cpuset, not the machine's count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def cores_per_instance(args: argparse.Namespace, instances: int) -> int:
    """``--cpu-cores-per-instance``, resolved (0 on a CUDA host unless asked for)."""
    if args.cpu_cores_per_instance >= 0:
        return int(args.cpu_cores_per_instance)
    server_args = list(args.server_args)
    if "--device" in server_args[:-1]:
        on_cpu = server_args[server_args.index("--device") + 1] == "cpu"
    else:
        import torch  # NOTE: late import; only to tell a CPU host from a CUDA one

        on_cpu = not torch.cuda.is_available()
    return max(1, len(host_cpus()) // instances) if on_cpu else 0


def start_initial(fleet: Fleet, roles: Sequence[Role], d2d: bool) -> None:
    """The first instance from disk; the others together, from its weights when ``d2d``.
    On any failure or interrupt, everything started so far is stopped."""
    ex = ThreadPoolExecutor(max(1, len(roles) - 1))
    try:
        first = fleet.launch(roles[0])
        seed = pool_instance(first.handle.spec) if d2d else None
        for f in [ex.submit(fleet.launch, r, seed) for r in roles[1:]]:
            f.result()
    except BaseException:
        fleet.stop_all()  # NOTE: before waiting for the other launches: they end at once then
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def check_args(args: argparse.Namespace) -> list[Role]:
    """The roles to start, or ValueError naming the flag (before anything starts)."""
    for name in ("prefill", "decode", "collocated"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0")
    counts: tuple[tuple[Role, int], ...] = (
        ("prefill", args.prefill), ("decode", args.decode), ("collocated", args.collocated),
    )  # fmt: skip
    roles: list[Role] = [role for role, n in counts for _ in range(n)]
    if not roles:
        raise ValueError("no instances: give --prefill and --decode, or --collocated")
    if bool(args.prefill) != bool(args.decode) or (args.prefill and args.collocated):
        raise ValueError("give --prefill AND --decode (P/D), or only --collocated")
    if args.autoscale and args.collocated:
        raise ValueError("--autoscale scales P/D clusters (--prefill/--decode)")
    if args.scale_interval_s <= 0:
        raise ValueError("--scale-interval-s must be > 0")
    scaling_config(args)  # NOTE: raises on bad --scale-* / --min/--max-instances values
    top = args.instance_port_base + 10 * max(args.max_instances, len(roles)) + 10
    if args.instance_port_base <= args.port < top:
        raise ValueError(
            f"--port {args.port} is inside the instances' ports "
            f"({args.instance_port_base}-{top - 1}; see --instance-port-base)"
        )
    return roles


def build(args: argparse.Namespace) -> web.Application:
    roles = check_args(args)
    extra = tuple(args.server_args)
    if args.prefill and ROLE_SWITCH not in extra:
        extra += (ROLE_SWITCH,)  # NOTE: every P/D instance may be switched later
    plan = PortPlan(args.instance_port_base, cores=cores_per_instance(args, len(roles)),
                    cpus=host_cpus())  # fmt: skip
    fleet = Fleet(LocalProcessLauncher(), plan, args.model_path, extra, args.log_dir)
    try:
        start_initial(fleet, roles, not args.no_d2d)
        instances = [pool_instance(h.spec) for h in fleet.handles.values()]
        app = make_app(instances, args.policy, poll=args.autoscale or None)
    except BaseException:
        fleet.stop_all()
        raise
    app[FLEET] = fleet

    async def control(app: web.Application) -> Any:
        controller = ScalingController(
            app[POOL], app[SESSION], fleet, ScalingPolicy(scaling_config(args)), not args.no_d2d
        )
        app[CONTROLLER] = controller
        task = None
        if args.autoscale:
            task = asyncio.ensure_future(controller.run(args.scale_interval_s))
        yield
        if task is not None:
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, fleet.stop_all)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(request.app[CONTROLLER].report())

    async def scale(request: web.Request) -> web.Response:
        """``POST /cluster/scale {action: out|in|switch, role}``: one scaling action now."""
        try:
            body = await request.json()
            decision = Decision(body["action"], body["role"], "operator")
        except (ValueError, KeyError, TypeError):
            return error_response(400, "body must be a JSON object {action, role}")
        if decision.action not in ("out", "in", "switch") or decision.role not in PD_ROLES:
            return error_response(400, f"action must be out/in/switch and role one of {PD_ROLES}")
        event = await request.app[CONTROLLER].act(decision)
        return web.json_response(event._asdict(), status=200 if event.ok else 409)

    app.cleanup_ctx.append(control)
    app.router.add_get("/cluster/state", state)
    app.router.add_post("/cluster/scale", scale)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # NOTE: SIGTERM during start-up ends it like Ctrl-C, so the instances started are stopped
    # (aiohttp handles SIGTERM itself once it serves)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app = build(args)
    except ValueError as e:
        p.error(str(e))
    except KeyboardInterrupt:  # NOTE: build() already stopped what it had started
        logging.info("interrupted during start-up; every instance started was stopped")
        sys.exit(130)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None)
    finally:
        app[FLEET].stop_all()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
