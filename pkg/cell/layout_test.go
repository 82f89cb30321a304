package cell

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// The child mode of this test binary: take a cell's lock, say so, and hold it until killed.
const lockChildEnv = "MOECAPD_TEST_LOCK_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(lockChildEnv); spec != "" {
		root, id, _ := strings.Cut(spec, "|")
		lay, err := OpenLayout(root)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		if _, err := lay.Lock(id); err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		fmt.Println("locked")
		time.Sleep(time.Hour)
	}
	os.Exit(launcher.RunTests(m.Run))
}

// lockInChild holds cell id's lock in another process until the test kills it.
func lockInChild(t *testing.T, root, id string) *exec.Cmd {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), lockChildEnv+"="+root+"|"+id)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "locked") {
		t.Fatalf("child: %q", buf[:n])
	}
	return c
}

func TestLockRefusesSecondRunnerAndDiesWithHolder(t *testing.T) {
	root := t.TempDir()
	const id = "qwen1_5.1xH100.4k-1k.bs32.sim"
	lay, err := OpenLayout(root)
	if err != nil {
		t.Fatal(err)
	}
	child := lockInChild(t, root, id)

	_, err = lay.Lock(id)
	var le *LockedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock while another process holds it: %v; want a *LockedError", err)
	}
	host, _ := os.Hostname()
	if le.Holder == nil || le.Holder.PID != child.Process.Pid || le.Holder.Host != host || le.Holder.StartedAt.IsZero() || !strings.Contains(le.Holder.Command, os.Args[0]) {
		t.Errorf("holder %+v; want PID %d on %s with start time and command", le.Holder, child.Process.Pid, host)
	}
	if msg := err.Error(); !strings.Contains(msg, "cell "+id+" is in use by PID "+strconv.Itoa(child.Process.Pid)) || !strings.Contains(msg, "kill "+strconv.Itoa(child.Process.Pid)) {
		t.Errorf("message %q; want the cell, the holder's PID and what to do", msg)
	}
	if lay.Held(id) {
		t.Error("Held is true in a process that does not hold the lock")
	}
	if _, err := lay.Archive(id); err == nil {
		t.Error("Archive without the lock succeeded")
	}

	// kill -9: the kernel drops the flock with its holder; the stale holder record does not
	// stop the next runner.
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	unlock, err := lay.Lock(id)
	if err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	if !lay.Held(id) {
		t.Error("Held is false for the lock just taken")
	}
	// One process, two runners of one cell: refused too.
	if _, err := lay.Lock(id); !errors.Is(err, ErrLocked) {
		t.Errorf("second Lock in the same process: %v; want locked", err)
	}
	unlock()
	unlock() // idempotent
	if lay.Held(id) {
		t.Error("Held after unlock")
	}
	if _, err := os.Stat(holderPath(lay.lockPath(id))); !os.IsNotExist(err) {
		t.Errorf("holder record left after unlock: %v", err)
	}
}

func TestArchiveUnderLockKeepsLockOutside(t *testing.T) {
	lay, _ := OpenLayout(t.TempDir())
	const id = "m.1xH100.32-8.bs1.sim"
	unlock, err := lay.Lock(id)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	d, err := lay.Create(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteManifest(d.Path, &Manifest{Cell: Identity{ID: id}, Status: StatusOK}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.Client(), d.Records()} {
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			t.Errorf("%s: %v", p, err)
		}
	}
	// A rerun: the old attempt moves aside, the lock file stays where it is.
	if _, err := lay.Create(id); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(lay.Root, AttemptsDir, id+".*", ManifestFile))
	if len(old) != 1 {
		t.Fatalf("archived attempts %v; want one", old)
	}
	if _, err := os.Stat(lay.lockPath(id)); err != nil {
		t.Errorf("lock file moved with the directory: %v", err)
	}
	if _, err := os.Stat(d.Manifest()); !os.IsNotExist(err) {
		t.Errorf("fresh directory holds the old manifest: %v", err)
	}
}

func TestCellsKeyedByDirectoryAndID(t *testing.T) {
	lay, _ := OpenLayout(t.TempDir())
	write := func(dir, id string, st Status) {
		p := filepath.Join(lay.Root, dir)
		os.MkdirAll(p, 0o755)
		if err := WriteManifest(p, &Manifest{Cell: Identity{ID: id}, Status: st}); err != nil {
			t.Fatal(err)
		}
	}
	write("a.1xH100.t.bs1.sim", "a.1xH100.t.bs1.sim", StatusOK)
	write("a.1xH100.t.bs1.sim.bak", "a.1xH100.t.bs1.sim", StatusFailed) // a copy
	write("b.1xH100.t.bs1.sim", "a.1xH100.t.bs1.sim", StatusOK)         // a copy under b's name
	write("c.1xH100.t.bs1.sim", "", StatusOK)
	os.MkdirAll(filepath.Join(lay.Root, "report"), 0o755)                                         // not a cell
	write(filepath.Join(AttemptsDir, "a.1xH100.t.bs1.sim.x"), "a.1xH100.t.bs1.sim", StatusFailed) // archived
	os.WriteFile(filepath.Join(lay.Root, "d.1xH100.t.bs1.sim"), nil, 0o644)                       // a file
	os.MkdirAll(filepath.Join(lay.Root, "e.1xH100.t.bs1.sim"), 0o755)
	os.WriteFile(filepath.Join(lay.Root, "e.1xH100.t.bs1.sim", ManifestFile), []byte("{"), 0o644)

	ents, probs, err := lay.Cells()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Dir.ID != "a.1xH100.t.bs1.sim" || ents[0].Manifest.Status != StatusOK {
		t.Errorf("cells %+v; want only a, ok", ents)
	}
	got := map[string]Problem{}
	for _, p := range probs {
		got[p.Name] = p
	}
	if p := got["a.1xH100.t.bs1.sim.bak"]; !p.Mismatch || p.ID != "a.1xH100.t.bs1.sim" {
		t.Errorf("copy .bak: %+v; want a mismatch naming a", p)
	}
	if p := got["b.1xH100.t.bs1.sim"]; !p.Mismatch || !strings.Contains(p.Err, "holds the manifest of cell a.1xH100.t.bs1.sim") {
		t.Errorf("copy under b: %+v; want a mismatch", p)
	}
	if p := got["c.1xH100.t.bs1.sim"]; p.Mismatch || !strings.Contains(p.Err, "no cell.id") {
		t.Errorf("no id: %+v", p)
	}
	if p := got["e.1xH100.t.bs1.sim"]; p.Mismatch || !strings.Contains(p.Err, "manifest.json: ") {
		t.Errorf("torn manifest: %+v", p)
	}
	if len(probs) != 4 {
		t.Errorf("problems %v; want 4", probs)
	}

	empty, _ := OpenLayout(filepath.Join(t.TempDir(), "missing"))
	if e, p, err := empty.Cells(); len(e)+len(p) != 0 || err != nil {
		t.Errorf("missing root: %v %v %v; want empty", e, p, err)
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	if _, err := OpenLayout(file); err == nil || !strings.Contains(err.Error(), "is a file, not a directory") {
		t.Errorf("OpenLayout(file): %v", err)
	}
}

func TestCellIDParts(t *testing.T) {
	for _, c := range []struct {
		s  string
		ok bool
	}{
		{"qwen1_5", true}, {"1xH100", true}, {"2xH100+1xA100", true}, {"4k-1k", true}, {"Tesla-V100-SXM2-16GB", true},
		{"", false}, {"..", false}, {"../x", false}, {"a/b", false}, {`a\b`, false}, {"a.b", false}, {"a b", false},
		{"a\nb", false}, {"a\x00b", false}, {"a\x7fb", false}, {"-x", false}, {"_x", false}, {"é", false},
		{strings.Repeat("a", MaxPartLen), true}, {strings.Repeat("a", MaxPartLen+1), false},
	} {
		if got := ValidPart(c.s); got != c.ok {
			t.Errorf("ValidPart(%q) = %v, want %v", c.s, got, c.ok)
		}
	}
	if _, err := MakeID("../x", "1xH100", "4k-1k", 1, "sim", Load{}); err == nil || !strings.Contains(err.Error(), `model key "../x"`) {
		t.Errorf("MakeID with model ../x: %v", err)
	}
	if id, err := MakeID("qwen1_5", "1xH100", "4k-1k", 32, "sglang", Load{}); err != nil || id != "qwen1_5.1xH100.4k-1k.bs32.sglang" {
		t.Errorf("MakeID = %q, %v", id, err)
	}
	lay, _ := OpenLayout(t.TempDir())
	for _, id := range []string{"../x.y", "a/b.c", "a..b", ".a.b", "x"} {
		if _, err := lay.Cell(id); err == nil {
			t.Errorf("Cell(%q) accepted", id)
		}
		if _, err := lay.Lock(id); err == nil {
			t.Errorf("Lock(%q) accepted", id)
		}
	}
}

// A model key from models.yaml is a cell-id part too: one that could climb out of the
// results root is a config error before anything is written.
func TestMakePlanRejectsBadModelKey(t *testing.T) {
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	m := tb.Models["qwen1_5"]
	m.Key, m.HFID = "../x", "acme/escape"
	tb.Models[m.Key] = m
	results := filepath.Join(t.TempDir(), "r")
	c := &Config{Backend: "sim", Client: ClientNative, Tables: tb, BatchSize: 1, TP: 1, Host: "127.0.0.1", Port: 1,
		Results: results, Grace: time.Second, ReadyStall: time.Minute, ReadyHard: time.Minute, GPUInterval: 100 * time.Millisecond,
		Bench: &config.Bench{Path: "b.yaml", ModelID: "acme/escape", DatasetNames: []string{"random"}, TargetInputTokens: 32, TargetOutputTokens: 8, NumSamples: 4}}
	_, err = MakePlan(c)
	if !config.IsConfigError(err) || !strings.Contains(err.Error(), `model key "../x" cannot be part of a cell id`) {
		t.Fatalf("MakePlan with model key ../x: %v; want a config error naming it", err)
	}
	if _, err := os.Stat(results); !os.IsNotExist(err) {
		t.Error("results root created")
	}
}
