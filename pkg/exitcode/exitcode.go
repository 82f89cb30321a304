// Package exitcode is moecapd's one outcome table: the exit code of every command, as the
// README's table ("Exit codes, the one table for every command") and docs/DESIGN.md's
// "exit codes" list it. An error carries its outcome as a Kind (New, Errorf); Of turns the
// error a command returned into its exit code, once, in cmd/moecapd's main.
package exitcode

import (
	"errors"
	"fmt"
)

// Kind is an outcome; its value is the exit code.
type Kind int

// The table. No other exit code is used.
const (
	OK          Kind = 0
	Internal    Kind = 1   // a bug of moecapd
	Usage       Kind = 2   // usage, config or setup problem (a bad flag or file, a lock held)
	Launch      Kind = 3   // the server failed to launch or become ready
	Infeasible  Kind = 4   // out of GPU memory
	Bench       Kind = 5   // the bench failed or its result is invalid
	Teardown    Kind = 6   // teardown left something behind
	CellsFailed Kind = 8   // matrix run: the results root holds failed cells of the matrix
	Regression  Kind = 9   // compare: a significant regression beyond --threshold
	Interrupted Kind = 130 // SIGINT, SIGTERM or SIGHUP; the server was torn down first
)

// Error is an error with its outcome.
type Error struct {
	Kind Kind
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// New gives err the outcome k; nil stays nil.
func New(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: k, Err: err}
}

// Errorf is New(k, fmt.Errorf(format, a...)).
func Errorf(k Kind, format string, a ...any) error {
	return &Error{Kind: k, Err: fmt.Errorf(format, a...)}
}

// Usagef is the usage error of the table (exit 2).
func Usagef(format string, a ...any) error { return Errorf(Usage, format, a...) }

// Of is the exit code of what a command returned: 0 for nil, the outermost Kind an Error
// in its chain carries, else 1 (an error nobody classified is a bug).
func Of(err error) int {
	if err == nil {
		return int(OK)
	}
	var e *Error
	if errors.As(err, &e) {
		return int(e.Kind)
	}
	return int(Internal)
}

// With gives err the exit code code (a Kind of the table); nil stays nil.
func With(code int, err error) error { return New(Kind(code), err) }
