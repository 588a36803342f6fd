"""Scheduler-side admission of MEPIC requests: arrival, the prefill round, commit.

A request with chunks may never wait for something that cannot happen, and may not hold up
requests that could run. Three decisions (hook rows in :mod:`mepic_sglang.sglang.hooks`)::

    SGLang step                   question                            answer
    ----------------------------  ----------------------------------  -----------------------------
    _add_request_to_queue (new)   can its extend ever run in one      no: HTTP 400 now, naming
                                  prefill step?                       --chunked-prefill-size
    _select_prefill_admission     does it fit an EMPTY pool with its  no: fewer cold chunks encoded
                                  extra KV (scratch heads, copies)?   alone (fit_extra), so it does
                                  does it fit the pool NOW?           no: wait at the head (FCFS)
                                  does its whole extend fit what      no, and others were admitted:
                                  is left of this round's step?       skip it this round (CONTINUE);
                                                                      no chunked prefill starts
                                                                      behind it this round
    _commit_prefill_admission     -                                   acquire warm entries, charge
                                                                      the round for the extra KV

Why "fits an empty pool" is the test that rules out a stall: SGLang caps a request's
``max_new_tokens`` so that its prompt and output fit the pool when nothing else runs
(``max_new_tokens_for_memory``); its admission then succeeds once the running requests finish,
because nothing overtakes the head of an FCFS queue. The scratch heads of cold chunks and private
copies are on top of that cap; before this check a request whose extra did not fit was never
admitted and blocked every request behind it. Budget of one request in an empty pool, in tokens::

    | ceil_page(prompt incl. outputs so far) | max_new (clipped) | page + page + 1 | extra |
    |<------------------------------- pool capacity (--max-total-tokens) ------------------->|

(SGLang's admission reserves one page per request and the cap keeps ``page + 1`` free; the second
page covers page rounding of the extend.)
"""

from __future__ import annotations

import logging
from typing import Any

from mepic_sglang.chunks.manager import ChunkManager
from mepic_sglang.sglang.chunk_cache import drop_layout, req_layout, req_plan
from mepic_sglang.sglang.state import req_state, round_state

logger = logging.getLogger(__name__)
# Test-only fault injection: admit with the full extra KV even when it can never fit (the
# stall this module prevents), so the liveness watch can be tested on a real stall.


def room_in_empty_pool(adder: Any, req: Any) -> int:
    """Extra KV tokens ``req`` may hold and still be admitted by an otherwise empty pool (see the
    module's budget table; may be negative)."""
    from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

    page = int(adder.page_size)
    capacity = int(adder.token_to_kv_pool_allocator.size)
    prompt = len(req.full_untruncated_fill_ids)
    max_new = req.sampling_params.max_new_tokens
    max_new = min(max(int(max_new or 0) - len(req.output_ids), 0), CLIP_MAX_NEW_TOKENS)
    return capacity - (-(-prompt // page) * page) - max_new - 2 * page - 1


def around_select_admission(original: Any, adder: Any, req: Any, **kwargs: Any) -> Any:
    """AROUND ``PrefillAdder._select_prefill_admission``: budget the extra KV of a MEPIC request
    (within what an empty pool can give) and never split (chunk) its extend."""
    from sglang.srt.managers.schedule_policy import AddReqResult

    plan = req_plan(req)
    if plan is None:
        result = original(adder, req, **kwargs)
        if getattr(result, "is_chunked", False) and round_state(adder).skipped:
            # NOTE: a MEPIC request was skipped earlier in this round for lack of step budget. A
            # new chunked prefill would take the step ahead of it in every later round (SGLang
            # resumes a chunked request first), so none starts behind it.
            return AddReqResult.OTHER
        return result
    chunks: ChunkManager = adder.tree_cache.mepic_chunks
    fitted = chunks.fit(plan, room_in_empty_pool(adder, req))
    if fitted is not plan:
        req_state(req).plan = fitted
        plan = fitted
    # NOTE: stock admission pins the matched prefix while it checks the budget; our prefix is
    # the warm entries, which still count as evictable until commit acquires them.
    kwargs["total_tokens"] = kwargs["total_tokens"] + chunks.reserve_tokens(plan)
    result = original(adder, req, **kwargs)
    if not getattr(result, "is_chunked", False):
        return result
    if adder.can_run_list:
        # NOTE: what is left of this round's step is too small for the whole extend (a chunked
        # prefill would continue from row[:prefix_len] as a plain prefix). Requests behind it may
        # still use the rest of the round, but none may start a chunked prefill (see above);
        # next round it is tried again before them.
        round_state(adder).skipped = True
        return AddReqResult.CONTINUE
    # NOTE: too long even as the round's first request (arrival refuses prompts longer than a
    # step, so this is a request re-admitted after retraction with its outputs, or a step
    # narrowed by the SLO budget): from the next round on it is served as a plain, chunkable
    # request, so the queue never stalls behind it.
    drop_layout(req, "its extend does not fit one prefill step")
    return AddReqResult.OTHER


def after_commit_admission(result: Any, adder: Any, req: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``PrefillAdder._commit_prefill_admission``: the request holds its warm entries."""
    plan = req_plan(req)
    if plan is None:
        return
    hold = adder.tree_cache.mepic_chunks.acquire(plan)
    # NOTE: SGLang charged the round's budget for the extend only; charge the scratch heads too,
    # so the requests admitted after this one in the same round still fit (PrefillBudget).
    budget = getattr(adder, "memory_budget", None)
    if plan.extra_tokens and budget is not None and hasattr(budget, "total_offset"):
        budget.total_offset += plan.extra_tokens
        budget.current_offset += plan.extra_tokens
    if plan.scratch_tokens:  # the scratch heads are computed too: charge the compute budgets
        adder.rem_input_tokens -= plan.scratch_tokens
        if adder.rem_chunk_tokens is not None:
            adder.rem_chunk_tokens -= plan.scratch_tokens
    if plan.in_context:
        logger.info(
            "rid %s: %d cold chunk(s) computed in context, not published: their scratch heads "
            "do not fit the pool next to the prompt and max_new_tokens",
            req.rid,
            plan.in_context,
        )
    req_state(req).hold = hold


def check_arrival(scheduler: Any, req: Any, is_retracted: bool) -> None:
    """A new request with chunks whose laid-out prompt can never be prefilled in one step is
    refused at once (HTTP 400 naming the limit) instead of being served as a plain prompt with
    its padding and no sharing. Called first by the arrival hook
    (:func:`mepic_sglang.sglang.slo_hooks.around_add_request_to_queue`)."""
    limit = getattr(scheduler, "chunked_prefill_size", None)
    if is_retracted or req.to_finish is not None or not limit or req_layout(req) is None:
        return
    n = len(req.origin_input_ids)
    if n > limit:
        req_state(req).layout = None
        req.set_finish_with_abort(
            f"the laid-out prompt has {n} tokens; a request with chunks is prefilled in one "
            f"step, so it must fit --chunked-prefill-size ({limit})"
        )
