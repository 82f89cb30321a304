package app

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/moecapd/moecapd/pkg/compare"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// CompareRequest is moecapd compare: the comparison and how to render it.
type CompareRequest struct {
	compare.Request
	Format string // one of compare.Formats
}

// Compare compares, writes the report to w and returns an error carrying exit 9
// (exitcode.Regression) when a metric regressed significantly beyond the threshold, exit 2
// for a bad request or a side without cells.
func Compare(req CompareRequest, w io.Writer) error {
	valid := false
	for _, f := range compare.Formats {
		valid = valid || f == req.Format
	}
	if !valid {
		return exitcode.Usagef("--format %q: one of %s", req.Format, strings.Join(compare.Formats, ", "))
	}
	rep, err := compare.Compare(req.Request)
	var ie *compare.InputError
	if errors.As(err, &ie) {
		return exitcode.New(exitcode.Usage, err)
	}
	if err != nil {
		return exitcode.New(exitcode.Internal, err)
	}
	if err := rep.Write(w, req.Format); err != nil {
		return exitcode.New(exitcode.Internal, fmt.Errorf("write the comparison: %w", err))
	}
	if n := len(rep.Regressions); n > 0 {
		return exitcode.Errorf(exitcode.Regression, "%d significant regression(s) beyond --threshold %g%%: %s",
			n, req.Threshold, strings.Join(rep.Regressions, "; "))
	}
	return nil
}
