package launcher

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// TokenEnv is the variable that marks every process of one server: Start puts a random
// token in the server's environment, every descendant inherits it, and a process whose
// environment carries the token recorded in the state file provably descends from that
// server, even after a parent in between died and it was reparented (to init, or to us as
// subreaper). The same idea as Jenkins' ProcessTreeKiller cookie.
const TokenEnv = "MOECAPD_SERVER_TOKEN"

// BootID names this boot of the machine (/proc/sys/kernel/random/boot_id). Start ticks
// count from boot, so a PID and start time identify a process only within one boot.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ident is one process as the kernel names it in this boot.
type ident struct {
	PID   int
	Start uint64
}

// environHas reports whether pid's environment holds the entry kv ("K=V"). Processes of
// other users are unreadable, hence never ours.
func environHas(pid int, kv string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	if err != nil {
		return false
	}
	want := []byte(kv)
	for e := range bytes.SplitSeq(b, []byte{0}) {
		if bytes.Equal(e, want) {
			return true
		}
	}
	return false
}

func live(p procInfo) bool { return p.State != 'Z' && p.State != 'X' }

// familyScan says how to find a server's processes.
type familyScan struct {
	// Root is the server itself; used only when RootOK (its PID and start time verified).
	Root   ident
	RootOK bool
	// Token, when set, adds every process whose environment carries it and that started no
	// earlier than MinStart (reads every process's environment: not for every sampler tick).
	Token    string
	MinStart uint64
	// StrayToken, when Token is empty, checks the token only on our own children that we did
	// not spawn (descendants reparented to us as subreaper): cheap enough for every tick.
	StrayToken string
	// Known are members verified before (PID → start ticks); kept while the same process lives.
	Known map[int]uint64
}

// family finds the live processes that provably belong to a server: the verified root, the
// earlier members still alive, the token carriers, and every live process whose parent is
// one of those and that did not start before its parent (a reused PID cannot pass). Never
// ourselves, never PID 1.
func family(s familyScan) map[int]uint64 {
	procs := allProcs()
	byPID := make(map[int]procInfo, len(procs))
	children := map[int][]int{}
	for _, p := range procs {
		byPID[p.PID] = p
		if live(p) {
			children[p.PPID] = append(children[p.PPID], p.PID)
		}
	}
	self := os.Getpid()
	in := map[int]uint64{}
	add := func(p procInfo) {
		if p.PID > 1 && p.PID != self && live(p) {
			in[p.PID] = p.StartTicks
		}
	}
	if s.RootOK {
		if p, ok := byPID[s.Root.PID]; ok && p.StartTicks == s.Root.Start {
			add(p)
		}
	}
	for pid, st := range s.Known {
		if p, ok := byPID[pid]; ok && p.StartTicks == st {
			add(p)
		}
	}
	if s.Token != "" {
		kv := TokenEnv + "=" + s.Token
		for _, p := range procs {
			if live(p) && p.StartTicks >= s.MinStart && environHas(p.PID, kv) {
				add(p)
			}
		}
	} else if s.StrayToken != "" {
		kv := TokenEnv + "=" + s.StrayToken
		for _, p := range procs {
			if _, ours := spawned.Load(p.PID); !ours && p.PPID == self && live(p) && p.StartTicks >= s.MinStart && environHas(p.PID, kv) {
				add(p)
			}
		}
	}
	stack := make([]int, 0, len(in))
	for pid := range in {
		stack = append(stack, pid)
	}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range children[pid] {
			if _, seen := in[c]; seen {
				continue
			}
			if cp := byPID[c]; cp.StartTicks >= in[pid] {
				add(cp)
				if _, ok := in[c]; ok {
					stack = append(stack, c)
				}
			}
		}
	}
	return in
}

// signalVerified sends sig to pid only if it is still the process that started at start:
// through a pidfd (Linux ≥ 5.3), which pins the process, so the check and the signal
// cannot be split by a PID reuse; through kill(2) after the same check where pidfds are
// missing. It reports whether the signal was sent.
func signalVerified(pid int, start uint64, sig syscall.Signal) bool {
	if pid <= 1 || pid == os.Getpid() {
		return false
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		defer unix.Close(fd)
		if p, ok := readStat(pid); !ok || p.StartTicks != start {
			return false
		}
		return unix.PidfdSendSignal(fd, sig, nil, 0) == nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return false // ESRCH: gone
	}
	if p, ok := readStat(pid); !ok || p.StartTicks != start {
		return false
	}
	return syscall.Kill(pid, sig) == nil
}

// aliveAs reports whether pid still names the process that started at start (zombies count
// as gone).
func aliveAs(pid int, start uint64) bool {
	p, ok := readStat(pid)
	return ok && p.StartTicks == start && live(p)
}

// spawned holds the PIDs Start created; their exec.Cmd owns their Wait. Other children of
// ours are descendants of a server reparented to us as subreaper, which we reap ourselves.
var spawned sync.Map

// reapStrays waits for the members of set that are our zombie children but not processes
// we spawned: reparented descendants that died. Nobody else will wait for them.
func reapStrays(set map[int]uint64) {
	self := os.Getpid()
	for pid, st := range set {
		if _, ours := spawned.Load(pid); ours {
			continue
		}
		p, ok := readStat(pid)
		if !ok || p.StartTicks != st || p.PPID != self || live(p) {
			continue
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
}

var subreaper struct {
	sync.Mutex
	done bool
	err  error
}

// BecomeSubreaper makes this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER): a
// server's descendant whose parent dies (a worker that double-forks and calls setsid, as
// Ray's raylet does) is reparented to us instead of init, so teardown still finds it (by
// its parent and its token) and reaps it. Idempotent.
func BecomeSubreaper() error {
	subreaper.Lock()
	defer subreaper.Unlock()
	if !subreaper.done {
		subreaper.done = true
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			subreaper.err = fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
		}
	}
	return subreaper.err
}

// Tracking says how this process finds a server's processes, for logs and manifests:
// "subreaper+token" once BecomeSubreaper succeeded, else "token" (descendants by parent
// PID and by the environment token; orphans reparented to init are still found by token).
func Tracking() string {
	subreaper.Lock()
	defer subreaper.Unlock()
	if subreaper.done && subreaper.err == nil {
		return "subreaper+token"
	}
	return "token"
}

// ProcessID names a process across time: PID, start ticks and the boot they belong to.
type ProcessID struct {
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"start_ticks"`
	BootID     string `json:"boot_id,omitempty"`
}

// Self is this process's ProcessID.
func Self() ProcessID {
	id := ProcessID{PID: os.Getpid(), BootID: BootID()}
	if p, ok := readStat(id.PID); ok {
		id.StartTicks = p.StartTicks
	}
	return id
}

// Alive reports whether id still names a live process: same boot, same PID, same start.
func Alive(id ProcessID) bool {
	if id.PID <= 0 {
		return false
	}
	if b := BootID(); id.BootID != "" && b != "" && id.BootID != b {
		return false
	}
	return aliveAs(id.PID, id.StartTicks)
}
