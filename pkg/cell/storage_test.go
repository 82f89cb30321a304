package cell

import (
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

func TestStorageProblem(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("write manifest: %w", &fs.PathError{Op: "write", Path: "/r/c/manifest.json", Err: syscall.ENOSPC}), "full"},
		{fmt.Errorf("create: %w", &fs.PathError{Op: "open", Path: "/r/c", Err: syscall.EROFS}), "read-only"},
		{fmt.Errorf("x: %w", syscall.EINVAL), ""},
	} {
		if got := StorageProblem(tt.err); tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("StorageProblem(%v) = %q, want %q in it", tt.err, got, tt.want)
		}
	}
}
