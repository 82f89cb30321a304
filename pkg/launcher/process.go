package launcher

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	gocmd "github.com/go-cmd/cmd"
)

// Spec is a process to start.
type Spec struct {
	Argv    []string // argv[0] is looked up in PATH of Env when it has no slash
	Env     []string // the full environment
	Dir     string
	LogPath string // stdout and stderr go here (appended)
}

// Process is a started child in its own process group. go-cmd's goroutine is the only one
// that calls Wait; everyone else learns of the exit through Done.
type Process struct {
	cmd     *gocmd.Cmd
	pid     int
	start   uint64
	argv    []string
	logFile *os.File
}

// Start starts spec in a new process group with output appended to spec.LogPath.
func Start(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("empty argv")
	}
	logf, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	name := spec.Argv[0]
	c := gocmd.NewCmdOptions(gocmd.Options{
		BeforeExec: []func(*exec.Cmd){func(ec *exec.Cmd) {
			// go-cmd already asked for a new process group; keep its SysProcAttr and add to it.
			if ec.SysProcAttr == nil {
				ec.SysProcAttr = &syscall.SysProcAttr{}
			}
			ec.SysProcAttr.Setpgid = true
			// An *os.File is handed to the child as is: no copying goroutine, no pipe that
			// a surviving grandchild could hold open, no EPIPE if we die.
			ec.Stdout = logf
			ec.Stderr = logf
			ec.Stdin = nil
			if lp, err := lookPath(name, spec.Env); err == nil {
				ec.Path = lp
				ec.Err = nil
			}
		}},
	}, name, spec.Argv[1:]...)
	c.Env = spec.Env
	c.Dir = spec.Dir
	c.Start()
	// go-cmd starts asynchronously: wait until the PID is known or the start failed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := c.Status()
		if st.PID > 0 {
			p := &Process{cmd: c, pid: st.PID, argv: spec.Argv, logFile: logf}
			if info, ok := readProc(st.PID); ok {
				p.start = info.StartTicks
			}
			return p, nil
		}
		select {
		case <-c.Done():
			logf.Close()
			st = c.Status()
			if st.Error != nil {
				return nil, fmt.Errorf("start %s: %w", name, st.Error)
			}
			return nil, fmt.Errorf("start %s: exited at once with status %d", name, st.Exit)
		default:
		}
		if time.Now().After(deadline) {
			c.Stop()
			logf.Close()
			return nil, fmt.Errorf("start %s: not started after 10s", name)
		}
		time.Sleep(time.Millisecond)
	}
}

// lookPath resolves name against the PATH of env (not ours): a conda env's PATH decides
// which python runs.
func lookPath(name string, env []string) (string, error) {
	if strings.ContainsRune(name, '/') {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	if path == "" || path == os.Getenv("PATH") {
		return exec.LookPath(name)
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// PID of the process (and its process group id).
func (p *Process) PID() int { return p.pid }

// StartTicks is the kernel's start time of the process, which with the PID identifies it.
func (p *Process) StartTicks() uint64 { return p.start }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.cmd.Done() }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.cmd.Done():
		return true
	default:
		return false
	}
}

// ExitCode is the exit status after Done; -1 when killed by a signal.
func (p *Process) ExitCode() int {
	st := p.cmd.Status()
	return st.Exit
}

// ExitDescription says how the process ended, after Done.
func (p *Process) ExitDescription() string {
	st := p.cmd.Status()
	if st.Error != nil {
		return st.Error.Error()
	}
	return fmt.Sprintf("exit status %d", st.Exit)
}

// StopReport says how a stop went.
type StopReport struct {
	Graceful  bool          // exited after SIGTERM within the grace period
	Killed    []int         // PIDs that needed SIGKILL
	Left      []int         // PIDs still alive after SIGKILL (orphans)
	Took      time.Duration // from SIGTERM to verified gone
	ExitCode  int
	ExitState string
}

// Stop ends the server and everything it started: SIGTERM to the group and to descendants
// that left it, wait up to grace, SIGKILL what is left, wait (bounded) for the leader's
// reaping and every PID to vanish. Idempotent.
func (p *Process) Stop(grace time.Duration) StopReport {
	t0 := time.Now()
	pids := Tree(p.pid, p.pid)
	r := stopTree(p.pid, pids, grace, p.cmd.Done())
	select {
	case <-p.cmd.Done():
	case <-time.After(5 * time.Second):
	}
	if p.logFile != nil {
		p.logFile.Close()
	}
	r.Took = time.Since(t0)
	r.ExitCode = p.ExitCode()
	r.ExitState = p.ExitDescription()
	return r
}

// stopTree is the shared escalation of Stop and orphan recovery. leaderDone (may be nil)
// tells when the leader has been reaped.
func stopTree(pgid int, pids []int, grace time.Duration, leaderDone <-chan struct{}) StopReport {
	var r StopReport
	signalAll(pgid, pids, syscall.SIGTERM)
	if waitGone(pgid, pids, grace, leaderDone) {
		r.Graceful = true
		return r
	}
	// Late children may have appeared during the grace period.
	for _, pid := range Tree(pgid, pgid) {
		if !contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if alive(pid) {
			r.Killed = append(r.Killed, pid)
		}
	}
	signalAll(pgid, pids, syscall.SIGKILL)
	waitGone(pgid, pids, 5*time.Second, leaderDone)
	for _, pid := range pids {
		if alive(pid) {
			r.Left = append(r.Left, pid)
		}
	}
	sort.Ints(r.Killed)
	sort.Ints(r.Left)
	return r
}

func signalAll(pgid int, pids []int, sig syscall.Signal) {
	if pgid > 1 {
		_ = syscall.Kill(-pgid, sig)
	}
	for _, pid := range pids {
		if pid > 1 {
			_ = syscall.Kill(pid, sig)
		}
	}
}

// waitGone polls until every pid is gone (and the leader reaped) or d passes.
func waitGone(pgid int, pids []int, d time.Duration, leaderDone <-chan struct{}) bool {
	deadline := time.Now().Add(d)
	for {
		gone := true
		for _, pid := range pids {
			if alive(pid) {
				gone = false
				break
			}
		}
		if gone && leaderDone != nil {
			select {
			case <-leaderDone:
			default:
				gone = false
			}
		}
		if gone {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
