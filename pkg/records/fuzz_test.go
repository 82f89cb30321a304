package records

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode: a pass-record file, whatever it holds (a server's dump, truncated or hostile),
// decodes to passes or an error, never a panic.
func FuzzDecode(f *testing.F) {
	matches, _ := filepath.Glob("../../testdata/profile/*/*/*/detailed_results_*.jsonl")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"forward_mode":"decode","latency":-1,"batch_size":-3}` + "\n" + `[{"latency":1e308},{}]`))
	f.Add([]byte(`{"records":[{"forward_mode":"extend","seq_lens_sum":null}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, _, _ := decode(data, true)
		for i := range ps {
			_ = ps[i].Mode.DecodeStep()
			_ = Val(ps[i].DecodeBatch())
		}
	})
}
