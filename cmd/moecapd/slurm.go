package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/exitcode"
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

func readSlurmCellOpts(fs *pflag.FlagSet) (app.SlurmCellOptions, error) {
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
		return app.SlurmCellOptions{}, err
	}
	r := settings.NewReader(fs)
	o := app.SlurmCellOptions{Cell: l, Matrix: r.Str("matrix"), Retries: r.Int("retries"),
		RetryBackoff: r.Dur("retry-backoff"), CellTimeout: r.Dur("cell-timeout")}
	if r.Err() != nil {
		return o, exitcode.New(exitcode.Usage, r.Err())
	}
	return o, o.Check()
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
	// Flags that decide how a cell runs, as given to submit, go to every task.
	forward := map[string]string{}
	task := pflag.NewFlagSet("task", pflag.ContinueOnError)
	addSlurmCellFlags(task)
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if task.Lookup(fl.Name) != nil && fl.Name != "matrix" && fl.Name != "results" {
			forward[fl.Name] = fl.Value.String()
		}
	})
	return app.SlurmSubmit(cmd.Context(), app.SlurmSubmitRequest{
		Cell: so, Hardware: v.GetStringSlice("hardware"), Only: v.GetString("only"),
		IncludeDone: v.GetBool("include-done"), NoSkip: v.GetBool("no-skip"),
		Partition: v.GetString("partition"), Account: v.GetString("account"), QOS: v.GetString("qos"),
		Time: v.GetString("time"), MaxParallel: v.GetInt("max-parallel"), SbatchArgs: v.GetStringSlice("sbatch-arg"),
		DryRun: v.GetBool("dry-run"), Moecapd: v.GetString("moecapd"), Forward: forward, Log: log, Out: os.Stdout})
}

func runSlurmStatus(cmd *cobra.Command, _ []string) error {
	v, err := settings.Load(cmd)
	if err != nil {
		return err
	}
	log, err := newLogger(v)
	if err != nil {
		return err
	}
	defer log.Sync()
	return app.SlurmStatus(cmd.Context(), app.SlurmStatusRequest{Results: v.GetString("results"), JSON: v.GetBool("json"), Log: log, Out: os.Stdout})
}

func runSlurmCancel(cmd *cobra.Command, _ []string) error {
	v, err := settings.Load(cmd)
	if err != nil {
		return err
	}
	return app.SlurmCancel(cmd.Context(), app.SlurmCancelRequest{Results: v.GetString("results"), Only: v.GetString("only"), Wait: v.GetDuration("wait"), Out: os.Stdout})
}

func runSlurmTask(cmd *cobra.Command, _ []string) error {
	specPath, _ := cmd.Flags().GetString("spec")
	if specPath == "" {
		return usageErrorf("--spec is required (moecapd slurm submit writes it; this command is what each Slurm task runs)")
	}
	spec, err := slurm.ReadSpec(specPath)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
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
	so, err := readSlurmCellOpts(cmd.Flags())
	if err != nil {
		return err
	}
	return app.SlurmTask(app.SlurmTaskRequest{Spec: spec, SpecPath: specPath, Cell: so, Log: log})
}
