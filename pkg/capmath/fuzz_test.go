package capmath

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/moecapd/moecapd/pkg/records"
)

// FuzzDeriveCAP: pass records a server wrote (truncated, hand-edited, hostile: latencies of
// 1e-308 or 1e308, negative batches, absurd contexts) derive CAP numbers or an error, never a
// panic, and what they derive is storable: a NaN or Inf in the CAP block would fail its
// JSON, and the cell's CAP numbers would be lost without a word.
func FuzzDeriveCAP(f *testing.F) {
	f.Add([]byte(toyRecords))
	f.Add(bytes.ReplaceAll([]byte(toyRecords), []byte(`"latency":0.01`), []byte(`"latency":1e-308`)))
	f.Add(bytes.ReplaceAll([]byte(toyRecords), []byte(`"batch_size":1`), []byte(`"batch_size":1e308`)))
	f.Add([]byte(`{"forward_mode":"decode","latency":NaN,"batch_size":-3,"seq_lens_sum":1e308,"expert_activation":Infinity}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		sg := filepath.Join(dir, "org", "toy")
		if err := os.MkdirAll(sg, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sg, "expert_distribution_record.jsonl"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		recs, err := records.ReadDir(dir)
		if err != nil {
			return
		}
		tpot := 210.0
		d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, NumSamples: 2,
			Ran: true, MeanTPOTMs: &tpot, TotalOutputTokens: 4, WindowS: 1, Window: WindowBenchPhase}, recs)
		if err != nil {
			return
		}
		if _, err := json.Marshal(d); err != nil {
			t.Fatalf("CAP numbers no manifest can hold: %v", err)
		}
	})
}
