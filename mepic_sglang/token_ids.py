"""Token ids a client sends: the range check behind the plugin's token-id gate
(:mod:`mepic_sglang.sglang.input_guard`) and ``mepic_segments`` parsing."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any


class InputError(ValueError):
    """A request field a client may not send as it is; the message names the field."""


def token_id_problem(ids: Sequence[Any], vocab_size: int) -> str | None:
    """Why ``ids`` cannot reach the model (the first bad id and its index), or None.

    Every id must be an integer (``int`` or any ``__index__`` type such as numpy's, not a
    ``bool``) in ``[0, vocab_size)``; ``vocab_size <= 0`` means unknown (only the sign and the
    64-bit range are checked)."""
    upper = vocab_size if vocab_size > 0 else 2**63
    where = f"[0, {vocab_size})" if vocab_size > 0 else "[0, 2**63)"
    for i, t in enumerate(ids):
        try:
            value = None if isinstance(t, bool) else operator.index(t)
        except TypeError:
            value = None
        if value is None:
            return f"token id {t!r} at index {i} is not an integer"
        if not 0 <= value < upper:
            return f"token id {t!r} at index {i} is outside the model's vocabulary {where}"
    return None


def check_token_ids(ids: Sequence[Any], vocab_size: int, field: str) -> None:
    """Raise :class:`InputError` naming ``field`` when an id cannot reach the model."""
    problem = token_id_problem(ids, vocab_size)
    if problem is not None:
        raise InputError(f"{field}: {problem}")
