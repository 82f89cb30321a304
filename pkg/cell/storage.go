package cell

import (
	"errors"
	"syscall"
)

// StorageProblem says what is wrong with the results directory's disk when err is a
// disk full (ENOSPC, EDQUOT) or read-only file system (EROFS) error, with the fix; "" for
// any other error. Both are setup problems of the user's (exit 2), not bugs.
func StorageProblem(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return "the disk of the results directory is full (or over quota): free space there or pass --results on another disk, then run again"
	case errors.Is(err, syscall.EROFS):
		return "the results directory is on a read-only file system: pass --results on a writable disk"
	}
	return ""
}
