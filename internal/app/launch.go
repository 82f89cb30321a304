package app

import (
	"errors"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// LaunchRequest is one launch-and-bench: a cell's settings, the extra server flags (after
// --), the progress mode and where the plan or summary goes.
type LaunchRequest struct {
	Cell     CellOptions
	Extra    []string
	Progress string // auto, tty or log
	Log      *zap.Logger
	Out      io.Writer // the dry run's plan, the cell's summary
}

// Launch runs one cell end to end (or, with DryRun, prints its plan). The summary is
// written once the cell has a manifest; the error carries the cell's exit code.
func Launch(req LaunchRequest) error {
	o, log := req.Cell, req.Log
	if !o.DryRun {
		if err := refuseUnderDaemon(); err != nil {
			return err
		}
	}
	c, cleanup, err := cellConfig(o, log, req.Extra, nil)
	if err != nil {
		return err
	}
	defer cleanup()
	plan, err := cell.MakePlan(c)
	if err != nil {
		if config.IsConfigError(err) {
			return exitcode.New(exitcode.Usage, err)
		}
		return err
	}
	warnExposed(log, "the inference server (--host)", o.Host)
	if o.DryRun {
		fmt.Fprint(req.Out, plan.Describe())
		return nil
	}
	BecomeSubreaper(log)
	ctx, stop := SignalContext(log)
	defer stop()
	switch pm := req.Progress; {
	case pm != "auto" && pm != "tty" && pm != "log":
		return exitcode.Usagef("--progress %q: want auto, tty or log", pm)
	case pm == "tty" || (pm == "auto" && term.IsTerminal(int(os.Stderr.Fd()))):
		// A live line on the terminal during the bench: requests done / total, tok/s, ETA.
		// Otherwise (a log file, nohup) a plain progress log line every 10 s.
		c.Native.Progress = os.Stderr
	}
	m, err := cell.Run(ctx, c, plan)
	if err != nil {
		if errors.Is(err, cell.ErrLocked) || config.IsConfigError(err) {
			// Another runner has this cell (launch-and-bench, a matrix, a Slurm task): its
			// directory was not touched.
			return exitcode.New(exitcode.Usage, err)
		}
		if m != nil {
			WriteCellSummary(req.Out, plan.Dir, m) // what was measured, even if not recorded
		}
		if err := cell.StorageError(err); exitcode.Of(err) != int(exitcode.Internal) {
			return err // classified: a results disk full, read-only or not writable is 2
		}
		return exitcode.New(exitcode.Internal, err)
	}
	WriteCellSummary(req.Out, plan.Dir, m)
	return m.Err()
}
