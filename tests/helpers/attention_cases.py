"""Random paged-attention batches for the kernel tests (CPU interpreter and GPU), and the oracle.

A case is a pool of ``pages x page_size`` slots holding NoPE keys, a ``req_to_token`` table whose
rows are made of whole pages in random order (so every request crosses page boundaries at
scattered slots), ragged requests with queries at any subset of their positions, and optionally
MEPIC's extra (scratch) keys and attention groups. The oracle is the torch reference applied to one
request at a time in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flashinfer_ext.inputs import ColdChunkKeys
from flashinfer_ext.rope_reference import AttentionGroups, RopeTable, attention_with_positions
from flashinfer_ext.triton_attention import RaggedBatch, pack_batch

PAGE = 16


@dataclass
class Case:
    q: torch.Tensor  # [n_q, q_heads, D], rotated (any values: the kernel does not rotate q)
    k_buf: torch.Tensor  # [slots, kv_heads, D]
    v_buf: torch.Tensor  # [slots, kv_heads, Dv]
    req_to_token: torch.Tensor
    rows: torch.Tensor
    seq_lens: list[int]
    q_counts: list[int]
    positions: torch.Tensor
    extras: dict[int, ColdChunkKeys]
    table: RopeTable
    scale: float

    def batch(self) -> RaggedBatch:
        return pack_batch(
            self.req_to_token, self.rows, self.seq_lens, self.q_counts, self.positions, self.extras
        )

    def reference(self) -> torch.Tensor:
        """The oracle in float64, one request at a time."""
        outs, start = [], 0
        table = self.table._replace(cos_sin_cache=self.table.cos_sin_cache.double())
        for b, (seq_len, n_q) in enumerate(zip(self.seq_lens, self.q_counts, strict=True)):
            slots = self.req_to_token[self.rows[b], :seq_len].long()
            k_pos = torch.arange(seq_len)
            groups = None
            if b in self.extras:
                e = self.extras[b]
                slots = torch.cat([slots, e.extra_slots.long()])
                k_pos = torch.cat([k_pos, e.extra_positions.long()])
                groups = AttentionGroups(e.q_group, e.k_group, e.k_context)
            q = self.q[start : start + n_q].double()
            outs.append(
                attention_with_positions(
                    q,
                    self.k_buf[slots].double(),
                    self.v_buf[slots].double(),
                    self.positions[start : start + n_q],
                    k_pos,
                    table,
                    self.scale,
                    groups,
                )
            )
            start += n_q
        return torch.cat(outs)

    def to(self, device: str) -> Case:
        return Case(
            self.q.to(device), self.k_buf.to(device), self.v_buf.to(device),
            self.req_to_token.to(device), self.rows.to(device), self.seq_lens, self.q_counts,
            self.positions.to(device),
            {b: e.to(device) for b, e in self.extras.items()},
            self.table._replace(cos_sin_cache=self.table.cos_sin_cache.to(device)), self.scale,
        )  # fmt: skip


def rope_table(head: int, neox: bool, max_pos: int, theta: float = 10000.0) -> RopeTable:
    return RopeTable.default(head, max_pos, theta, neox)


def _groups(
    g: torch.Generator,
    seq_len: int,
    q_pos: torch.Tensor,
    n_groups: int,
    extra_slots: torch.Tensor,
) -> ColdChunkKeys:
    """Random MEPIC-like groups: row keys are context or a chunk's; extra keys belong to a chunk
    and are hidden from context queries; a query that would see nothing becomes context."""
    n_extra = int(extra_slots.shape[0])
    k_group = torch.cat(
        [
            torch.randint(0, n_groups + 1, (seq_len,), generator=g),
            torch.randint(1, n_groups + 1, (n_extra,), generator=g),
        ]
    )
    k_context = torch.cat(
        [torch.rand(seq_len, generator=g) < 0.8, torch.zeros(n_extra, dtype=torch.bool)]
    )
    k_context[0] = True  # every context query sees position 0
    extra_pos = torch.randint(0, max(1, seq_len), (n_extra,), generator=g)
    k_pos = torch.cat([torch.arange(seq_len), extra_pos])
    q_group = torch.randint(0, n_groups + 1, (q_pos.shape[0],), generator=g)
    vis = AttentionGroups(q_group, k_group, k_context).visible()
    vis &= k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
    q_group[~vis.any(1)] = 0
    return ColdChunkKeys(q_group, k_group, k_context, extra_slots, extra_pos)


def make_case(
    seed: int,
    *,
    batch: int,
    q_heads: int,
    kv_heads: int,
    head: int,
    dtype: torch.dtype,
    neox: bool = True,
    max_len: int = 80,
    decode: bool = False,
    suffix: bool = False,
    groups: bool = False,
) -> Case:
    """A random batch; ``decode`` puts one query per request at its last position, ``suffix``
    makes each request's queries its last positions (a plain extend after a cached prefix)."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [int(x) for x in torch.randint(1, max_len + 1, (batch,), generator=g)]
    pages_per_req = [-(-n // PAGE) for n in seq_lens]
    n_extra = [
        int(torch.randint(1, 2 * PAGE, (1,), generator=g)) if groups else 0 for _ in seq_lens
    ]
    n_pages = sum(pages_per_req) + sum(-(-e // PAGE) for e in n_extra) + 3
    page_order = torch.randperm(n_pages, generator=g) + 1  # page 0 stays unused, as in SGLang
    max_ctx = max(pages_per_req) * PAGE + PAGE
    req_to_token = torch.zeros((batch + 2, max_ctx), dtype=torch.int32)
    rows = torch.randperm(batch + 2, generator=g)[:batch]
    taken = 0
    extra_slots = []
    for b in range(batch):
        pages = page_order[taken : taken + pages_per_req[b]]
        taken += pages_per_req[b]
        slots = (pages.unsqueeze(1) * PAGE + torch.arange(PAGE)).flatten()[: seq_lens[b]]
        req_to_token[rows[b], : seq_lens[b]] = slots.to(torch.int32)
        e_pages = page_order[taken : taken + -(-n_extra[b] // PAGE)]
        taken += e_pages.shape[0]
        e_slots = (e_pages.unsqueeze(1) * PAGE + torch.arange(PAGE)).flatten()
        extra_slots.append(e_slots[: n_extra[b]])
    n_slots = (n_pages + 1) * PAGE
    positions, q_counts, extras = [], [], {}
    for b, seq_len in enumerate(seq_lens):
        if decode:
            q_pos = torch.tensor([seq_len - 1])
        else:
            n_q = int(torch.randint(1, seq_len + 1, (1,), generator=g))
            q_pos = torch.sort(torch.randperm(seq_len, generator=g)[:n_q]).values
            if suffix:
                q_pos = torch.arange(seq_len - n_q, seq_len)
        positions.append(q_pos)
        q_counts.append(int(q_pos.shape[0]))
        if groups and b % 2 == 0:  # a mix of grouped and plain requests in one batch
            extras[b] = _groups(g, seq_len, q_pos, 2, extra_slots[b])
    n_q = sum(q_counts)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(dtype)

    max_pos = max_len + 1
    return Case(
        q=rand(n_q, q_heads, head),
        k_buf=rand(n_slots, kv_heads, head),
        v_buf=rand(n_slots, kv_heads, head),
        req_to_token=req_to_token,
        rows=rows,
        seq_lens=seq_lens,
        q_counts=q_counts,
        positions=torch.cat(positions),
        extras=extras,
        table=rope_table(head, neox, max_pos),
        scale=head**-0.5,
    )


# Largest |kernel - float64 oracle| accepted, per storage dtype. The kernel rotates keys and
# accumulates in fp32; fp16/bf16 round the rotated keys and the probabilities to the input dtype
# for the tensor-core dots (inputs are N(0, 1), outputs are convex combinations of V rows).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
