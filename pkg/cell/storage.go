package cell

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// StorageProblem says what is wrong with the results directory's disk when err is a
// disk full (ENOSPC, EDQUOT), read-only file system (EROFS) or permission (EACCES, EPERM)
// error, with the fix; "" for any other error. All are setup problems of the user's (exit 2),
// not bugs.
func StorageProblem(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return "the disk of the results directory is full (or over quota): free space there or pass --results on another disk, then run again"
	case errors.Is(err, syscall.EROFS):
		return "the results directory is on a read-only file system: pass --results on a writable disk"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "this user may not write the results directory (permission denied): fix its permissions or pass --results elsewhere"
	}
	return ""
}

// StorageError classifies an error writing the results directory: a full or read-only disk,
// or one this user may not write, is a setup problem (exit 2) with StorageProblem's message
// before it; any other error, or one already classified, comes back as it was.
func StorageError(err error) error {
	var done *exitcode.Error
	if errors.As(err, &done) {
		return err
	}
	if why := StorageProblem(err); why != "" {
		return exitcode.New(exitcode.Usage, fmt.Errorf("%s (%w)", why, err))
	}
	return err
}
