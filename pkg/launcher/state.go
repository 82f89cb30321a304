package launcher

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
)

// StateFile is the name of the running-server record inside a cell directory.
const StateFile = "server.state.json"

// State records a running server so a later run can end it if our supervisor died. It is
// written before the server runs any code of its own (Spec.BeforeRun).
type State struct {
	PID        int    `json:"pid"`
	PGID       int    `json:"pgid"`
	StartTicks uint64 `json:"start_ticks"`
	// BootID is the boot the PIDs and start ticks belong to; another boot id means the
	// machine rebooted and nothing recorded here can still run.
	BootID string `json:"boot_id,omitempty"`
	// Token is the server's TokenEnv value: a process carrying it descends from the server.
	Token      string    `json:"token,omitempty"`
	Argv       []string  `json:"argv"`        // what we started (may be the activation wrapper)
	ServerArgv []string  `json:"server_argv"` // what runs after the wrapper's exec
	Port       int       `json:"port"`
	Supervisor int       `json:"supervisor_pid"`
	SupStart   uint64    `json:"supervisor_start_ticks"`
	StartedAt  time.Time `json:"started_at"`
	// Tracking is how the supervisor found the server's processes (see Tracking).
	Tracking string `json:"tracking,omitempty"`
	// GPUs the server was given, with their memory before launch, so a later run that ends
	// this server can wait until they are back to baseline.
	GPUs []StateGPU `json:"gpus,omitempty"`
	// Members are the server's processes as verified while it ran (kept current by
	// Process.Record): a later sweep still knows a worker whose parent died and whose
	// environment (and token) was overwritten by setproctitle, by PID and start time.
	Members []ProcessID `json:"members,omitempty"`
	// Host is the machine the server runs on. On a results root shared by many nodes (Slurm)
	// a state file of another host names PIDs of that host: never ours to judge or end.
	Host string `json:"host,omitempty"`
}

// hostname is this machine's name as state files record it ("" when unknown).
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// StateGPU is one GPU of a recorded server.
type StateGPU struct {
	Index int    `json:"index"`
	UUID  string `json:"uuid,omitempty"`
	// BaselineBytes is its used memory before launch; absent when unknown.
	BaselineBytes *uint64 `json:"baseline_bytes,omitempty"`
}

// NewState describes p, started by this process.
func NewState(p *Process, serverArgv []string, port int) State {
	self := os.Getpid()
	var selfStart uint64
	if info, ok := readStat(self); ok {
		selfStart = info.StartTicks
	}
	return State{PID: p.pid, PGID: p.pid, StartTicks: p.start, BootID: BootID(), Token: p.token, Argv: p.argv,
		ServerArgv: serverArgv, Port: port, Supervisor: self, SupStart: selfStart, StartedAt: time.Now().UTC(), Tracking: Tracking(), Host: hostname()}
}

// WriteState writes the state file of a cell directory atomically.
func WriteState(dir string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(dir, StateFile), b, 0o644)
}

// ReadState reads the state file of a cell directory (os.ErrNotExist when it has none).
func ReadState(dir string) (State, error) {
	var s State
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return s, nil
}

// RemoveState deletes the state file once the server is verifiably gone.
func RemoveState(dir string) error {
	err := os.Remove(filepath.Join(dir, StateFile))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

// Orphan is a server found through a state file whose supervisor is gone.
type Orphan struct {
	Dir   string
	State State
	// LeaderVerified: the recorded server itself still runs (same PID, start time, boot).
	// Otherwise only processes carrying its token are ours.
	LeaderVerified bool
	PIDs           []int // the verified live processes of the server
	// Unverified are live members of the recorded process group that cannot be proven to
	// descend from the server (the PID was reused, or they lost the token): never signalled.
	Unverified []int
	members    map[int]uint64
}

// Gone is a recorded server that no longer runs, whose supervisor died too: the cell it
// belonged to was interrupted. Its state file has been removed.
type Gone struct {
	Dir   string
	State State
	Why   string
	// Unverified as in Orphan: live processes of the old group left alone.
	Unverified []int
}

// Sweep is what FindOrphans found under a results root.
type Sweep struct {
	Orphans []Orphan
	Gone    []Gone
	// Problems are state files that could not be read or understood. They are reported, never
	// skipped in silence, and left in place (a server may be behind them).
	Problems []error
}

// stateDirs lists the directories that may hold a state file: each cell of root and each
// archived attempt under root/.attempts. Entries are listed, never globbed, so a root named
// like "runs[1]" hides nothing.
func stateDirs(root string) ([]string, error) {
	var out []string
	for _, d := range []string{root, filepath.Join(root, ".attempts")} {
		ents, err := os.ReadDir(d)
		if err != nil {
			if os.IsNotExist(err) && d != root {
				continue
			}
			if os.IsNotExist(err) {
				return nil, nil
			}
			return out, err
		}
		for _, e := range ents {
			if e.IsDir() && e.Name() != ".attempts" {
				out = append(out, filepath.Join(d, e.Name()))
			}
		}
	}
	return out, nil
}

// FindOrphans scans the state files under root. A state whose supervisor is still alive
// (same PID, start time and boot) belongs to another run and is left alone. A state from
// another boot, or whose server is gone, is stale: removed and reported as Gone. A live PID
// whose start time does not match the record is a different process that reused the PID:
// never touched, nor are members of its old process group that do not carry the server's
// token.
func FindOrphans(root string) (Sweep, error) {
	var sw Sweep
	dirs, err := stateDirs(root)
	if err != nil {
		return sw, fmt.Errorf("list %s: %w", root, err)
	}
	boot := BootID()
	for _, dir := range dirs {
		f := filepath.Join(dir, StateFile)
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			sw.Problems = append(sw.Problems, fmt.Errorf("cannot read %s: %w; a server of a killed run may be behind it: check its permissions", f, err))
			continue
		}
		var s State
		if err := json.Unmarshal(b, &s); err != nil || s.PID <= 0 {
			why := "no server PID in it"
			if err != nil {
				why = err.Error()
			}
			sw.Problems = append(sw.Problems, fmt.Errorf("state file %s is corrupt (%s); it should name a server a killed moecapd left running: look for it (ps -ef | grep moe_cap), end it by hand, then delete the file", f, why))
			continue
		}
		if h := hostname(); s.Host != "" && h != "" && s.Host != h {
			// Another node's server (a results root shared by Slurm nodes): its PIDs and boot
			// are that node's, never ours to judge, end or sweep.
			continue
		}
		sameBoot := s.BootID == "" || boot == "" || s.BootID == boot
		if sameBoot && supervisorAlive(s) {
			continue
		}
		if !sameBoot {
			sw.Gone = append(sw.Gone, Gone{Dir: dir, State: s, Why: "the machine rebooted since this server started (boot id changed), so nothing of it runs"})
			_ = RemoveState(dir)
			continue
		}
		o := Orphan{Dir: dir, State: s, LeaderVerified: sameProcess(s)}
		known := map[int]uint64{}
		for _, m := range s.Members {
			if m.StartTicks != 0 && (m.BootID == "" || m.BootID == s.BootID) {
				known[m.PID] = m.StartTicks
			}
		}
		o.members = family(familyScan{Root: ident{s.PID, s.StartTicks}, RootOK: o.LeaderVerified, Token: s.Token, MinStart: s.StartTicks, Known: known})
		for pid := range o.members {
			o.PIDs = append(o.PIDs, pid)
		}
		sort.Ints(o.PIDs)
		for _, pid := range groupMembers(s.PGID) {
			if _, ok := o.members[pid]; !ok {
				o.Unverified = append(o.Unverified, pid)
			}
		}
		if len(o.PIDs) == 0 {
			sw.Gone = append(sw.Gone, Gone{Dir: dir, State: s, Why: "its server is no longer running", Unverified: o.Unverified})
			_ = RemoveState(dir)
			continue
		}
		sw.Orphans = append(sw.Orphans, o)
	}
	return sw, nil
}

func supervisorAlive(s State) bool {
	if s.Supervisor <= 0 {
		return false
	}
	sup, ok := readStat(s.Supervisor)
	return ok && sup.StartTicks == s.SupStart && live(sup)
}

// sameProcess reports whether the recorded PID is still the process we started: same start
// time (in this boot; the caller checked the boot id). A server may rename itself
// (setproctitle), so the command line is checked only for records without a start time.
func sameProcess(s State) bool {
	info, ok := readProc(s.PID)
	if !ok || !live(info) {
		return false
	}
	if s.StartTicks != 0 {
		return info.StartTicks == s.StartTicks
	}
	return cmdlineMatches(info.Cmdline, s.Argv, s.ServerArgv)
}

// cmdlineMatches accepts the command line we started or, after the activation wrapper's
// exec, the server's own (python may show up as a resolved path).
func cmdlineMatches(got, argv, serverArgv []string) bool {
	eq := func(a, b []string) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			// argv[0] may show up resolved: /env/bin/python3.10 for "python".
			if a[i] != b[i] && (i > 0 || !strings.HasPrefix(filepath.Base(a[i]), filepath.Base(b[i]))) {
				return false
			}
		}
		return true
	}
	return eq(got, argv) || eq(got, serverArgv)
}

// EndOrphan stops an orphaned server with the same escalation as a normal stop, signalling
// only verified members (each PID's start time is checked again right before its signal),
// and removes its state file when nothing is left.
func EndOrphan(o Orphan, grace time.Duration) (StopReport, error) {
	t0 := time.Now()
	s := o.State
	known := maps.Clone(o.members)
	scan := func() map[int]uint64 {
		f := family(familyScan{Root: ident{s.PID, s.StartTicks}, RootOK: o.LeaderVerified, Token: s.Token, MinStart: s.StartTicks, Known: known})
		maps.Copy(known, f)
		return f
	}
	r := stopFamily(scan, grace, nil)
	r.Took = time.Since(t0)
	if len(r.Left) > 0 {
		return r, fmt.Errorf("orphaned server of %s: PIDs %v survived SIGKILL", o.Dir, r.Left)
	}
	return r, RemoveState(o.Dir)
}

// Record keeps dir's state file current with the server's verified members (checked every
// interval, rewritten when they change) until the returned stop is called; stop waits for
// the last write, so a later RemoveState cannot be undone by it.
func (p *Process) Record(dir string, st State, interval time.Duration) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		var last []int
		for {
			select {
			case <-quit:
				return
			case <-p.Done():
				return
			case <-t.C:
			}
			pids := p.Members()
			if slices.Equal(pids, last) {
				continue
			}
			last = pids
			p.mu.Lock()
			st.Members = st.Members[:0]
			for _, pid := range pids {
				if start, ok := p.known[pid]; ok {
					st.Members = append(st.Members, ProcessID{PID: pid, StartTicks: start, BootID: st.BootID})
				}
			}
			p.mu.Unlock()
			_ = WriteState(dir, st)
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }
}
