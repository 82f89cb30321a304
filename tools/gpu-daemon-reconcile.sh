#!/usr/bin/env bash
# GPU test of the daemon's lease ledger (make gpu-daemon-reconcile): on a CUDA machine, run
# `moecapd serve` with a real-backend cell whose server is tools/gpuserver/server.py (a
# random-weight Qwen2-MoE held on GPU 0, through the conda-shaped root of gpu-e2e), kill -9
# the daemon in the middle of the bench, check the server still holds GPU memory, start the
# daemon again and show what it did: the ledger reconciled against /proc and NVML's compute
# processes, the orphaned server ended (verified PIDs only), GPU 0 held until its memory was
# back at the baseline the lease recorded, the cell run again, and the proof (baseline MiB,
# observed MiB, when, how long) in the rerun's manifest (extra.lease_reconcile).
#
# Needs: nvidia driver, python3 with torch, transformers and aiohttp, and bin/moecapd (make build).
# Env: MOECAPD (binary), OUTDIR (keep results there), SAMPLES, BATCH, HARDWARE (default 1xH100).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tools/gpu-conda-root.sh"
gpu_preflight gpu-daemon-reconcile
root=$(mktemp -d)
make_conda_root "$root" sglang "$repo" "$moecapd"
cfg=$out/reconcile.yaml
write_bench_yaml "$cfg" 96 "${SAMPLES:-400}"
res=$out/results
run=$(mktemp -d)
export MOECAPD_RUN_DIR=$run MOECAPD_SERVER=
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
serve() { # log file
  "$moecapd" serve --results "$res" --conda-root "$root" --require-gpu --grace 20s --retries 0 \
    --log-format json >"$1" 2>&1 &
  daemon=$!
  for _ in $(seq 1 300); do "$moecapd" jobs >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "the daemon did not answer: $(tail -5 "$1")" >&2
  exit 1
}
job_state() { # id -> "STATE OK_COUNT"
  python3 - "$run/moecapd.sock" "$1" <<'EOF'
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("localhost"); c.request("GET", "/v1/jobs/" + sys.argv[2]); j = json.loads(c.getresponse().read())["job"]
print(j["state"], j["counts"].get("ok", 0))
EOF
}

echo "== serve, submit one sglang cell (torch test server) on GPU $CUDA_VISIBLE_DEVICES"
serve "$out/serve-1.log"
echo "GPU memory before: $(nvidia-smi --query-gpu=index,memory.used --format=csv,noheader | tr '\n' ' ')"
id=$("$moecapd" submit --backend sglang --config "$cfg" --batch-size "${BATCH:-16}" --num-samples "${SAMPLES:-400}" --hardware "${HARDWARE:-1xH100}")
echo "job $id"
for _ in $(seq 1 480); do
  [ "$(grep -c 'decode steps' "$res"/*/server.log 2>/dev/null | awk -F: '{s+=$NF} END {print s+0}')" -ge 3 ] && break
  sleep 0.5
done
echo "== kill -9 the daemon (PID $daemon) mid-bench"
kill -9 "$daemon"
wait "$daemon" 2>/dev/null || true
echo "GPU processes right after kill -9 (the orphaned server):"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
t0=$(date +%s.%N)
echo "== serve again"
serve "$out/serve-2.log"
for _ in $(seq 1 1200); do
  read -r st ok < <(job_state "$id")
  [ "$st" = done ] && break
  sleep 0.5
done
echo "job $id: $st, $ok ok, $(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)") s after the restart"
echo "== the restarted daemon's log: reconciliation and hold"
python3 - "$out/serve-2.log" <<'EOF'
import json, sys
keep = ("ledger reconciled", "orphaned server", "ending a server", "holding", "held GPU", "daemon reconciled", "GPUs back")
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if any(k in r.get("msg", "") for k in keep):
        r.pop("caller", None); r.pop("ts", None)
        print(json.dumps(r))
EOF
echo "== the rerun's manifest: extra.lease_reconcile"
"$moecapd" jobs
kill -TERM "$daemon"
wait "$daemon" 2>/dev/null || true
python3 - "$res" "$ok" <<'EOF'
import glob, json, os, sys
res, ok = sys.argv[1], int(sys.argv[2])
bad = []
def check(c, what):
    print(("ok   " if c else "FAIL ") + what)
    if not c:
        bad.append(what)
ms = [m for m in glob.glob(os.path.join(res, "*", "manifest.json"))]
check(len(ms) == 1 and ok == 1, "one cell, ok after the restart (%d manifests, %d ok)" % (len(ms), ok))
m = json.load(open(ms[0]))
p = (m.get("extra") or {}).get("lease_reconcile")
print(json.dumps(p, indent=2))
check(p is not None, "the rerun's manifest carries lease_reconcile")
if p:
    check(p.get("nvml") is True, "NVML available")
    led = p.get("ledger") or []
    check(len(led) == 1 and led[0].get("outcome") == "ended" and led[0].get("ended_pids"),
          "the killed daemon's lease: server ended (%s)" % [(x.get("outcome"), x.get("ended_pids")) for x in led])
    g = p.get("gpus") or []
    check(len(g) == 1 and g[0].get("back") is True and "baseline_mib" in g[0] and "observed_mib" in g[0],
          "GPU proof: back at baseline, baseline and observed MiB recorded (%s)" % g)
att = glob.glob(os.path.join(res, ".attempts", "*", "manifest.json"))
check(len(att) == 1 and json.load(open(att[0]))["status"] == "interrupted", "the killed attempt archived as interrupted")
sys.exit(1 if bad else 0)
EOF
echo "== GPU processes after the run (want none)"
left=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader)
echo "${left:-none}"
[ -z "$left" ]
