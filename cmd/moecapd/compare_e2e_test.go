package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/compare"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// simCell runs one tiny sim cell on its own results root with the given sim flags.
func simCell(t *testing.T, cfg string, simFlags ...string) string {
	t.Helper()
	results := t.TempDir()
	r := moecapd(t, nil, simArgs(results, cfg, 4, append([]string{"--"}, simFlags...)...)...)
	if r.code != 0 {
		t.Fatalf("launch-and-bench %v: exit %d\n%s", simFlags, r.code, r.stderr)
	}
	return results
}

// A cell whose server got three times slower per decode pass is detected: TPOT slower
// with an interval above zero, exit 9 (the gate); the other way round it is faster, exit 0.
// TTFT is not what changed, but it moves with the pass length (a new request waits for the
// decode pass in flight) and with scheduling noise on a busy machine: the imposed prefill is
// long (40 ms) so that both stay a small share of it, and the way back gates at 50%, far above
// what they can add and far below the imposed −64% in TPOT.
func TestCompareDetectsImposedSlowdown(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 20, 24)
	base := simCell(t, cfg, "--sim-tpot", "5ms", "--sim-ttft", "40ms")
	slow := simCell(t, cfg, "--sim-tpot", "15ms", "--sim-ttft", "40ms")

	r := moecapd(t, nil, "compare", base, slow, "--format", "json", "--threshold", "10")
	if r.code != int(exitcode.Regression) {
		t.Fatalf("compare base slow: exit %d, want %d\n%s\n%s", r.code, exitcode.Regression, r.stdout, r.stderr)
	}
	var rep compare.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if len(rep.Cells) != 1 {
		t.Fatalf("cells %+v", rep.Cells)
	}
	var tpot *compare.Metric
	for i, m := range rep.Cells[0].Metrics {
		if m.Key == "tpot_ms" {
			tpot = &rep.Cells[0].Metrics[i]
		}
	}
	if tpot == nil || tpot.Verdict != compare.Worse || !tpot.Regression || tpot.Lo == nil || *tpot.Lo <= 10 || !strings.Contains(tpot.Method, "bootstrap over 24 and 24 requests") {
		t.Fatalf("TPOT: %+v", tpot)
	}
	if !strings.Contains(r.stderr, "significant regression(s) beyond --threshold 10%") {
		t.Errorf("stderr does not name the regression:\n%s", r.stderr)
	}
	differs := false
	for _, e := range rep.Cells[0].Env {
		if e.Key == "server flags" {
			differs = e.Differs && strings.Contains(e.New, "--sim-tpot 15ms")
		}
	}
	if !differs {
		t.Errorf("the server flags that changed are not marked: %+v", rep.Cells[0].Env)
	}

	// The other way round, and between the two cell directories, in markdown.
	cellDir := func(root string) string {
		ms, _ := filepath.Glob(filepath.Join(root, "*", "manifest.json"))
		return filepath.Dir(ms[0])
	}
	r = moecapd(t, nil, "compare", cellDir(slow), cellDir(base), "--format", "markdown", "--threshold", "50")
	if r.code != 0 || !strings.Contains(r.stdout, "| TPOT mean \\(ms\\) |") || !strings.Contains(r.stdout, "| faster |") || !strings.Contains(r.stdout, "no regression") {
		t.Errorf("compare slow base: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = moecapd(t, nil, "compare", base, t.TempDir())
	if r.code != exitUsage || !strings.Contains(r.stderr, "holds no cell") {
		t.Errorf("compare against an empty root: exit %d\n%s", r.code, r.stderr)
	}
}
