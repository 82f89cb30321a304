package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
)

// A cell whose supervisor was killed (-9) mid-bench still says running on disk; the daemon
// shows it interrupted at once, through the manifest's supervisor identity (the check matrix
// status makes): the job that reruns it carries "interrupted during bench: its supervisor
// (PID N) is gone" while it waits and runs, and the rerun ends the orphaned server first.
func TestDaemonShowsDeadSupervisorInterrupted(t *testing.T) {
	e := newDaemonEnv(t)
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	c, out := startMoecapd(t, simArgs(e.results, cfg, 2, "--", "--sim-tpot", "200ms")...)
	dir, server := waitBench(t, e.results)
	t.Cleanup(func() { syscall.Kill(server, syscall.SIGKILL) })
	c.Process.Signal(syscall.SIGKILL)
	c.Wait()
	m, err := cell.ReadManifest(dir)
	if err != nil || m.Status != cell.StatusRunning || !m.SupervisorGone() {
		t.Fatalf("after kill -9: manifest %+v %v, want running with its supervisor gone\n%s", m, err, out)
	}
	want := "interrupted during bench: its supervisor (PID " + strconv.Itoa(c.Process.Pid) + ") is gone"

	e.start()
	r := e.cli("submit", "--backend", "sim", "--config", cfg, "--batch-size", "2", "--", "--sim-tpot", "200ms")
	if r.code != 0 {
		t.Fatalf("submit: %d %s", r.code, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	_, cs, err := e.client().Job(context.Background(), id)
	if err != nil || len(cs) != 1 || cs[0].ID != filepath.Base(dir) {
		t.Fatalf("job %s: %+v %v, want the one cell %s", id, cs, err, filepath.Base(dir))
	}
	if cs[0].Final() || !strings.Contains(cs[0].Reason, want) {
		t.Errorf("the daemon shows %s %q, want it queued or running with %q", cs[0].State, cs[0].Reason, want)
	}
	_, cs = e.waitJob(id, 2*time.Minute)
	if cs[0].State != daemon.CellOK {
		t.Fatalf("rerun: %s (%s)", cs[0].State, cs[0].Reason)
	}
	if pidAlive(server) {
		t.Errorf("the killed run's server (PID %d) outlived the rerun", server)
	}
	// The killed attempt is kept aside, marked interrupted by the rerun's sweep.
	atts, _ := filepath.Glob(filepath.Join(e.results, cell.AttemptsDir, filepath.Base(dir)+".*"))
	if len(atts) != 1 {
		t.Fatalf("attempts %v, want the killed one", atts)
	}
	if am, err := cell.ReadManifest(atts[0]); err != nil || am.Status != cell.StatusInterrupted {
		t.Errorf("the killed attempt: %+v %v, want interrupted", am, err)
	}
	if _, err := os.Stat(filepath.Join(dir, cell.ManifestFile)); err != nil {
		t.Error(err)
	}
}
