"""RoPE-fused paged attention for MEPIC (keys stored without RoPE, rotated inside attention).

Owns: the attention backends that MEPIC registers with SGLang — the FlashInfer path on GPU, the
project's own Triton kernel for non-suffix extends, and the torch reference used on CPU and as the
test oracle. Layering: imports torch/triton/flashinfer and SGLang's attention base classes only;
never another plugin package.

Status: the torch reference and its backend (`--attention-backend mepic`) have landed; the Triton
kernel and the FlashInfer path come with the GPU attention issue (#5).
"""
