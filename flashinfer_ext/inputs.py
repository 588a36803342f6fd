"""What the MEPIC attention backends read from a ``ForwardBatch`` besides SGLang's own fields.

The scheduler side (``mepic_sglang/sglang/chunk_batch.py``) builds one :class:`MepicAttention`
per extend with MEPIC requests and attaches it; the backends read it back with
:meth:`MepicAttention.of`. Per request index of the batch::

    absent              a plain request: queries are the suffix of its row (stock SGLang)
    None                a MEPIC request without cold chunks: queries at explicit positions
    ColdChunkKeys       a MEPIC request that encodes cold chunks: scratch keys after the row
                        and visibility groups (rope_reference.AttentionGroups)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class ColdChunkKeys:
    """One request's cold-chunk inputs. Groups cover the row keys, then the extra keys."""

    q_group: torch.Tensor  # [n_q] query group (0: context)
    k_group: torch.Tensor  # [seq_len + n_extra] key group
    k_context: torch.Tensor  # [seq_len + n_extra] bool: group-0 queries see this key
    extra_slots: torch.Tensor  # [n_extra] pool slots of the scratch heads
    extra_positions: torch.Tensor  # [n_extra] their positions

    def to(self, device: torch.device | str) -> ColdChunkKeys:
        return ColdChunkKeys(
            q_group=self.q_group.to(device),
            k_group=self.k_group.to(device),
            k_context=self.k_context.to(device),
            extra_slots=self.extra_slots.to(device),
            extra_positions=self.extra_positions.to(device),
        )


@dataclass(frozen=True)
class MepicAttention:
    """The MEPIC requests of one extend: batch index -> :class:`ColdChunkKeys` or None."""

    per_req: Mapping[int, ColdChunkKeys | None] = field(default_factory=dict)
    # NOTE: runners copy the ForwardBatch with dataclasses.replace, which keeps declared fields
    # only; model_specific_states is a declared free-form dict (used by no supported model).
    KEY: ClassVar[str] = "mepic_attention"

    @property
    def cold(self) -> dict[int, ColdChunkKeys]:
        """The requests that encode cold chunks."""
        return {b: e for b, e in self.per_req.items() if e is not None}

    def attach(self, forward_batch: Any) -> None:
        states = forward_batch.model_specific_states or {}
        forward_batch.model_specific_states = {**states, self.KEY: self}

    @classmethod
    def of(cls, forward_batch: Any) -> MepicAttention | None:
        """The value attached to ``forward_batch``; None for a batch without MEPIC requests."""
        states = getattr(forward_batch, "model_specific_states", None) or {}
        value = states.get(cls.KEY)
        if value is not None and not isinstance(value, cls):
            raise TypeError(f"model_specific_states[{cls.KEY!r}] is a {type(value).__name__}")
        return value
