package report

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gonum.org/v1/plot/plotter"

	"github.com/moecapd/moecapd/pkg/config"
)

// FuzzTelemetryCSV: telemetry.csv, whatever it holds, reads without a panic and keeps no
// non-finite sample.
func FuzzTelemetryCSV(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join(fixtures, "qwen1_5.1xH100.4k-1k.bs1.sglang", "telemetry.csv")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("timestamp,gpu_index,power_mw\n2026-08-14T01:00:25Z,0,NaN\n2026-08-14T01:00:26Z,-1,+Inf\n,,\n"))
	// A row shorter than a header whose timestamp column comes last (indexed past the row).
	f.Add([]byte("gpu_index,power_mw,timestamp\n1\n0,1e308,2026-08-14T01:00:25Z\n0,5\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "telemetry.csv")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		var d CellData
		readTelemetryCSV(p, &d)
		for _, m := range []map[int][]float64{ys(d.Power), ys(d.Util), ys(d.MemGiB)} {
			for _, v := range m {
				if !finite(v...) {
					t.Fatalf("non-finite sample kept: %v", v)
				}
			}
		}
	})
}

// FuzzBenchFile: moecapd's per-request bench file, hand-edited or corrupt, reads without
// a panic.
func FuzzBenchFile(f *testing.F) {
	f.Add([]byte(`{"requests":[{"success":true,"output_tokens":4,"start_s":-1,"ttft_ms":3,"e2el_ms":10,"itl_ms":[1,2]}]}`))
	f.Add([]byte(`{"requests":[{"success":true,"output_tokens":-4,"start_s":1e308,"ttft_ms":1e308,"e2el_ms":1e308}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "bench.json")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		var d CellData
		readBench(p, &d)
	})
}

// ys is the y values of per-GPU series.
func ys(m map[int]plotter.XYs) map[int][]float64 {
	out := map[int][]float64{}
	for g, xy := range m {
		for _, p := range xy {
			out[g] = append(out[g], p.X, p.Y)
		}
	}
	return out
}

// FuzzCellManifest: a results root whose cell holds a hand-edited, truncated or hostile
// manifest.json renders a report (the cell listed as a problem or as a row), never a panic:
// every reader of the manifest's parts (metrics, truth, CAP numbers, flags, extra) runs.
func FuzzCellManifest(f *testing.F) {
	const id = "qwen1_5.1xH100.4k-1k.bs1.sglang"
	matches, _ := filepath.Glob("../../testdata/report/results/*/manifest.json")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(bytes.ReplaceAll(b, []byte(filepath.Base(filepath.Dir(m))), []byte(id)))
		}
	}
	f.Add([]byte(`{"cell":{"id":"` + id + `","batch_size":1e308},"status":"ok","metrics":{"duration_s":1e308,"mean_tpot_ms":-1},"extra":{"matrix":[1],"slurm":"x","cap":{"a":NaN}}}`))
	tb := sync.OnceValue(func() *config.Tables { t, _ := config.LoadTables(""); return t })
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, id), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, id, "manifest.json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := Write(Options{ResultsDir: root, OutDir: filepath.Join(root, "out"), Tables: tb(), Now: func() time.Time { return time.Unix(0, 0) }})
		if err != nil {
			return
		}
		if _, err := os.Stat(res.Markdown); err != nil {
			t.Fatalf("a report without its summary: %v", err)
		}
	})
}
