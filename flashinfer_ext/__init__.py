"""RoPE-fused paged attention for MEPIC (keys stored without RoPE, rotated inside attention).

Owns: the attention backends that MEPIC registers with SGLang (``backends.FACTORIES``): the torch
reference (CPU path and test oracle), the project's Triton kernel (explicit per-query and per-key
positions, GQA, MEPIC attention groups; extend and split-K decode), and the FlashInfer
``ROPE_LLAMA`` path for decodes and suffix extends, chosen per forward by ``kernel_backend``.
Layering: imports torch/triton/flashinfer and SGLang's attention base classes only; never another
plugin package.
"""
