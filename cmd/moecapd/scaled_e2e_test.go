package main

// End-to-end test of a time-scaled sim cell (issue 19, item 1): its client numbers are
// recorded and shown in physical units, and every place that shows them says
// "sim, time ×S".

import (
	"encoding/csv"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

func TestSimTimeScaledIsPhysical(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 256, 32, 8)
	r := moecapd(t, nil, simArgs(results, cfg, 4, "--", "--sim-time-scale", "0.01")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	dir, m := onlyCell(t, results)
	x := m.Metrics
	if m.Status != cell.StatusOK || x == nil || x.TimeScale != 0.01 || x.MeanTPOTMs == nil {
		t.Fatalf("status %s metrics %+v; want ok, time_scale 0.01 and a client TPOT", m.Status, x)
	}
	d := capOf(t, m)
	if d.TPOTFloorMs == nil || d.Inputs.SimTimeScale != 0.01 {
		t.Fatalf("cap: floor %v, scale %v", d.TPOTFloorMs, d.Inputs.SimTimeScale)
	}
	// Physical units: the un-scaled client TPOT is not faster than the hardware's floor
	// (wall TPOT would be ~100× below it), and the per-user rate is not above its inverse.
	floor := *d.TPOTFloorMs
	if *x.MeanTPOTMs < 0.98*floor {
		t.Errorf("recorded mean TPOT %.4g ms is below the TPOT floor %.4g ms: not un-scaled", *x.MeanTPOTMs, floor)
	}
	if perUser := x.OutputThroughput / 4; perUser > 1000/floor*1.02 {
		t.Errorf("recorded %.4g output tok/s per user beats the floor's %.4g", perUser, 1000/floor)
	}
	if x.DurationS < m.Timings.Bench {
		t.Errorf("duration_s %.3g s is shorter than the wall bench phase %.3g s: not un-scaled", x.DurationS, m.Timings.Bench)
	}
	if !strings.Contains(r.stdout, "sim, time ×0.01") {
		t.Errorf("the cell's summary does not say sim, time ×0.01:\n%s", r.stdout)
	}

	out, col := reportOneCell(t, results)
	if col["time_scale"] != "0.01" {
		t.Errorf("cells.csv time_scale = %q, want 0.01", col["time_scale"])
	}
	if col["tpot_mean_ms"] == "" || col["tpot_mean_ms"] == "0" {
		t.Errorf("cells.csv tpot_mean_ms = %q", col["tpot_mean_ms"])
	}
	md, _ := os.ReadFile(filepath.Join(out, "summary.md"))
	var row string
	for _, l := range strings.Split(string(md), "\n") {
		if strings.Contains(l, m.Cell.ID) {
			row = l
		}
	}
	if !strings.Contains(row, "sim, time ×0.01") {
		t.Errorf("summary.md row of the cell does not say sim, time ×0.01: %q", row)
	}
	for _, page := range []string{"index.html"} {
		b, _ := os.ReadFile(filepath.Join(out, page))
		if !strings.Contains(string(b), "sim, time ×0.01") {
			t.Errorf("%s does not say sim, time ×0.01", page)
		}
	}
	pages, _ := filepath.Glob(filepath.Join(out, "cells", "*.html"))
	if len(pages) != 1 {
		t.Fatalf("cell pages %v", pages)
	}
	if b, _ := os.ReadFile(pages[0]); !strings.Contains(string(b), "sim, time ×0.01") {
		t.Errorf("the cell page does not say sim, time ×0.01")
	}
	_ = dir
}

// reportOneCell runs `moecapd report` over a results root that holds one cell and returns
// the report's directory and that cell's cells.csv row by column name.
func reportOneCell(t *testing.T, results string) (string, map[string]string) {
	t.Helper()
	out := t.TempDir()
	if r := moecapd(t, nil, "report", "--results", results, "--out", out); r.code != 0 {
		t.Fatalf("report: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	f, err := os.Open(filepath.Join(out, "cells.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) != 2 {
		t.Fatalf("cells.csv: %v, %d rows", err, len(rows))
	}
	col := map[string]string{}
	for i, h := range rows[0] {
		col[h] = rows[1][i]
	}
	return out, col
}
