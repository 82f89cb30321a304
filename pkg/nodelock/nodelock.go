// Package nodelock is the node-wide lock of moecapd serve: one daemon per node owns the
// node's GPUs, whatever results root another command names. The lock lives in a run
// directory of fixed place (MOECAPD_RUN_DIR, else /run/moecapd when writable, else
// $TMPDIR/moecapd), never under a results root, so launch-and-bench and matrix run on the
// same node find it whichever root they are given.
package nodelock

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// EnvRunDir overrides the run directory (tests, a second node sharing a machine).
const EnvRunDir = "MOECAPD_RUN_DIR"

const (
	lockFile   = "daemon.lock"
	infoFile   = "daemon.json"
	socketFile = "moecapd.sock"
)

// RunDir is where the daemon's lock, its record and its default socket live.
func RunDir() string {
	if d := os.Getenv(EnvRunDir); d != "" {
		return d
	}
	if unix.Access("/run/moecapd", unix.W_OK) == nil {
		return "/run/moecapd"
	}
	return filepath.Join(os.TempDir(), "moecapd")
}

// DefaultSocket is the unix socket a daemon listens on and clients try when told nothing.
func DefaultSocket() string { return filepath.Join(RunDir(), socketFile) }

// Info is what the daemon records next to its lock, so a refused command can name it.
type Info struct {
	PID       int       `json:"pid"`
	Host      string    `json:"host"`
	Results   string    `json:"results"`
	Listen    []string  `json:"listen"`
	StartedAt time.Time `json:"started_at"`
}

// Lock is the held node lock.
type Lock struct {
	f   *os.File
	dir string
}

// ErrHeld is matched by *HeldError.
var ErrHeld = errors.New("a moecapd daemon owns this node")

// HeldError says a daemon holds the node; Info is nil when its record could not be read.
type HeldError struct {
	Path string
	Info *Info
}

func (e *HeldError) Error() string {
	who := "a moecapd serve daemon"
	if i := e.Info; i != nil {
		who = fmt.Sprintf("the moecapd serve daemon (PID %d on %s, results %s, listening on %v, since %s)",
			i.PID, i.Host, i.Results, i.Listen, i.StartedAt.Format(time.RFC3339))
	}
	return fmt.Sprintf("%s owns this node's GPUs (lock %s); submit the work to it instead: moecapd submit --matrix FILE, or moecapd submit with the launch-and-bench flags", who, e.Path)
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Acquire takes the node lock (exclusive, not waiting). A daemon already running gives a
// *HeldError.
func Acquire(info Info) (*Lock, error) {
	dir := RunDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the run directory %s: %w (set %s to a writable directory)", dir, err, EnvRunDir)
	}
	p := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the node lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &HeldError{Path: p, Info: readInfo(dir)}
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	tmp := filepath.Join(dir, infoFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		_ = os.Rename(tmp, filepath.Join(dir, infoFile))
	}
	return &Lock{f: f, dir: dir}, nil
}

// Release gives the node back.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = os.Remove(filepath.Join(l.dir, infoFile))
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
	l.f = nil
}

// Check reports a *HeldError when a daemon holds the node, nil when none does. It never
// creates anything.
func Check() error {
	dir := RunDir()
	p := filepath.Join(dir, lockFile)
	f, err := os.Open(p)
	if err != nil {
		return nil // no daemon ever ran here
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return &HeldError{Path: p, Info: readInfo(dir)}
		}
		return nil
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return nil
}

func readInfo(dir string) *Info {
	b, err := os.ReadFile(filepath.Join(dir, infoFile))
	if err != nil {
		return nil
	}
	var i Info
	if json.Unmarshal(b, &i) != nil {
		return nil
	}
	return &i
}
