package sim

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// FlagKind says whether sim-server knows a flag (by its long name, or its one-letter
// shorthand when short) and whether it is a boolean (takes no value).
type FlagKind func(name string, short bool) (known, boolean bool)

// SplitServerArgs separates the flags sim-server knows from the ones it ignores. An
// unknown flag without "=" takes the next argument as its value unless that looks like a
// flag, which is how argparse reads "--mem-fraction-static 0.8".
func SplitServerArgs(kind FlagKind, args []string) (known, ignored []string) {
	looksLikeFlag := func(s string) bool {
		if !strings.HasPrefix(s, "-") || s == "-" {
			return false
		}
		_, err := strconv.ParseFloat(s, 64)
		return err != nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			continue // pass-through separator of the launcher: what follows is still flags
		}
		if a == "-tp" || strings.HasPrefix(a, "-tp=") {
			a = "--tensor-parallel-size" + strings.TrimPrefix(a, "-tp")
		}
		if !looksLikeFlag(a) {
			ignored = append(ignored, a)
			continue
		}
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		ok, boolean := kind(name, len(name) == 1 && !strings.HasPrefix(a, "--"))
		if !ok {
			if !hasVal && i+1 < len(args) && !looksLikeFlag(args[i+1]) && args[i+1] != "--" {
				a += " " + args[i+1]
				i++
			}
			ignored = append(ignored, a)
			continue
		}
		known = append(known, a)
		if !hasVal && !boolean && i+1 < len(args) {
			known = append(known, args[i+1])
			i++
		}
	}
	return known, ignored
}

// DaemonEnv=1 in a sim server's environment makes each of its --sim-workers double-fork
// and call setsid, as Ray's raylet does (a fault for the teardown tests; not a flag, so the
// server's argv stays the wrappers').
const DaemonEnv = "MOECAPD_SIM_DAEMON_WORKERS"

// DaemonizeWorker starts the worker again in a new session and exits: the new one is
// reparented away from the server, out of its process group, and ignores SIGTERM.
func DaemonizeWorker(rank int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	c := exec.Command(exe, "sim-server", "--sim-worker", "--sim-worker-rank", strconv.Itoa(rank))
	c.Env = append(os.Environ(), DaemonEnv+"=2")
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return fmt.Errorf("sim: daemonize worker %d: %w", rank, err)
	}
	return nil
}
