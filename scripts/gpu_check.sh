#!/usr/bin/env bash
# One device-tool call's worth of GPU checks for the attention kernels (issue 5):
#   1. the @pytest.mark.gpu kernel tests (Triton at real sizes; FlashInfer where installed),
#   2. the attention benchmark (table + JSON + plot into $OUT, or benchmarks/results).
# The lent GPU image has torch, triton, pytest, psutil, requests and matplotlib but neither SGLang
# nor FlashInfer. FlashInfer can travel as a py3-none-any wheel in .whl/ (0.7.2, the version
# SGLang pins, is 65 MB: over the 64 MiB carry limit; an older 0.5/0.6 JIT wheel fits; it
# JIT-compiles its kernels with the image's nvcc on first use). Usage on the device machine:
#   bash scripts/gpu_check.sh [quick]
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu --timeout 600 \
  tests/kernels/test_triton_attention.py tests/kernels/test_flashinfer_gpu.py 2>&1 | tee "$out/gpu_tests.log"
args=(--out "$out")
if [[ "${1:-}" == quick ]]; then args+=(--batches 1,32 --contexts 2048,16384); fi
python3 -m benchmarks.attention "${args[@]}" 2>&1 | tee "$out/attention_gpu.log"
