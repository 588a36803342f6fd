"""Multi-SLO scheduling (HyperFlexis) for SGLang's scheduler.

Owns: per-request TTFT/TPOT SLOs (``slo``), the latency model of prefill and decode steps
(``latency_model``), the scheduling policies over plain views (``policy``: interface,
registry, fcfs, priority; ``multi_slo``: order, prefill budget, arrival verdict, preemption
victims) and the discrete-event simulator that drives the same policy objects (``simulator``,
``sim_workload``, ``sim_results``).
Layering: imports no other plugin package and no SGLang; the SGLang side lives in
``mepic_sglang/sglang/`` (``slo_adapter.py``, ``slo_hooks.py``, ``slo_request.py``).
"""

from scheduler_patch import multi_slo as multi_slo  # NOTE: registers ``multi-slo`` in POLICIES
