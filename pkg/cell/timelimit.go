package cell

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// TimeLimit is the cause of a cell context that ended at the cell's time limit (matrix
// run's --cell-timeout, a group's timeout): the pipeline, the cell's one manifest writer,
// records the cell failed with kind timeout in the phase it had reached, its server torn
// down, where another cancellation records it interrupted.
type TimeLimit struct{ Limit time.Duration }

func (e *TimeLimit) Error() string { return fmt.Sprintf("the cell's time limit of %s", e.Limit) }

// WithTimeLimit is ctx ended at the cell's time limit (cause *TimeLimit).
func WithTimeLimit(ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, limit, &TimeLimit{Limit: limit})
}

// Stopped is the failure of a cell whose context ended during phase ph: failed/timeout
// when its cause is the cell's time limit, else interrupted (the cause, a signal when
// cmd/moecapd cancelled it for one, named in the message).
func Stopped(ctx context.Context, ph Phase) (Kind, string) {
	cause := context.Cause(ctx)
	var tl *TimeLimit
	if errors.As(cause, &tl) {
		return exitcode.FailTimeout, fmt.Sprintf("the cell ran past its time limit of %s during %s and was stopped; raise --cell-timeout (or the group's timeout) if it was making progress", tl.Limit, ph)
	}
	why := "a signal (SIGINT, SIGTERM or SIGHUP)"
	if cause != nil && !errors.Is(cause, context.Canceled) {
		why = cause.Error()
	}
	return exitcode.FailInterrupted, fmt.Sprintf("interrupted during %s by %s; the server was torn down", ph, why)
}

// StatusOf is the status a cell ends with for a failure of kind: infeasible for oom,
// interrupted for interrupted, else failed.
func StatusOf(kind Kind) Status {
	switch kind {
	case exitcode.FailOOM:
		return StatusInfeasible
	case exitcode.FailInterrupted:
		return StatusInterrupted
	}
	return StatusFailed
}
