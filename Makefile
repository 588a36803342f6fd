# The two commands of the README. Both set up .venv (CPU) on first use.
.PHONY: serve test setup lint bench
serve:  ## serve SmolLM2 on CPU with the plugin, on http://127.0.0.1:30000
	scripts/serve_cpu.sh
test:   ## lint, type-check and run the test suite on CPU
	scripts/test.sh
setup:  ## only build the CPU environment
	scripts/setup_cpu.sh
bench:  ## the MEPIC benchmark on CPU (all modes; tables, JSON and plots in benchmarks/results)
	scripts/setup_cpu.sh && .venv/bin/python -m benchmarks.mepic
