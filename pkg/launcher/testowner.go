package launcher

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Test binaries start real processes (moecapd, sim servers in their own sessions, fake
// runners, daemonized workers). Teardown tests need some of them to outlive the moecapd that
// started them, so Pdeathsig cannot be used; instead every process a test binary starts
// carries TestOwnerEnv=<random token> in its environment (os.Setenv before any test, and the
// children of children inherit it), and a reaper process outside the test's process tree
// kills every process carrying the token once the test binary is gone, however it went
// (normal exit, panic, -timeout, SIGKILL): it waits for EOF on a pipe whose only writer is
// the test binary.
const (
	// TestOwnerEnv carries the owning test binary's token.
	TestOwnerEnv = "MOECAPD_TEST_OWNER"
	// testReaperEnv=<token> makes a test binary run as the reaper of token's carriers
	// instead of its tests (the reaper itself does not carry the token).
	testReaperEnv = "MOECAPD_TEST_REAPER"
	// TestRunEnv, when set (by .ci/run), is inherited by every process the tests start, so
	// a check after the tests can find any that escaped the reaper.
	TestRunEnv = "MOECAPD_TEST_RUN"
)

// RunTests runs a package's tests (run is testing.M.Run) with a reaper behind them, and
// returns the exit code. After the tests it waits a short grace for what they started to
// end (t.Cleanup kills are asynchronous), then fails the run, naming them, if any process
// that carries the token is still alive: a test left it behind. In the reaper's own
// invocation of the test binary it never returns.
func RunTests(run func() int) int {
	if token := os.Getenv(testReaperEnv); token != "" {
		reap(token)
		os.Exit(0)
	}
	token := newToken()
	if err := os.Setenv(TestOwnerEnv, token); err != nil {
		fmt.Fprintln(os.Stderr, "test owner:", err)
		return 1
	}
	w, err := startReaper(token)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test owner: start reaper:", err)
		return 1
	}
	code := run()
	left := waitCarriersGone(token, 10*time.Second)
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left %d process(es) behind (killed now):\n", len(left))
		for _, p := range left {
			fmt.Fprintf(os.Stderr, "  pid %d: %s\n", p.PID, strings.Join(p.Cmdline, " "))
		}
		killCarriers(token)
		if code == 0 {
			code = 1
		}
	}
	w.Close() // the reaper sweeps once more and exits
	return code
}

// startReaper starts this test binary again as the reaper, in a session of its own (a ^C to
// the terminal's process group must not end it before it has swept), holding the read end of
// a pipe whose write end only this process has.
func startReaper(token string) (*os.File, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c := exec.Command(exe, "-test.run=^$")
	// Neither marker: the reaper is not one of the processes it or the CI check look for.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, TestOwnerEnv+"=") && !strings.HasPrefix(kv, TestRunEnv+"=") {
			c.Env = append(c.Env, kv)
		}
	}
	c.Env = append(c.Env, testReaperEnv+"="+token)
	c.Stdin = r
	c.Stdout, c.Stderr = nil, nil // /dev/null: no pipe of `go test` held open
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	r.Close()
	go func() { _ = c.Wait() }() // normally it outlives us; reap it if it does not
	return w, nil
}

// reap waits for the owner's pipe (stdin) to close, then kills every process carrying the
// token until none is left (a dying tree may still fork for a moment).
func reap(token string) {
	_, _ = io.Copy(io.Discard, os.Stdin)
	for range 50 {
		if killCarriers(token) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// carriers lists the live processes, other than this one, whose environment holds
// TestOwnerEnv=token.
func carriers(token string) []procInfo {
	kv := TestOwnerEnv + "=" + token
	self := os.Getpid()
	var out []procInfo
	for _, p := range allProcs() {
		if p.PID != self && live(p) && environHas(p.PID, kv) {
			if q, ok := readProc(p.PID); ok {
				p.Cmdline = q.Cmdline
			}
			out = append(out, p)
		}
	}
	return out
}

// killCarriers sends SIGKILL to every carrier of token (verified by start time) and says
// how many it signalled.
func killCarriers(token string) int {
	n := 0
	for _, p := range carriers(token) {
		if signalVerified(p.PID, p.StartTicks, syscall.SIGKILL) {
			n++
		}
	}
	return n
}

// waitCarriersGone polls until no carrier of token is alive or grace has passed, and
// returns those still alive. Our own zombie children are reaped on the way.
func waitCarriersGone(token string, grace time.Duration) []procInfo {
	deadline := time.Now().Add(grace)
	for {
		left := carriers(token)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// E2EEnv=1 (`make test-e2e`) selects the heavy end-to-end tests (the whole sim matrix, the
// Slurm cluster, the headless browser); `make test` leaves them out (they skip, saying so).
const E2EEnv = "MOECAPD_E2E"

// E2E reports whether the heavy end-to-end tests are selected.
func E2E() bool { return os.Getenv(E2EEnv) == "1" }
