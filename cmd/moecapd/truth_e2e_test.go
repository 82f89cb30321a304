package main

// End-to-end test of the truth verdict (issue 19, item 7): a sim cell's manifest carries
// extra.truth with physics and triangulation checks, each with value, bound and outcome,
// and the launch summary and the cell page show it.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

func TestSimTruthVerdict(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 128, 16, 4)
	r := moecapd(t, nil, simArgs(results, cfg, 4, "--", "--sim-time-scale", "0.1")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	tr, ok := m.Truth()
	if !ok {
		t.Fatalf("no extra.truth: %s", m.Extra["truth"])
	}
	kinds := map[string]int{}
	for _, c := range tr.Checks {
		kinds[c.Kind]++
		if c.Bound == "" {
			t.Errorf("check %s has no bound", c.Name)
		}
		if c.Name == "output_tokens_records_vs_client" && !c.Pass {
			t.Errorf("the records' tokens disagree with the client's: %+v", c)
		}
		if c.Kind != cell.CheckContamination && !c.Pass {
			t.Errorf("a physics or triangulation check failed on the sim at its floor: %+v", c)
		}
	}
	if kinds[cell.CheckPhysics] == 0 || kinds[cell.CheckTriangulation] == 0 || kinds[cell.CheckContamination] == 0 {
		t.Errorf("checks by kind %v; want physics, triangulation and contamination (client CPU)", kinds)
	}
	switch tr.Verdict {
	case cell.TruthClean, cell.TruthContaminated: // contaminated only if this busy machine starved the client
	default:
		t.Errorf("verdict %q", tr.Verdict)
	}
	if !strings.Contains(r.stdout, "truth    "+tr.Verdict) {
		t.Errorf("summary lacks the verdict:\n%s", r.stdout)
	}
	out := t.TempDir()
	if r := moecapd(t, nil, "report", "--results", results, "--out", out); r.code != 0 {
		t.Fatalf("report: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	pages, _ := filepath.Glob(filepath.Join(out, "cells", "*.html"))
	if len(pages) != 1 {
		t.Fatalf("cell pages %v", pages)
	}
	if b, _ := os.ReadFile(pages[0]); !strings.Contains(string(b), "Truth verdict: "+tr.Verdict) || !strings.Contains(string(b), "output_tokens_records_vs_client") {
		t.Errorf("the cell page does not show the truth verdict and its checks")
	}
	t.Logf("verdict %s: %+v", tr.Verdict, tr.Checks)
}
