package records

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadRecordsPrefersTheWindowFile: a cell's records/ holds the wrappers' own dumps (SGLang
// every pass since start-up, vLLM's expert log every pass) next to moecapd's window file;
// only the window file is read, so each pass counts once; its records are read verbatim
// (seq_lens_sum as the wrapper wrote it) with moecapd's context_tokens.
func TestReadRecordsPrefersTheWindowFile(t *testing.T) {
	dir := t.TempDir()
	pass := `{"forward_mode":"decode","batch_size":2,"latency":0.01,"seq_lens_sum":2,"expert_activation":3,"gpu_num":1}`
	windowed := `{"forward_mode":"decode","batch_size":2,"latency":0.01,"seq_lens_sum":2,"context_tokens":150,"expert_activation":3,"gpu_num":1}`
	for p, body := range map[string]string{
		"vllm_batch_records.jsonl": pass + "\n",
		filepath.Join("logs", "expert_distribution", "m_20261201_120000", "expert_distribution_record.jsonl"): pass + "\n" + pass + "\n",
		WindowFile: windowed + "\n",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Passes) != 1 || recs.Files[0] != WindowFile || *recs.Passes[0].SeqLensSum != 2 || *recs.Passes[0].ContextTokens != 150 {
		t.Errorf("passes %+v from %v, want the one window pass, seq_lens_sum 2 verbatim, context 150", recs.Passes, recs.Files)
	}
	os.Remove(filepath.Join(dir, WindowFile))
	if recs, _ := ReadDir(dir); len(recs.Passes) == 0 {
		t.Errorf("without the window file no passes were read (the walk over the wrappers' files)")
	}
}
