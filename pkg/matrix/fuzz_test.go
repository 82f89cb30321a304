package matrix

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
)

var fuzzTables = sync.OnceValues(func() (*config.Tables, error) { return config.LoadTables("") })

// FuzzMatrixFile: a matrix YAML, hand-edited, truncated or hostile, expands to cells or is
// an error naming the file, never a panic; every cell it expands to has an id and a bench.
func FuzzMatrixFile(f *testing.F) {
	for _, n := range []string{"matrix.yaml", "matrix-sim.yaml"} {
		if b, err := os.ReadFile(filepath.Join("../../configs", n)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("version: 1\ntasks: {4k-1k: {config: fixed_4k_1k_{model}.yaml}}\ngroups:\n  g: {models: [qwen1_5], hardware: [99999999999999999999xH100, 0xH100, -1xH100], tasks: {4k-1k: [1, 0, -5]}, backends: [sim]}\n"))
	f.Add([]byte("version: 1\ntasks: {t: {config: ../../../../etc/passwd}}\ngroups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {t: [1]}, backends: [sim], tp: 3, timeout: 99999999999h, sim: {time_scale: -1}}\n"))
	f.Add([]byte("version: 1\ntasks: {4k-1k: {config: fixed_4k_1k_{model}.yaml}}\ngroups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {4k-1k: [1]}, backends: [sim], rates: [0.5, 1e6, .nan], request_rate: .inf, burstiness: -1, max_concurrency: 99999999999, slo: \"ttft=,share=2\", find_max_rate: true, max_rate_steps: -3}\n"))
	f.Add([]byte("version: 1\ntasks: {4k-1k: {config: fixed_4k_1k_{model}.yaml}}\ngroups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {4k-1k: [1]}, backends: [sim], rates: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40], slo: \"ttft=1.5s\", find_max_rate: true, max_rate_steps: 2, burstiness: 0.25, max_concurrency: 4}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tb, err := fuzzTables()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "matrix.yaml")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mx, err := Load(p, tb)
		if err != nil {
			return
		}
		for _, c := range mx.Cells {
			if c.ID == "" || !cell.ValidID(c.ID) || c.Bench == nil || c.GPUs <= 0 || c.Batch <= 0 || c.TP <= 0 {
				t.Fatalf("cell %+v: expanded without an id, a bench or a positive size", c)
			}
		}
	})
}
