#!/usr/bin/env bash
# Set up the CPU environment in .venv (idempotent; ~3 min the first time, instant afterwards):
#   CPU torch 2.13.0, sglang==0.5.23 WITHOUT its CUDA dependencies, the minimal runtime
#   dependencies (requirements/sglang-cpu.txt), test/model tools (requirements/dev.txt),
#   this plugin (editable) and its CPU shims (python -m mepic_sglang.cpu_setup).
# Env: MEPIC_VENV (default .venv), PYTHON (default python3; must be Python 3.11),
#      TORCH_INDEX_URL (optional: a package index that serves the CPU build of torch 2.13.0,
#      for machines whose pip would otherwise resolve torch to a CUDA build).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MEPIC_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
cd "$ROOT"

# Mooncake's transfer engine (P/D disaggregation over TCP on CPU) links libibverbs.so.1, which no
# pip package ships: Debian's libibverbs1. Without it the P/D tests skip, saying why.
if ! ldconfig -p 2>/dev/null | grep -q 'libibverbs\.so\.1 '; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "mepic-sglang: installing libibverbs1 (Debian) for Mooncake's transfer engine" >&2
    if ! { apt-get update -qq && apt-get install -y -qq libibverbs1; } >/tmp/mepic-apt.log 2>&1; then
      echo "mepic-sglang: warning: apt-get install libibverbs1 failed (/tmp/mepic-apt.log); P/D tests will skip" >&2
    fi
  else
    echo "mepic-sglang: note: libibverbs1 is not installed (needs root: apt-get install libibverbs1); P/D tests will skip" >&2
  fi
fi

stamp_want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
stamp_file="$VENV/.mepic-setup-stamp"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_want" ]; then
  exit 0
fi
rm -f "$stamp_file"

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "mepic-sglang CPU setup needs Python 3.11 (the CPU torch and sglang wheels are cp311)")'
echo "mepic-sglang: setting up $VENV (CPU torch + sglang 0.5.23 without CUDA deps; ~3 min)" >&2
"$PYTHON" -m venv "$VENV"
log="$VENV/mepic-setup.log"
: >"$log"
pip_install() {
  # NOTE: each step checks its own status; `set -e` does not apply inside `cmd || handler`.
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >>"$log" 2>&1; then
    grep -v -e "^WARNING: Location" "$log" | tail -30 >&2
    echo "mepic-sglang: setup failed at: pip install $*  (full log: $log)" >&2
    exit 1
  fi
}
pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
# --no-deps skips sglang's CUDA pins (torch 2.14.1, sglang-kernel, flashinfer, ...).
pip_install --no-deps "sglang==0.5.23"
# pip then reports ~45 "sglang 0.5.23 requires X, which is not installed" lines: expected.
pip_install -r requirements/sglang-cpu.txt -r requirements/dev.txt -c requirements/constraints-cpu.txt
pip_install --no-deps -e .
"$VENV/bin/python" -m mepic_sglang.cpu_setup >&2
"$VENV/bin/python" - >&2 <<'PY'
import torch, sglang, mepic_sglang
print("mepic-sglang: torch", torch.__version__, "sglang", sglang.__version__, "plugin", mepic_sglang.__version__)
if torch.version.cuda is not None:
    print("mepic-sglang: warning: this torch is a CUDA build (several GB); it runs on CPU, but set "
          "TORCH_INDEX_URL to an index with the CPU build to avoid it")
PY
echo "$stamp_want" >"$stamp_file"
