package cell

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// Holder says who holds a lock: written next to the lock file when it is taken, so the
// next runner's error can name it.
type Holder struct {
	PID       int       `json:"pid"`
	Host      string    `json:"host"`
	StartedAt time.Time `json:"started_at"`
	Command   string    `json:"command"`
}

// ErrLocked is matched (errors.Is) by every *LockedError.
var ErrLocked = errors.New("locked by another runner")

// LockedError is a lock another runner holds.
type LockedError struct {
	// What is locked, in words: "cell qwen1_5.1xH100.4k-1k.bs32.sim", "results root /r".
	What string
	// Path is the lock file.
	Path string
	// Holder is nil when its record could not be read (being written, or removed).
	Holder *Holder
}

func (e *LockedError) Error() string {
	if h := e.Holder; h != nil {
		return fmt.Sprintf("%s is in use by PID %d on host %s since %s (%s); a second runner is refused: wait for it to finish or stop it (kill %d), then run again (lock %s)",
			e.What, h.PID, h.Host, h.StartedAt.Format(time.RFC3339), h.Command, h.PID, e.Path)
	}
	return fmt.Sprintf("%s is in use by another runner (its holder record %s could not be read); wait for it to finish, then run again (lock %s)",
		e.What, holderPath(e.Path), e.Path)
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// FileLock is a held flock(2) on one lock file.
type FileLock struct {
	f    *os.File
	path string
	once sync.Once
}

var (
	heldMu sync.Mutex
	held   = map[string]bool{}
)

func heldHere(path string) bool {
	heldMu.Lock()
	defer heldMu.Unlock()
	return held[filepath.Clean(path)]
}

func holderPath(lock string) string { return lock + ".holder" }

// TryLock takes an exclusive flock on path (created when missing) without waiting and
// records this process as its holder in path+".holder", written atomically (renameio).
// The flock is the lock; the record is for messages. The file is opened close-on-exec, so
// a server started while it is held does not inherit it and cannot outlive us holding it.
// what names the locked thing in errors. A held lock, in this process or another, gives a
// *LockedError.
func TryLock(path, what string) (*FileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if errors.Is(err, os.ErrPermission) {
		// Another user's lock file (a shared --lock-dir): flock needs no write access.
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &LockedError{What: what, Path: path, Holder: readHolder(path)}
		}
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOLCK) {
			// Shared filesystems: NFS supports flock through its lock manager; Lustre only
			// when mounted with -o flock.
			return nil, fmt.Errorf("lock %s: %w; the results root's filesystem does not support flock(2): put --results on a local or flock-capable filesystem (Lustre: mount -o flock)", path, err)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(Holder{PID: os.Getpid(), Host: host, StartedAt: time.Now().UTC(), Command: strings.Join(os.Args, " ")})
	// Advisory: a lock whose record cannot be written still locks.
	_ = renameio.WriteFile(holderPath(path), append(b, '\n'), 0o644)
	heldMu.Lock()
	held[filepath.Clean(path)] = true
	heldMu.Unlock()
	return &FileLock{f: f, path: path}, nil
}

// Unlock removes the holder record and drops the lock. Idempotent.
func (l *FileLock) Unlock() {
	l.once.Do(func() {
		heldMu.Lock()
		delete(held, filepath.Clean(l.path))
		heldMu.Unlock()
		_ = os.Remove(holderPath(l.path))
		_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
	})
}

// readHolder reads a lock's holder record. The holder writes it just after taking the lock,
// and a holder killed with SIGKILL leaves its record behind for the next one to overwrite:
// a record that is missing or names a dead process on this host is read again for a moment.
func readHolder(lock string) *Holder {
	host, _ := os.Hostname()
	var last *Holder
	for range 25 {
		b, err := os.ReadFile(holderPath(lock))
		if err == nil {
			var h Holder
			if json.Unmarshal(b, &h) == nil && h.PID > 0 {
				last = &h
				if h.Host != host || syscall.Kill(h.PID, 0) != syscall.ESRCH {
					return &h
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return last
}

// Holder reads who holds cell id's lock now, without taking it (taking it, even for a
// moment, could refuse a real runner). Advisory, for plans and status: nil when no live
// holder is recorded. The flock stays the only lock.
func (l *Layout) Holder(id string) *Holder {
	b, err := os.ReadFile(holderPath(l.lockPath(id)))
	if err != nil {
		return nil
	}
	var h Holder
	if json.Unmarshal(b, &h) != nil || h.PID <= 0 {
		return nil
	}
	if host, _ := os.Hostname(); h.Host == host && syscall.Kill(h.PID, 0) == syscall.ESRCH {
		return nil // left by a holder killed with SIGKILL
	}
	return &h
}
