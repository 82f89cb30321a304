package cell

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
)

func TestExitCodes(t *testing.T) {
	cases := []struct {
		m    Manifest
		want int
	}{
		{Manifest{Status: StatusOK}, 0},
		{Manifest{Status: StatusInfeasible, Failure: &Failure{Phase: PhaseReady, Kind: exitcode.FailOOM}}, 4},
		{Manifest{Status: StatusInterrupted, Failure: &Failure{Phase: PhaseBench, Kind: exitcode.FailInterrupted}}, 130},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhasePreflight, Kind: exitcode.FailEnvMissing}}, 2},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhasePreflight, Kind: exitcode.FailPortInUse}}, 3},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseReady, Kind: exitcode.FailHealthTimeout}}, 3},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseBench, Kind: exitcode.FailBadResult}}, 5},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseTeardown, Kind: exitcode.FailOrphans}}, 6},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseRecord, Kind: exitcode.FailMissingFile}}, 5},
		{Manifest{Status: StatusFailed, Failure: &Failure{Phase: PhaseRecord, Kind: exitcode.FailManifestWrite}}, 2},
		{Manifest{Status: StatusFailed}, 1},
	}
	for _, c := range cases {
		if got := int(c.m.Outcome()); got != c.want {
			t.Errorf("Outcome(%s %+v) = %d, want %d", c.m.Status, c.m.Failure, got, c.want)
		}
	}
}

func TestManifestRoundTripAndID(t *testing.T) {
	if got := ID("qwen1_5", "1xH100", "4k-1k", 32, "sglang"); got != "qwen1_5.1xH100.4k-1k.bs32.sglang" {
		t.Errorf("ID = %q", got)
	}
	dir := t.TempDir()
	m := &Manifest{SchemaVersion: SchemaVersion, Cell: Identity{ID: "x", GPUIndices: []int{0, 1}}, Status: StatusOK}
	if err := WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	got, err := ReadManifest(dir)
	if err != nil || got.Cell.ID != "x" || len(got.Cell.GPUIndices) != 2 || got.Status != StatusOK {
		t.Fatalf("ReadManifest = %+v, %v", got, err)
	}
	// Nothing but the manifest: no temp files left behind by the atomic write.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != ManifestFile {
		t.Errorf("dir holds %v, want only %s", ents, ManifestFile)
	}
	if _, err := ReadManifest(filepath.Join(dir, "missing")); err == nil {
		t.Error("reading a missing manifest succeeded")
	}
}

// The files a manifest names count as present in either form (NAME, or NAME.zst once
// compressed at rest); the missing ones are listed in order.
func TestMissingFiles(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"server.log", "client/a.jsonl.zst"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &Manifest{Files: []string{"benchmark.yaml", "server.log", "client/a.jsonl", "client.log"}}
	if got := m.MissingFiles(dir); len(got) != 2 || got[0] != "benchmark.yaml" || got[1] != "client.log" {
		t.Errorf("MissingFiles = %q, want [benchmark.yaml client.log]", got)
	}
	if got := (&Manifest{}).MissingFiles(dir); len(got) != 0 {
		t.Errorf("a manifest naming no files misses %q", got)
	}
}

// A running manifest is interrupted once its supervisor (a real process, killed -9) is
// gone, not while it lives; a recorded interruption says its own message.
func TestInterruptedWhy(t *testing.T) {
	c := exec.Command("sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sup := launcher.Self()
	sup.PID, sup.StartTicks = c.Process.Pid, startTicks(t, c.Process.Pid)
	m := &Manifest{Status: StatusRunning, Phase: PhaseReady, Supervisor: &sup}
	if why := m.InterruptedWhy(); why != "" {
		t.Errorf("live supervisor: %q", why)
	}
	c.Process.Kill()
	c.Wait()
	if why := m.InterruptedWhy(); !strings.Contains(why, fmt.Sprintf("interrupted during ready: its supervisor (PID %d) is gone", sup.PID)) {
		t.Errorf("killed supervisor: %q", why)
	}
	self := launcher.Self()
	if why := (&Manifest{Status: StatusRunning, Supervisor: &self}).InterruptedWhy(); why != "" {
		t.Errorf("this process as supervisor: %q", why)
	}
	rec := &Manifest{Status: StatusInterrupted, Failure: &Failure{Phase: PhaseBench, Kind: exitcode.FailInterrupted, Message: "interrupted during bench by SIGTERM\nmore"}}
	if why := rec.InterruptedWhy(); why != "interrupted during bench by SIGTERM" {
		t.Errorf("recorded: %q", why)
	}
	if why := (&Manifest{Status: StatusOK}).InterruptedWhy(); why != "" {
		t.Errorf("ok: %q", why)
	}
}

// startTicks is field 22 of /proc/PID/stat: the process's start time since boot.
func startTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	n, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
