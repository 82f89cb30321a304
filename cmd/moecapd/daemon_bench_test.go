package main

// Benchmarks of moecapd serve (go test -bench Daemon -run '^$' ./cmd/moecapd/): API
// latency under 100 concurrent clients, and the daemon's memory with 10,000 queued cells.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

func benchEnv(b *testing.B) *daemonEnv {
	runDir, err := os.MkdirTemp("", "mcdb-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(runDir) })
	return &daemonEnv{runDir: runDir, results: b.TempDir(), sock: filepath.Join(runDir, "moecapd.sock"),
		env: []string{"MOECAPD_RUN_DIR=" + runDir, "MOECAPD_SERVER="}}
}

// BenchmarkDaemonAPI: GET /v1/jobs from 100 concurrent clients on the unix socket; reports
// the p50 and p99 latency.
func BenchmarkDaemonAPI(b *testing.B) {
	e := benchEnv(b)
	stop, _ := startBenchDaemon(b, e)
	defer stop()
	cl, _ := daemon.NewClient("unix:"+e.sock, "")
	const clients = 100
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	var wg sync.WaitGroup
	per := max(b.N/clients, 1)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, per)
			for range per {
				t0 := time.Now()
				if _, err := cl.Jobs(context.Background()); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
	}
}

// BenchmarkDaemonQueuedMemory: the daemon's resident memory with 10,000 queued cells (one
// slot, one long cell running, the rest waiting).
func BenchmarkDaemonQueuedMemory(b *testing.B) {
	e := benchEnv(b)
	stop, pid := startBenchDaemon(b, e)
	defer stop()
	dir := tinyTasks(b)
	var bs []string
	for i := 1; i <= 1000; i++ {
		bs = append(bs, strconv.Itoa(i))
	}
	mx := filepath.Join(dir, "big.yaml")
	os.WriteFile(mx, []byte(fmt.Sprintf(`version: 1
tasks:
  32-8: {config: "tiny_{model}.yaml"}
defaults:
  backends: [sim]
  sim: {tpot: 1s, ttft: 1s}
groups:
  g:
    models: [qwen1_5, dsv2_lite]
    hardware: [1xH100, 1xA100, 1xH200, 2xH100, 2xA100]
    tasks: {32-8: [%s]}
`, strings.Join(bs, ","))), 0o644)
	cl, _ := daemon.NewClient("unix:"+e.sock, "")
	for b.Loop() {
		t0 := time.Now()
		j, err := cl.Submit(context.Background(), daemon.Spec{Matrix: mx})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(j.Cells)), "cells")
		b.ReportMetric(time.Since(t0).Seconds(), "submit_s")
	}
	b.ReportMetric(rssMiB(pid), "rss_MiB")
}

func startBenchDaemon(b *testing.B, e *daemonEnv) (func(), int) {
	c := exec.Command(bin, "serve", "--results", e.results, "--slots", "1", "--log-level", "warn", "--log-format", "json")
	c.Env = append(os.Environ(), e.env...)
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		c.Process.Kill()
		c.Wait()
		for _, p := range serverPIDsOf(e.results) {
			if pidAlive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	}
	cl, _ := daemon.NewClient("unix:"+e.sock, "")
	for i := 0; ; i++ {
		if cl.Call(context.Background(), "GET", "/healthz", nil, nil) == nil {
			return stop, c.Process.Pid
		}
		if i > 1000 {
			stop()
			b.Fatal("daemon never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}

func serverPIDsOf(results string) []int {
	var pids []int
	ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
	for _, f := range ms {
		if m, err := cell.ReadManifest(filepath.Dir(f)); err == nil && m.Server.PID > 0 {
			pids = append(pids, m.Server.PID)
		}
	}
	return pids
}
