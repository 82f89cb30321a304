package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// TestImpossibleValuesAreErrors: a physical utilisation capmath flagged is rendered as an
// error with its cause in the page and the summary, never as a number in the tables.
func TestImpossibleValuesAreErrors(t *testing.T) {
	results, out := t.TempDir(), t.TempDir()
	id := "qwen1_5.1xH100.4k-1k.bs1.sglang"
	dir := filepath.Join(results, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cause := "the passes ran faster than the hardware allows (test)"
	d := capmath.Derived{Version: capmath.DerivedVersion, Source: "records",
		Decode: &capmath.Util{SMFU: f64(0.01)},
		Errors: []capmath.Flag{{Field: "decode.s_mbu", Value: 9.1, Limit: capmath.PhysicalLimit, Cause: cause}}}
	raw, _ := json.Marshal(d)
	m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Status: cell.StatusOK, StartedAt: time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC),
		Cell: cell.Identity{ID: id, Model: "qwen1_5", ModelID: "Qwen/Qwen1.5-MoE-A2.7B-Chat", Hardware: "1xH100", GPUCount: 1,
			Task: "4k-1k", InputTokens: 4000, OutputTokens: 1000, BatchSize: 1, Backend: "sglang", TP: 1},
		Metrics: &profile.Metrics{Source: "native", LatencyKind: "client", Completed: 1, TotalOutputTokens: 1000, DurationS: 10, MeanTPOTMs: f64(10)},
		Extra:   map[string]json.RawMessage{cell.ExtraCAP: raw}}
	if err := cell.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	res, err := Write(Options{ResultsDir: results, OutDir: out, Tables: loadTables(t)})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(res.Index)
	md, _ := os.ReadFile(res.Markdown)
	for name, b := range map[string]string{"index.html": string(page), "summary.md": string(md)} {
		if !strings.Contains(b, "impossible CAP values") || !strings.Contains(b, "decode.s_mbu") || !strings.Contains(b, cause) {
			t.Errorf("%s does not render the flagged value with its cause", name)
		}
		if strings.Contains(b, "910.0%") || strings.Contains(b, "910%") {
			t.Errorf("%s shows the impossible value as a result", name)
		}
	}
}
