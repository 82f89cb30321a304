package launcher

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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
	// BeforeRun, when set, runs after the child exists (its PID and start time are known)
	// and before it runs any code of its own: the child waits in a gate (a /bin/sh that
	// reads one line from a pipe, then execs argv). The caller writes its state file here,
	// so a supervisor killed at any moment leaves either a state file or no running child.
	// An error from it ends the child before it ran and is returned by Start.
	BeforeRun func(p *Process) error
	// Token, when set, is the TokenEnv value the child carries instead of a fresh one. A
	// helper of a server (the MoE-CAP runner as its client) takes the server's token, so it
	// counts as one of the server's processes: recorded in its state file and ended with it,
	// also by the orphan sweep after the supervisor was killed.
	Token string
}

// gateScript holds the child until the supervisor says "run" on fd 3. EOF (the supervisor
// died or gave up) exits 125 without running anything. Values come in as "$@", never spliced.
const gateScript = `IFS= read -r go <&3 || exit 125; [ "$go" = run ] || exit 125; exec 3<&-; exec "$@"`

// Process is a started child in its own process group. go-cmd's goroutine is the only one
// that calls Wait; everyone else learns of the exit through Done.
type Process struct {
	cmd     *gocmd.Cmd
	pid     int
	start   uint64
	argv    []string
	token   string
	logFile *os.File

	mu    sync.Mutex
	known map[int]uint64 // members seen so far (PID → start ticks), verified when seen
}

func newToken() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// Start starts spec in a new process group with output appended to spec.LogPath. The child's
// environment gets TokenEnv set to a fresh random token (see Token).
func Start(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("empty argv")
	}
	name := spec.Argv[0]
	lp, lerr := lookPath(name, spec.Env)
	argv := spec.Argv
	var gateR, gateW *os.File
	if spec.BeforeRun != nil {
		if lerr != nil {
			return nil, fmt.Errorf("start %s: %w (%w)", name, lerr, ErrNotFound)
		}
		var err error
		if gateR, gateW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("start %s: gate pipe: %w", name, err)
		}
		argv = append([]string{"/bin/sh", "-c", gateScript, "moecapd-gate", lp}, spec.Argv[1:]...)
		name, lp, lerr = "/bin/sh", "/bin/sh", nil
	}
	closeGate := func() {
		if gateR != nil {
			gateR.Close()
			gateR = nil
		}
		if gateW != nil {
			gateW.Close()
			gateW = nil
		}
	}
	logf, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		closeGate()
		return nil, fmt.Errorf("open log: %w", err)
	}
	token := spec.Token
	if token == "" {
		token = newToken()
	}
	env := append(append([]string{}, spec.Env...), TokenEnv+"="+token)
	childGate := gateR // read by go-cmd's goroutine; gateR itself is closed and cleared here
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
			if childGate != nil {
				ec.ExtraFiles = []*os.File{childGate} // fd 3 in the child; the write end stays ours
			}
			if lerr == nil {
				ec.Path = lp
				ec.Err = nil
			}
		}},
	}, name, argv[1:]...)
	c.Env = env
	c.Dir = spec.Dir
	c.Start()
	// go-cmd starts asynchronously: wait until the PID is known or the start failed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := c.Status()
		if st.PID > 0 {
			spawned.Store(st.PID, true)
			go func(pid int) { <-c.Done(); spawned.Delete(pid) }(st.PID)
			p := &Process{cmd: c, pid: st.PID, argv: spec.Argv, token: token, logFile: logf, known: map[int]uint64{}}
			if info, ok := readStat(st.PID); ok {
				p.start = info.StartTicks
			}
			if gateR != nil {
				gateR.Close()
				gateR = nil
			}
			if spec.BeforeRun != nil {
				if err := spec.BeforeRun(p); err != nil {
					closeGate() // EOF: the gate exits 125, the program never runs
					p.Stop(time.Second)
					return nil, err
				}
				// A failed write means the gate is already gone; the caller sees it exit.
				_, _ = gateW.Write([]byte("run\n"))
				closeGate()
			}
			return p, nil
		}
		select {
		case <-c.Done():
			closeGate()
			logf.Close()
			st = c.Status()
			if st.Error != nil {
				if lerr != nil || errors.Is(st.Error, os.ErrNotExist) {
					return nil, fmt.Errorf("start %s: %w (%w)", name, st.Error, ErrNotFound)
				}
				return nil, fmt.Errorf("start %s: %w", name, st.Error)
			}
			return nil, fmt.Errorf("start %s: exited at once with status %d", name, st.Exit)
		default:
		}
		if time.Now().After(deadline) {
			c.Stop()
			closeGate()
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

// Token is the value of TokenEnv in the process's environment (inherited by descendants).
func (p *Process) Token() string { return p.token }

func (p *Process) scan(withToken bool) map[int]uint64 {
	p.mu.Lock()
	known := maps.Clone(p.known)
	p.mu.Unlock()
	sc := familyScan{Root: ident{p.pid, p.start}, RootOK: p.start != 0, Known: known, MinStart: p.start, StrayToken: p.token}
	if withToken {
		sc.Token = p.token
	}
	f := family(sc)
	p.mu.Lock()
	maps.Copy(p.known, f)
	p.mu.Unlock()
	return f
}

// Members returns the server's live processes: itself, its descendants by parent PID, the
// descendants reparented to us (subreaper) that carry its token, and every member seen
// before that still lives (a worker whose parent died stays known). Cheap enough for every
// sampler tick: it reads no environment but those of our own stray children. Members of
// the server that died as our children are reaped.
func (p *Process) Members() []int {
	p.reapKnown()
	f := p.scan(false)
	out := make([]int, 0, len(f))
	for pid := range f {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

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

// reapKnown waits for members that died as our children (reparented to us as subreaper):
// nobody else will, and each would stay a zombie.
func (p *Process) reapKnown() {
	p.mu.Lock()
	known := maps.Clone(p.known)
	p.mu.Unlock()
	reapStrays(known)
	p.mu.Lock()
	self := os.Getpid()
	for pid, st := range p.known {
		// Gone, or a zombie someone else reaps: forget it. Our own zombie stays to be reaped.
		if q, ok := readStat(pid); !ok || q.StartTicks != st || !live(q) && q.PPID != self {
			delete(p.known, pid)
		}
	}
	p.mu.Unlock()
}

// Stop ends the server and everything provably its own: SIGTERM to each verified member
// (the server, its descendants by parent PID, every process carrying its token), wait up to
// grace while signalling late children too, SIGKILL what is left, wait (bounded) for the
// leader's reaping and every member to vanish. No signal goes to a process whose PID and
// start time were not just checked. Idempotent.
func (p *Process) Stop(grace time.Duration) StopReport {
	t0 := time.Now()
	r := stopFamily(func() map[int]uint64 { return p.scan(true) }, grace, p.cmd.Done())
	p.reapKnown()
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

// killWait bounds the wait after SIGKILL.
const killWait = 5 * time.Second

// stopFamily is the escalation shared by Stop and orphan recovery. scan returns the verified
// members now (PID → start ticks); leaderDone (may be nil) tells when the leader is reaped.
func stopFamily(scan func() map[int]uint64, grace time.Duration, leaderDone <-chan struct{}) StopReport {
	var r StopReport
	seen := map[int]uint64{}
	term := func(set map[int]uint64) {
		for pid, st := range set {
			if _, ok := seen[pid]; !ok {
				seen[pid] = st
				signalVerified(pid, st, syscall.SIGTERM)
			}
		}
	}
	gone := func() bool {
		reapStrays(seen)
		for pid, st := range seen {
			if aliveAs(pid, st) {
				return false
			}
		}
		if leaderDone != nil {
			select {
			case <-leaderDone:
			default:
				return false
			}
		}
		return true
	}
	term(scan())
	deadline := time.Now().Add(grace)
	for n := 1; ; n++ {
		if gone() {
			// Children forked while we waited, or a worker that outlived its parent.
			if cur := scan(); len(cur) == 0 {
				r.Graceful = true
				return r
			} else {
				term(cur)
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
		if n%25 == 0 {
			term(scan()) // late children get SIGTERM (and their grace) too
		}
	}
	killed := map[int]bool{}
	deadline = time.Now().Add(killWait)
	for {
		cur := scan()
		for pid, st := range seen {
			if aliveAs(pid, st) {
				cur[pid] = st
			}
		}
		if len(cur) == 0 && gone() || time.Now().After(deadline) {
			break
		}
		for pid, st := range cur {
			seen[pid] = st
			if signalVerified(pid, st, syscall.SIGKILL) && !killed[pid] {
				killed[pid] = true
				r.Killed = append(r.Killed, pid)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for pid, st := range seen {
		if aliveAs(pid, st) {
			r.Left = append(r.Left, pid)
		}
	}
	sort.Ints(r.Killed)
	sort.Ints(r.Left)
	return r
}
