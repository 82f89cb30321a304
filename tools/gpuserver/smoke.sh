#!/usr/bin/env bash
# Smoke test of the GPU test server on a CUDA machine: start it, wait for the ready line,
# exercise every endpoint, put load on it, tear it down. Usage:
#   tools/gpuserver/smoke.sh [extra server flags...]   (e.g. --tp-size 2 --worker-processes)
# PORT and PYTHON may be set in the environment.
set -euo pipefail
PORT=${PORT:-30123}
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
"$PY" "$here/server.py" --model-path moecap/random-qwen2moe --port "$PORT" "$@" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  grep -q "The server is fired up and ready to roll!" "$log" && break
  kill -0 $pid 2>/dev/null || { echo "server exited:"; cat "$log"; exit 1; }
  sleep 0.5
done
grep -q "ready to roll" "$log" || { echo "server never became ready:"; cat "$log"; exit 1; }
cat "$log"
u=http://127.0.0.1:$PORT
curl -fsS -o /dev/null -w "health %{http_code}\n" $u/health
curl -fsS $u/v1/models; echo
curl -fsS $u/get_model_info; echo
curl -fsS $u/metrics
curl -fsS $u/v1/completions -H 'Content-Type: application/json' \
  -d '{"model":"moecap/random-qwen2moe","prompt":"Hello MoE","max_tokens":8,"ignore_eos":true}'; echo
curl -fsS -N $u/v1/completions -H 'Content-Type: application/json' \
  -d '{"prompt":[5,6,7,8,9],"max_tokens":3,"stream":true,"ignore_eos":true}'
code=$(curl -sS -o /dev/null -w "%{http_code}" $u/v1/completions -d '{"prompt":"","max_tokens":2}')
echo "empty prompt -> $code (want 400)"
# Load: concurrent 512-in/128-out requests.
t0=$(date +%s%N)
for i in $(seq 1 ${LOAD:-32}); do
  curl -fsS -o /dev/null $u/v1/completions -H 'Content-Type: application/json' \
    -d "{\"prompt\":[$(seq -s, 100 611)],\"max_tokens\":128,\"ignore_eos\":true}" &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
echo "load done in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
curl -fsS $u/metrics
command -v nvidia-smi >/dev/null && nvidia-smi --query-compute-apps=pid,used_memory,process_name --format=csv || true
echo "--- server log since ready:"
sed -n '/ready to roll/,$p' "$log" | tail -n 20
