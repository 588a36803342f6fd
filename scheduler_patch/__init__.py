"""Multi-SLO scheduling (HyperFlexis) for SGLang's scheduler.

Owns: per-request TTFT/TPOT SLO policies (registry: fcfs / priority / multi-slo), the latency model
of prefill and decode steps, batch budget estimation, admission and preemption decisions, and the
simulator that drives the same policy code. Layering: pure policy code imports no other plugin
package; SGLang is reached only through the adapters that ``mepic_sglang/hooks.py`` registers.

Status: empty until its issue lands (#7 multi-SLO, #8 P/D and scaling).
"""
