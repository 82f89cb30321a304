package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
)

// BenchmarkMatrixSim16 measures what the matrix adds around the cells: a 16-cell sim matrix
// (16 independent chains, so packing is not held back by batch order; about 1 s of bench
// each, so fixed costs such as the 100 ms readiness probe period do not dominate) run one cell at a
// time, then with --pack over 4 slots. It prints a table:
//
//	go test -run '^$' -bench MatrixSim16 -benchtime 1x ./cmd/moecapd/
//
// Overhead is wall time minus Σ(server start-up + bench) of the cells' manifests: process
// spawn, preflight, teardown, manifests and scheduling. Targets: ≤ 1 s per cell, and the
// packed run ≤ 0.3× the exclusive one.
func BenchmarkMatrixSim16(b *testing.B) {
	dir := b.TempDir()
	for _, m := range []struct{ key, id string }{{"qwen1_5", qwen}, {"dsv2_lite", "deepseek-ai/DeepSeek-V2-Lite-Chat"}} {
		for _, in := range []int{32, 64} {
			body := fmt.Sprintf("dataset_names: [gsm8k]\nmetrics: []\nmodel_id: %s\nfixed_length_mode: true\ntarget_input_tokens: %d\ntarget_output_tokens: 8\nnum_samples: 4\n", m.id, in)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("t%d_%s.yaml", in, m.key)), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	mx := filepath.Join(dir, "bench.yaml")
	os.WriteFile(mx, []byte(`version: 1
tasks:
  32-8: {config: "t32_{model}.yaml"}
  64-8: {config: "t64_{model}.yaml"}
defaults:
  backends: [sim]
  sim: {tpot: 60ms, ttft: 5ms}
groups:
  all:
    models: [qwen1_5, dsv2_lite]
    hardware: [1xH100, 1xH200, 1xA100, 2xH100]
    tasks: {32-8: [2], 64-8: [2]}
`), 0o644)
	run := func(name string, extra ...string) (wall, inner time.Duration, cells, stalls int) {
		results := filepath.Join(dir, name)
		args := append([]string{"matrix", "run", "--matrix", mx, "--results", results, "--lock-dir", filepath.Join(dir, "locks"),
			"--progress", "log", "--log-level", "warn", "--grace", "2s"}, extra...)
		t0 := time.Now()
		r := moecapd(&testing.T{}, nil, args...)
		wall = time.Since(t0)
		if r.code != 0 {
			b.Fatalf("%s: exit %d\n%s\n%s", name, r.code, r.stdout, r.stderr)
		}
		ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
		for _, f := range ms {
			m, err := cell.ReadManifest(filepath.Dir(f))
			if err != nil || m.Status != cell.StatusOK {
				b.Fatalf("%s: %v %+v", f, err, m)
			}
			inner += time.Duration((m.Timings.LaunchToReady + m.Timings.Bench) * float64(time.Second))
			// Teardown belongs to the overhead; a slow one is counted so a noisy
			// number can be told from a scheduler cost.
			if m.Timings.Teardown > 1 {
				stalls++
			}
		}
		return wall, inner, len(ms), stalls
	}
	for i := 0; i < b.N; i++ {
		ex, exIn, n, exStall := run(fmt.Sprintf("exclusive%d", i))
		pk, pkIn, _, pkStall := run(fmt.Sprintf("pack%d", i), "--pack", "--slots", "4")
		var tb strings.Builder
		fmt.Fprintf(&tb, "\n%-22s %6s %10s %16s %18s %12s %16s\n", "run", "cells", "wall", "Σ(start+bench)", "overhead per cell", "vs exclusive", "teardowns > 1 s")
		fmt.Fprintf(&tb, "%-22s %6d %9.2fs %15.2fs %17.3fs %12s %16d\n", "exclusive (1 slot)", n, ex.Seconds(), exIn.Seconds(), (ex-exIn).Seconds()/float64(n), "1.00x", exStall)
		fmt.Fprintf(&tb, "%-22s %6d %9.2fs %15.2fs %17s %11.2fx %16d\n", "--pack --slots 4", n, pk.Seconds(), pkIn.Seconds(), "-", pk.Seconds()/ex.Seconds(), pkStall)
		fmt.Print(tb.String())
		b.ReportMetric((ex-exIn).Seconds()/float64(n), "overhead-s/cell")
		b.ReportMetric(pk.Seconds()/ex.Seconds(), "pack/exclusive")
	}
}
