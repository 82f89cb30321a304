#!/usr/bin/env python3
"""Compare moecapd's manifest of each upstream-check cell with the upstream runner's own files.

  compare.py OUT RC_SIM RC_GPU
"""
import glob
import json
import os
import sys

out, rcs = sys.argv[1], {"sim": sys.argv[2], "gpu": sys.argv[3]}
bad = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        bad.append(what)


def close(a, b, rel):
    return a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


for kind in ("sim", "gpu"):
    if rcs[kind] == "skipped":
        print("skip %s: no GPU" % kind)
        continue
    check(rcs[kind] == "0", "%s: launch-and-bench exit %s (want 0)" % (kind, rcs[kind]))
    for mf in sorted(glob.glob(os.path.join(out, "results-" + kind, "*", "manifest.json"))):
        d = os.path.dirname(mf)
        m = json.load(open(mf))
        cid = m["cell"]["id"]
        met = m.get("metrics") or {}
        check(m["status"] == "ok", "%s: status %s %s" % (cid, m["status"], (m.get("failure") or {}).get("message", "")))
        files = glob.glob(os.path.join(d, "client", "**", "metrics_*.json"), recursive=True)
        check(len(files) == 1, "%s: one runner metrics file (%d)" % (cid, len(files)))
        if not files:
            continue
        rm = json.load(open(files[0]))
        perf, qual = rm.get("performance", {}), rm.get("quality", {})
        rows = []
        for f in glob.glob(os.path.join(os.path.dirname(files[0]), "output_data_*.jsonl")):
            rows += [json.loads(l) for l in open(f) if l.strip()]
        n = len(rows)
        ok_rows = sum(1 for r in rows if r.get("success"))
        wall_runner = perf.get("e2e_s", 0) * n if n else None
        wall_rps = n / perf["request/s"] if perf.get("request/s") else None
        dur = met.get("duration_s")
        bench = (m.get("timings_s") or {}).get("bench")
        print("info %s: N=%d, manifest duration %.3f s, runner e2e_s×N %.3f s, N/request_s %.3f s, moecapd bench phase %.3f s"
              % (cid, n, dur or -1, wall_runner or -1, wall_rps or -1, bench or -1))
        check(close(dur, wall_runner, 0.02), "%s: duration_s %.3f within 2%% of the runner's e2e_s × N %.3f" % (cid, dur or -1, wall_runner or -1))
        check(close(dur, wall_rps, 0.02), "%s: duration_s within 2%% of N / request/s" % cid)
        check(bench is not None and dur is not None and dur <= bench + 0.05,
              "%s: duration_s %.3f not longer than the bench phase %.3f" % (cid, dur or -1, bench or -1))
        check(met.get("completed") == ok_rows, "%s: completed %s = runner successes %d" % (cid, met.get("completed"), ok_rows))
        tot_out = sum(r.get("output_token_count") or 0 for r in rows if r.get("success"))
        check(met.get("total_output_tokens") == tot_out, "%s: total_output_tokens %s = runner %d" % (cid, met.get("total_output_tokens"), tot_out))
        if dur:
            check(close(met.get("output_throughput"), tot_out / dur, 0.001),
                  "%s: output_throughput %s = tokens / duration %.2f" % (cid, met.get("output_throughput"), tot_out / dur))
        sp = met.get("server_pass") or {}
        if perf.get("ttft") is not None:
            check(close(sp.get("ttft_moecap_ms"), perf["ttft"] * 1000, 0.001),
                  "%s: server_pass.ttft_moecap_ms %s = runner ttft×1000 %.3f" % (cid, sp.get("ttft_moecap_ms"), perf["ttft"] * 1000))
        if perf.get("tpot") is not None:
            check(close(sp.get("tpot_moecap_ms"), perf["tpot"] * 1000, 0.001),
                  "%s: server_pass.tpot_moecap_ms %s = runner tpot×1000 %.3f" % (cid, sp.get("tpot_moecap_ms"), perf["tpot"] * 1000))
        for k in ("mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_itl_ms"):
            check(met.get(k) is None, "%s: %s absent (the runner measures no client %s): %r" % (cid, k, k, met.get(k)))
        check(met.get("moe_cap") == rm, "%s: metrics.moe_cap is the runner's file verbatim" % cid)
        print("info %s: runner quality %s" % (cid, json.dumps(qual)))
        print("info %s: runner performance %s" % (cid, json.dumps(perf)))
        print("info %s: manifest metrics %s" % (cid, json.dumps({k: v for k, v in met.items() if k != "moe_cap"})))
        cap = ((m.get("extra") or {}).get("cap")) or m.get("derived")
        if cap:
            print("info %s: cap %s" % (cid, json.dumps(cap)[:1500]))
sys.exit(1 if bad else 0)
