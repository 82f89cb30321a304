package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/compare"
	"github.com/moecapd/moecapd/pkg/profile"
)

// --repeats 3 runs the measured bench three times against one server: the manifest keeps
// each repeat's metrics (its metrics are repeat 1's), their mean with a 95% interval and CV,
// and each repeat's files; an impossible --unstable-cv flags every metric unstable.
func TestRepeats(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 20, 16)
	for _, tc := range []struct {
		name     string
		extra    []string
		unstable bool
		fresh    bool
	}{
		{"warm server", []string{"--repeats", "3", "--unstable-cv", "10"}, false, false},
		{"fresh server, all unstable", []string{"--repeats", "3", "--repeat-fresh-server", "--unstable-cv", "0.0000001"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results := t.TempDir()
			r := moecapd(t, nil, simArgs(results, cfg, 4, append(tc.extra, "--", "--sim-tpot", "5ms", "--sim-ttft", "5ms")...)...)
			if r.code != 0 {
				t.Fatalf("exit %d\n%s", r.code, r.stderr)
			}
			dir, m := onlyCell(t, results)
			if len(m.Repeats) != 3 || m.RepeatStats == nil {
				t.Fatalf("repeats %d, stats %+v", len(m.Repeats), m.RepeatStats)
			}
			for i, rp := range m.Repeats {
				if rp.Index != i+1 || rp.Metrics == nil || rp.Metrics.Completed != 16 || rp.Metrics.MeanTPOTMs == nil {
					t.Errorf("repeat %d: %+v", i+1, rp)
				}
			}
			if *m.Metrics.MeanTPOTMs != *m.Repeats[0].Metrics.MeanTPOTMs {
				t.Error("the cell's metrics are not repeat 1's")
			}
			for _, k := range []string{"ttft_ms", "tpot_ms", "e2el_ms", "output_throughput"} {
				e, ok := m.RepeatStats.Metrics[k]
				if !ok || e.N != 3 || e.Lo == nil || e.Hi == nil || e.CV == nil || *e.Lo > e.Mean || *e.Hi < e.Mean {
					t.Errorf("%s: %+v", k, e)
				}
				if slices.Contains(m.RepeatStats.Unstable, k) != tc.unstable {
					t.Errorf("%s unstable %v, want %v", k, m.RepeatStats.Unstable, tc.unstable)
				}
			}
			if _, ok := m.RepeatStats.Metrics["j_per_output_token"]; ok {
				t.Error("J/token summarised without telemetry")
			}
			// Each repeat's per-request rows are kept: repeat 1 in the cell's client/, the
			// others under repeats/<k>/client/.
			for k, d := range map[int]string{1: filepath.Join(dir, "client"), 2: filepath.Join(dir, "repeats", "2", "client"), 3: filepath.Join(dir, "repeats", "3", "client")} {
				p := profile.FindBenchFile(d)
				reqs, err := profile.ReadBenchRequests(p)
				if err != nil || len(reqs) != 16 {
					t.Errorf("repeat %d bench file %q: %v, %d rows", k, p, err, len(reqs))
				}
			}
			// The cell page shows the means over the repeats and the unstable flag.
			if rr := moecapd(t, nil, "report", "--results", results); rr.code != 0 {
				t.Fatalf("report: exit %d\n%s", rr.code, rr.stderr)
			}
			page, err := os.ReadFile(filepath.Join(results, "report", "cells", filepath.Base(dir)+".html"))
			if err != nil || !strings.Contains(string(page), "tpot_ms over repeats") || strings.Contains(string(page), "unstable: over its 3 repeats") != tc.unstable {
				t.Errorf("cell page (%v) lacks the repeats or shows the wrong unstable flag", err)
			}
			restarts := strings.Count(r.stderr, "server stopped for a fresh start before the next repeat")
			if tc.fresh != (restarts == 2) || (!tc.fresh && restarts != 0) {
				t.Errorf("fresh %v but %d restarts", tc.fresh, restarts)
			}
		})
	}
}

func TestRepeatsRefused(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 20, 4)
	for _, tc := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"negative", []string{"--repeats", "-1"}, "--repeats"},
		{"too many", []string{"--repeats", "1000"}, "--repeats"},
		{"runner client", []string{"--repeats", "2", "--client", "moe-cap"}, "needs the native client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := moecapd(t, nil, simArgs(t.TempDir(), cfg, 2, tc.extra...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want 2 with %q\n%s", r.code, tc.want, r.stderr)
			}
		})
	}
}

// Two runs of one configuration, three repeats each: compare finds no regression (exit 0)
// and says how it knows (Welch over the repeats). The imposed passes are long (20 ms decode,
// 40 ms prefill) so that scheduling noise on a busy 2-core machine stays a small share of
// them, far below the 25% gate.
func TestCompareSameConfigNoChange(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 20, 16)
	timing := []string{"--", "--sim-tpot", "20ms", "--sim-ttft", "40ms"}
	a := simCell(t, cfg, timing[1:]...)
	b := t.TempDir()
	if r := moecapd(t, nil, simArgs(b, cfg, 4, append([]string{"--repeats", "3"}, timing...)...)...); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	// a was one run: give it three repeats too.
	if r := moecapd(t, nil, simArgs(a, cfg, 4, append([]string{"--repeats", "3"}, timing...)...)...); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	r := moecapd(t, nil, "compare", a, b, "--format", "json", "--threshold", "25")
	if r.code != 0 {
		t.Fatalf("compare of one configuration: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var rep compare.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Cells) != 1 {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	for _, m := range rep.Cells[0].Metrics {
		if m.Key == "tpot_ms" && (!strings.Contains(m.Method, "Welch t over 3 and 3 repeats") || m.Lo == nil || m.Regression) {
			t.Errorf("TPOT: %+v", m)
		}
	}
	for _, e := range rep.Cells[0].Env {
		if e.Differs {
			t.Errorf("one configuration, but %s differs: %q vs %q", e.Key, e.Base, e.New)
		}
	}
	if _, err := os.Stat(filepath.Join(a, cell.AttemptsDir)); err != nil {
		t.Errorf("the rerun did not archive the single run: %v", err)
	}
}
