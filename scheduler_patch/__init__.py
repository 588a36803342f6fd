"""Multi-SLO scheduling (HyperFlexis) for SGLang's scheduler.

Owns: per-request TTFT/TPOT SLOs (``slo``), the latency model of prefill and decode steps
(``latency_model``), the scheduling policies over plain views (``policy``: registry fcfs /
priority / multi-slo: order, prefill budget, arrival verdict, preemption victims) and the
discrete-event simulator that drives the same policy objects (``simulator``, ``sim_workload``,
``sim_results``).
Layering: imports no other plugin package and no SGLang; the SGLang side lives in
``mepic_sglang/sglang/`` (``slo_adapter.py``, ``slo_hooks.py``, ``slo_request.py``).
"""
