#!/usr/bin/env bash
# Serve SmolLM2-135M-Instruct on CPU with stock `python -m sglang.launch_server` and the plugin.
# Sets up .venv and the model on first use. Extra arguments go to launch_server.
# Env: HOST (127.0.0.1), PORT (30000), MAX_TOTAL_TOKENS (16384), MODEL_PATH (default: SmolLM2).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MEPIC_VENV:-$ROOT/.venv}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-30000}
"$ROOT/scripts/setup_cpu.sh"
MODEL_PATH=${MODEL_PATH:-$("$VENV/bin/python" -m mepic_sglang.models smollm2)}

# NOTE: CPU facts (see docs/architecture.md): float32 (no bf16 units on these CPUs),
# --sleep-on-idle (an idle scheduler otherwise spins a core), and always --max-total-tokens
# (otherwise SGLang reserves ~72% of RAM for KV).
"$VENV/bin/python" -m sglang.launch_server \
  --model-path "$MODEL_PATH" --host "$HOST" --port "$PORT" \
  --dtype float32 --max-total-tokens "${MAX_TOTAL_TOKENS:-16384}" --sleep-on-idle \
  --enable-mepic "$@" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' INT TERM EXIT
for _ in $(seq 600); do
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit $?; }
  if "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen('http://$HOST:$PORT/health_generate', timeout=60); sys.exit(0)" 2>/dev/null; then
    echo
    echo "mepic-sglang: SmolLM2-135M-Instruct is being served at http://$HOST:$PORT"
    echo "mepic-sglang: OpenAI-compatible API at http://$HOST:$PORT/v1 (model name: $MODEL_PATH); Ctrl-C stops it"
    echo
    break
  fi
  sleep 1
done
wait "$server"
