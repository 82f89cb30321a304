package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzBenchConfig: a benchmark YAML, hand-edited, truncated or hostile (aliases, duplicate
// keys, deep nesting, numbers past int), loads to a validated config or an error naming the
// file, never a panic.
func FuzzBenchConfig(f *testing.F) {
	matches, _ := filepath.Glob("../../configs/fixed_*.yaml")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b]\n"))
	f.Add([]byte("model_id: m\nmodel_id: n\nnum_samples: 99999999999999999999999\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "bench.yaml")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := LoadBench(p)
		if err == nil && c == nil {
			t.Fatal("no config and no error")
		}
	})
}
