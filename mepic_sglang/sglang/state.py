"""Typed plugin state on SGLang objects: one dataclass per object, under one attribute.

    SGLang object      attribute            dataclass         lives for
    -----------------  -------------------  ----------------  ---------------------------------
    ServerArgs         _mepic_plugin_args   flags.PluginArgs  the server (pickled to every process)
    Req                _mepic               ReqState          the request
    ScheduleBatch      _mepic               BatchState        one prefill batch
    PrefillAdder       _mepic               RoundState        one prefill round
    Scheduler          _mepic               SchedulerState    the scheduler process
    TokenizerManager   _mepic               ManagerState      the tokenizer-manager process
    ForwardBatch       model_specific_states["mepic_attention"]:
                                            flashinfer_ext.inputs.MepicAttention (one extend)
    RadixAttention     mepic_rope           the layer's rotary embedding (set by nope.py, read by
                                            the flashinfer_ext backends: the NoPE contract)

The last two rows are contracts with ``flashinfer_ext`` and live there. Read and write the rest
only through the accessors below (``req_state(req).plan``); nothing else in the
plugin sets attributes on SGLang objects (the layering test checks it). ``ServerArgs`` keeps its
own name because SGLang copies only ``_``-prefixed extras it does not know, and the value must
survive that copy (:mod:`mepic_sglang.sglang.server_args`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mepic_sglang.chunks.layout import RegionTable
    from mepic_sglang.chunks.manager import ChunkHold
    from mepic_sglang.chunks.plan import Plan
    from mepic_sglang.sglang.chunk_batch import ReqExtend
    from mepic_sglang.sglang.liveness import SchedulerLiveness
    from mepic_sglang.sglang.observe import PoolUsage
    from mepic_sglang.sglang.shutdown import Drain
    from mepic_sglang.sglang.slo_adapter import ReqSlo, SloScheduler

ATTR = "_mepic"


@dataclass
class ReqState:
    """Plugin state of one SGLang ``Req``."""

    layout_read: bool = False  # custom_params were parsed (``layout`` is final)
    layout: RegionTable | None = None  # the chunk layout; None: served as a plain request
    plan: Plan | None = None  # the chunk plan of the current admission round
    keys_checked: bool = False  # its chunk keys were checked against the salt once
    hold: ChunkHold | None = None  # chunk pages it holds, from admission commit to release
    slo: ReqSlo | None = None  # multi-slo: its SLO, arrival and cached view


@dataclass
class BatchState:
    """Plugin state of one prefill ``ScheduleBatch``."""

    extends: dict[int, ReqExtend] = field(default_factory=dict)  # batch index -> MEPIC extend


@dataclass
class RoundState:
    """Plugin state of one ``PrefillAdder`` (one prefill round)."""

    skipped: bool = False  # a MEPIC request was skipped this round for lack of step budget


@dataclass
class SchedulerState:
    """Plugin state of one SGLang ``Scheduler`` process."""

    slo: SloScheduler | None = None  # multi-slo runtime (None: SGLang's own policy)
    liveness: SchedulerLiveness | None = None  # progress watch (None: off)
    usage: PoolUsage | None = None  # KV pool usage windows for /server_info


@dataclass
class ManagerState:
    """Plugin state of one SGLang ``TokenizerManager``."""

    drain: Drain | None = None  # bounded shutdown, from SIGTERM on
    liveness_held: bool = False  # /health_generate is held at 503 (a scheduler stalled)


T = TypeVar("T")


def _of(obj: Any, cls: type[T]) -> T:
    value = obj.__dict__.get(ATTR)
    if value is None:
        value = obj.__dict__[ATTR] = cls()
    if not isinstance(value, cls):
        raise TypeError(f"{type(obj).__name__}.{ATTR} holds a {type(value).__name__}")
    return value


def req_state(req: Any) -> ReqState:
    """The request's :class:`ReqState` (created empty on first use)."""
    return _of(req, ReqState)


def batch_state(batch: Any) -> BatchState:
    return _of(batch, BatchState)


def round_state(adder: Any) -> RoundState:
    return _of(adder, RoundState)


def scheduler_state(scheduler: Any) -> SchedulerState:
    return _of(scheduler, SchedulerState)


def manager_state(manager: Any) -> ManagerState:
    return _of(manager, ManagerState)
