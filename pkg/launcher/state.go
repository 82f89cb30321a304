package launcher

import (
	"encoding/json"
	"fmt"
	"github.com/google/renameio/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StateFile is the name of the running-server record inside a cell directory.
const StateFile = "server.state.json"

// State records a running server so a later run can end it if our supervisor died.
type State struct {
	PID        int       `json:"pid"`
	PGID       int       `json:"pgid"`
	StartTicks uint64    `json:"start_ticks"`
	Argv       []string  `json:"argv"`        // what we started (may be the activation wrapper)
	ServerArgv []string  `json:"server_argv"` // what runs after the wrapper's exec
	Port       int       `json:"port"`
	Supervisor int       `json:"supervisor_pid"`
	SupStart   uint64    `json:"supervisor_start_ticks"`
	StartedAt  time.Time `json:"started_at"`
	// Host is the machine the server runs on. On a results root shared by many nodes (Slurm)
	// a state file of another host names PIDs of that host: never ours to judge or end.
	Host string `json:"host,omitempty"`
}

// hostname is this machine's name as state files record it ("" when unknown).
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// NewState describes p, started by this process.
func NewState(p *Process, serverArgv []string, port int) State {
	self := os.Getpid()
	var selfStart uint64
	if info, ok := readProc(self); ok {
		selfStart = info.StartTicks
	}
	return State{PID: p.pid, PGID: p.pid, StartTicks: p.start, Argv: p.argv, ServerArgv: serverArgv,
		Port: port, Supervisor: self, SupStart: selfStart, StartedAt: time.Now().UTC(), Host: hostname()}
}

// WriteState writes the state file of a cell directory atomically.
func WriteState(dir string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(dir, StateFile), b, 0o644)
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
	PIDs  []int // the live processes of its tree
}

// FindOrphans scans root/*/server.state.json. A state whose supervisor is still alive
// belongs to another run and is left alone. A state whose server is gone is stale and
// removed. A live PID whose start time or command line does not match the record is a
// different process that reused the PID: never touched.
func FindOrphans(root string) ([]Orphan, error) {
	matches, err := filepath.Glob(filepath.Join(root, "*", StateFile))
	if err != nil {
		return nil, err
	}
	var out []Orphan
	for _, f := range matches {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var s State
		if json.Unmarshal(b, &s) != nil || s.PID <= 0 {
			continue
		}
		dir := filepath.Dir(f)
		if h := hostname(); s.Host != "" && h != "" && s.Host != h {
			continue // another node's server (shared results root): that node's runs see to it
		}
		if s.Supervisor > 0 {
			if sup, ok := readProc(s.Supervisor); ok && sup.StartTicks == s.SupStart && alive(s.Supervisor) {
				continue
			}
		}
		if !sameProcess(s) {
			// Leader gone (or its PID now names another process); its group may still hold
			// workers. A PGID is not reused while its group has members, so they are ours.
			pids := groupMembers(s.PGID)
			if len(pids) == 0 {
				_ = RemoveState(dir)
				continue
			}
			out = append(out, Orphan{Dir: dir, State: s, PIDs: pids})
			continue
		}
		out = append(out, Orphan{Dir: dir, State: s, PIDs: Tree(s.PID, s.PGID)})
	}
	return out, nil
}

// sameProcess reports whether the recorded PID is still the process we started.
func sameProcess(s State) bool {
	info, ok := readProc(s.PID)
	if !ok || info.State == 'Z' {
		return false
	}
	if s.StartTicks != 0 && info.StartTicks != s.StartTicks {
		return false
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

// EndOrphan stops an orphaned server with the same escalation as a normal stop and
// removes its state file when nothing is left.
func EndOrphan(o Orphan, grace time.Duration) (StopReport, error) {
	t0 := time.Now()
	r := stopTree(o.State.PGID, o.PIDs, grace, nil)
	r.Took = time.Since(t0)
	if len(r.Left) > 0 {
		return r, fmt.Errorf("orphaned server of %s: PIDs %v survived SIGKILL", o.Dir, r.Left)
	}
	return r, RemoveState(o.Dir)
}
