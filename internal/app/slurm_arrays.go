package app

// From planned cells to Slurm job arrays: what slurm submit does once it has picked its
// cells, and what another front end (moecapd serve with a Slurm executor) calls with its
// own plan. Each array's tasks run moecapd slurm task, which writes the cell's manifest in
// the results root; ReadSlurmState reads them back beside Slurm's view.

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// SlurmArrayOptions is how planned cells go to sbatch: the matrix file the tasks load
// their cell from, the results root they write it to, the binary they run, sbatch's
// options and the cell flags every task applies.
type SlurmArrayOptions struct {
	Matrix  string // the matrix file (absolute where it is a file: tasks run elsewhere)
	Results string // the results root, absolute
	Moecapd string // the binary the tasks run; "": this one
	// Partition, Account and QOS are sbatch's; empty: the cluster's default.
	Partition, Account, QOS string
	Time                    string // a Go duration (8h) or Slurm's D-HH:MM:SS; "": the partition's
	MaxParallel             int    // tasks of one array at once; 0: no limit
	SbatchArgs              []string
	Forward                 map[string]string // cell flags (name without --: value) for every task
	// DryRun prints the sbatch commands to Out and submits nothing.
	DryRun bool
	CLI    *slurm.CLI // nil: Slurm's commands in this process's environment
	Log    *zap.Logger
	Out    io.Writer // one line per submitted array; nil: none
}

// resolve checks the options (usage errors, exit 2) and fills the defaults: Time in
// Slurm's format, the binary's path, the Slurm client, a logger and a writer.
func (o *SlurmArrayOptions) resolve() error {
	t, err := slurmTime(o.Time)
	if err != nil {
		return exitcode.Usagef("%v", err)
	}
	o.Time = t
	if o.MaxParallel < 0 {
		return exitcode.Usagef("--max-parallel %d: expected 0 (no limit) or a positive number of tasks", o.MaxParallel)
	}
	if o.Moecapd == "" {
		if o.Moecapd, err = os.Executable(); err != nil {
			return err
		}
	}
	if fi, err := os.Stat(o.Moecapd); err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return exitcode.Usagef("--moecapd %s: not an executable file; pass the path of a moecapd binary the nodes can run", o.Moecapd)
	}
	if o.CLI == nil {
		o.CLI = &slurm.CLI{}
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

// SubmitArrays submits cells (a plan's cells to run, each with its hardware label) as Slurm
// job arrays: one per hardware label, so never two GPU families in one array, split where
// an array would pass the cluster's MaxArraySize. Each array is recorded in the results
// root's submit record as soon as sbatch took it, under the root's submit lock. It returns
// the arrays submitted, each with its job id (DryRun: the arrays it would submit, without
// one). An error after the first array leaves the earlier ones submitted and recorded.
func SubmitArrays(ctx context.Context, cells []*matrix.Cell, o SlurmArrayOptions) ([]slurm.Array, error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	if !o.DryRun {
		lock, err := lockSubmit(o.Results)
		if err != nil {
			return nil, err
		}
		defer lock.Unlock()
	}
	rec, err := slurm.ReadRecord(o.Results)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	return submitArrays(ctx, rec, cells, o)
}

// arrayGroup is one job array: cells of one hardware label.
type arrayGroup struct {
	label string
	gpus  int
	ids   []string
}

// submitArrays is SubmitArrays under the lock, with rec the root's record it appends to.
func submitArrays(ctx context.Context, rec *slurm.Record, cells []*matrix.Cell, o SlurmArrayOptions) ([]slurm.Array, error) {
	if len(cells) == 0 {
		return nil, nil
	}
	// Without a cluster to ask (a dry run), Slurm's defaults.
	ccfg := slurm.Config{MaxArraySize: 1001}
	script := slurm.Path(o.Results, slurm.ScriptFile)
	if !o.DryRun {
		var err error
		if ccfg, err = o.CLI.ShowConfig(ctx); err != nil {
			return nil, slurmErr(fmt.Errorf("read the cluster's configuration: %w", err))
		}
		if script, err = slurm.WriteScript(o.Results); err != nil {
			return nil, exitcode.New(exitcode.Usage, fmt.Errorf("write the batch script under %s: %w (the results root must be writable)", o.Results, err))
		}
	}
	groups := arrayGroups(cells, ccfg.MaxArraySize, o.Log)
	stamp := time.Now().UTC().Format("20060102T150405.000")
	cwd, _ := os.Getwd()
	var arrays []slurm.Array
	for i, g := range groups {
		specPath := slurm.Path(o.Results, slurm.ArraysDir, fmt.Sprintf("%s-%s-%d.json", stamp, g.label, i))
		spec := &slurm.Spec{SchemaVersion: slurm.SpecVersion, Matrix: o.Matrix, Results: o.Results, GPUs: g.gpus,
			Cells: g.ids, KillWaitS: ccfg.KillWait.Seconds(), Flags: o.Forward}
		sub := slurm.SubmitSpec{Name: "moecapd-" + g.label, GPUs: g.gpus, Tasks: len(g.ids),
			MaxParallel: o.MaxParallel, Partition: o.Partition, Account: o.Account,
			QOS: o.QOS, Time: o.Time, Output: slurm.Path(o.Results, slurm.LogsDir, "%A_%a.out"), Chdir: cwd,
			Extra: o.SbatchArgs, Script: script,
			Args: []string{o.Moecapd, "slurm", "task", "--spec", specPath}}
		a := slurm.Array{Name: sub.Name, Hardware: g.label, GPUs: g.gpus, Cells: g.ids, Spec: specPath,
			SbatchArgv: append([]string{"sbatch"}, sub.Argv()...)}
		if o.DryRun {
			printDryArray(o.Out, i, len(groups), g, sub, o.Forward)
			arrays = append(arrays, a)
			continue
		}
		if err := submitArray(ctx, o, rec, &a, sub, spec); err != nil {
			return arrays, err
		}
		arrays = append(arrays, a)
	}
	return arrays, nil
}

// arrayGroups splits cells into arrays: one per hardware label (fewest GPUs first), each
// split at the cluster's MaxArraySize. Cells of several GPU families in one submit get a
// warning: one partition seldom holds both.
func arrayGroups(cells []*matrix.Cell, maxSize int, log *zap.Logger) []arrayGroup {
	byLabel := map[string][]*matrix.Cell{}
	for _, c := range cells {
		byLabel[c.Hardware] = append(byLabel[c.Hardware], c)
	}
	labelList := slices.Collect(maps.Keys(byLabel))
	sort.Slice(labelList, func(i, j int) bool {
		a, b := byLabel[labelList[i]][0], byLabel[labelList[j]][0]
		if a.GPUs != b.GPUs {
			return a.GPUs < b.GPUs
		}
		return a.Hardware < b.Hardware
	})
	var groups []arrayGroup
	families := map[string]bool{}
	for _, l := range labelList {
		var ids []string
		for _, c := range byLabel[l] {
			ids = append(ids, c.ID)
			if c.Backend != launcher.BackendSim {
				families[c.Family] = true
			}
		}
		for part := range slices.Chunk(ids, maxSize) {
			groups = append(groups, arrayGroup{l, byLabel[l][0].GPUs, part})
		}
	}
	if len(families) > 1 {
		log.Warn("this submit sends cells of several GPU families to the same partition; unless the partition's nodes are all alike, submit each family on its own (--hardware with its --partition or --sbatch-arg=--constraint=...) so every cell lands on its own hardware",
			zap.Strings("families", slices.Sorted(maps.Keys(families))))
	}
	return groups
}

// printDryArray prints the sbatch command of array i of n, the settings every task gets
// and its tasks' cells.
func printDryArray(out io.Writer, i, n int, g arrayGroup, sub slurm.SubmitSpec, forward map[string]string) {
	fmt.Fprintf(out, "array %d of %d: %d %s cell(s), %d GPU(s) per task\n  sbatch %s\n", i+1, n, len(g.ids), g.label, g.gpus, shellWords(sub.Argv()))
	if len(forward) > 0 {
		var set []string
		for k, val := range forward {
			set = append(set, "--"+k+"="+val)
		}
		sort.Strings(set)
		fmt.Fprintf(out, "  settings for every task: %s\n", shellWords(set))
	}
	for j, id := range g.ids {
		fmt.Fprintf(out, "  task %d  %s\n", j, id)
	}
}

// submitArray writes the array's task spec, submits it, sets a's job id and records it in
// rec at once: a failure submitting the next array must not lose this one.
func submitArray(ctx context.Context, o SlurmArrayOptions, rec *slurm.Record, a *slurm.Array, sub slurm.SubmitSpec, spec *slurm.Spec) error {
	if err := os.MkdirAll(slurm.Path(o.Results, slurm.LogsDir), 0o755); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if err := slurm.WriteSpec(a.Spec, spec); err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("write the task spec: %w", err))
	}
	id, err := o.CLI.Submit(ctx, sub)
	if err != nil {
		_ = os.Remove(a.Spec)
		return slurmErr(fmt.Errorf("submit the %d-GPU array (%d cells): %w", a.GPUs, len(a.Cells), err))
	}
	a.JobID, a.SubmittedAt = id, time.Now().UTC()
	rec.Arrays = append(rec.Arrays, *a)
	if err := slurm.WriteRecord(o.Results, rec); err != nil {
		return exitcode.New(exitcode.Internal, fmt.Errorf("array %s was submitted but could not be recorded (cancel it with scancel %s): %w", id, id, err))
	}
	fmt.Fprintf(o.Out, "submitted array %s: %d %s cell(s), %d GPU(s) per task\n", id, len(a.Cells), a.Hardware, a.GPUs)
	o.Log.Info("array submitted", zap.String("job", id), zap.Int("gpus", a.GPUs), zap.Strings("cells", a.Cells))
	return nil
}
