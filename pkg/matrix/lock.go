package matrix

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moecapd/moecapd/pkg/cell"
)

// LockFile is the lock's name inside a results root.
const LockFile = ".matrix.lock"

// Lock is a set of held flocks (cell.TryLock: the kernel drops a flock when its holder
// dies, even by SIGKILL, so a crashed run never leaves a stale lock behind).
type Lock struct{ held []*cell.FileLock }

// ErrLocked is matched (errors.Is) by Acquire's error when another run holds a lock.
var ErrLocked = cell.ErrLocked

// Acquire takes the results root's matrix lock and one lock per GPU (gpus: stable ids such
// as NVML UUIDs, in gpuDir) without waiting: a second matrix run on the same results or the
// same GPUs fails at once with a *cell.LockedError naming the holder. Each cell the run
// starts is locked on its own as well (cell.Layout.Lock), the lock every runner of a cell
// shares.
func Acquire(results, gpuDir string, gpus []string) (*Lock, error) {
	l := &Lock{}
	type lk struct{ path, what string }
	locks := []lk{{filepath.Join(results, LockFile), "results root " + results}}
	if len(gpus) > 0 {
		if _, err := os.Stat(gpuDir); os.IsNotExist(err) {
			if err := os.MkdirAll(gpuDir, 0o777); err != nil {
				return nil, fmt.Errorf("create the GPU lock directory %s: %w (pass --lock-dir)", gpuDir, err)
			}
			// Every user's runs on the node share it, whatever our umask; sticky like /tmp.
			_ = os.Chmod(gpuDir, 0o777|os.ModeSticky)
		}
		for _, g := range gpus {
			locks = append(locks, lk{filepath.Join(gpuDir, "gpu-"+sanitizeID(g)+".lock"), "GPU " + g})
		}
	}
	if err := os.MkdirAll(results, 0o755); err != nil {
		return nil, fmt.Errorf("create results root %s: %w", results, err)
	}
	for _, k := range locks {
		fl, err := cell.TryLock(k.path, k.what)
		if err != nil {
			l.Release()
			return nil, err
		}
		if k.path != locks[0].path {
			// A GPU's lock serves every user of the node: openable by the next one,
			// whatever our umask (only the owner can change it; others need not).
			_ = os.Chmod(k.path, 0o666)
		}
		l.held = append(l.held, fl)
	}
	return l, nil
}

// Release drops every lock held.
func (l *Lock) Release() {
	for _, f := range l.held {
		f.Unlock()
	}
	l.held = nil
}

func sanitizeID(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
