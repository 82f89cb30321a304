package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/internal/app"
)

func init() { register(newMatrixCmd) }

// exitCellsFailed: matrix run finished but some cells failed (matrix status lists them).
const exitCellsFailed = 8

func newMatrixCmd() *cobra.Command {
	m := &cobra.Command{
		Use:   "matrix",
		Short: "Plan, run, resume and report the experiment matrix (configs/matrix.yaml)",
		Long: `The guide's whole experiment matrix, unattended: "plan" shows which cells apply to this node
and what they will cost, "run" runs them through the launch-and-bench pipeline (resumable:
run the same command again after a crash or kill), "status" regenerates the guide's
Completed/Pending tables from the results.`,
	}
	m.AddCommand(newMatrixPlanCmd(), newMatrixRunCmd(), newMatrixStatusCmd())
	return m
}

// launchOnly are launch-and-bench flags that the matrix sets per cell. The load flags are
// among them: a load names its cells, so it is a group's (request_rate:, rates:, …).
var launchOnly = map[string]bool{"backend": true, "config": true, "batch-size": true, "tp": true,
	"num-samples": true, "port": true, "dry-run": true, "progress": true, "hardware": true, "sim-hardware": true, "env": true,
	"request-rate": true, "burstiness": true, "max-concurrency": true, "rates": true, "slo": true, "find-max-rate": true, "max-rate-steps": true}

// addSelectFlags adds what plan and run share: the matrix, the node, which cells.
func addSelectFlags(f *pflag.FlagSet) {
	f.String("matrix", "configs/matrix.yaml", "matrix file (built-in copy when absent)")
	f.String("hardware", "", "this node's hardware label, e.g. 8xH100 (default from NVML over CUDA_VISIBLE_DEVICES)")
	f.String("only", "", "run only cells whose id matches this regular expression")
	f.Bool("include-done", false, "also run cells the matrix marks done")
	f.Bool("no-skip", false, "run larger batch sizes even after a smaller one of the same model, hardware, task and backend ran out of memory")
	f.Bool("redo-failed", false, "rerun cells whose earlier attempt failed (ok and infeasible cells are never rerun)")
	// The pipeline's own flags are launch-and-bench's, so a setting means the same in both
	// commands and a flag added there reaches the matrix without a second definition.
	newLaunchCmd().Flags().VisitAll(func(fl *pflag.Flag) {
		if !launchOnly[fl.Name] {
			f.AddFlag(fl)
		}
	})
}

func newMatrixPlanCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan [flags]",
		Short: "List the cells that apply to this node, in run order, with what the results hold and estimates",
		Example: `  moecapd matrix plan
  moecapd matrix plan --hardware 8xH200 --results /data/results`,
		Args: cobra.NoArgs,
		RunE: runMatrixPlan,
	}
	addSelectFlags(cmd.Flags())
	cmd.Flags().Bool("pack", false, "estimate for packed cells (see matrix run --pack)")
	cmd.Flags().Int("slots", 0, "parallel slots with --pack (default: GPUs of the node / GPUs per cell)")
	return cmd
}

func newMatrixRunCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run [flags] [-- extra server flags for every cell]",
		Short: "Run the matrix's cells for this node; run it again to resume",
		Long: `Runs every cell of the matrix that applies to this node through the launch-and-bench pipeline.
A failed cell is recorded and the run goes on; crashes and health timeouts are retried
(--retries, with exponential backoff), out-of-memory never, and it skips the larger batch
sizes of the same model, hardware, task and backend (--no-skip runs them). Resume: cells
whose manifest says ok or infeasible are kept, interrupted ones are redone, and a server
left by a killed run is ended first. A lock in the results root and one per GPU stop two
runs from sharing results or GPUs.

Each cell is locked while it runs, the lock launch-and-bench and Slurm tasks take too: a
cell another runner holds is left alone and reported.

Exit codes: 0 no cell of the matrix (on this node, through --only) is failed in the results,
2 usage, config, a lock held (the results root, a GPU, or some cell, which was not run),
8 the results root holds failed cells of this matrix, whether this run or an earlier one
failed them (moecapd matrix status lists them; --redo-failed reruns them), 130 interrupted,
1 internal error.`,
		Example: `  moecapd matrix run --results /data/results
  nohup moecapd matrix run --progress log --metrics-addr 127.0.0.1:9400 &
  moecapd matrix run --pack                         # TP=1 cells side by side on an 8-GPU node
  moecapd matrix run --only 'qwen1_5\..*\.4k-1k' -- --mem-fraction-static 0.85`,
		RunE: runMatrixRun,
	}
	f := cmd.Flags()
	addSelectFlags(f)
	f.Int("retries", 2, "extra attempts for a cell that crashed or never became ready")
	f.Duration("retry-backoff", 30*time.Second, "wait before the first retry; doubles each time")
	f.Duration("cell-timeout", 6*time.Hour, "stop a cell that runs longer (a group's timeout wins); 0: none")
	f.Bool("pack", false, "run independent cells side by side on disjoint GPUs and ports")
	f.Int("slots", 0, "cells at once with --pack (default: the node's GPU count; needed for the sim, which uses no GPU)")
	f.Int("port", 0, "first server port: slot i uses port+i (0: a free port per cell)")
	f.String("progress", "auto", "tty (live line on the terminal), log (log lines only, for nohup/systemd), auto (tty when stderr is a terminal)")
	f.Duration("heartbeat", time.Minute, "log mode: how often to log the progress line")
	f.String("metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9400)")
	f.Duration("metrics-linger", 0, "with --metrics-addr: keep serving metrics this long after the run ends (e.g. 2m), so a scraper sees the final state")
	f.String("lock-dir", filepath.Join(os.TempDir(), "moecapd-locks"), "directory of the per-GPU lock files (shared by every run on the node)")
	return cmd
}

func newMatrixStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "The guide's Completed/Pending tables, failures and per-cell numbers, from the results",
		Example: `  moecapd matrix status
  moecapd matrix status --format markdown > STATUS.md`,
		Args: cobra.NoArgs,
		RunE: runMatrixStatus,
	}
	f := cmd.Flags()
	f.String("matrix", "configs/matrix.yaml", "matrix file (built-in copy when absent)")
	f.String("results", "results", "results root")
	f.String("configs-dir", "configs", "directory of models.yaml and hardware.yaml (built-in copies when absent)")
	f.String("format", "auto", "markdown, terminal, or auto (terminal when stdout is a terminal)")
	return cmd
}

func readMatrixOpts(fs *pflag.FlagSet) (app.MatrixOptions, error) {
	l, err := readLaunchOpts(fs)
	if err != nil {
		return app.MatrixOptions{}, err
	}
	r := settings.NewReader(fs)
	o := app.MatrixOptions{Cell: l, Matrix: r.Str("matrix"), Hardware: r.Str("hardware"), Only: r.Str("only"),
		IncludeDone: r.Bool("include-done"), NoSkip: r.Bool("no-skip"), RedoFailed: r.Bool("redo-failed"),
		Pack: r.Bool("pack"), Slots: r.Int("slots"), Retries: r.Int("retries"), RetryBackoff: r.Dur("retry-backoff"),
		CellTimeout: r.Dur("cell-timeout"), Port: r.Int("port"), Progress: r.Str("progress"), Heartbeat: r.Dur("heartbeat"),
		MetricsAddr: r.Str("metrics-addr"), MetricsLinger: r.Dur("metrics-linger"), LockDir: r.Str("lock-dir"), Format: r.Str("format"),
		ResultsFlag: r.Str("results"), ConfigsDir: r.Str("configs-dir")}
	if r.Err() != nil {
		return o, r.Err()
	}
	return o, o.Check()
}

func runMatrixPlan(cmd *cobra.Command, _ []string) error {
	_, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer log.Sync()
	o, err := readMatrixOpts(cmd.Flags())
	if err != nil {
		return err
	}
	return app.MatrixPlan(app.MatrixPlanRequest{Matrix: o, Log: log, Out: os.Stdout})
}

func runMatrixRun(cmd *cobra.Command, args []string) error {
	v, err := settings.Load(cmd)
	if err != nil {
		return err
	}
	if n := cmd.ArgsLenAtDash(); n > 0 || (n < 0 && len(args) > 0) {
		return usageErrorf("unexpected arguments %q; extra server flags go after --", args)
	}
	o, err := readMatrixOpts(cmd.Flags())
	if err != nil {
		return err
	}
	log, err := newLogger(v)
	if err != nil {
		return err
	}
	return app.MatrixRun(app.MatrixRunRequest{Matrix: o, Extra: args, Log: log, Out: os.Stdout})
}

func runMatrixStatus(cmd *cobra.Command, _ []string) error {
	if _, err := settings.Load(cmd); err != nil {
		return err
	}
	o, err := readMatrixOpts(cmd.Flags())
	if err != nil {
		return err
	}
	return app.MatrixStatus(app.MatrixStatusRequest{Matrix: o, Out: os.Stdout})
}
