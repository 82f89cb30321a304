package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
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
	so, log, out := req.Cell, req.Log, req.Out
	var err error
	tables, mx, err := loadMatrix(MatrixOptions{Matrix: so.Matrix, ConfigsDir: so.Cell.ConfigsDir})
	if err != nil {
		return err
	}
	root, err := filepath.Abs(so.Cell.Results)
	if err != nil {
		return err
	}
	matrixPath := so.Matrix
	if _, err := os.Stat(matrixPath); err == nil {
		matrixPath, _ = filepath.Abs(matrixPath)
	}
	tlimit, err := slurmTime(req.Time)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	if req.MaxParallel < 0 {
		return exitcode.Usagef("--max-parallel %d: expected 0 (no limit) or a positive number of tasks", req.MaxParallel)
	}
	self := req.Moecapd
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return err
		}
	}
	if fi, err := os.Stat(self); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return exitcode.Usagef("--moecapd %s: not an executable file; pass the path of a moecapd binary the nodes can run", self)
	}
	known := map[string]bool{}
	for _, c := range mx.Cells {
		known[c.Hardware] = true
	}
	labels := map[string]bool{}
	for _, l := range req.Hardware {
		if _, _, err := matrix.ParseHardware(l); err != nil {
			return exitcode.Usagef("--hardware: %v", err)
		}
		if !known[l] {
			return exitcode.Usagef("--hardware %s: no cell of %s has that hardware; its labels: %s", l, mx.Path, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		labels[l] = true
	}
	opts := matrix.Options{IncludeDone: req.IncludeDone, NoSkip: req.NoSkip,
		// A failed result is resubmitted: the cluster is where the matrix is redone.
		RedoFailed: true}
	if re := req.Only; re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return exitcode.Usagef("--only %q: %v", re, err)
		}
		opts.Only = rx.MatchString
	}
	results, _, err := readResults(root, log)
	if err != nil {
		return err
	}
	// Every cell is planned as on a node of its own hardware: that is the node Slurm gives it.
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

	cli := &slurm.CLI{}
	var lock *cell.FileLock
	if !req.DryRun {
		// One submit at a time per results root: two would both see a cell unqueued.
		if err := os.MkdirAll(slurm.Path(root), 0o755); err != nil {
			return exitcode.New(exitcode.Usage, fmt.Errorf("create %s: %w (the results root must be writable)", slurm.Path(root), err))
		}
		if lock, err = cell.TryLock(slurm.Path(root, slurm.SubmitLock), "slurm submit on "+root); err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		defer lock.Unlock()
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	latest := rec.Latest()
	queue, err := cli.Queue(ctx, rec.JobIDs())
	if err != nil {
		return slurmErr(fmt.Errorf("ask Slurm which of this root's tasks are queued: %w", err))
	}

	// One array per hardware label (so per GPU count, and never two GPU families in one
	// array: an H200 cell must not land on an A100 node of the same partition).
	byLabel := map[string][]*matrix.Cell{}
	var kept, queued, other int
	for _, c := range mx.Cells {
		it := items[c.ID]
		if len(labels) > 0 && !labels[c.Hardware] {
			continue
		}
		if it.Action != matrix.ActRun {
			if it.Action == matrix.ActKeep {
				kept++
			} else if it.Action != matrix.ActFiltered {
				other++
			}
			continue
		}
		if a, ok := latest[c.ID]; ok {
			if t, ok := queue[a.Key()]; ok && t.Active() {
				queued++
				log.Debug("already queued", zap.String("cell", c.ID), zap.String("task", a.Key()), zap.String("state", t.State))
				continue
			}
		}
		byLabel[c.Hardware] = append(byLabel[c.Hardware], c)
	}
	if len(byLabel) == 0 {
		fmt.Fprintf(out, "nothing to submit: %d cell(s) kept from results (ok or infeasible), %d queued or running in Slurm, %d done per matrix or skipped\n", kept, queued, other)
		return nil
	}

	// Without a cluster to ask (a dry run), Slurm's defaults.
	ccfg := slurm.Config{MaxArraySize: 1001}
	if !req.DryRun {
		if ccfg, err = cli.ShowConfig(ctx); err != nil {
			return slurmErr(fmt.Errorf("read the cluster's configuration: %w", err))
		}
	}
	killWait := ccfg.KillWait
	forward := req.Forward
	script := slurm.Path(root, slurm.ScriptFile)
	if !req.DryRun {
		if script, err = slurm.WriteScript(root); err != nil {
			return exitcode.New(exitcode.Usage, fmt.Errorf("write the batch script under %s: %w (the results root must be writable)", root, err))
		}
	}
	// Split where an array would pass the cluster's MaxArraySize.
	type group struct {
		label string
		gpus  int
		ids   []string
	}
	var groups []group
	labelList := slices.Collect(maps.Keys(byLabel))
	sort.Slice(labelList, func(i, j int) bool {
		a, b := byLabel[labelList[i]][0], byLabel[labelList[j]][0]
		if a.GPUs != b.GPUs {
			return a.GPUs < b.GPUs
		}
		return a.Hardware < b.Hardware
	})
	families := map[string]bool{}
	for _, l := range labelList {
		var ids []string
		for _, c := range byLabel[l] {
			ids = append(ids, c.ID)
			if c.Backend != launcher.BackendSim {
				families[c.Family] = true
			}
		}
		for part := range slices.Chunk(ids, ccfg.MaxArraySize) {
			groups = append(groups, group{l, byLabel[l][0].GPUs, part})
		}
	}
	if len(families) > 1 {
		log.Warn("this submit sends cells of several GPU families to the same partition; unless the partition's nodes are all alike, submit each family on its own (--hardware with its --partition or --sbatch-arg=--constraint=...) so every cell lands on its own hardware",
			zap.Strings("families", slices.Sorted(maps.Keys(families))))
	}
	stamp := time.Now().UTC().Format("20060102T150405.000")
	cwd, _ := os.Getwd()
	for i, g := range groups {
		n, ids := g.gpus, g.ids
		specPath := slurm.Path(root, slurm.ArraysDir, fmt.Sprintf("%s-%s-%d.json", stamp, g.label, i))
		spec := &slurm.Spec{SchemaVersion: slurm.SpecVersion, Matrix: matrixPath, Results: root, GPUs: n,
			Cells: ids, KillWaitS: killWait.Seconds(), Flags: forward}
		sub := slurm.SubmitSpec{Name: "moecapd-" + g.label, GPUs: n, Tasks: len(ids),
			MaxParallel: req.MaxParallel, Partition: req.Partition, Account: req.Account,
			QOS: req.QOS, Time: tlimit, Output: slurm.Path(root, slurm.LogsDir, "%A_%a.out"), Chdir: cwd,
			Extra: req.SbatchArgs, Script: script,
			Args: []string{self, "slurm", "task", "--spec", specPath}}
		if req.DryRun {
			fmt.Fprintf(out, "array %d of %d: %d %s cell(s), %d GPU(s) per task\n  sbatch %s\n", i+1, len(groups), len(ids), g.label, n, shellWords(sub.Argv()))
			if len(forward) > 0 {
				var set []string
				for k, val := range forward {
					set = append(set, "--"+k+"="+val)
				}
				sort.Strings(set)
				fmt.Fprintf(out, "  settings for every task: %s\n", shellWords(set))
			}
			for j, id := range ids {
				fmt.Fprintf(out, "  task %d  %s\n", j, id)
			}
			continue
		}
		if err := os.MkdirAll(slurm.Path(root, slurm.LogsDir), 0o755); err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		if err := slurm.WriteSpec(specPath, spec); err != nil {
			return exitcode.New(exitcode.Usage, fmt.Errorf("write the task spec: %w", err))
		}
		id, err := cli.Submit(ctx, sub)
		if err != nil {
			_ = os.Remove(specPath)
			return slurmErr(fmt.Errorf("submit the %d-GPU array (%d cells): %w", n, len(ids), err))
		}
		rec.Arrays = append(rec.Arrays, slurm.Array{JobID: id, Name: sub.Name, Hardware: g.label, GPUs: n, Cells: ids, Spec: specPath,
			SbatchArgv: append([]string{"sbatch"}, sub.Argv()...), SubmittedAt: time.Now().UTC()})
		// Recorded at once: a failure submitting the next array must not lose this one.
		if err := slurm.WriteRecord(root, rec); err != nil {
			return exitcode.New(exitcode.Internal, fmt.Errorf("array %s was submitted but could not be recorded (cancel it with scancel %s): %w", id, id, err))
		}
		fmt.Fprintf(out, "submitted array %s: %d %s cell(s), %d GPU(s) per task\n", id, len(ids), g.label, n)
		log.Info("array submitted", zap.String("job", id), zap.Int("gpus", n), zap.Strings("cells", ids))
	}
	if req.DryRun {
		fmt.Fprintf(out, "dry run: nothing submitted; kept %d cell(s) from results, %d already queued or running\n", kept, queued)
		return nil
	}
	fmt.Fprintf(out, "kept %d cell(s) from results, %d already queued or running; moecapd slurm status --results %s\n", kept, queued, so.Cell.Results)
	return nil
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

// SlurmStatusRow is one line of slurm status.
type SlurmStatusRow struct {
	Cell    string      `json:"cell"`
	Status  cell.Status `json:"status,omitempty"` // the manifest's; absent: no result yet
	Failure string      `json:"failure,omitempty"`
	Slurm   *SlurmView  `json:"slurm,omitempty"`
}

type SlurmView struct {
	JobID      string `json:"job_id,omitempty"`
	ArrayJobID string `json:"array_job_id"`
	TaskID     int    `json:"array_task_id"`
	State      string `json:"state,omitempty"` // Slurm's job state; absent once the controller forgot the job
	Reason     string `json:"reason,omitempty"`
	Node       string `json:"node,omitempty"`
	Elapsed    string `json:"elapsed,omitempty"`
	ExitCode   string `json:"exit_code,omitempty"`
	Source     string `json:"source,omitempty"` // squeue or sacct
	View       string `json:"view"`
	Log        string `json:"log"`
}

func describeTask(t slurm.Task) string {
	switch t.State {
	case "PENDING":
		return "queued (" + t.Reason + ")"
	case "RUNNING":
		return "running on " + t.Node + " for " + t.Elapsed
	case "COMPLETING":
		return "finishing on " + t.Node
	case "COMPLETED":
		return "finished"
	case "CANCELLED":
		return "cancelled"
	case "TIMEOUT":
		return "timed out"
	case "FAILED":
		if t.ExitCode != "" {
			return "failed (exit " + t.ExitCode + ")"
		}
		return "failed"
	case "NODE_FAIL":
		return "node failed"
	case "PREEMPTED":
		return "preempted"
	case "OUT_OF_MEMORY":
		return "out of host memory"
	case "REQUEUED", "REQUEUE_HOLD":
		return "requeued"
	}
	return strings.ToLower(t.State)
}

// SlurmStatusRequest is slurm status: the results root and the output form.
type SlurmStatusRequest struct {
	Results string
	JSON    bool
	Log     *zap.Logger
	Out     io.Writer
}

// SlurmStatus writes each submitted cell's manifest status beside Slurm's view of its task;
// a Slurm that cannot be asked is reported after the table, in the error.
func SlurmStatus(ctx context.Context, req SlurmStatusRequest) error {
	log := req.Log
	root, err := filepath.Abs(req.Results)
	if err != nil {
		return err
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	results, _, err := readResults(root, log)
	if err != nil {
		return err
	}
	cli := &slurm.CLI{}
	ids := rec.JobIDs()
	// The manifests are the truth and are shown whatever Slurm says; a Slurm that cannot be
	// asked is reported after the table (and in the exit code).
	var unreachable error
	queue, err := cli.Queue(ctx, ids)
	if err != nil {
		unreachable = fmt.Errorf("squeue: %w", err)
	}
	var acct map[string]slurm.Task
	noAcct := true
	if unreachable == nil {
		acct, err = cli.Acct(ctx, ids)
		// No slurmdbd, or no sacct at all: squeue's view is all there is.
		noAcct = errors.Is(err, slurm.ErrNoAccounting) || errors.Is(err, slurm.ErrNoSlurm)
		if err != nil && !noAcct {
			unreachable = fmt.Errorf("sacct: %w", err)
		}
	}
	latest := rec.Latest()
	var names []string
	for id := range latest {
		names = append(names, id)
	}
	for id := range results {
		if _, ok := latest[id]; !ok {
			names = append(names, id)
		}
	}
	sort.Strings(names)
	rows := make([]SlurmStatusRow, 0, len(names))
	for _, id := range names {
		r := SlurmStatusRow{Cell: id}
		if m := results[id]; m != nil {
			r.Status = m.Status
			if m.Failure != nil {
				r.Failure = fmt.Sprintf("%s/%s: %s", m.Failure.Phase, m.Failure.Kind, firstLineOf(m.Failure.Message))
			}
		}
		if a, ok := latest[id]; ok {
			sv := &SlurmView{ArrayJobID: a.Array.JobID, TaskID: a.Index,
				Log: slurm.Path(root, slurm.LogsDir, fmt.Sprintf("%s_%d.out", a.Array.JobID, a.Index))}
			t, ok := queue[a.Key()]
			if !ok {
				t, ok = acct[a.Key()]
			}
			if unreachable != nil {
				ok = false
			}
			if ok {
				sv.JobID, sv.State, sv.Reason, sv.Node, sv.Elapsed, sv.ExitCode, sv.Source = t.JobID, t.State, t.Reason, t.Node, t.Elapsed, t.ExitCode, t.Source
				sv.View = describeTask(t)
			} else if unreachable != nil {
				sv.View = "unknown (Slurm not reachable)"
			} else if noAcct {
				sv.View = "no longer in the queue (finished; the cluster keeps no accounting)"
			} else {
				sv.View = "unknown to squeue and sacct"
			}
			r.Slurm = sv
		}
		rows = append(rows, r)
	}
	if req.JSON {
		enc := json.NewEncoder(req.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		printSlurmStatus(req.Out, root, rows)
	}
	if unreachable != nil {
		return slurmErr(fmt.Errorf("manifests shown without Slurm's view: %w", unreachable))
	}
	return nil
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

func printSlurmStatus(w io.Writer, root string, rows []SlurmStatusRow) {
	fmt.Fprintf(w, "results  %s\n\n", root)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CELL\tMANIFEST\tSLURM\tTASK\tFAILURE")
	counts := map[string]int{}
	for _, r := range rows {
		st := string(r.Status)
		if st == "" {
			st = "-"
		}
		counts[st]++
		view, task := "not submitted", "-"
		if r.Slurm != nil {
			view, task = r.Slurm.View, fmt.Sprintf("%s_%d", r.Slurm.ArrayJobID, r.Slurm.TaskID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Cell, st, view, task, r.Failure)
	}
	tw.Flush()
	var parts []string
	for _, k := range []string{"ok", "running", "failed", "infeasible", "interrupted", "-"} {
		if counts[k] > 0 {
			name := k
			if k == "-" {
				name = "no result yet"
			}
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], name))
		}
	}
	fmt.Fprintf(w, "\n%d cell(s): %s\n", len(rows), strings.Join(parts, ", "))
}

// SlurmCancelRequest is slurm cancel: the results root, which cells, how long to wait.
type SlurmCancelRequest struct {
	Results string
	Only    string
	Wait    time.Duration
	Out     io.Writer
}

// SlurmCancel cancels the results root's queued and running tasks and waits (up to Wait)
// for them to end with their servers torn down.
func SlurmCancel(ctx context.Context, req SlurmCancelRequest) error {
	root, err := filepath.Abs(req.Results)
	if err != nil {
		return err
	}
	only := func(string) bool { return true }
	if re := req.Only; re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return exitcode.Usagef("--only %q: %v", re, err)
		}
		only = rx.MatchString
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	cli := &slurm.CLI{}
	queue, err := cli.Queue(ctx, rec.JobIDs())
	if err != nil {
		return slurmErr(fmt.Errorf("squeue: %w", err))
	}
	var ids, cells []string
	for id, a := range rec.Latest() {
		if t, ok := queue[a.Key()]; ok && t.Active() && only(id) {
			ids = append(ids, a.Key())
			cells = append(cells, id)
		}
	}
	if len(ids) == 0 {
		fmt.Fprintln(req.Out, "nothing to cancel: no task of this results root is queued or running")
		return nil
	}
	slices.Sort(ids)
	if err := cli.Cancel(ctx, ids); err != nil {
		return slurmErr(fmt.Errorf("scancel: %w", err))
	}
	sort.Strings(cells)
	fmt.Fprintf(req.Out, "cancelled %d task(s) (%s); running cells end interrupted with their servers torn down\n", len(ids), strings.Join(ids, " "))
	if wait := req.Wait; wait > 0 {
		// A task has ended once Slurm no longer counts it active: its processes are gone
		// (the server was torn down by the task, or killed with the job after KillWait).
		deadline := time.Now().Add(wait)
		for {
			q, err := cli.Queue(ctx, rec.JobIDs())
			if err != nil {
				return slurmErr(fmt.Errorf("squeue after scancel: %w", err))
			}
			var left []string
			for _, k := range ids {
				if t, ok := q[k]; ok && t.Active() {
					left = append(left, k)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return exitcode.New(exitcode.Internal, fmt.Errorf("tasks %s still active %s after scancel; see squeue -j and their logs under %s", strings.Join(left, " "), wait, slurm.Path(root, slurm.LogsDir)))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	for _, c := range cells {
		st := "no result"
		if m, err := lay.ReadManifest(c); err == nil {
			st = string(m.Status)
		}
		fmt.Fprintf(req.Out, "  %s  %s\n", c, st)
	}
	return nil
}

// SlurmTaskRequest is one Slurm array task: its array's spec and the cell settings (the
// spec's flags already applied under the command line's).
type SlurmTaskRequest struct {
	Spec     *slurm.Spec
	SpecPath string
	Cell     SlurmCellOptions
	Log      *zap.Logger
}

// SlurmTask runs the cell of this array task (SLURM_ARRAY_TASK_ID) under its cell lock,
// within the cluster's KillWait, and records the task in the manifest.
func SlurmTask(req SlurmTaskRequest) error {
	spec, specPath, so, log := req.Spec, req.SpecPath, req.Cell, req.Log
	env, ok, err := slurm.ReadTaskEnv(os.Getenv)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	if !ok {
		return exitcode.Usagef("SLURM_ARRAY_TASK_ID is not set: moecapd slurm task runs inside a Slurm array task (submit with moecapd slurm submit)")
	}
	id, err := spec.CellAt(env.TaskID)
	if err != nil {
		return exitcode.Usagef("%s: %v", specPath, err)
	}
	log = log.With(zap.String("job", env.ArrayJobID+"_"+strconv.Itoa(env.TaskID)))
	_, mx, err := loadMatrix(MatrixOptions{Matrix: so.Matrix, ConfigsDir: so.Cell.ConfigsDir})
	if err != nil {
		return err
	}
	c := mx.Cell(id)
	if c == nil {
		return exitcode.Usagef("cell %s is no longer in %s (the matrix changed after submit); submit again", id, mx.Path)
	}
	root := spec.Results
	// The per-cell lock (pkg/cell's, the one matrix run and launch-and-bench take too), so
	// two runners (a duplicate submission, a requeue racing its predecessor, a matrix run
	// on the same root) never write one cell. It is the task's only lock: none on the whole
	// results root. The matrix runner keeps a lock its caller holds.
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("this task leaves cell %s alone: %w", id, err))
	}
	cd, err := lay.Cell(id)
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("this task leaves cell %s alone: %w", id, err))
	}
	release, err := lay.Lock(id)
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("this task leaves cell %s alone: %w", id, err))
	}
	defer release()
	dir := cd.Path
	if prev, err := cell.ReadManifest(dir); err == nil && prev.Status == cell.StatusOK && env.RestartCount == 0 {
		log.Info("cell already ok in the results root; nothing to do")
		return nil
	}
	if env.RestartCount > 0 {
		log.Warn("requeued task: redoing its cell from the start", zap.Int("restart_count", env.RestartCount))
	}
	// Stopping must end inside KillWait: after it Slurm kills every process of the job,
	// moecapd included, and the cell would stay "running". The bench's drain of in-flight
	// requests gets a fifth of it, the server's grace half.
	var drain time.Duration
	if spec.KillWaitS > 0 {
		kw := time.Duration(spec.KillWaitS * float64(time.Second))
		if g := so.Cell.Grace; g > kw/2 {
			log.Info("grace shortened to half the cluster's KillWait", zap.Duration("grace", kw/2), zap.Duration("asked", g))
			so.Cell.Grace = kw / 2
		}
		drain = min(5*time.Second, kw/5)
	}
	// scancel and the time limit send SIGTERM to the batch step, which is this process (the
	// batch script exec'd it): the cell ends interrupted with its server torn down.
	BecomeSubreaper(log)
	ctx, stop := SignalContext(log)
	defer stop()
	gb, err := gpu.Open(log, so.Cell.RequireGPU)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	defer gb.Close()
	log.Info("slurm task starting", zap.Strings("gpus", env.GPUs), zap.String("node", env.Node),
		zap.String("cuda_visible_devices", env.CUDAVisibleDevices), zap.Int("restart_count", env.RestartCount))
	r := &matrix.Runner{
		Results: root, Items: []*matrix.Item{{Cell: c, Action: matrix.ActRun}}, Slots: 1,
		// Where the task ran (extra.slurm), written by the pipeline with the manifest.
		Extra: map[string]json.RawMessage{slurm.ExtraKey: slurm.TaskNote(env)},
		Host:  so.Cell.Host, NoSkip: true, Retries: so.Retries,
		Backoff: so.RetryBackoff, CellTimeout: so.CellTimeout, Log: log,
		// GPUs left empty: the cell runs on the caller's CUDA_VISIBLE_DEVICES, Slurm's.
		Build: func(c *matrix.Cell) (*cell.Config, error) {
			cfg, err := matrixCellConfig(so.Cell, gb, log, c, nil)
			if err == nil && drain > 0 {
				cfg.Native.DrainTimeout = drain
			}
			return cfg, err
		},
	}
	_, runErr := r.Run(ctx)
	m, err := cell.ReadManifest(dir)
	if err != nil {
		return exitcode.New(exitcode.Internal, errors.Join(runErr, fmt.Errorf("read the cell's manifest: %w", err)))
	}
	if runErr != nil {
		return exitcode.New(exitcode.Internal, runErr)
	}
	log.Info("slurm task finished", zap.String("status", string(m.Status)))
	return m.Err()
}
