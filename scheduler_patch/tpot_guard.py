"""TPOT protection: how much more delay each running request can take and still meet its TPOT.

TPOT is an average over the whole output, so what counts for a running request is when its LAST
token is due, against the decode steps it still needs:

    due  = first_token_at + TPOT * (max_new_tokens - 1) - now        seconds until the last token
    left = max_new_tokens - output_tokens                             decode steps still to run
    it keeps its TPOT if   safety * (stall + left * step) <= due - reserve

``stall`` is time taken from it before its remaining decodes (a prefill step), ``step`` the
decode step time it will see. The slack ``due - left * step`` does not grow while it decodes: it
is a pool that stalls spend. ``reserve = pace * left * (TPOT - step)`` keeps a share of the
allowance of the tokens still to come for later, so the pool is not spent in one burst.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from scheduler_patch.views import ReqView


class Guard(NamedTuple):
    left: int  # decode steps it still needs
    due: float  # seconds it may take for them (and any stall), reserve deducted


def guards(
    running: Iterable[ReqView], now: float, step: float, min_priority: float, pace: float
) -> list[Guard]:
    """The running requests to protect: a TPOT target, a first token, priority at least
    ``min_priority``, and not already bound to miss (a request that cannot make it even with
    no stall must not hold the others back)."""
    out = []
    for r in running:
        tpot = r.slo.tpot_s
        if r.best_effort or tpot is None or r.first_token_at is None:
            continue
        if r.priority < min_priority:
            continue  # a more important request is waiting: this decode may slip
        left = max(r.max_new_tokens - r.output_tokens, 0)
        due = r.first_token_at + tpot * (r.output_tokens + left - 1) - now
        # NOTE: protected while it could keep its TPOT with no stall at all, WITHOUT the safety
        # factor and reserve. Known cost: a request with TPOT within ~1.0-1.3x of the step time
        # then allows no prefill (and at the P/D decode stage no joiner) until it finishes.
        # Applying keeps_tpot's own test here instead was tried and rejected (near-edge
        # requests lost protection and missed: docs/slo.md, "Design decisions and what was
        # tried").
        if due >= left * step:
            out.append(Guard(left, due - pace * left * max(tpot - step, 0.0)))
    return out


def keeps_tpot(protected: Sequence[Guard], safety: float, stall: float, step: float) -> bool:
    """Every protected request meets its TPOT after ``stall`` seconds, decoding at ``step``."""
    return all(safety * (stall + g.left * step) <= g.due for g in protected)
