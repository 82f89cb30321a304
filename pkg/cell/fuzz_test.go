package cell

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadManifest: a manifest.json, hand-edited, truncated or hostile, reads to a manifest
// or an error, never a panic; what reads back is usable by ExitCode and SupervisorGone.
func FuzzReadManifest(f *testing.F) {
	matches, _ := filepath.Glob("../../testdata/report/results/*/manifest.json")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"status":"running","supervisor":{"pid":-1,"start_ticks":0},"cell":{"batch_size":-1}}`))
	f.Add([]byte(`{"status":"failed","failure":{"phase":"teardown","teardown_problems":["x"]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, ManifestFile), data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadManifest(dir)
		if err != nil {
			return
		}
		_ = m.Outcome()
		_ = m.Err()
		_ = m.SupervisorGone()
		_ = m.Failure.Err()
	})
}
