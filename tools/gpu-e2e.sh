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
. "$repo/tools/gpu-conda-root.sh"
gpu_preflight gpu-e2e   # sets moecapd (absolute) and out, or exits 2 naming what is missing
root=$(mktemp -d)
env=gpu
make_conda_root "$root" "$env" "$repo" "$moecapd"

cfg=$out/gpu_e2e.yaml
write_bench_yaml "$cfg" 256 96

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
  all=$(seq -s, 0 $((ngpu - 1)))
  CUDA_VISIBLE_DEVICES=$all run_cell "$ngpu" --worker-processes || status=$?
else
  echo "== only $ngpu GPU: TP=$ngpu only (multi-GPU TP needs a machine with several GPUs)"
fi
[ $status -eq 0 ] || { echo "gpu-e2e: launch-and-bench exited $status" >&2; }

# kill -9 of the supervisor in the middle of the bench, then a rerun of the same cell: the
# rerun must end the orphaned server (every rank), wait until the GPUs are back to baseline,
# and succeed.
kill_tp=$ngpu
echo "== kill -9 mid-bench (TP=$kill_tp), then rerun"
kres=$out/results-kill9
(CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((kill_tp - 1))) SAMPLES=400 exec "$moecapd" launch-and-bench --backend sglang \
  --config "$cfg" --num-samples 400 --batch-size "${BATCH:-16}" --tp "$kill_tp" --conda-root "$root" --env "$env" --port 0 \
  --results "$kres" --require-gpu --grace 20s --log-format console -- --worker-processes) >"$out/kill9-first.log" 2>&1 &
sup=$!
# Wait until the bench is really under way: the server has run a few batches.
for _ in $(seq 1 240); do
  [ "$(grep -c 'decode steps' "$kres"/*/server.log 2>/dev/null | awk -F: '{s+=$NF} END {print s+0}')" -ge 3 ] && break
  sleep 0.5
done
echo "kill -9 supervisor $sup"
kill -9 "$sup" 2>/dev/null || true
wait "$sup" 2>/dev/null || true
echo "GPU processes right after kill -9:"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader || true
# Everything the killed supervisor started (server, workers, the runner client) names the
# cell directory in its command line or environment; all of it must be gone after the rerun.
left_before=$(for p in /proc/[0-9]*; do
  if grep -qsF "$kres" "$p/cmdline" "$p/environ" 2>/dev/null; then echo "${p#/proc/}"; fi
done | tr '\n' ' ')
echo "processes of the killed run: ${left_before:-none}"
krc=0
CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((kill_tp - 1))) "$moecapd" launch-and-bench --backend sglang --config "$cfg" \
  --batch-size "${BATCH:-16}" --tp "$kill_tp" --conda-root "$root" --env "$env" --port 0 --results "$kres" \
  --require-gpu --grace 20s --log-format console -- --worker-processes >"$out/kill9-rerun.log" 2>&1 || krc=$?
tail -25 "$out/kill9-rerun.log"
echo "kill9-rerun exit $krc"
survivors=""
for p in $left_before; do [ -d "/proc/$p" ] && survivors="$survivors $p($(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-80))"; done
if [ -n "$survivors" ]; then echo "FAIL processes of the killed run still alive after the rerun:$survivors"; krc=66; else echo "ok   no process of the killed run is left"; fi

# A real CUDA out-of-memory at start on one rank (the last) of a TP cell: classified oom
# (infeasible, exit 4), nothing left on any GPU.
echo "== CUDA OOM at start on rank $((ngpu - 1)) of TP=$ngpu"
ores=$out/results-oom
orc=0
CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((ngpu - 1))) "$moecapd" launch-and-bench --backend sglang --config "$cfg" \
  --batch-size "${BATCH:-16}" --tp "$ngpu" --conda-root "$root" --env "$env" --port 0 --results "$ores" \
  --require-gpu --grace 20s --log-format console -- --worker-processes --oom-at-start-rank $((ngpu - 1)) \
  >"$out/oom.log" 2>&1 || orc=$?
tail -15 "$out/oom.log"
echo "oom exit $orc"

echo "== checks"
python3 - "$out/results" "$out" "$krc" "$orc" "$ngpu" <<'EOF'
import csv, glob, json, os, subprocess, sys
root, out, krc, orc, ngpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
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
    # Per GPU: the server's PIDs seen holding memory on every GPU (telemetry.csv), and the
    # energy counter's delta against integrated power over the bench window within 2%
    # (the manifest's per-GPU summary; the counter is read only at the window's edges and
    # every 30 s, so the CSV alone cannot say it).
    per = {}
    for r in rows:
        per.setdefault(int(r["gpu_index"]), []).append(r)
    for g, rs in sorted(per.items()):
        held = max(int(r["server_mem_bytes"] or 0) for r in rs)
        check(held > 100 << 20, "GPU %d: server PIDs seen holding %.0f MiB" % (g, held / 2**20))
    pg = {x["index"]: x for x in (t.get("per_gpu") or [])}
    check(sorted(pg) == sorted(idx), "per-GPU telemetry summary for GPUs %s (have %s)" % (idx, sorted(pg)))
    for g, x in sorted(pg.items()):
        ctr, integ = x.get("energy_j") or 0, x.get("energy_integrated_j") or 0
        check(ctr > 0 and abs(ctr - integ) / ctr < 0.02,
              "GPU %d: energy counter %.1f J vs integrated power %.1f J (%.2f%%)" % (g, ctr, integ, 100 * abs(ctr - integ) / max(ctr, 1e-9)))
    e, p, w = t.get("energy_j") or 0, t.get("avg_power_w") or 0, t.get("bench_window_s") or 0
    check(e > 0, "energy %.1f J over %.1f s" % (e, w))
    if e > 0 and p > 0 and w > 0:
        check(abs(e - p * w) / e < 0.10, "energy %.1f J vs avg power × time %.1f W × %.2f s = %.1f J (%.1f%%)" % (e, p, w, p * w, 100 * abs(e - p * w) / e))
    ei = t.get("energy_integrated_j")
    if ei:
        print("info %s: counter %.1f J, integrated power %.1f J, disagreement %s%%" % (cid, e, ei, t.get("energy_disagreement_pct")))
    check(m.get("failure") is None, "teardown: no orphans, memory back to baseline")
    met = m.get("metrics") or {}
    na = lambda v, f: "n/a" if v is None else f % v
    print("info %s: %s completed, TTFT %s ms, TPOT %s ms, %s out tok/s, %s J/token" % (
        cid, met.get("completed"), na(met.get("mean_ttft_ms"), "%.1f"), na(met.get("mean_tpot_ms"), "%.2f"),
        na(met.get("output_throughput"), "%.0f"), na(t.get("j_per_output_token"), "%.4f")))

def check2(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        bad.append(what)

def gpu_apps():
    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.strip()
    return q

# kill -9 then rerun
check2(krc == 0, "kill -9 then rerun: rerun exit %d (want 0)" % krc)
km = sorted(glob.glob(os.path.join(out, "results-kill9", "*", "manifest.json")))
for mf in km:
    m = json.load(open(mf))
    check2(m["status"] == "ok", "kill -9 then rerun: %s %s" % (m["cell"]["id"], m["status"]))
att = glob.glob(os.path.join(out, "results-kill9", ".attempts", "*", "manifest.json"))
for mf in att:
    m = json.load(open(mf))
    f = m.get("failure") or {}
    check2(m["status"] == "interrupted", "kill -9: the killed attempt is %s (phase %s)" % (m["status"], f.get("phase")))
check2(len(att) >= 1, "kill -9: the killed attempt archived (%d)" % len(att))
# oom
check2(orc == 4, "CUDA OOM at start: exit %d (want 4)" % orc)
for mf in glob.glob(os.path.join(out, "results-oom", "*", "manifest.json")):
    m = json.load(open(mf))
    f = m.get("failure") or {}
    check2(m["status"] == "infeasible" and f.get("kind") == "oom",
           "CUDA OOM at start: status %s kind %s: %s" % (m["status"], f.get("kind"), (f.get("message") or "")[:120]))
left = gpu_apps()
check2(left == "", "no GPU process left after all runs (%s)" % (left or "none"))
# idle readings: what moecapd reads vs what nvidia-smi shows
smi = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.reserved,memory.total", "--format=csv,noheader,nounits"],
                     capture_output=True, text=True).stdout.strip()
print("info nvidia-smi index, used MiB, reserved MiB, total MiB:", smi.replace("\n", " | "))
try:
    g = json.load(open(os.path.join(out, "gpus.json")))
    print("info moecapd gpus --json:", json.dumps(g)[:1500])
except Exception as e:  # noqa
    print("info gpus.json unreadable:", e)
sys.exit(1 if bad else 0)
EOF
echo "== GPU processes after the run (want none)"
left=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader)
echo "${left:-none}"
[ -z "$left" ] || status=6
exit $status
