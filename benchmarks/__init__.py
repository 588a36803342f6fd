"""Benchmarks: each module is a CLI (``python -m benchmarks.<name>``) that prints a table
and writes plots; results go to benchmarks/results/ (not committed) and docs/benchmarks.md."""
