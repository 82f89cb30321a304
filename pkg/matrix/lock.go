package matrix

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// LockFile is the lock's name inside a results root.
const LockFile = ".matrix.lock"

// Holder is written into a lock file so the next run's error can say who holds it.
type Holder struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Results string    `json:"results"`
	Since   time.Time `json:"since"`
}

// Lock is a set of held flocks. The kernel drops a flock when its holder dies, even by
// SIGKILL, so a crashed run never leaves a stale lock behind for the resume to trip over.
type Lock struct{ files []*os.File }

// ErrLocked is wrapped by Acquire's error when another process holds a lock.
var ErrLocked = errors.New("locked by another run")

// Acquire takes the results root's lock and one lock per GPU (gpus: stable ids such as
// NVML UUIDs, in gpuDir) without waiting: a second run on the same results or the same
// GPUs fails at once with the holder's PID and command line.
func Acquire(results, gpuDir string, gpus []string, h Holder) (*Lock, error) {
	l := &Lock{}
	paths := []string{filepath.Join(results, LockFile)}
	if len(gpus) > 0 {
		if err := os.MkdirAll(gpuDir, 0o777); err != nil {
			return nil, fmt.Errorf("create the GPU lock directory %s: %w (pass --lock-dir)", gpuDir, err)
		}
		for _, g := range gpus {
			paths = append(paths, filepath.Join(gpuDir, "gpu-"+sanitizeID(g)+".lock"))
		}
	}
	if err := os.MkdirAll(results, 0o755); err != nil {
		return nil, fmt.Errorf("create results root %s: %w", results, err)
	}
	body, _ := json.Marshal(h)
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			l.Release()
			return nil, fmt.Errorf("open lock %s: %w", p, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			var other Holder
			b, _ := os.ReadFile(p)
			_ = json.Unmarshal(b, &other)
			f.Close()
			l.Release()
			what := "this results root"
			if p != paths[0] {
				what = "GPU " + strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "gpu-"), ".lock")
			}
			return nil, fmt.Errorf("%w: %s is in use by PID %d (%s, results %s, since %s); wait for it to finish or stop it, then run again: %s",
				ErrLocked, what, other.PID, other.Command, other.Results, other.Since.Format(time.RFC3339), p)
		}
		// Holder details are advisory; the flock is the lock.
		_ = f.Truncate(0)
		_, _ = f.WriteAt(body, 0)
		l.files = append(l.files, f)
	}
	return l, nil
}

// Release drops every lock held.
func (l *Lock) Release() {
	for _, f := range l.files {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
	l.files = nil
}

func sanitizeID(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
