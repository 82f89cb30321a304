package main

import (
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

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

func init() { register(newSlurmCmd) }

func newSlurmCmd() *cobra.Command {
	s := &cobra.Command{
		Use:   "slurm",
		Short: "Run the matrix on a Slurm cluster as job arrays (submit, status, cancel)",
		Long: `The experiment matrix as Slurm job arrays on a shared results root: one array per hardware
label such as 8xH200 (--gpus=N per task), each task running exactly one cell through the same pipeline as
"matrix run". Submit is idempotent: cells the results root holds as ok, and cells queued or
running in Slurm, are not submitted again. The manifest in the results root is the truth of
a cell; Slurm's view (queued, running, cancelled, timed out) is shown next to it.

Submissions are recorded in <results>/.slurm/ (jobs.json, one task spec per array, the
batch script, per-task logs); a task holds its cell's lock (<results>/.locks/) while it runs.

Exit codes: 0 ok, 2 usage or config error, or the Slurm commands missing or the controller
not answering, 1 internal error.`,
	}
	s.AddCommand(newSlurmSubmitCmd(), newSlurmStatusCmd(), newSlurmCancelCmd(), newSlurmTaskCmd())
	return s
}

// addSlurmCellFlags adds the flags that decide how a cell runs: the matrix, the pipeline's
// flags (launch-and-bench's, as matrix run takes them) and matrix run's retry and timeout
// flags. Submit and task both have them; submit hands the ones set to every task.
func addSlurmCellFlags(f *pflag.FlagSet) {
	f.String("matrix", "configs/matrix.yaml", "matrix file (built-in copy when absent)")
	f.Int("retries", 2, "extra attempts for a cell that crashed or never became ready")
	f.Duration("retry-backoff", 30*time.Second, "wait before the first retry; doubles each time")
	f.Duration("cell-timeout", 6*time.Hour, "stop a cell that runs longer (a group's timeout wins); 0: none")
	newLaunchCmd().Flags().VisitAll(func(fl *pflag.Flag) {
		if !launchOnly[fl.Name] {
			f.AddFlag(fl)
		}
	})
}

// slurmCellOpts are the typed settings of how a cell runs, read once from the flags.
type slurmCellOpts struct {
	Launch                    launchOpts
	Matrix                    string
	Retries                   int
	RetryBackoff, CellTimeout time.Duration
}

func readSlurmCellOpts(fs *pflag.FlagSet) (slurmCellOpts, error) {
	// submit's --hardware is a list of labels to submit, not launch-and-bench's one label
	// (each cell's own label is set per cell).
	cellFlags := pflag.NewFlagSet("cell", pflag.ContinueOnError)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "hardware" {
			cellFlags.AddFlag(f)
		}
	})
	l, err := readLaunchOpts(cellFlags)
	if err != nil {
		return slurmCellOpts{}, err
	}
	r := &flagReader{fs: fs}
	o := slurmCellOpts{Launch: l, Matrix: r.str("matrix"), Retries: r.int("retries"),
		RetryBackoff: r.dur("retry-backoff"), CellTimeout: r.dur("cell-timeout")}
	if r.err != nil {
		return o, withCode(exitUsage, r.err)
	}
	for _, err := range []error{
		config.CheckInt("settings", "--retries", int64(o.Retries), 0, config.MaxRetries, "extra attempts"),
		config.CheckDuration("settings", "--retry-backoff", o.RetryBackoff, 0, time.Hour),
		config.CheckDuration("settings", "--cell-timeout", o.CellTimeout, 0, 7*24*time.Hour),
	} {
		if err != nil {
			return o, withCode(exitUsage, err)
		}
	}
	return o, nil
}

func newSlurmSubmitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "submit [flags]",
		Short: "Submit the matrix's cells that the results root does not hold as ok, one job array per hardware label",
		Long: `Submits every cell of the matrix that the results root does not already hold as ok (or
infeasible) and that is not queued or running in Slurm, one array per hardware label (so per
GPU count, and one GPU family per array): every task of an array asks for --gpus=N and runs one cell with "moecapd slurm task". A second submit of
a complete or fully queued matrix submits nothing; a deleted or failed result is what gets
resubmitted. --dry-run prints the sbatch commands and the cells of each array and submits
nothing.

The results root must be on a file system every node sees, and so must the moecapd binary
(--moecapd) and the matrix. Flags that set how a cell runs (--grace, --ready-timeout,
--retries…) are recorded and applied to every task; the submit's environment is exported to
the tasks as sbatch does by default.`,
		Example: `  moecapd slurm submit --matrix configs/matrix.yaml --results /shared/results --hardware 8xH200 \
      --partition h200 --account myproj --time 8h --max-parallel 4 --sbatch-arg=--exclusive
  moecapd slurm submit --results /shared/results --only 'qwen1_5\.1xH200' --dry-run`,
		Args: cobra.NoArgs,
		RunE: runSlurmSubmit,
	}
	f := cmd.Flags()
	addSlurmCellFlags(f)
	f.StringSlice("hardware", nil, "submit only cells of these hardware labels, e.g. 8xH200 (repeat or comma-separate; default: every cell)")
	f.String("only", "", "submit only cells whose id matches this regular expression")
	f.Bool("include-done", false, "also submit cells the matrix marks done")
	f.Bool("no-skip", false, "submit larger batch sizes even when a smaller one of the same chain is infeasible in the results")
	f.String("partition", "", "sbatch --partition")
	f.String("account", "", "sbatch --account")
	f.String("qos", "", "sbatch --qos")
	f.String("time", "", "time limit per task: a duration such as 8h or 90m, or Slurm's own format (D-HH:MM:SS)")
	f.Int("max-parallel", 0, "tasks of one array running at once (--array=0-K%N; 0: no limit)")
	f.StringArray("sbatch-arg", nil, "extra sbatch option, passed as one argument (repeat): --sbatch-arg=--exclusive --sbatch-arg=--container-image=IMG")
	f.Bool("dry-run", false, "print the sbatch commands and the cells of each array; submit nothing")
	f.String("moecapd", "", "moecapd binary the tasks run (default: this binary; must be reachable from the nodes)")
	return cmd
}

func newSlurmStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Each submitted cell: its manifest status and Slurm's view (queued, running, finished, cancelled)",
		Args:  cobra.NoArgs,
		RunE:  runSlurmStatus,
	}
	cmd.Flags().String("results", "results", "results root")
	cmd.Flags().Bool("json", false, "print JSON (one object per cell)")
	return cmd
}

func newSlurmCancelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel [flags]",
		Short: "Cancel this results root's queued and running tasks (scancel); cancelled cells end interrupted",
		Args:  cobra.NoArgs,
		RunE:  runSlurmCancel,
	}
	cmd.Flags().String("results", "results", "results root")
	cmd.Flags().String("only", "", "cancel only cells whose id matches this regular expression")
	cmd.Flags().Duration("wait", 2*time.Minute, "wait this long for the cancelled tasks to end (their servers torn down); 0: return at once")
	return cmd
}

func newSlurmTaskCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "task --spec FILE",
		Short:  "Run the cell of one array task (what each Slurm task runs; picks its cell by SLURM_ARRAY_TASK_ID)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE:   runSlurmTask,
	}
	cmd.Flags().String("spec", "", "the array's task spec (<results>/.slurm/arrays/*.json)")
	addSlurmCellFlags(cmd.Flags())
	return cmd
}

// slurmErr gives errors of the Slurm commands the usage/config exit code: a missing client
// or an unreachable controller is fixed in the environment, not by rerunning.
func slurmErr(err error) error {
	if errors.Is(err, slurm.ErrNoSlurm) || errors.Is(err, slurm.ErrController) {
		return withCode(exitUsage, err)
	}
	return withCode(exitInternal, err)
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

func runSlurmSubmit(cmd *cobra.Command, _ []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer log.Sync()
	so, err := readSlurmCellOpts(cmd.Flags())
	if err != nil {
		return err
	}
	tables, mx, err := loadMatrix(matrixOpts{Matrix: so.Matrix, ConfigsDir: so.Launch.ConfigsDir})
	if err != nil {
		return err
	}
	root, err := filepath.Abs(so.Launch.Results)
	if err != nil {
		return err
	}
	matrixPath := so.Matrix
	if _, err := os.Stat(matrixPath); err == nil {
		matrixPath, _ = filepath.Abs(matrixPath)
	}
	tlimit, err := slurmTime(v.GetString("time"))
	if err != nil {
		return usageErrorf("%v", err)
	}
	if v.GetInt("max-parallel") < 0 {
		return usageErrorf("--max-parallel %d: expected 0 (no limit) or a positive number of tasks", v.GetInt("max-parallel"))
	}
	self := v.GetString("moecapd")
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return err
		}
	}
	if fi, err := os.Stat(self); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return usageErrorf("--moecapd %s: not an executable file; pass the path of a moecapd binary the nodes can run", self)
	}
	known := map[string]bool{}
	for _, c := range mx.Cells {
		known[c.Hardware] = true
	}
	labels := map[string]bool{}
	for _, l := range v.GetStringSlice("hardware") {
		if _, _, err := matrix.ParseHardware(l); err != nil {
			return usageErrorf("--hardware: %v", err)
		}
		if !known[l] {
			return usageErrorf("--hardware %s: no cell of %s has that hardware; its labels: %s", l, mx.Path, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		}
		labels[l] = true
	}
	opts := matrix.Options{IncludeDone: v.GetBool("include-done"), NoSkip: v.GetBool("no-skip"),
		// A failed result is resubmitted: the cluster is where the matrix is redone.
		RedoFailed: true}
	if re := v.GetString("only"); re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return usageErrorf("--only %q: %v", re, err)
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

	ctx := cmd.Context()
	cli := &slurm.CLI{}
	var lock *cell.FileLock
	if !v.GetBool("dry-run") {
		// One submit at a time per results root: two would both see a cell unqueued.
		if err := os.MkdirAll(slurm.Path(root), 0o755); err != nil {
			return withCode(exitUsage, fmt.Errorf("create %s: %w (the results root must be writable)", slurm.Path(root), err))
		}
		if lock, err = cell.TryLock(slurm.Path(root, slurm.SubmitLock), "slurm submit on "+root); err != nil {
			return withCode(exitUsage, err)
		}
		defer lock.Unlock()
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return withCode(exitUsage, err)
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
		fmt.Printf("nothing to submit: %d cell(s) kept from results (ok or infeasible), %d queued or running in Slurm, %d done per matrix or skipped\n", kept, queued, other)
		return nil
	}

	// Without a cluster to ask (a dry run), Slurm's defaults.
	ccfg := slurm.Config{MaxArraySize: 1001}
	if !v.GetBool("dry-run") {
		if ccfg, err = cli.ShowConfig(ctx); err != nil {
			return slurmErr(fmt.Errorf("read the cluster's configuration: %w", err))
		}
	}
	killWait := ccfg.KillWait
	// Flags that decide how a cell runs, as given to submit, go to every task.
	forward := map[string]string{}
	task := pflag.NewFlagSet("task", pflag.ContinueOnError)
	addSlurmCellFlags(task)
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if task.Lookup(fl.Name) != nil && fl.Name != "matrix" && fl.Name != "results" {
			forward[fl.Name] = fl.Value.String()
		}
	})
	script := slurm.Path(root, slurm.ScriptFile)
	if !v.GetBool("dry-run") {
		if script, err = slurm.WriteScript(root); err != nil {
			return withCode(exitUsage, fmt.Errorf("write the batch script under %s: %w (the results root must be writable)", root, err))
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
			MaxParallel: v.GetInt("max-parallel"), Partition: v.GetString("partition"), Account: v.GetString("account"),
			QOS: v.GetString("qos"), Time: tlimit, Output: slurm.Path(root, slurm.LogsDir, "%A_%a.out"), Chdir: cwd,
			Extra: v.GetStringSlice("sbatch-arg"), Script: script,
			Args: []string{self, "slurm", "task", "--spec", specPath}}
		if v.GetBool("dry-run") {
			fmt.Printf("array %d of %d: %d %s cell(s), %d GPU(s) per task\n  sbatch %s\n", i+1, len(groups), len(ids), g.label, n, shellWords(sub.Argv()))
			if len(forward) > 0 {
				var set []string
				for k, val := range forward {
					set = append(set, "--"+k+"="+val)
				}
				sort.Strings(set)
				fmt.Printf("  settings for every task: %s\n", shellWords(set))
			}
			for j, id := range ids {
				fmt.Printf("  task %d  %s\n", j, id)
			}
			continue
		}
		if err := os.MkdirAll(slurm.Path(root, slurm.LogsDir), 0o755); err != nil {
			return withCode(exitUsage, err)
		}
		if err := slurm.WriteSpec(specPath, spec); err != nil {
			return withCode(exitUsage, fmt.Errorf("write the task spec: %w", err))
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
			return withCode(exitInternal, fmt.Errorf("array %s was submitted but could not be recorded (cancel it with scancel %s): %w", id, id, err))
		}
		fmt.Printf("submitted array %s: %d %s cell(s), %d GPU(s) per task\n", id, len(ids), g.label, n)
		log.Info("array submitted", zap.String("job", id), zap.Int("gpus", n), zap.Strings("cells", ids))
	}
	if v.GetBool("dry-run") {
		fmt.Printf("dry run: nothing submitted; kept %d cell(s) from results, %d already queued or running\n", kept, queued)
		return nil
	}
	fmt.Printf("kept %d cell(s) from results, %d already queued or running; moecapd slurm status --results %s\n", kept, queued, v.GetString("results"))
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

// cellRow is one line of slurm status.
type cellRow struct {
	Cell    string      `json:"cell"`
	Status  cell.Status `json:"status,omitempty"` // the manifest's; absent: no result yet
	Failure string      `json:"failure,omitempty"`
	Slurm   *slurmView  `json:"slurm,omitempty"`
}

type slurmView struct {
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

func runSlurmStatus(cmd *cobra.Command, _ []string) error {
	v, err := settings(cmd)
	if err != nil {
		return err
	}
	root, err := filepath.Abs(v.GetString("results"))
	if err != nil {
		return err
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return withCode(exitUsage, err)
	}
	log, err := newLogger(v)
	if err != nil {
		return err
	}
	defer log.Sync()
	results, _, err := readResults(root, log)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
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
	rows := make([]cellRow, 0, len(names))
	for _, id := range names {
		r := cellRow{Cell: id}
		if m := results[id]; m != nil {
			r.Status = m.Status
			if m.Failure != nil {
				r.Failure = fmt.Sprintf("%s/%s: %s", m.Failure.Phase, m.Failure.Kind, firstLineOf(m.Failure.Message))
			}
		}
		if a, ok := latest[id]; ok {
			sv := &slurmView{ArrayJobID: a.Array.JobID, TaskID: a.Index,
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
	if v.GetBool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else {
		printSlurmStatus(os.Stdout, root, rows)
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

func printSlurmStatus(w io.Writer, root string, rows []cellRow) {
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

func runSlurmCancel(cmd *cobra.Command, _ []string) error {
	v, err := settings(cmd)
	if err != nil {
		return err
	}
	root, err := filepath.Abs(v.GetString("results"))
	if err != nil {
		return err
	}
	only := func(string) bool { return true }
	if re := v.GetString("only"); re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return usageErrorf("--only %q: %v", re, err)
		}
		only = rx.MatchString
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return withCode(exitUsage, err)
	}
	ctx := cmd.Context()
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
		fmt.Println("nothing to cancel: no task of this results root is queued or running")
		return nil
	}
	slices.Sort(ids)
	if err := cli.Cancel(ctx, ids); err != nil {
		return slurmErr(fmt.Errorf("scancel: %w", err))
	}
	sort.Strings(cells)
	fmt.Printf("cancelled %d task(s) (%s); running cells end interrupted with their servers torn down\n", len(ids), strings.Join(ids, " "))
	if wait := v.GetDuration("wait"); wait > 0 {
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
				return withCode(exitInternal, fmt.Errorf("tasks %s still active %s after scancel; see squeue -j and their logs under %s", strings.Join(left, " "), wait, slurm.Path(root, slurm.LogsDir)))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	for _, c := range cells {
		st := "no result"
		if m, err := cell.ReadManifest(filepath.Join(root, c)); err == nil {
			st = string(m.Status)
		}
		fmt.Printf("  %s  %s\n", c, st)
	}
	return nil
}

// lockCell takes the per-cell lock a Slurm task holds while it runs its cell (pkg/cell's,
// the one matrix run and launch-and-bench take too), so two runners (a duplicate
// submission, a requeue racing its predecessor, a matrix run on the same root) never write
// one cell. It is the task's only lock: none on the whole results root. The matrix runner
// keeps a lock its caller holds.
func lockCell(root, id string) (release func(), err error) {
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return nil, err
	}
	return lay.Lock(id)
}

func runSlurmTask(cmd *cobra.Command, _ []string) error {
	specPath, _ := cmd.Flags().GetString("spec")
	if specPath == "" {
		return usageErrorf("--spec is required (moecapd slurm submit writes it; this command is what each Slurm task runs)")
	}
	spec, err := slurm.ReadSpec(specPath)
	if err != nil {
		return withCode(exitUsage, err)
	}
	// The settings the cell was submitted with; flags on this command line still win.
	for name, val := range spec.Flags {
		if fl := cmd.Flags().Lookup(name); fl != nil && !fl.Changed {
			if err := cmd.Flags().Set(name, val); err != nil {
				return usageErrorf("%s: flag --%s=%q: %v", specPath, name, val, err)
			}
		}
	}
	for name, val := range map[string]string{"matrix": spec.Matrix, "results": spec.Results} {
		if err := cmd.Flags().Set(name, val); err != nil {
			return usageErrorf("%s: %v", specPath, err)
		}
	}
	_, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer log.Sync()
	env, ok, err := slurm.ReadTaskEnv(os.Getenv)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if !ok {
		return usageErrorf("SLURM_ARRAY_TASK_ID is not set: moecapd slurm task runs inside a Slurm array task (submit with moecapd slurm submit)")
	}
	id, err := spec.CellAt(env.TaskID)
	if err != nil {
		return usageErrorf("%s: %v", specPath, err)
	}
	log = log.With(zap.String("job", env.ArrayJobID+"_"+strconv.Itoa(env.TaskID)))
	so, err := readSlurmCellOpts(cmd.Flags())
	if err != nil {
		return err
	}
	_, mx, err := loadMatrix(matrixOpts{Matrix: so.Matrix, ConfigsDir: so.Launch.ConfigsDir})
	if err != nil {
		return err
	}
	c := mx.Cell(id)
	if c == nil {
		return usageErrorf("cell %s is no longer in %s (the matrix changed after submit); submit again", id, mx.Path)
	}
	root := spec.Results
	release, err := lockCell(root, id)
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("this task leaves cell %s alone: %w", id, err))
	}
	defer release()
	dir := filepath.Join(root, id)
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
		if g := so.Launch.Grace; g > kw/2 {
			log.Info("grace shortened to half the cluster's KillWait", zap.Duration("grace", kw/2), zap.Duration("asked", g))
			so.Launch.Grace = kw / 2
		}
		drain = min(5*time.Second, kw/5)
	}
	// scancel and the time limit send SIGTERM to the batch step, which is this process (the
	// batch script exec'd it): the cell ends interrupted with its server torn down.
	becomeSubreaper(log)
	ctx, stop := signalContext(log)
	defer stop()
	gb, err := gpu.Open(log, so.Launch.RequireGPU)
	if err != nil {
		return withCode(exitUsage, err)
	}
	defer gb.Close()
	log.Info("slurm task starting", zap.Strings("gpus", env.GPUs), zap.String("node", env.Node),
		zap.String("cuda_visible_devices", env.CUDAVisibleDevices), zap.Int("restart_count", env.RestartCount))
	r := &matrix.Runner{
		Results: root, Items: []*matrix.Item{{Cell: c, Action: matrix.ActRun}}, Slots: 1,
		Host: so.Launch.Host, NoSkip: true, Retries: so.Retries,
		Backoff: so.RetryBackoff, CellTimeout: so.CellTimeout, Log: log,
		// GPUs left empty: the cell runs on the caller's CUDA_VISIBLE_DEVICES, Slurm's.
		Build: func(c *matrix.Cell) (*cell.Config, error) {
			cfg, err := matrixCellConfig(so.Launch, gb, log, c, nil)
			if err == nil && drain > 0 {
				cfg.Native.DrainTimeout = drain
			}
			return cfg, err
		},
	}
	_, runErr := r.Run(ctx)
	m, err := cell.ReadManifest(dir)
	if err != nil {
		return withCode(exitInternal, errors.Join(runErr, fmt.Errorf("read the cell's manifest: %w", err)))
	}
	b, _ := json.Marshal(env)
	if m.Extra == nil {
		m.Extra = map[string]json.RawMessage{}
	}
	m.Extra[slurm.ExtraKey] = b
	if err := cell.WriteManifest(dir, m); err != nil {
		return withCode(exitInternal, err)
	}
	if runErr != nil {
		return withCode(exitInternal, runErr)
	}
	log.Info("slurm task finished", zap.String("status", string(m.Status)))
	if code := cell.ExitCode(m); code != 0 {
		return withCode(code, fmt.Errorf("cell %s %s", id, m.Status))
	}
	return nil
}
