package launcher

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const ownedPidfileEnv = "LAUNCHER_TEST_OWNED_PIDFILE"

// TestOwnedSpawnHelper is not a test on its own: TestKilledTestBinaryLeavesNothing runs this
// test binary with only it selected. It starts a process in a session of its own (as a
// server is), which Pdeathsig or a process-group kill would not reach, writes its PID and
// blocks until it is SIGKILLed.
func TestOwnedSpawnHelper(t *testing.T) {
	pidfile := os.Getenv(ownedPidfileEnv)
	if pidfile == "" {
		t.Skip("helper of TestKilledTestBinaryLeavesNothing")
	}
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), "LAUNCHER_TEST_CHILD=sleep")
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	st, _ := readStat(c.Process.Pid)
	line := strconv.Itoa(c.Process.Pid) + " " + strconv.FormatUint(st.StartTicks, 10)
	if err := os.WriteFile(pidfile, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Hour)
}

// TestKilledTestBinaryLeavesNothing: a test binary SIGKILLed mid-test (as `go test -timeout`
// or a CI runner does) leaves none of the processes it started, even one in another session:
// RunTests's reaper ends them.
func TestKilledTestBinaryLeavesNothing(t *testing.T) {
	if os.Getenv(ownedPidfileEnv) != "" {
		t.Skip("inside the helper")
	}
	pidfile := filepath.Join(t.TempDir(), "pid")
	c := exec.Command(os.Args[0], "-test.run=^TestOwnedSpawnHelper$", "-test.v")
	c.Env = append(os.Environ(), ownedPidfileEnv+"="+pidfile)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	f := strings.Fields(waitFile(t, pidfile))
	if len(f) != 2 {
		t.Fatalf("pidfile %q", f)
	}
	pid, _ := strconv.Atoi(f[0])
	start, _ := strconv.ParseUint(f[1], 10, 64)
	if !aliveAs(pid, start) {
		t.Fatalf("the helper's child %d is not running", pid)
	}
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.Wait()
	deadline := time.Now().Add(30 * time.Second) // bounded, generous: the reaper polls /proc
	for aliveAs(pid, start) {
		if time.Now().After(deadline) {
			signalVerified(pid, start, syscall.SIGKILL)
			t.Fatalf("process %d, started by a SIGKILLed test binary, still runs after 30s", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// It was reparented to us (subreaper): collect the zombie.
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
}
