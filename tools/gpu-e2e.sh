#!/usr/bin/env bash
# GPU end-to-end test (make gpu-e2e): on a CUDA machine, run launch-and-bench for real with a
# torch-backed test server (tools/gpuserver/server.py: a random-weight Qwen2-MoE held on the
# GPU, serving the sim's API with real forward passes), through the real conda activation
# path (a conda-shaped root whose env python dispatches moe_cap.systems.sglang to that server
# and moe_cap.runner.openai_api_profile to `moecapd bench`), on one GPU and, when there are
# two, with TP=2 (one replica per GPU, held by worker child processes). Then it checks:
# telemetry rows for every GPU of the cell, the server's PIDs seen holding memory, energy > 0
# and within 10% of average power × time, and GPU memory back to the baseline after teardown.
#
# Needs: nvidia driver, python3 with torch, transformers and aiohttp, and bin/moecapd (make build).
# Env: MOECAPD (binary), OUTDIR (keep results there), SAMPLES, BATCH, IN_TOKENS, OUT_TOKENS.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
moecapd=${MOECAPD:-$repo/bin/moecapd}
out=${OUTDIR:-$(mktemp -d)}
mkdir -p "$out"
[ -x "$moecapd" ] || { echo "gpu-e2e: $moecapd missing: run make build" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu-e2e: no nvidia-smi: this needs a CUDA machine" >&2; exit 2; }
python3 -c 'import torch, transformers, aiohttp; assert torch.cuda.is_available()' ||
  { echo "gpu-e2e: python3 needs torch (with CUDA), transformers and aiohttp" >&2; exit 2; }

# The conda-shaped root (no conda on the machine: the activation path is still the real one).
root=$(mktemp -d)
env=gpu
mkdir -p "$root/etc/profile.d" "$root/envs/$env/bin" "$root/envs/$env/etc/conda/activate.d"
cat >"$root/etc/profile.d/conda.sh" <<'EOF'
conda() {
  [ "$1" = activate ] || return 1
  case "$2" in /*) p="$2" ;; *) p="$GPU_E2E_CONDA_ROOT/envs/$2" ;; esac
  [ -d "$p" ] || { echo "EnvironmentNameNotFound: $2" >&2; return 1; }
  export CONDA_PREFIX="$p" PATH="$p/bin:$PATH"
  for f in "$p"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done
  return 0
}
EOF
echo 'export GPU_E2E_ACTIVATED=1' >"$root/envs/$env/etc/conda/activate.d/e2e.sh"
realpy=$(command -v python3)
cat >"$root/envs/$env/bin/python" <<EOF
#!/bin/sh
[ "\$GPU_E2E_ACTIVATED" = 1 ] || { echo "not activated" >&2; exit 97; }
if [ "\$1" = -m ]; then
  mod="\$2"; shift 2
  case "\$mod" in
    moe_cap.systems.sglang) exec "$realpy" -u "$repo/tools/gpuserver/server.py" "\$@" ;;
    # The torch server has neither /tokenize nor a pass recorder: exact token ids, no records
    # (with records on, a dump that writes no file is the runner's exit 1).
    moe_cap.runner.openai_api_profile) exec "$moecapd" bench --log-format json --datasets random --offline --prompt-style exact-ids --no-records "\$@" ;;
  esac
fi
exec "$realpy" "\$@"
EOF
chmod +x "$root/envs/$env/bin/python"
export GPU_E2E_CONDA_ROOT=$root

cfg=$out/gpu_e2e.yaml
cat >"$cfg" <<EOF
dataset_names: ["gsm8k"]
metrics: []
model_id: Qwen/Qwen1.5-MoE-A2.7B-Chat
fixed_length_mode: true
target_input_tokens: ${IN_TOKENS:-1024}
target_output_tokens: ${OUT_TOKENS:-256}
num_samples: ${SAMPLES:-96}
EOF

ngpu=$(nvidia-smi --list-gpus | wc -l)
echo "== moecapd gpus"
"$moecapd" gpus
"$moecapd" gpus --json >"$out/gpus.json"

run_cell() { # tp extra-server-flags...
  local tp=$1; shift
  echo "== launch-and-bench TP=$tp"
  "$moecapd" launch-and-bench --backend sglang --config "$cfg" --batch-size "${BATCH:-16}" --tp "$tp" \
    --conda-root "$root" --env "$env" --port 0 --results "$out/results" --require-gpu \
    --grace 20s --log-format console -- "$@"
}
status=0
run_cell 1 || status=$?
if [ "$ngpu" -ge 2 ]; then
  CUDA_VISIBLE_DEVICES=0,1 run_cell 2 --worker-processes || status=$?
else
  echo "== only $ngpu GPU: TP=2 skipped"
fi
[ $status -eq 0 ] || { echo "gpu-e2e: launch-and-bench exited $status" >&2; }

echo "== checks"
python3 - "$out/results" <<'EOF'
import csv, glob, json, os, sys
root = sys.argv[1]
bad = []
cells = sorted(glob.glob(os.path.join(root, "*", "manifest.json")))
if not cells:
    bad.append("no cell manifests")
for mf in cells:
    d = os.path.dirname(mf)
    m = json.load(open(mf))
    cid = m["cell"]["id"]
    t = m.get("telemetry") or {}
    idx = m["cell"]["gpu_indices"]
    rows = list(csv.DictReader(open(os.path.join(d, "telemetry.csv"))))
    seen = {}
    for r in rows:
        seen.setdefault(int(r["gpu_index"]), 0)
        seen[int(r["gpu_index"])] += 1
    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + cid + ": " + what)
        if not ok:
            bad.append(cid + ": " + what)
    check(m["status"] == "ok", "status %s %s" % (m["status"], (m.get("failure") or {}).get("message", "")))
    check(t.get("available") is True, "telemetry available")
    check(sorted(seen) == sorted(idx) and min(seen.values() or [0]) > 10,
          "telemetry rows per GPU %s for GPUs %s" % (seen, idx))
    sp = t.get("server_peak_memory_bytes") or 0
    check(sp > 100 << 20, "server PIDs seen holding %.0f MiB" % (sp / 2**20))
    e, p, w = t.get("energy_j") or 0, t.get("avg_power_w") or 0, t.get("bench_window_s") or 0
    check(e > 0, "energy %.1f J over %.1f s" % (e, w))
    if e > 0 and p > 0 and w > 0:
        check(abs(e - p * w) / e < 0.10, "energy %.1f J vs avg power × time %.1f W × %.2f s = %.1f J (%.1f%%)" % (e, p, w, p * w, 100 * abs(e - p * w) / e))
    ei = t.get("energy_integrated_j")
    if ei:
        print("info %s: counter %.1f J, integrated power %.1f J, disagreement %s%%" % (cid, e, ei, t.get("energy_disagreement_pct")))
    check(m.get("failure") is None, "teardown: no orphans, memory back to baseline")
    met = m.get("metrics") or {}
    print("info %s: %d completed, TTFT %.1f ms, TPOT %.2f ms, %.0f out tok/s, %.4f J/token" % (
        cid, met.get("completed", 0), met.get("mean_ttft_ms", 0), met.get("mean_tpot_ms", 0),
        met.get("output_throughput", 0), t.get("j_per_output_token") or 0))
sys.exit(1 if bad else 0)
EOF
echo "== GPU processes after the run (want none)"
left=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader)
echo "${left:-none}"
[ -z "$left" ] || status=6
exit $status
