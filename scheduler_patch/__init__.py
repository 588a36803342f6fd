"""Multi-SLO scheduling (HyperFlexis) for SGLang's scheduler.

Owns: per-request TTFT/TPOT SLOs (``slo``), the latency model of prefill and decode steps
(``latency_model``), the scheduling policies over plain views (``policy``: registry fcfs /
priority / multi-slo: order, prefill budget, arrival verdict, preemption victims), the adapter
that applies their decisions to SGLang's scheduler (``sglang_adapter``), and the discrete-event
simulator that drives the same policy objects (``simulator``, ``sim_workload``, ``sim_results``).
Layering: imports no other plugin package; SGLang hooks are registered by ``mepic_sglang/hooks.py``
(their thin wrappers live in ``mepic_sglang/slo_hooks.py`` and ``slo_request.py``).
"""
