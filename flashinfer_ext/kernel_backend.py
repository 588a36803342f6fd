"""GPU attention for MEPIC: FlashInfer where its RoPE convention fits, the Triton kernel elsewhere.

Backends (``--attention-backend``, all store NoPE keys; ``mepic_sglang.model_support`` lists them)::

    name              CPU                          CUDA
    ----------------  ---------------------------  ------------------------------------------
    mepic (default)   torch reference              FlashInfer if usable, else Triton; per batch
    mepic_torch       torch reference              torch reference (slow; an oracle)
    mepic_triton      Triton (needs                Triton for every batch
                      TRITON_INTERPRET=1: tests)
    mepic_flashinfer  refused at start-up          like mepic, but FlashInfer must work

Per batch (:func:`choose_impl`): FlashInfer ROPE_LLAMA for decodes and for extends whose queries
are every request's contiguous suffix (no MEPIC request in the batch); the Triton kernel for
extends with MEPIC requests (explicit positions, scratch keys, groups); the torch reference for
shapes the Triton kernel does not take (head size not a power of two, partial rotary).

Whether FlashInfer is usable is decided at the first forward (the model's RoPE must fit, see
:func:`flashinfer_ext.flashinfer_path.table_fits`, and a self-check against the Triton kernel must
pass); ``mepic`` then logs the reason and uses Triton only, ``mepic_flashinfer`` refuses to serve.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

from flashinfer_ext import flashinfer_path
from flashinfer_ext.inputs import MepicAttention
from flashinfer_ext.rope_reference import RopeTable
from flashinfer_ext.torch_backend import MepicTorchAttnBackend, layer_rope
from flashinfer_ext.triton_attention import (
    RaggedBatch,
    decode_attention,
    extend_attention,
    pack_batch,
    unsupported,
)

logger = logging.getLogger(__name__)

FLASHINFER, TRITON, TORCH = "flashinfer", "triton", "torch"
SELF_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def choose_impl(decode: bool, explicit_positions: bool, flashinfer_ready: bool) -> str:
    """Which kernel serves one forward (same choice for all its layers)."""
    if flashinfer_ready and (decode or not explicit_positions):
        return FLASHINFER
    return TRITON


class FlashInferUnavailableError(RuntimeError):
    """``--attention-backend mepic_flashinfer`` but FlashInfer cannot serve this model here."""


class MepicKernelAttnBackend(MepicTorchAttnBackend):
    """Triton kernel, plus FlashInfer (``flashinfer`` = ``off`` | ``auto`` | ``required``)."""

    def __init__(self, model_runner: Any, flashinfer: str = "auto") -> None:
        super().__init__(model_runner)
        self.flashinfer_mode = flashinfer
        self.fi: flashinfer_path.FlashInferRope | None = None
        self.fi_problem: str | None = None if flashinfer != "off" else "disabled by the backend"
        self.fi_decided = flashinfer == "off"
        self.batches: Counter[str] = Counter()  # forwards served per kernel
        self._fresh = False
        self._decode = False
        self._fb: Any = None
        self._impl = TRITON
        self._batch: RaggedBatch | None = None

    # -- per forward ------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: Any) -> None:
        super().init_forward_metadata(forward_batch)
        # NOTE: set up at the first layer, which brings the RoPE table and dtypes.
        self._fresh = True
        self._fb = forward_batch
        self._decode = bool(forward_batch.forward_mode.is_decode_or_idle())

    def _setup(self, layer: Any, table: RopeTable, q_counts: list[int]) -> None:
        fb = self._fb
        self._fresh = False
        mepic = MepicAttention.of(fb)
        per_req = mepic.per_req if mepic is not None else {}
        if not self.fi_decided:
            self._decide_flashinfer(layer, table)
        self._impl = choose_impl(self._decode, bool(per_req), self.fi is not None)
        if self._impl == TRITON:
            problem = unsupported(
                table, layer.qk_head_dim, layer.tp_q_head_num, layer.tp_k_head_num
            )
            if problem and not self.batches[TORCH]:
                logger.warning("MEPIC attention: torch reference instead of Triton: %s", problem)
            self._impl = TORCH if problem else TRITON
        self.batches[self._impl] += 1
        req_to_token = self.req_to_token_pool.req_to_token
        seq_lens = fb.seq_lens_cpu.tolist()
        if self._impl == FLASHINFER:
            assert self.fi is not None
            self.fi.prepare(self._decode, req_to_token, fb.req_pool_indices, seq_lens, q_counts)
        else:
            self._batch = pack_batch(
                req_to_token, fb.req_pool_indices, seq_lens, q_counts, fb.positions, per_req
            )

    def _decide_flashinfer(self, layer: Any, table: RopeTable) -> None:
        self.fi_decided = True
        kv_dtype = self.token_to_kv_pool.get_key_buffer(layer.layer_id).dtype
        problem = None if flashinfer_path.available() else "flashinfer or CUDA is not available"
        problem = problem or flashinfer_path.table_fits(table, kv_dtype)
        if problem is None:
            try:
                fi = flashinfer_path.FlashInferRope(
                    self.device, layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim
                )
                err = self_check(fi, layer, table, kv_dtype)
                tol = SELF_CHECK_TOLERANCE.get(kv_dtype, 6e-2)
                if err > tol:
                    problem = f"self-check against the Triton kernel: max |err| {err:.2e} > {tol}"
                else:
                    self.fi = fi
            except Exception as exc:  # noqa: BLE001 -- any failure means: do not use it
                problem = f"self-check failed: {type(exc).__name__}: {exc}"
        self.fi_problem = problem
        if problem is None:
            logger.info("MEPIC attention: FlashInfer ROPE_LLAMA for decode/suffix, Triton else")
        elif self.flashinfer_mode == "required":
            raise FlashInferUnavailableError(f"--attention-backend mepic_flashinfer: {problem}")
        else:
            logger.warning("MEPIC attention: Triton kernel only (FlashInfer: %s)", problem)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        layer: Any,
        forward_batch: Any,
        save_kv_cache: bool,
        q_counts: list[int],
    ) -> torch.Tensor:
        self._check_layer(layer)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        table = layer_rope(layer)
        if self._fresh:
            self._setup(layer, table, q_counts)
        if self._impl == TORCH:
            return super()._attend(q, k, v, layer, forward_batch, False, q_counts)
        q_ = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        out = q_.new_empty((q_.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        k_buf = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_buf = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        if self._impl == FLASHINFER:
            assert self.fi is not None
            theta = flashinfer_path.rope_theta(layer.mepic_rope)
            self.fi.run(q_, forward_batch.positions, k_buf, v_buf, table, theta, layer.scaling, out)
        else:
            assert self._batch is not None
            run = decode_attention if self._decode else extend_attention
            run(q_, k_buf, v_buf, self._batch, table, layer.scaling, out=out)
        return out.reshape(-1, layer.tp_q_head_num * layer.v_head_dim)


def self_check(
    fi: flashinfer_path.FlashInferRope, layer: Any, table: RopeTable, kv_dtype: torch.dtype
) -> float:
    """Largest |FlashInfer - Triton| over a small random decode and suffix-extend batch."""
    device = table.cos_sin_cache.device
    g = torch.Generator(device=device).manual_seed(0)
    hq, hk, d = layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim
    seq_lens, slots = [37, 300, 129], 512
    req_to_token = torch.arange(3 * slots, device=device, dtype=torch.int32).view(3, slots)
    rows = torch.arange(3, device=device)
    k_buf = torch.randn((3 * slots, hk, d), generator=g, device=device).to(kv_dtype)
    v_buf = torch.randn((3 * slots, hk, layer.v_head_dim), generator=g, device=device).to(kv_dtype)
    theta = flashinfer_path.rope_theta(layer.mepic_rope)
    worst = 0.0
    for decode, q_counts in ((True, [1, 1, 1]), (False, [37, 20, 1])):
        positions = torch.cat(
            [torch.arange(n - c, n, device=device) for n, c in zip(seq_lens, q_counts, strict=True)]
        )
        q = torch.randn((sum(q_counts), hq, d), generator=g, device=device).to(kv_dtype)
        fi.prepare(decode, req_to_token, rows, seq_lens, q_counts)
        got = fi.run(q, positions, k_buf, v_buf, table, theta, layer.scaling)
        batch = pack_batch(req_to_token, rows, seq_lens, q_counts, positions)
        run = decode_attention if decode else extend_attention
        want = run(q, k_buf, v_buf, batch, table, layer.scaling)
        worst = max(worst, float((got.float() - want.float()).abs().max()))
    return worst
