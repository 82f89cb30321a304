package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
)

// writeSynthetic makes n cells with metrics and full telemetry (every tenth also with pass
// records, every twentieth failed) spread over the guide's matrix and more batch sizes.
func writeSynthetic(tb testing.TB, dir string, n int) {
	models := []string{"qwen1_5", "dsv2_lite", "mixtral_8x7b", "mixtral_8x22b", "deepseek_r1"}
	tasks := []struct {
		name    string
		in, out int
	}{{"4k-1k", 4000, 1000}, {"13k-1k", 13000, 1000}}
	hws := []string{"1xH100", "8xH100", "1xH200", "8xH200", "1xA100", "8xA100"}
	backends := []string{"sglang", "vllm"}
	batches := []int{1, 2, 4, 8, 16, 32, 64, 128, 256}
	i := 0
	for _, m := range models {
		for _, t := range tasks {
			for _, hw := range hws {
				for _, be := range backends {
					for _, bs := range batches {
						if i == n {
							return
						}
						gpus, _ := cell.ParseHardware(hw)
						id := fmt.Sprintf("%s.%s.%s.bs%d.%s", m, hw, t.name, bs, be)
						tpot := 8 + float64(bs)*0.1
						tput := float64(bs) * 1000 / tpot
						energy := 300.0 * float64(gpus) * 100000 / tput
						man := map[string]any{
							"schema_version": 1,
							"cell": map[string]any{"id": id, "model": m, "hardware": hw, "gpu_count": gpus, "task": t.name,
								"input_tokens": t.in, "output_tokens": t.out, "batch_size": bs, "backend": be, "tp": gpus},
							"status": "ok", "started_at": "2026-08-14T01:00:00Z",
							"metrics": map[string]any{"source": "native", "latency_kind": "client", "completed": 100,
								"total_output_tokens": 100000, "duration_s": 100000 / tput, "output_throughput": tput,
								"mean_ttft_ms": 40 * float64(bs), "mean_tpot_ms": tpot, "p99_tpot_ms": tpot * 1.2},
							"telemetry": map[string]any{"available": true, "gpus": gpus, "samples": 1000, "bench_window_s": 100000 / tput,
								"energy_j": energy, "avg_power_w": 300.0 * float64(gpus), "peak_power_w": 350.0 * float64(gpus),
								"mean_util_pct": 90.0, "p95_util_pct": 99.0, "peak_memory_bytes": 7e10, "throttle_reasons_seen": []string{},
								"j_per_output_token": energy / 100000, "cost": map[string]any{"cost_per_million_output_tokens_usd": 1e6 / tput / 3600 * 2.5}},
							"versions": map[string]any{"moecapd": "0.1.0", "backend": "0.5.8", "driver": "570.133.20"},
						}
						if i%20 == 19 {
							man["status"] = "failed"
							man["failure"] = map[string]any{"phase": "bench", "kind": "crash", "message": "server exited"}
							delete(man, "metrics")
						}
						cd := filepath.Join(dir, id)
						if err := os.MkdirAll(filepath.Join(cd, "records"), 0o755); err != nil {
							tb.Fatal(err)
						}
						b, _ := json.Marshal(man)
						if err := os.WriteFile(filepath.Join(cd, "manifest.json"), b, 0o644); err != nil {
							tb.Fatal(err)
						}
						if i%10 == 0 {
							var recs []byte
							for p := range 200 {
								mode, lat := "decode", tpot/1000
								if p%50 == 0 {
									mode, lat = "prefill", 0.05
								}
								r, _ := json.Marshal(map[string]any{"batch_size": bs, "latency": lat, "seq_lens_sum": bs * (t.in + p),
									"forward_mode": mode, "expert_activation": 4.0, "gpu_num": gpus})
								recs = append(append(recs, r...), '\n')
							}
							if err := os.WriteFile(filepath.Join(cd, "records", "expert_distribution_record.jsonl"), recs, 0o644); err != nil {
								tb.Fatal(err)
							}
						}
						i++
					}
				}
			}
		}
	}
	if i < n {
		tb.Fatalf("synthetic matrix has only %d cells, want %d", i, n)
	}
}

// BenchmarkReport1000 reports 1,000 cells with telemetry (the budget: under 10 s).
func BenchmarkReport1000(b *testing.B) {
	results := b.TempDir()
	writeSynthetic(b, results, 1000)
	tables := loadTables(b)
	out := b.TempDir()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res, err := Write(Options{ResultsDir: results, OutDir: out, Tables: tables})
		if err != nil {
			b.Fatal(err)
		}
		if res.Cells != 1000 {
			b.Fatalf("reported %d cells, want 1000", res.Cells)
		}
		b.Logf("1000 cells, %d plots: %.2f s", res.Plots, time.Since(start).Seconds())
	}
}
