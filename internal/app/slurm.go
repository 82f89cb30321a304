package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// SlurmCellOptions are the typed settings of how a cell runs, read once from the flags.
type SlurmCellOptions struct {
	Cell                      CellOptions
	Matrix                    string
	Retries                   int
	RetryBackoff, CellTimeout time.Duration
}

// Check refuses settings out of their bounds.
func (o SlurmCellOptions) Check() error {
	if err := o.Cell.Check(); err != nil {
		return err
	}
	for _, err := range []error{
		config.CheckInt("settings", "--retries", int64(o.Retries), 0, config.MaxRetries, "extra attempts"),
		config.CheckDuration("settings", "--retry-backoff", o.RetryBackoff, 0, time.Hour),
		config.CheckDuration("settings", "--cell-timeout", o.CellTimeout, 0, 7*24*time.Hour),
	} {
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
	}
	return nil
}

// slurmErr gives errors of the Slurm commands the usage/config exit code: a missing client
// or an unreachable controller is fixed in the environment, not by rerunning.
func slurmErr(err error) error {
	if errors.Is(err, slurm.ErrNoSlurm) || errors.Is(err, slurm.ErrController) {
		return exitcode.New(exitcode.Usage, err)
	}
	return exitcode.New(exitcode.Internal, err)
}

// slurmTime turns --time into Slurm's format: a Go duration becomes H:MM:SS, Slurm's own
// formats pass as they are.
func slurmTime(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return "", fmt.Errorf("--time %q: expected a positive duration", s)
		}
		sec := int64((d + time.Second - 1) / time.Second)
		return fmt.Sprintf("%d:%02d:%02d", sec/3600, sec/60%60, sec%60), nil
	}
	if regexp.MustCompile(`^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$`).MatchString(s) {
		return s, nil
	}
	return "", fmt.Errorf("--time %q: expected a duration such as 8h or 90m, or Slurm's D-HH:MM:SS", s)
}

// SlurmSubmitRequest is slurm submit: how cells run, which cells, and sbatch's options.
type SlurmSubmitRequest struct {
	Cell                SlurmCellOptions
	Hardware            []string // hardware labels to submit; none: every cell
	Only                string
	IncludeDone, NoSkip bool
	Partition, Account  string
	QOS, Time           string
	MaxParallel         int
	SbatchArgs          []string
	DryRun              bool
	Moecapd             string // the binary the tasks run; "": this one
	// Forward is the cell flags as given to submit, applied to every task.
	Forward map[string]string
	Log     *zap.Logger
	Out     io.Writer
}

// SlurmSubmit submits the matrix's cells the results root does not hold as ok and Slurm
// does not hold queued, one job array per hardware label; DryRun prints the sbatch
// commands and submits nothing.
func SlurmSubmit(ctx context.Context, req SlurmSubmitRequest) error {
	sub, err := prepareSubmit(req)
	if err != nil {
		return err
	}
	results, _, err := readResults(sub.arrays.Results, req.Log)
	if err != nil {
		return err
	}
	items := planPerHardware(sub.mx, sub.tables, results, sub.plan)
	if !req.DryRun {
		lock, err := lockSubmit(sub.arrays.Results)
		if err != nil {
			return err
		}
		defer lock.Unlock()
	}
	rec, err := slurm.ReadRecord(sub.arrays.Results)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	pick, err := pickSlurmCells(ctx, sub, items, rec, req.Log)
	if err != nil {
		return err
	}
	if len(pick.cells) == 0 {
		fmt.Fprintf(req.Out, "nothing to submit: %d cell(s) kept from results (ok or infeasible), %d queued or running in Slurm, %d done per matrix or skipped\n", pick.kept, pick.queued, pick.other)
		return nil
	}
	if _, err := submitArrays(ctx, rec, pick.cells, sub.arrays); err != nil {
		return err
	}
	if req.DryRun {
		fmt.Fprintf(req.Out, "dry run: nothing submitted; kept %d cell(s) from results, %d already queued or running\n", pick.kept, pick.queued)
		return nil
	}
	fmt.Fprintf(req.Out, "kept %d cell(s) from results, %d already queued or running; moecapd slurm status --results %s\n", pick.kept, pick.queued, req.Cell.Cell.Results)
	return nil
}

// slurmSubmit is a submit's settings, checked: the matrix, the labels and plan options that
// pick its cells, and how the picked cells go to sbatch.
type slurmSubmit struct {
	tables *config.Tables
	mx     *matrix.Matrix
	labels map[string]bool // --hardware; empty: every label
	plan   matrix.Options
	arrays SlurmArrayOptions
}

// prepareSubmit loads the matrix and checks every flag before anything is asked of Slurm.
func prepareSubmit(req SlurmSubmitRequest) (*slurmSubmit, error) {
	so := req.Cell
	tables, mx, err := loadMatrix(MatrixOptions{Matrix: so.Matrix, ConfigsDir: so.Cell.ConfigsDir})
	if err != nil {
		return nil, err
	}
	if err := checkMatrixLoads(so.Cell, mx); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(so.Cell.Results)
	if err != nil {
		return nil, err
	}
	matrixPath := so.Matrix
	if _, err := os.Stat(matrixPath); err == nil {
		matrixPath, _ = filepath.Abs(matrixPath)
	}
	s := &slurmSubmit{tables: tables, mx: mx, arrays: SlurmArrayOptions{
		Matrix: matrixPath, Results: root, Moecapd: req.Moecapd,
		Partition: req.Partition, Account: req.Account, QOS: req.QOS, Time: req.Time,
		MaxParallel: req.MaxParallel, SbatchArgs: req.SbatchArgs, Forward: req.Forward,
		DryRun: req.DryRun, Log: req.Log, Out: req.Out}}
	if err := s.arrays.resolve(); err != nil {
		return nil, err
	}
	if s.labels, err = hardwareLabels(mx, req.Hardware); err != nil {
		return nil, err
	}
	if s.plan, err = slurmPlanOptions(req.IncludeDone, req.NoSkip, req.Only); err != nil {
		return nil, err
	}
	return s, nil
}

// slurmPlanOptions is how slurm submit plans: a failed result is resubmitted (the cluster
// is where the matrix is redone), --only keeps the cells it matches.
func slurmPlanOptions(includeDone, noSkip bool, only string) (matrix.Options, error) {
	o := matrix.Options{IncludeDone: includeDone, NoSkip: noSkip, RedoFailed: true}
	var err error
	o.Only, err = onlyMatcher(only)
	return o, err
}

// hardwareLabels checks --hardware against the matrix's own labels.
func hardwareLabels(mx *matrix.Matrix, asked []string) (map[string]bool, error) {
	known := map[string]bool{}
	for _, c := range mx.Cells {
		known[c.Hardware] = true
	}
	labels := map[string]bool{}
	for _, l := range asked {
		if _, _, err := matrix.ParseHardware(l); err != nil {
			return nil, exitcode.Usagef("--hardware: %v", err)
		}
		if !known[l] {
			return nil, exitcode.Usagef("--hardware %s: no cell of %s has that hardware; its labels: %s", l, mx.Path, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		labels[l] = true
	}
	return labels, nil
}

// planPerHardware plans every cell as on a node of its own hardware: that is the node Slurm
// gives it. The items are keyed by cell id.
func planPerHardware(mx *matrix.Matrix, tables *config.Tables, results map[string]*cell.Manifest, opts matrix.Options) map[string]*matrix.Item {
	items := map[string]*matrix.Item{}
	planned := map[string]bool{}
	for _, c := range mx.Cells {
		if planned[c.Hardware] {
			continue
		}
		planned[c.Hardware] = true
		node, _ := matrix.ParseNode(c.Hardware)
		for _, it := range matrix.Plan(mx, tables, node, results, opts) {
			if it.Cell.Hardware == c.Hardware {
				items[it.Cell.ID] = it
			}
		}
	}
	return items
}

// lockSubmit takes the results root's submit lock: one submit at a time per results root,
// since two would both see a cell unqueued.
func lockSubmit(root string) (*cell.FileLock, error) {
	if err := os.MkdirAll(slurm.Path(root), 0o755); err != nil {
		return nil, exitcode.New(exitcode.Usage, fmt.Errorf("create %s: %w (the results root must be writable)", slurm.Path(root), err))
	}
	lock, err := cell.TryLock(slurm.Path(root, slurm.SubmitLock), "slurm submit on "+root)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	return lock, nil
}

// slurmPick is the cells a submit sends, in matrix order, and the counts of those it leaves.
type slurmPick struct {
	cells               []*matrix.Cell
	kept, queued, other int
}

// pickSlurmCells keeps the planned cells to run of the asked labels that Slurm does not
// already hold queued or running for this results root.
func pickSlurmCells(ctx context.Context, s *slurmSubmit, items map[string]*matrix.Item, rec *slurm.Record, log *zap.Logger) (slurmPick, error) {
	var p slurmPick
	latest := rec.Latest()
	queue, err := s.arrays.CLI.Queue(ctx, rec.JobIDs())
	if err != nil {
		return p, slurmErr(fmt.Errorf("ask Slurm which of this root's tasks are queued: %w", err))
	}
	for _, c := range s.mx.Cells {
		it := items[c.ID]
		if len(s.labels) > 0 && !s.labels[c.Hardware] {
			continue
		}
		if it.Action != matrix.ActRun {
			if it.Action == matrix.ActKeep {
				p.kept++
			} else if it.Action != matrix.ActFiltered {
				p.other++
			}
			continue
		}
		if a, ok := latest[c.ID]; ok {
			if t, ok := queue[a.Key()]; ok && t.Active() {
				p.queued++
				log.Debug("already queued", zap.String("cell", c.ID), zap.String("task", a.Key()), zap.String("state", t.State))
				continue
			}
		}
		p.cells = append(p.cells, c)
	}
	return p, nil
}

// shellWords renders an argv for display, quoted so it can be pasted into a shell.
func shellWords(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && !strings.ContainsFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=/.,:%@+", r))
		}) {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
