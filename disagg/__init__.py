"""Prefill/decode disaggregation with SLOs, dispatch, scaling, role switch and D2D weights.

Owns: stage-specific SLO scheduling for SGLang's P/D mode, the SLO-aware dispatcher, the
cost-aware scaling controller with its instance launcher interface, P<->D role switching, and
device-to-device weight transfer. Layering: may import ``scheduler_patch`` (policies, latency
model); never ``mepic_sglang`` or ``flashinfer_ext``.

Status: empty until its issue lands (#7 multi-SLO, #8 P/D and scaling).
"""
