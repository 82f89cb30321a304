package report

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// TestAnnotateRoundTrip: the pipeline (cell.Manifest.AnnotateCAP) stores extra "cap", and the report then uses
// the stored numbers instead of deriving its own.
func TestAnnotateRoundTrip(t *testing.T) {
	tables := loadTables(t)
	results := t.TempDir()
	id := "qwen1_5.1xH100.4k-1k.bs1.sglang"
	dir := filepath.Join(results, id)
	rec := filepath.Join(dir, "records", "Qwen", "Qwen1.5-MoE-A2.7B-Chat")
	if err := os.MkdirAll(rec, 0o755); err != nil {
		t.Fatal(err)
	}
	// One decode pass: batch 1, 4000 positions of context, 4 experts, 10 ms.
	//   bytes = 2,377,711,616 params × 2 (attention, 4 experts + shared + router, LM head;
	//           passcost) + 4000·196,608 (KV) = 5,541,855,232; / 0.010 s / 3.35e12 B/s
	line := `{"batch_size":1,"latency":0.010,"seq_lens_sum":4000,"forward_mode":"decode","expert_activation":4,"gpu_num":1}` + "\n"
	if err := os.WriteFile(filepath.Join(rec, "expert_distribution_record.jsonl"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Status: cell.StatusOK, StartedAt: time.Date(2026, 8, 14, 1, 0, 0, 0, time.UTC),
		Cell: cell.Identity{ID: id, Model: "qwen1_5", ModelID: "Qwen/Qwen1.5-MoE-A2.7B-Chat", Hardware: "1xH100", GPUCount: 1,
			Task: "4k-1k", InputTokens: 4000, OutputTokens: 1000, BatchSize: 1, Backend: "sglang", TP: 1},
		Metrics: &profile.Metrics{Source: "native", LatencyKind: "client", Completed: 10, TotalOutputTokens: 10000,
			DurationS: 100, OutputThroughput: 100, MeanTTFTMs: f64(40), MeanTPOTMs: f64(10)}}
	if err := m.AnnotateCAP(tables, dir, nil); err != nil {
		t.Fatal(err)
	}
	d, ok := m.CAP()
	if !ok {
		t.Fatal("no CAP block stored")
	}
	want := 5541855232.0 / 0.010 / 3.35e12
	if d.Source != "records" || d.Decode == nil || d.Decode.SMBU == nil || *d.Decode.SMBU < want*(1-1e-9) || *d.Decode.SMBU > want*(1+1e-9) {
		t.Fatalf("stored cap %+v, want decode S-MBU %.6f from records", d, want)
	}
	if err := cell.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	rows, _, err := Load(results, tables)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].CapNote != "from manifest" || *rows[0].Cap.Decode.SMBU != *d.Decode.SMBU {
		t.Fatalf("report row %+v, want the stored CAP numbers", rows[0])
	}

	// A model nobody can describe runs, with its CAP numbers absent and the reason.
	m.Cell.Model, m.Cell.ModelID = "nope", "org/nope"
	if d, err := cell.DeriveCAP(m, tables, "", nil); err != nil || d.Absent == "" || d.Decode != nil {
		t.Errorf("unknown model: %+v, %v; want CAP numbers absent with the reason", d, err)
	}
}
