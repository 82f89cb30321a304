package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

// loadMatrixFile writes a sim matrix with a closed-loop group and a rate-sweep group of the
// same configuration (qwen1_5 on 1xH100, 32 in / 8 out tokens, batch 1, 4 requests, 2 ms
// passes), with extra appended to the sweep group; it returns the matrix's path.
func loadMatrixFile(t *testing.T, sweep string) string {
	t.Helper()
	dir := t.TempDir()
	bench := "dataset_names: [\"gsm8k\"]\nmetrics: []\nmodel_id: \"" + qwen + "\"\nfixed_length_mode: true\ntarget_input_tokens: 32\ntarget_output_tokens: 8\nnum_samples: 4\n"
	if err := os.WriteFile(filepath.Join(dir, "tiny.yaml"), []byte(bench), 0o644); err != nil {
		t.Fatal(err)
	}
	body := `version: 1
tasks:
  32-8: {config: tiny.yaml}
defaults: {backends: [sim], num_samples: 4, sim: {tpot: 2ms, ttft: 2ms}}
groups:
  closed: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}}
  sweep: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, ` + sweep + `}
`
	p := filepath.Join(dir, "load.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMatrixRateSweepGroup: a matrix with a rates: group and a closed-loop group of the same
// configuration runs both under distinct ids (the closed loop's the guide's five parts);
// plan shows the load, status, report and compare handle both, and a second run keeps both
// (resume). A bad load key is exit 2 naming the key, and the load flags are not matrix
// flags (a group says them).
func TestMatrixRateSweepGroup(t *testing.T) {
	mx := loadMatrixFile(t, `rates: [50, 100], slo: "ttft=10s"`)
	results, locks := t.TempDir(), t.TempDir()
	const closedID, sweepID = "qwen1_5.1xH100.32-8.bs1.sim", "qwen1_5.1xH100.32-8.bs1.sim.rates50-100"

	pl := moecapd(t, nil, "matrix", "plan", "--matrix", mx, "--results", results)
	if pl.code != 0 || !strings.Contains(pl.stdout, closedID+" ") || !strings.Contains(pl.stdout, sweepID) ||
		!strings.Contains(pl.stdout, "open loop: rates 50, 100 req/s; SLO ttft=10s") || !strings.Contains(pl.stdout, "2 to run") {
		t.Fatalf("plan: exit %d\n%s\n%s", pl.code, pl.stdout, pl.stderr)
	}
	run := []string{"matrix", "run", "--matrix", mx, "--results", results, "--lock-dir", locks, "--grace", "2s", "--progress", "log", "--log-format", "json"}
	if r := moecapd(t, nil, run...); r.code != 0 {
		t.Fatalf("matrix run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	closed, err := cell.ReadManifest(filepath.Join(results, closedID))
	if err != nil || closed.Status != cell.StatusOK || closed.Cell.Load != "" || len(closed.Rates) != 0 || closed.Metrics.RequestRate != nil {
		t.Fatalf("closed-loop cell: %+v, %v", closed, err)
	}
	sweep, err := cell.ReadManifest(filepath.Join(results, sweepID))
	if err != nil || sweep.Status != cell.StatusOK || sweep.Cell.Load != "rates50-100" || len(sweep.Rates) != 2 {
		t.Fatalf("sweep cell: %+v, %v", sweep, err)
	}
	for i, want := range []float64{50, 100} {
		if p := sweep.Rates[i]; p.Rate != want || p.Metrics == nil || p.Metrics.Completed != 4 || p.Metrics.Goodput == nil {
			t.Errorf("rate %d: %+v, want %g req/s with 4 requests judged against the SLO", i+1, p, want)
		}
	}

	// Resume: both cells are kept, neither is run again.
	again := moecapd(t, nil, run...)
	if again.code != 0 || !strings.Contains(again.stdout, "matrix: 0 ok, 0 failed") {
		t.Errorf("second run: exit %d\n%s\n%s", again.code, again.stdout, again.stderr)
	}
	if m, err := cell.ReadManifest(filepath.Join(results, sweepID)); err != nil || !m.StartedAt.Equal(sweep.StartedAt) {
		t.Errorf("the sweep cell was run again: %v", err)
	}
	if pl := moecapd(t, nil, "matrix", "plan", "--matrix", mx, "--results", results); !strings.Contains(pl.stdout, "0 to run, 2 kept from results") {
		t.Errorf("plan after the run:\n%s", pl.stdout)
	}

	st := moecapd(t, nil, "matrix", "status", "--matrix", mx, "--results", results, "--format", "markdown")
	if st.code != 0 || !strings.Contains(st.stdout, "| sim | 1 |") || !strings.Contains(st.stdout, "| sim · rates50-100 | 1 |") {
		t.Errorf("status: exit %d\n%s", st.code, st.stdout)
	}
	out := filepath.Join(t.TempDir(), "report")
	if r := moecapd(t, nil, "report", "--results", results, "--out", out, "--matrix", mx); r.code != 0 {
		t.Fatalf("report: exit %d\n%s", r.code, r.stderr)
	}
	md, _ := os.ReadFile(filepath.Join(out, "summary.md"))
	csv, _ := os.ReadFile(filepath.Join(out, "cells.csv"))
	for _, id := range []string{closedID, sweepID} {
		if !strings.Contains(string(md), id) || !strings.Contains(string(csv), id+",") {
			t.Errorf("report lacks %s", id)
		}
	}
	if html, _ := os.ReadFile(filepath.Join(out, "index.html")); !strings.Contains(string(html), "sim · rates50-100") || !strings.Contains(string(csv), ",sim,rates50-100,") {
		t.Error("the report does not name the sweep's load beside its backend (index.html) or in cells.csv's load column")
	}

	// compare pairs the roots' cells by id (the sweep with the sweep), and two cell
	// directories side by side show the load that differs.
	cmp := moecapd(t, nil, "compare", results, results, "--format", "json")
	var rep struct {
		Cells []struct {
			BaseID string `json:"base_id"`
			NewID  string `json:"new_id"`
		} `json:"cells"`
	}
	if cmp.code != 0 || json.Unmarshal([]byte(cmp.stdout), &rep) != nil || len(rep.Cells) != 2 {
		t.Fatalf("compare roots: exit %d\n%s\n%s", cmp.code, cmp.stdout, cmp.stderr)
	}
	for _, c := range rep.Cells {
		if c.BaseID != c.NewID {
			t.Errorf("compare paired %s with %s", c.BaseID, c.NewID)
		}
	}
	cmp = moecapd(t, nil, "compare", filepath.Join(results, closedID), filepath.Join(results, sweepID), "--format", "markdown")
	if cmp.code == 2 || !strings.Contains(cmp.stdout, "closed loop") || !strings.Contains(cmp.stdout, "open loop rates50-100") {
		t.Errorf("compare cells: exit %d\n%s\n%s", cmp.code, cmp.stdout, cmp.stderr)
	}

	for _, tc := range []struct{ sweep, want string }{
		{`rates: [50, 0]`, `key "groups.sweep.rates": got 0`},
		{`find_max_rate: true`, `groups.sweep.find_max_rate needs an SLO to meet: add slo: "ttft=500ms,tpot=50ms"`},
		{`rates: [50], repeats: 2`, `key "groups.sweep.rates": groups.sweep.repeats with groups.sweep.rates`},
	} {
		bad := loadMatrixFile(t, tc.sweep)
		for _, verb := range []string{"plan", "run"} {
			args := []string{"matrix", verb, "--matrix", bad, "--results", t.TempDir()}
			if verb == "run" {
				args = append(args, "--lock-dir", locks)
			}
			r := moecapd(t, nil, args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("matrix %s with %s: exit %d, want 2 with %q\n%s", verb, tc.sweep, r.code, tc.want, r.stderr)
			}
		}
	}
	if r := moecapd(t, nil, "matrix", "run", "--matrix", mx, "--results", t.TempDir(), "--rates", "1"); r.code != exitUsage || !strings.Contains(r.stderr, "rates") {
		t.Errorf("matrix run --rates: exit %d, want 2 (a group's key)\n%s", r.code, r.stderr)
	}
}

// TestOpenLoopCellOwnID: launch-and-bench with --request-rate after the closed loop of the
// same configuration, into the same results root, is a second cell: the closed loop's
// result is neither archived nor overwritten.
func TestOpenLoopCellOwnID(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	results := t.TempDir()
	const closedID = "qwen1_5.1xH100.32-8.bs1.sim"
	if r := moecapd(t, nil, simArgs(results, cfg, 1, "--", "--sim-tpot", "2ms")...); r.code != 0 {
		t.Fatalf("closed loop: exit %d\n%s", r.code, r.stderr)
	}
	closed, err := cell.ReadManifest(filepath.Join(results, closedID))
	if err != nil {
		t.Fatal(err)
	}
	if r := moecapd(t, nil, simArgs(results, cfg, 1, "--request-rate", "50", "--burstiness", "0.5", "--", "--sim-tpot", "2ms")...); r.code != 0 {
		t.Fatalf("open loop: exit %d\n%s", r.code, r.stderr)
	}
	open, err := cell.ReadManifest(filepath.Join(results, closedID+".rate50-b0_5"))
	if err != nil || open.Status != cell.StatusOK || open.Cell.Load != "rate50-b0_5" || open.Metrics.RequestRate == nil || *open.Metrics.RequestRate != 50 {
		t.Fatalf("open-loop cell: %+v, %v", open, err)
	}
	again, err := cell.ReadManifest(filepath.Join(results, closedID))
	if err != nil || !again.StartedAt.Equal(closed.StartedAt) || again.Cell.Load != "" {
		t.Errorf("the closed loop's cell changed: %+v, %v", again, err)
	}
	if atts, _ := filepath.Glob(filepath.Join(results, ".attempts", "*")); len(atts) != 0 {
		t.Errorf("an attempt was archived: %v", atts)
	}
}
