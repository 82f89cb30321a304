package main

// End-to-end tests of what keeps a shared node safe: signals at every phase, workers that
// daemonize, a supervisor killed at the worst moments, stale records. Real binary, real
// processes, real signals.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/sim"
)

// waitManifest waits until the only cell under results has a manifest for which ok is true.
func waitManifest(t *testing.T, results string, what string, ok func(dir string, m *cell.Manifest) bool) (string, *cell.Manifest) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(results)
		for _, e := range ents {
			dir := filepath.Join(results, e.Name())
			if m, err := cell.ReadManifest(dir); err == nil && ok(dir, m) {
				return dir, m
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("never saw %s under %s", what, results)
	return "", nil
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// A signal during start-up records the phase the cell was in, not "bench".
func TestSignalDuringStartup(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			results := t.TempDir()
			cfg := tinyConfig(t, qwen, 32, 8, 4)
			c, out := startMoecapd(t, simArgs(results, cfg, 2, "--", "--sim-startup", "20s", "--sim-workers", "1")...)
			dir, _ := waitManifest(t, results, "a started server", func(dir string, m *cell.Manifest) bool {
				_, err := os.Stat(filepath.Join(dir, launcher.StateFile))
				return m.Server.PID > 0 && err == nil && m.Phase == cell.PhaseReady
			})
			_, m0 := onlyCell(t, results)
			tree := descendants(m0.Server.PID)
			c.Process.Signal(sig)
			if code := exitCode(c.Wait()); code != 130 {
				t.Fatalf("exit %d, want 130\n%s", code, out)
			}
			m, _ := cell.ReadManifest(dir)
			if m.Status != cell.StatusInterrupted || m.Failure == nil || m.Failure.Phase != cell.PhaseReady || m.Phase != "" {
				t.Errorf("status %s phase %q failure %+v, want interrupted during ready", m.Status, m.Phase, m.Failure)
			}
			for _, p := range tree {
				if pidAlive(p) {
					t.Errorf("pid %d alive after an interrupted start-up", p)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, launcher.StateFile)); !os.IsNotExist(err) {
				t.Error("state file left after a clean teardown")
			}
		})
	}
}

var daemonLine = regexp.MustCompile(`sim: daemonized worker rank=\d+ pid=(\d+)`)

// daemonPIDs reads the daemonized workers' PIDs from a server log.
func daemonPIDs(t *testing.T, dir string, n int) []int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		if ms := daemonLine.FindAllSubmatch(b, -1); len(ms) >= n {
			var out []int
			for _, m := range ms {
				pid, _ := strconv.Atoi(string(m[1]))
				out = append(out, pid)
			}
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the server never logged %d daemonized workers", n)
	return nil
}

// Workers that double-fork, call setsid and ignore SIGTERM (Ray's raylet) are out of the
// server's group and tree; teardown still ends them, and the manifest says how.
func TestDaemonizedWorkersDieInTeardown(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 100, 12)
	c := exec.Command(bin, simArgs(results, cfg, 2, "--grace", "500ms", "--", "--sim-workers", "2", "--sim-tpot", "10ms")...)
	c.Env = append(os.Environ(), sim.DaemonEnv+"=1")
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	dir, pid := waitBench(t, results)
	daemons := daemonPIDs(t, dir, 2)
	for _, d := range daemons {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(d) + "/stat")
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
		if !pidAlive(d) || len(f) < 3 || f[2] == strconv.Itoa(pid) || f[1] == strconv.Itoa(pid) {
			t.Fatalf("daemon %d (stat %q) is not a live worker outside the server's group and children", d, b)
		}
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("launch-and-bench: %v\n%s", err, out.String())
	}
	_, m := onlyCell(t, results)
	if m.Status != cell.StatusOK {
		t.Fatalf("status %s failure %+v", m.Status, m.Failure)
	}
	if m.Server.Tracking != "subreaper+token" {
		t.Errorf("server.tracking = %q, want subreaper+token", m.Server.Tracking)
	}
	for _, d := range daemons {
		if pidAlive(d) {
			t.Errorf("daemonized worker %d survived teardown", d)
			syscall.Kill(d, syscall.SIGKILL)
		}
	}
}

// The supervisor killed with SIGKILL mid-bench, its server's workers daemonized: the next run
// ends all of them (found by their token) and records the phase.
func TestSIGKILLWithDaemonizedWorkersThenRerun(t *testing.T) {
	results := filepath.Join(t.TempDir(), "runs[1]") // glob characters must hide nothing
	cfg := tinyConfig(t, qwen, 32, 200, 50)
	c := exec.Command(bin, simArgs(results, cfg, 2, "--", "--sim-tpot", "20ms", "--sim-workers", "2")...)
	c.Env = append(os.Environ(), sim.DaemonEnv+"=1")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// waitBench globs, which a root named runs[1] defeats (the point of this test).
	dir, m0 := waitManifest(t, results, "the bench", func(dir string, m *cell.Manifest) bool {
		_, err := os.Stat(filepath.Join(dir, "client.log"))
		return m.Phase == cell.PhaseBench && err == nil
	})
	time.Sleep(300 * time.Millisecond)
	all := append(descendants(m0.Server.PID), daemonPIDs(t, dir, 2)...)
	c.Process.Kill()
	c.Wait()
	small := tinyConfig(t, qwen, 32, 200, 4)
	r := moecapd(t, nil, simArgs(results, small, 2, "--grace", "500ms", "--", "--sim-tpot", "2ms")...)
	if r.code != 0 {
		t.Fatalf("next run exit %d\n%s", r.code, r.stderr)
	}
	for _, p := range all {
		if pidAlive(p) {
			t.Errorf("pid %d of the killed run's server alive after the next run", p)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	old, _ := os.ReadDir(filepath.Join(results, ".attempts"))
	if len(old) != 1 {
		t.Fatalf("attempts %v, want the killed one", old)
	}
	m, _ := cell.ReadManifest(filepath.Join(results, ".attempts", old[0].Name()))
	if m == nil || m.Status != cell.StatusInterrupted || m.Failure == nil || m.Failure.Phase != cell.PhaseBench {
		t.Errorf("archived attempt %+v, want interrupted in bench", m)
	}
}

// SIGKILL during teardown: the next run records the cell as interrupted in teardown.
func TestSIGKILLDuringTeardown(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	c, _ := startMoecapd(t, simArgs(results, cfg, 2, "--grace", "20s", "--", "--sim-fault", "ignore-sigterm", "--sim-tpot", "2ms")...)
	dir, m := waitManifest(t, results, "the teardown phase", func(_ string, m *cell.Manifest) bool { return m.Phase == cell.PhaseTeardown })
	c.Process.Kill()
	c.Wait()
	server := m.Server.PID
	r := moecapd(t, nil, simArgs(results, cfg, 2, "--grace", "300ms")...)
	if r.code != 0 {
		t.Fatalf("next run exit %d\n%s", r.code, r.stderr)
	}
	if pidAlive(server) {
		t.Errorf("server %d (ignores SIGTERM) survived the next run's sweep", server)
	}
	old, _ := os.ReadDir(filepath.Join(results, ".attempts"))
	if len(old) != 1 {
		t.Fatalf("attempts %v, want the killed one (dir %s)", old, dir)
	}
	om, _ := cell.ReadManifest(filepath.Join(results, ".attempts", old[0].Name()))
	if om == nil || om.Status != cell.StatusInterrupted || om.Failure == nil || om.Failure.Phase != cell.PhaseTeardown {
		t.Errorf("archived attempt %+v, want interrupted in teardown", om)
	}
}

// Cells left "running" by supervisors that died (one in preflight with no server yet, one
// whose server died too, one from before a reboot) are all marked interrupted with their
// phase by the next run on the root; a live supervisor's cell is left alone; a corrupt
// state file is reported by name.
func TestSweepMarksDeadCells(t *testing.T) {
	results := filepath.Join(t.TempDir(), "runs[1]")
	dead := exec.Command("true")
	dead.Run()
	deadSup := launcher.ProcessID{PID: dead.Process.Pid, StartTicks: 1, BootID: launcher.BootID()}
	mk := func(name string, ph cell.Phase, sup launcher.ProcessID, state *launcher.State) string {
		dir := filepath.Join(results, name)
		os.MkdirAll(dir, 0o755)
		m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Cell: cell.Identity{ID: name}, Status: cell.StatusRunning, Phase: ph, Supervisor: &sup}
		if err := cell.WriteManifest(dir, m); err != nil {
			t.Fatal(err)
		}
		if state != nil {
			launcher.WriteState(dir, *state)
		}
		return dir
	}
	preflight := mk("a.preflight", cell.PhasePreflight, deadSup, nil)
	serverDied := mk("b.ready", cell.PhaseReady, deadSup, &launcher.State{PID: dead.Process.Pid, PGID: dead.Process.Pid, StartTicks: 1,
		BootID: launcher.BootID(), Supervisor: deadSup.PID, SupStart: 1, Token: "t"})
	rebootSup := deadSup
	rebootSup.BootID = "00000000-0000-0000-0000-000000000000"
	rebooted := mk("c.launch", cell.PhaseLaunch, rebootSup, &launcher.State{PID: os.Getpid(), PGID: os.Getpid(), StartTicks: 1,
		BootID: rebootSup.BootID, Supervisor: os.Getpid(), SupStart: 1})
	liveSup := mk("d.live", cell.PhaseBench, launcher.Self(), nil)
	// A stranger now holds the recorded server's PID (and leads a process group of that
	// number): another start time, no token of ours. It must survive the sweep.
	stranger := exec.Command("sleep", "3600")
	stranger.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stranger.Process.Kill(); stranger.Wait() })
	sp := stranger.Process.Pid
	reused := mk("f.bench", cell.PhaseBench, deadSup, &launcher.State{PID: sp, PGID: sp, StartTicks: 1, BootID: launcher.BootID(),
		Supervisor: deadSup.PID, SupStart: 1, Token: "not-the-strangers", Argv: []string{"sleep", "3600"}})
	// A manifest of an older moecapd: no supervisor, no phase recorded; nobody holds its lock.
	oldDir := filepath.Join(results, "g.old")
	os.MkdirAll(oldDir, 0o755)
	cell.WriteManifest(oldDir, &cell.Manifest{SchemaVersion: cell.SchemaVersion, Cell: cell.Identity{ID: "g.old"}, Status: cell.StatusRunning})
	corrupt := filepath.Join(results, "e.corrupt")
	os.MkdirAll(corrupt, 0o755)
	os.WriteFile(filepath.Join(corrupt, launcher.StateFile), []byte("{not json"), 0o644)

	cfg := tinyConfig(t, qwen, 32, 8, 2)
	r := moecapd(t, nil, simArgs(results, cfg, 2)...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if !pidAlive(sp) {
		t.Errorf("the sweep killed pid %d, a stranger that reused a recorded server's PID", sp)
	}
	if !strings.Contains(r.stderr, "cannot be proven to be ours") {
		t.Errorf("the stranger in the recorded group was not named as left alone:\n%s", r.stderr)
	}
	for dir, ph := range map[string]cell.Phase{preflight: cell.PhasePreflight, serverDied: cell.PhaseReady, rebooted: cell.PhaseLaunch, reused: cell.PhaseBench} {
		m, err := cell.ReadManifest(dir)
		if err != nil || m.Status != cell.StatusInterrupted || m.Failure == nil || m.Failure.Phase != ph || m.Failure.Kind != exitcode.FailInterrupted {
			b, _ := json.Marshal(m)
			t.Errorf("%s: %s (%v), want interrupted during %s", filepath.Base(dir), b, err, ph)
		}
	}
	if m, _ := cell.ReadManifest(oldDir); m == nil || m.Status != cell.StatusInterrupted || !strings.Contains(m.Failure.Message, "bench assumed") {
		t.Errorf("an older moecapd's dead running cell: %+v, want interrupted (bench assumed)", m)
	}
	if m, _ := cell.ReadManifest(liveSup); m.Status != cell.StatusRunning {
		t.Errorf("a live supervisor's cell was changed to %s", m.Status)
	}
	if !strings.Contains(r.stderr, filepath.Join(corrupt, launcher.StateFile)) || !strings.Contains(r.stderr, "corrupt") {
		t.Errorf("the corrupt state file was not reported:\n%s", r.stderr)
	}
	if m, _ := cell.ReadManifest(rebooted); m != nil && !strings.Contains(m.Failure.Message, "rebooted") {
		t.Errorf("rebooted cell's message %q does not say why", m.Failure.Message)
	}
}

func TestExposedHostWarns(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	for _, c := range []struct {
		host string
		warn bool
	}{{"0.0.0.0", true}, {"10.1.2.3", true}, {"127.0.0.1", false}, {"::1", false}, {"localhost", false}} {
		r := moecapd(t, nil, "launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "1",
			"--results", t.TempDir(), "--host", c.host, "--dry-run", "--log-format", "json")
		if r.code != 0 {
			t.Fatalf("--host %s: exit %d\n%s", c.host, r.code, r.stderr)
		}
		if got := strings.Contains(r.stderr, "no authentication"); got != c.warn {
			t.Errorf("--host %s: warned %v, want %v\n%s", c.host, got, c.warn, r.stderr)
		}
	}
}

var simStarted = regexp.MustCompile(`sim: started \{.*"pid":(\d+)\}`)

// launch-and-bench SIGKILLed at assorted moments right after it spawns the server: wherever
// the server got to run its own code (the sim announces itself first thing), the state file
// exists, and the next run ends the server.
func TestSIGKILLRightAfterSpawn(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	ran := 0
	for i := range 12 {
		results := t.TempDir()
		c, _ := startMoecapd(t, simArgs(results, cfg, 2, "--", "--sim-startup", "30s")...)
		// The launch phase lasts milliseconds: poll for it or the one after.
		waitManifest(t, results, "the launch phase", func(_ string, m *cell.Manifest) bool {
			return m.Phase == cell.PhaseLaunch || m.Phase == cell.PhaseReady
		})
		time.Sleep(time.Duration(i) * time.Millisecond)
		c.Process.Kill()
		c.Wait()
		time.Sleep(150 * time.Millisecond)
		dir, _ := waitManifest(t, results, "the manifest", func(string, *cell.Manifest) bool { return true })
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		_, stateErr := os.Stat(filepath.Join(dir, launcher.StateFile))
		server := 0
		if m := simStarted.FindSubmatch(log); m != nil {
			server, _ = strconv.Atoi(string(m[1]))
			ran++
			if stateErr != nil {
				t.Errorf("kill after %d ms: the server (pid %d) ran but there is no state file", i, server)
			}
		}
		if stateErr == nil {
			r := moecapd(t, nil, simArgs(results, cfg, 2, "--grace", "300ms")...)
			if r.code != 0 {
				t.Errorf("kill after %d ms: rerun exit %d\n%s", i, r.code, r.stderr)
			}
		}
		if server > 0 && pidAlive(server) {
			t.Errorf("kill after %d ms: server %d still alive", i, server)
			syscall.Kill(server, syscall.SIGKILL)
		}
	}
	t.Logf("%d of 12 servers ran before the kill; every one had its state file", ran)
}

// The idle limit is a setting: flag, MOECAP_ variable or settings file, checked.
func TestGPUIdleLimitSetting(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	args := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", "1", "--results", t.TempDir(), "--dry-run"}
	if r := moecapd(t, []string{"MOECAP_GPU_IDLE_MIB=-5"}, args...); r.code != 2 || !strings.Contains(r.stderr, "--gpu-idle-mib") || !strings.Contains(r.stderr, "got -5") {
		t.Errorf("MOECAP_GPU_IDLE_MIB=-5: exit %d, want 2 naming the setting\n%s", r.code, r.stderr)
	}
	if r := moecapd(t, nil, append(args, "--gpu-idle-mib", "1024")...); r.code != 0 {
		t.Errorf("--gpu-idle-mib 1024: exit %d\n%s", r.code, r.stderr)
	}
}

// openPTY opens a pseudo-terminal pair: what an ssh session gives a login shell.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pts: %v", err)
	}
	return m, s
}

// The terminal goes away under a running cell, as when an ssh session drops: the kernel
// sends SIGHUP, and every later write to the terminal fails. The server is still torn down
// and the cell recorded interrupted.
func TestTerminalHangup(t *testing.T) {
	master, slave := openPTY(t)
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 200, 50)
	c := exec.Command(bin, simArgs(results, cfg, 2, "--log-format", "console", "--", "--sim-tpot", "20ms", "--sim-workers", "1")...)
	c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
	// moecapd leads a session whose controlling terminal is the pty, like a login shell's job.
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	go func() { // drain the terminal until it is gone, as sshd does
		b := make([]byte, 4096)
		for {
			if _, err := master.Read(b); err != nil {
				return
			}
		}
	}()
	dir, pid := waitBench(t, results)
	tree := descendants(pid)
	master.Close() // the session drops: SIGHUP to the controlling process, EIO on writes
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(err); code != 130 {
			t.Errorf("exit %d, want 130", code)
		}
	case <-time.After(60 * time.Second):
		c.Process.Kill()
		t.Fatal("moecapd did not finish after its terminal went away")
	}
	m, _ := cell.ReadManifest(dir)
	if m == nil || m.Status != cell.StatusInterrupted || m.Failure == nil || !strings.Contains(m.Failure.Message, "SIGHUP") {
		t.Errorf("manifest %+v, want interrupted by SIGHUP", m)
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("pid %d alive after the terminal hung up", p)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}
