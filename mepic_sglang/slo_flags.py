"""Start-up checks of the SLO flags (``--slo-*``, ``--schedule-policy multi-slo``).

With P/D, multi-slo runs in both stages: the prefill instance orders by TTFT slack and gives the
arrival verdict; the decode instance admits arrived requests by TPOT (``decode_admission``).
"""

from __future__ import annotations

from typing import Any

from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.slo import MAX_SLO_MS, SloError, parse_classes
from scheduler_patch.views import UNATTAINABLE_ACTIONS

MULTI_SLO = "multi-slo"  # added to SGLang's --schedule-policy choices


def problems(args: Any, server_args: Any) -> list[str]:
    """Why the ``--slo-*`` values of ``args`` (a ``PluginArgs``) cannot run with
    ``server_args``; each reason names a flag."""
    out: list[str] = []
    for name in ("slo_default_ttft_ms", "slo_default_tpot_ms"):
        value = getattr(args, name)
        if value < 0 or value > MAX_SLO_MS:
            out.append(
                f"argument --{name.replace('_', '-')}: must be in [0, {MAX_SLO_MS:.0f}], "
                f"got {value}"
            )
    try:
        parse_classes(args.slo_classes)
    except SloError as e:
        out.append(f"argument {e}")
    if args.slo_unattainable not in UNATTAINABLE_ACTIONS:
        out.append(f"argument --slo-unattainable: invalid choice {args.slo_unattainable!r}")
    if getattr(server_args, "schedule_policy", None) != MULTI_SLO:
        if args.slo_latency_profile:
            out.append("argument --slo-latency-profile: needs --schedule-policy multi-slo")
        return out
    if getattr(server_args, "enable_priority_scheduling", False):
        out.append(
            "argument --enable-priority-scheduling: cannot be combined with --schedule-policy "
            "multi-slo (which orders and preempts by priority and SLO itself)"
        )
    for name, cli in (("tp_size", "--tp-size"), ("pp_size", "--pp-size")):
        # NOTE: every rank would decide from its own clock; diverging decisions would hang
        # the ranks' collectives. Rank-0 decisions broadcast to the others: not built yet.
        if int(getattr(server_args, name, 1) or 1) > 1:
            out.append(f"argument {cli}: --schedule-policy multi-slo needs 1 for now")
    if args.slo_latency_profile:
        try:
            LatencyModel.load(args.slo_latency_profile)
        except ValueError as e:
            out.append(f"argument --slo-latency-profile: {e}")
    return out
