"""Which head of a reused chunk is recomputed in context (pluggable: ABC + registry).

A chunk of ``n`` pages, page size ``P``, laid out head-padded (see
:mod:`mepic_sglang.chunks.layout`)::

    | page 0          | page 1 | ... | page n-1 |
    |<- head h ------>|<--------- shared -------->|
      recomputed per request, in context (private pages)
                        one read-only copy, encoded on the chunk alone (NoPE keys)

A policy picks ``h`` (a page multiple, ``0 <= h <= n*P``). The shared pages are the same for every
request, so the policy is server-wide (``--mepic-recompute``); changing it needs a restart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class RecomputePolicy(ABC):
    """Decides how many leading tokens of each chunk are recomputed in context."""

    name: ClassVar[str]

    @abstractmethod
    def head_tokens(self, *, pad: int, content: int, page_size: int) -> int:
        """Recomputed head of a chunk with ``pad`` head pads and ``content`` real tokens, as a
        multiple of ``page_size`` no larger than ``pad + content``."""


class FirstPage(RecomputePolicy):
    """MEPIC: the chunk's first page (its pads and first real tokens)."""

    name = "first-page"

    def head_tokens(self, *, pad: int, content: int, page_size: int) -> int:
        return min(page_size, pad + content)


class FirstKTokens(RecomputePolicy):
    """EPIC-style: the pages holding the first ``k`` real tokens."""

    name = "first-k-tokens"

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"first-k-tokens needs k >= 1, got {k}")
        self.k = k

    def head_tokens(self, *, pad: int, content: int, page_size: int) -> int:
        need = pad + min(self.k, content)
        return min(-(-need // page_size) * page_size, pad + content)


class NoRecompute(RecomputePolicy):
    """Every page of a reused chunk is shared (fastest, least accurate)."""

    name = "none"

    def head_tokens(self, *, pad: int, content: int, page_size: int) -> int:
        return 0


POLICIES: dict[str, type[RecomputePolicy]] = {
    p.name: p for p in (FirstPage, FirstKTokens, NoRecompute)
}


def make_policy(name: str, k: int = 16) -> RecomputePolicy:
    """The registered policy ``name`` (``k`` is used by ``first-k-tokens`` only)."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown recompute policy {name!r}; choose from {sorted(POLICIES)}")
    return FirstKTokens(k) if cls is FirstKTokens else cls()
