package main

// Benchmarks of the daemon's own costs (go test -run '^$' -bench 'DaemonOverhead|DaemonRestart'
// -benchtime 1x ./cmd/moecapd/): what running cells through moecapd serve adds per cell over
// matrix run on the same sim cells, and how long a restart after kill -9 takes until the
// ledger is reconciled and the queue runs again.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

// overheadMatrix writes a sim matrix of n tiny cells (n independent chains of one cell,
// about 0.5 s of bench each) and returns its path.
func overheadMatrix(b *testing.B, dir string, tpot string) string {
	for _, m := range []struct{ key, id string }{{"qwen1_5", qwen}, {"dsv2_lite", "deepseek-ai/DeepSeek-V2-Lite-Chat"}} {
		body := fmt.Sprintf("dataset_names: [gsm8k]\nmetrics: []\nmodel_id: %s\nfixed_length_mode: true\ntarget_input_tokens: 32\ntarget_output_tokens: 8\nnum_samples: 4\n", m.id)
		if err := os.WriteFile(filepath.Join(dir, "t_"+m.key+".yaml"), []byte(body), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	mx := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(mx, []byte(`version: 1
tasks:
  32-8: {config: "t_{model}.yaml"}
defaults:
  backends: [sim]
  sim: {tpot: `+tpot+`, ttft: 5ms}
groups:
  all:
    models: [qwen1_5, dsv2_lite]
    hardware: [1xH100, 1xH200, 1xA100, 2xH100]
    tasks: {32-8: [2]}
`), 0o644); err != nil {
		b.Fatal(err)
	}
	return mx
}

// innerOf sums the cells' own time (server start-up + bench) from their manifests.
func innerOf(b *testing.B, results string) (time.Duration, int) {
	var inner time.Duration
	ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
	for _, f := range ms {
		m, err := cell.ReadManifest(filepath.Dir(f))
		if err != nil || m.Status != cell.StatusOK {
			b.Fatalf("%s: %v %+v", f, err, m)
		}
		inner += time.Duration((m.Timings.LaunchToReady + m.Timings.Bench) * float64(time.Second))
	}
	return inner, len(ms)
}

// BenchmarkDaemonOverhead: the same 8 sim cells, one at a time, through `matrix run` (wall
// from the command's start to its exit) and through a running daemon (wall from `submit`
// to the job done, seen through the API polled every 10 ms). Each run's overhead is its
// wall minus the cells' own start-up + bench (from the manifests), so a slower or faster
// cell does not count as the daemon's; the reported daemon_extra_s/cell is the difference
// of the two overheads per cell (target ≤ +0.05 s). raw_diff_s/cell is the plain wall
// difference per cell.
func BenchmarkDaemonOverhead(b *testing.B) {
	dir := b.TempDir()
	mx := overheadMatrix(b, dir, "60ms")
	var extra, raw float64
	var cells int
	for i := 0; i < b.N; i++ {
		mres := filepath.Join(dir, fmt.Sprintf("matrix%d", i))
		t0 := time.Now()
		r := moecapd(&testing.T{}, nil, "matrix", "run", "--matrix", mx, "--results", mres, "--lock-dir", filepath.Join(dir, "locks"),
			"--progress", "log", "--log-level", "warn", "--grace", "2s")
		mWall := time.Since(t0)
		if r.code != 0 {
			b.Fatalf("matrix run: exit %d %s", r.code, r.stderr)
		}
		mIn, n := innerOf(b, mres)

		e := benchEnv(b)
		e.results = filepath.Join(dir, fmt.Sprintf("daemon%d", i))
		stop, _ := startBenchDaemon(b, e)
		cl, _ := daemon.NewClient("unix:"+e.sock, "")
		t0 = time.Now()
		j, err := cl.Submit(context.Background(), daemon.Spec{Matrix: mx})
		if err != nil {
			stop()
			b.Fatal(err)
		}
		for {
			jv, _, err := cl.Job(context.Background(), j.ID)
			if err == nil && jv.State == daemon.JobDone {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		dWall := time.Since(t0)
		stop()
		dIn, dn := innerOf(b, e.results)
		if dn != n {
			b.Fatalf("daemon ran %d cells, matrix run %d", dn, n)
		}
		cells = n
		extra += ((dWall - dIn) - (mWall - mIn)).Seconds() / float64(n)
		raw += (dWall - mWall).Seconds() / float64(n)
		b.Logf("run %d: %d cells; matrix run wall %.2fs (cells %.2fs), daemon wall %.2fs (cells %.2fs)", i, n, mWall.Seconds(), mIn.Seconds(), dWall.Seconds(), dIn.Seconds())
	}
	b.ReportMetric(float64(cells), "cells")
	b.ReportMetric(extra/float64(b.N), "daemon_extra_s/cell")
	b.ReportMetric(raw/float64(b.N), "raw_diff_s/cell")
}

// BenchmarkDaemonRestart: a daemon with a queue (8 sim cells, one slot) is killed with
// kill -9 while a cell's server is in its bench; the time from exec of the next daemon to
// (reconciled_s) its own "daemon reconciled" log line's took (the ledger checked, the
// orphaned server ended, the store settled), (api_s) its API answering, and (running_s) a
// cell running again (the queue moving).
func BenchmarkDaemonRestart(b *testing.B) {
	dir := b.TempDir()
	mx := overheadMatrix(b, dir, "300ms")
	e := benchEnv(b)
	logf := filepath.Join(dir, "serve.log")
	start := func() *exec.Cmd {
		f, err := os.OpenFile(logf, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		c := exec.Command(bin, "serve", "--results", e.results, "--slots", "1", "--log-format", "json", "--grace", "5s")
		c.Env = append(os.Environ(), e.env...)
		c.Stdout, c.Stderr = f, f
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		return c
	}
	cl, _ := daemon.NewClient("unix:"+e.sock, "")
	waitUntil := func(what string, ok func() bool) {
		for i := 0; !ok(); i++ {
			if i > 6000 {
				b.Fatalf("%s: not within 60 s: %s", what, readFile(logf))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	running := func() bool {
		var out struct{ Cells []daemon.Cell }
		return cl.Call(context.Background(), "GET", "/v1/cells?state=running", nil, &out) == nil && len(out.Cells) > 0
	}
	inBench := func() bool {
		var out struct{ Cells []daemon.Cell }
		if cl.Call(context.Background(), "GET", "/v1/cells?state=running", nil, &out) != nil {
			return false
		}
		for _, c := range out.Cells {
			if c.Phase == string(cell.PhaseBench) {
				return true
			}
		}
		return false
	}
	c := start()
	defer func() {
		c.Process.Kill()
		c.Wait()
		for _, p := range serverPIDsOf(e.results) {
			if pidAlive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	}()
	waitUntil("first start", func() bool { return cl.Call(context.Background(), "GET", "/healthz", nil, nil) == nil })
	if _, err := cl.Submit(context.Background(), daemon.Spec{Matrix: mx}); err != nil {
		b.Fatal(err)
	}
	var recS, apiS, runS float64
	for i := 0; i < b.N; i++ {
		waitUntil("a cell in its bench", inBench)
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
		t0 := time.Now()
		c = start()
		waitUntil("API after restart", func() bool { return cl.Call(context.Background(), "GET", "/healthz", nil, nil) == nil })
		apiS += time.Since(t0).Seconds()
		waitUntil("a cell running after restart", running)
		runS += time.Since(t0).Seconds()
		took, ok := reconciledTook(readFile(logf))
		if !ok {
			b.Fatalf("no \"daemon reconciled\" line: %s", readFile(logf))
		}
		recS += took
	}
	b.ReportMetric(recS/float64(b.N), "reconciled_s")
	b.ReportMetric(apiS/float64(b.N), "api_s")
	b.ReportMetric(runS/float64(b.N), "running_s")
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// reconciledTook reads the took of the daemon's "daemon reconciled" line (seconds).
func reconciledTook(log string) (float64, bool) {
	for _, l := range bytes.Split([]byte(log), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) != nil || !strings.HasPrefix(fmt.Sprint(m["msg"]), "daemon reconciled") {
			continue
		}
		if v, ok := m["took"].(float64); ok {
			return v, true
		}
	}
	return 0, false
}
