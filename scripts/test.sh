#!/usr/bin/env bash
# The test command (README, .ci/run): set up the CPU environment, lint, type-check, run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k flags -x).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MEPIC_VENV:-$ROOT/.venv}
"$ROOT/scripts/setup_cpu.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
