"""Plugin state on SGLang objects (mepic_sglang/sglang/state.py): one typed value per object."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mepic_sglang.sglang import state
from mepic_sglang.sglang.state import ReqState, batch_state, req_state, scheduler_state


def test_one_attribute_per_object_created_on_first_use() -> None:
    req = SimpleNamespace(rid="r")
    first = req_state(req)
    assert isinstance(first, ReqState) and first.layout is None and not first.layout_read
    first.keys_checked = True
    assert req_state(req) is first and vars(req) == {"rid": "r", state.ATTR: first}
    batch = SimpleNamespace()
    batch_state(batch).extends[0] = "x"  # type: ignore[assignment]
    assert batch_state(batch).extends == {0: "x"}


def test_a_foreign_value_under_the_attribute_is_an_error() -> None:
    sched = SimpleNamespace(**{state.ATTR: ReqState()})
    with pytest.raises(TypeError, match="holds a ReqState"):
        scheduler_state(sched)
