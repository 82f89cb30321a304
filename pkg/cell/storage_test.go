package cell

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"testing"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

func TestStorageProblem(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("write manifest: %w", &fs.PathError{Op: "write", Path: "/r/c/manifest.json", Err: syscall.ENOSPC}), "full"},
		{fmt.Errorf("create: %w", &fs.PathError{Op: "open", Path: "/r/c", Err: syscall.EROFS}), "read-only"},
		{fmt.Errorf("mkdir: %w", &fs.PathError{Op: "mkdir", Path: "/r/c", Err: syscall.EACCES}), "permission denied"},
		{fmt.Errorf("x: %w", syscall.EINVAL), ""},
	} {
		if got := StorageProblem(tt.err); tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("StorageProblem(%v) = %q, want %q in it", tt.err, got, tt.want)
		}
	}
}

// StorageError gives a storage problem exit 2 and its message once; other errors and
// classified ones pass through.
func TestStorageError(t *testing.T) {
	full := &fs.PathError{Op: "write", Path: "/r/c/manifest.json", Err: syscall.ENOSPC}
	e := StorageError(full)
	if exitcode.Of(e) != int(exitcode.Usage) || !strings.HasPrefix(e.Error(), "the disk of the results directory is full") {
		t.Errorf("StorageError(ENOSPC) = %v (exit %d)", e, exitcode.Of(e))
	}
	if again := StorageError(fmt.Errorf("cell x: %w", e)); strings.Count(again.Error(), "is full") != 1 {
		t.Errorf("classified twice: %v", again)
	}
	plain := errors.New("boom")
	if StorageError(plain) != plain {
		t.Error("an unrelated error was changed")
	}
}
