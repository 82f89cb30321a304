package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
)

// BenchmarkCellOverhead measures what the supervisor itself costs per cell, on the sim
// backend with a known start-up delay (1 s) and a short bench:
//
//   - dead time: wall time of the whole launch-and-bench process − server start-up − bench;
//   - notice: how long after the server says it is ready ("sim: ready unix_ns=…") moecapd logs
//     "server ready";
//   - teardown: SIGTERM → verified gone, for a cooperative server.
//
// The upstream shell loop polls every 5 s, sleeps 5 s after ready and 10 s after kill: at
// least 15 s of dead time per cell.
//
// Run: go test -run '^$' -bench CellOverhead -benchtime 7x ./cmd/moecapd/
func BenchmarkCellOverhead(b *testing.B) {
	const startup = time.Second
	cfg := filepath.Join(b.TempDir(), "tiny.yaml")
	os.WriteFile(cfg, []byte("dataset_names: [gsm8k]\nmodel_id: "+qwen+"\ntarget_input_tokens: 64\ntarget_output_tokens: 32\nnum_samples: 8\n"), 0o644)
	readyRe := regexp.MustCompile(`sim: ready unix_ns=(\d+)`)
	var dead, notice, teardown []float64
	for i := 0; b.Loop(); i++ {
		results := filepath.Join(b.TempDir(), strconv.Itoa(i))
		t0 := time.Now()
		c := exec.Command(bin, "launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "4",
			"--port", "0", "--results", results, "--log-format", "json", "--",
			"--sim-startup", startup.String(), "--sim-tpot", "2ms", "--sim-ttft", "5ms")
		var stderr bytes.Buffer
		c.Stderr = &stderr
		if err := c.Run(); err != nil {
			b.Fatalf("launch-and-bench: %v\n%s", err, stderr.String())
		}
		wall := time.Since(t0)
		ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
		m, err := cell.ReadManifest(filepath.Dir(ms[0]))
		if err != nil {
			b.Fatal(err)
		}
		log, _ := os.ReadFile(filepath.Join(filepath.Dir(ms[0]), "server.log"))
		mm := readyRe.FindSubmatch(log)
		if mm == nil {
			b.Fatalf("no ready line in server.log")
		}
		serverReady, _ := strconv.ParseInt(string(mm[1]), 10, 64)
		var noticed time.Time
		sc := bufio.NewScanner(&stderr)
		for sc.Scan() {
			var l struct {
				TS  string `json:"ts"`
				Msg string `json:"msg"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "server ready" {
				noticed, _ = time.Parse("2006-01-02T15:04:05.000Z0700", l.TS)
			}
		}
		if noticed.IsZero() {
			b.Fatal("no \"server ready\" log line")
		}
		dead = append(dead, (wall-startup).Seconds()-m.Timings.Bench)
		notice = append(notice, noticed.Sub(time.Unix(0, serverReady)).Seconds())
		teardown = append(teardown, m.Timings.Teardown)
	}
	med := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(med(dead), "dead-s/cell")
	b.ReportMetric(med(notice), "notice-s")
	b.ReportMetric(med(teardown), "teardown-s")
	var t strings.Builder
	fmt.Fprintf(&t, "\n| per cell (median of %d) | moecapd | target | upstream shell loop |\n|---|---|---|---|\n", len(dead))
	fmt.Fprintf(&t, "| dead time (wall − start-up − bench) | %.3f s | ≤ 1 s | ≥ 15 s |\n", med(dead))
	fmt.Fprintf(&t, "| ready → noticed | %.3f s | ≤ 0.3 s | up to 5 s + 5 s sleep |\n", med(notice))
	fmt.Fprintf(&t, "| teardown (cooperative server) | %.3f s | ≤ 1 s | 10 s sleep |\n", med(teardown))
	b.Log(t.String())
}
