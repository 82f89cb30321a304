package main

// End-to-end test of the achieved load (issue 19, item 2): a cell records its mean decode
// batch next to the asked batch and K, and a cell that ran below 90% of min(batch, K) is
// flagged with the cause in the manifest, the summary, the report's tables, cell page and CSV.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSimLoadRecordedAndFlagged(t *testing.T) {
	for _, tc := range []struct {
		name           string
		batch, samples int
		short          bool
	}{
		{"too few requests", 8, 3, true},
		{"at load", 4, 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results := t.TempDir()
			cfg := tinyConfig(t, qwen, 128, 16, tc.samples)
			r := moecapd(t, nil, simArgs(results, cfg, tc.batch, "--", "--sim-time-scale", "0.1")...)
			if r.code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			_, m := onlyCell(t, results)
			d := capOf(t, m)
			l := d.Load
			if l == nil || l.AskedBatch != tc.batch || l.Achieved == nil || l.FeasibleK == nil || l.NumSamples != tc.samples {
				t.Fatalf("extra.cap.load %+v; want asked %d, K, achieved and num_samples %d", l, tc.batch, tc.samples)
			}
			if m.Metrics.ClientInFlightMean == nil || m.Metrics.ClientCPUFraction == nil {
				t.Errorf("client in flight %v, cpu %v: want both measured", m.Metrics.ClientInFlightMean, m.Metrics.ClientCPUFraction)
			}
			flagged := len(d.Flags) == 1 && strings.HasPrefix(d.Flags[0], "batch: ") && strings.Contains(d.Flags[0], "too few requests: num_samples 3 < batch 8")
			if l.Short != tc.short || flagged != tc.short {
				t.Fatalf("load short %v (achieved %.3g of %d), flags %q; want short %v with the too-few-requests cause", l.Short, *l.Achieved, l.Reachable, d.Flags, tc.short)
			}
			if strings.Contains(r.stdout, "FLAG     batch: ") != tc.short || !strings.Contains(r.stdout, "load     mean decode batch") {
				t.Errorf("summary:\n%s", r.stdout)
			}
			out, col := reportOneCell(t, results)
			if col["achieved_decode_batch_mean"] == "" || col["feasible_k"] == "" || col["batch_size"] != strings.TrimSpace(col["batch_size"]) {
				t.Errorf("cells.csv load columns: achieved %q K %q", col["achieved_decode_batch_mean"], col["feasible_k"])
			}
			if strings.Contains(col["flags"], "too few requests") != tc.short {
				t.Errorf("cells.csv flags %q", col["flags"])
			}
			md, _ := os.ReadFile(filepath.Join(out, "summary.md"))
			if strings.Contains(string(md), "too few requests") != tc.short {
				t.Errorf("summary.md and the flag disagree (short %v):\n%s", tc.short, md)
			}
			pages, _ := filepath.Glob(filepath.Join(out, "cells", "*.html"))
			if len(pages) != 1 {
				t.Fatalf("cell pages %v", pages)
			}
			if b, _ := os.ReadFile(pages[0]); strings.Contains(string(b), "too few requests") != tc.short {
				t.Errorf("cell page and the flag disagree (short %v)", tc.short)
			}
		})
	}
}
