#!/usr/bin/env bash
# Serve SmolLM2-135M-Instruct on CPU with stock `python -m sglang.launch_server` and the plugin.
# Sets up .venv and the model on first use. Extra arguments go to launch_server.
# Env: HOST (127.0.0.1), PORT (30000), MAX_TOTAL_TOKENS (16384), MODEL_PATH (default: SmolLM2),
#      READY_TIMEOUT (600 s).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MEPIC_VENV:-$ROOT/.venv}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-30000}
"$ROOT/scripts/setup_cpu.sh"
MODEL_PATH=${MODEL_PATH:-$("$VENV/bin/python" -m mepic_sglang.models smollm2)}

server=
stop() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; server=; }
trap 'stop; exit 130' INT TERM
trap stop EXIT

# NOTE: CPU facts (see docs/architecture.md): float32 (no bf16 units on these CPUs),
# --sleep-on-idle (an idle scheduler otherwise spins a core), and always --max-total-tokens
# (otherwise SGLang reserves ~72% of RAM for KV).
"$VENV/bin/python" -m sglang.launch_server \
  --model-path "$MODEL_PATH" --host "$HOST" --port "$PORT" \
  --dtype float32 --max-total-tokens "${MAX_TOTAL_TOKENS:-16384}" --sleep-on-idle \
  --enable-mepic "$@" &
server=$!
deadline=$((SECONDS + ${READY_TIMEOUT:-600}))
until "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://$HOST:$PORT/health_generate', timeout=60)" 2>/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then
    wait "$server" && status=0 || status=$?
    server=
    echo "mepic-sglang: the server exited during start-up (status $status)" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "mepic-sglang: the server was not ready after ${READY_TIMEOUT:-600} s" >&2
    exit 1
  fi
  sleep 1
done
echo
echo "mepic-sglang: $(basename "$MODEL_PATH") is being served at http://$HOST:$PORT"
echo "mepic-sglang: OpenAI-compatible API at http://$HOST:$PORT/v1 (model: $MODEL_PATH); Ctrl-C stops it"
echo
wait "$server"
