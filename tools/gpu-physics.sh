#!/usr/bin/env bash
# GPU physics check (make gpu-physics): one cell per model of the real architecture at real
# size, random weights built on the GPU from its published config.json, served on one GPU by
# the torch test server through the real conda activation path, so the cell's CAP numbers
# describe what ran:
#   qwen1_5    Qwen1.5-MoE-A2.7B (24 layers, 60 experts top-4, 14.3 B parameters, bf16)
#              from tools/gpuserver/configs/qwen1_5_moe_a2_7b.json
#   dsv2_lite  DeepSeek-V2-Lite (27 layers, MLA, 64 routed + 2 shared experts top-6, the first
#              layer dense, 15.7 B parameters, bf16) from tools/gpuserver/configs/deepseek_v2_lite.json
# Checks per cell: the server built the parameter count moecapd's pass-cost model assumes
# (within 0.5%), physical S-MBU and S-MFU <= 1 in prefill and decode (from the measured pass
# latencies), the measured TPOT and TTFT at or above their physical floors (x floor >= 0.98),
# no CAP error, and the truth verdict clean with its NVML checks present and passed (no
# foreign process on the GPU, no XID error, energy counter vs integrated power) and the
# client's output tokens equal to the server's /metrics generation-token counter; prints the
# numbers as a table.
#
# Needs: nvidia driver, python3 with torch, transformers (Qwen2MoE, DeepseekV2) and aiohttp,
# bin/moecapd. Env: MOECAPD, OUTDIR, MODELS ("qwen1_5 dsv2_lite"), SAMPLES (32), BATCH (16),
# IN_TOKENS (1024), OUT_TOKENS (128).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/tools/gpu-conda-root.sh"
gpu_preflight gpu-physics   # sets moecapd (absolute) and out, or exits 2 naming what is missing
root=$(mktemp -d)
make_conda_root "$root" gpu "$repo" "$moecapd"

status=0
for model in ${MODELS:-qwen1_5 dsv2_lite}; do
  case $model in
    qwen1_5) id=Qwen/Qwen1.5-MoE-A2.7B-Chat json=qwen1_5_moe_a2_7b.json ;;
    dsv2_lite) id=deepseek-ai/DeepSeek-V2-Lite-Chat json=deepseek_v2_lite.json ;;
    *) echo "gpu-physics: unknown model $model (qwen1_5, dsv2_lite)" >&2; exit 2 ;;
  esac
  echo "=== $model ($id, $json)"
  mkdir -p "$out/$model"
  cfg=$out/$model/physics.yaml
  write_bench_yaml "$cfg" 128 32 "$id"
  rc=0
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$moecapd" launch-and-bench --backend sglang --config "$cfg" \
    --batch-size "${BATCH:-16}" --tp 1 --conda-root "$root" --env gpu --port 0 --results "$out/$model/results" \
    --require-gpu --grace 20s --ready-timeout 10m --log-format console \
    -- --config-json "$repo/tools/gpuserver/configs/$json" || rc=$?
  echo "launch-and-bench exit $rc"
  python3 - "$out/$model/results" "$rc" "$model" <<'EOF' || status=1
import glob, json, os, re, sys
root, rc, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bad = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        bad.append(what)
check(rc == 0, "launch-and-bench exit %d" % rc)
mfs = glob.glob(os.path.join(root, "*", "manifest.json"))
check(len(mfs) == 1, "one cell manifest (%d)" % len(mfs))
if mfs:
    d = os.path.dirname(mfs[0])
    m = json.load(open(mfs[0]))
    cap = ((m.get("extra") or {}).get("cap")) or {}
    inp = cap.get("inputs") or {}
    log = open(os.path.join(d, "server.log"), errors="replace").read()
    built = [int(x) * 1e6 for x in re.findall(r"(\d+)M parameters", log)]
    want = inp.get("total_params") or 0
    check(bool(built) and want > 0 and abs(built[0] - want) / want < 0.005,
          "server built %s parameters, pass-cost model assumes %s" % (built[:1], want))
    rows = []
    for phase in ("prefill", "decode"):
        ph = cap.get(phase) or {}
        for k in ("s_mbu", "s_mfu"):
            v = ph.get(k)
            rows.append(("%s.%s" % (phase, k), v, "<= 1"))
            check(v is not None and 0 < v <= 1.0, "%s %s = %s <= 1" % (phase, k, v))
    for k in ("tpot_over_floor", "ttft_over_floor"):
        v = cap.get(k)
        rows.append((k, v, ">= 0.98"))
        check(v is not None and v >= 0.98, "%s = %s >= 0.98" % (k, v))
    errs = cap.get("errors") or []
    check(not errs, "no CAP errors (%s)" % errs)
    truth = ((m.get("extra") or {}).get("truth")) or {}
    checks = {c["name"]: c for c in truth.get("checks") or []}
    check(truth.get("verdict") == "clean", "truth verdict %s" % truth.get("verdict"))
    for name in ("foreign_gpu_processes", "xid_errors", "energy_counter_vs_integrated_power_pct",
                 "output_tokens_server_metrics_vs_client"):
        c = checks.get(name)
        check(c is not None and c.get("pass"), "truth check %s: %s" % (name, "absent" if c is None else
              "%s, bound %s%s" % (c.get("value"), c.get("bound"), (" (" + c["note"] + ")") if c.get("note") else "")))
        if c is not None:
            rows.append(("truth." + name, c.get("value"), c.get("bound")))
    for c in truth.get("checks") or []:
        if not c.get("pass"):
            print("     failed check %s = %s, bound %s %s" % (c["name"], c["value"], c["bound"], c.get("note", "")))
    for n in truth.get("not_checked") or []:
        print("     not checked: " + n)
    met = m.get("metrics") or {}
    tel = m.get("telemetry") or {}
    rows += [("tpot_floor_ms", cap.get("tpot_floor_ms"), ""), ("mean_tpot_ms", met.get("mean_tpot_ms"), ""),
             ("ttft_floor_ms", cap.get("ttft_floor_ms"), ""), ("mean_ttft_ms", met.get("mean_ttft_ms"), ""),
             ("decode_batch_mean", inp.get("decode_batch_mean"), ""), ("decode_passes", inp.get("decode_passes"), ""),
             ("energy_j", tel.get("energy_j"), ""), ("gpu", (m.get("cell") or {}).get("hardware"), "")]
    print("\n%-46s %-22s %s" % (model + " number", "value", "bound"))
    for n, v, b in rows:
        print("%-46s %-22s %s" % (n, "absent" if v is None else (("%.6g" % v) if isinstance(v, float) else v), b))
    print()
sys.exit(1 if bad else 0)
EOF
done
exit $status
