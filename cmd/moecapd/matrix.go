package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/passcost"
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

// launchOnly are launch-and-bench flags that the matrix sets per cell.
var launchOnly = map[string]bool{"backend": true, "config": true, "batch-size": true, "tp": true,
	"num-samples": true, "port": true, "dry-run": true, "progress": true, "hardware": true, "sim-hardware": true, "env": true}

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

// matrixOpts is the settings of matrix plan, run and status, merged once and typed (see
// launchOpts). Launch holds the pipeline's flags every cell shares.
type matrixOpts struct {
	Launch                          launchOpts
	Matrix, Hardware, Only          string
	IncludeDone, NoSkip, RedoFailed bool
	Pack                            bool
	Slots                           int
	Retries                         int
	RetryBackoff, CellTimeout       time.Duration
	Port                            int
	Progress                        string
	Heartbeat                       time.Duration
	MetricsLinger                   time.Duration
	MetricsAddr, LockDir, Format    string
	ResultsFlag, ConfigsDir         string
}

func readMatrixOpts(fs *pflag.FlagSet) (matrixOpts, error) {
	l, err := readLaunchOpts(fs)
	if err != nil {
		return matrixOpts{}, err
	}
	r := &flagReader{fs: fs}
	o := matrixOpts{Launch: l, Matrix: r.str("matrix"), Hardware: r.str("hardware"), Only: r.str("only"),
		IncludeDone: r.bool("include-done"), NoSkip: r.bool("no-skip"), RedoFailed: r.bool("redo-failed"),
		Pack: r.bool("pack"), Slots: r.int("slots"), Retries: r.int("retries"), RetryBackoff: r.dur("retry-backoff"),
		CellTimeout: r.dur("cell-timeout"), Port: r.int("port"), Progress: r.str("progress"), Heartbeat: r.dur("heartbeat"),
		MetricsAddr: r.str("metrics-addr"), MetricsLinger: r.dur("metrics-linger"), LockDir: r.str("lock-dir"), Format: r.str("format"),
		ResultsFlag: r.str("results"), ConfigsDir: r.str("configs-dir")}
	if r.err != nil {
		return o, r.err
	}
	const src = "settings"
	checks := []error{
		config.CheckInt(src, "--retries", int64(o.Retries), 0, config.MaxRetries, "extra attempts"),
		config.CheckInt(src, "--slots", int64(o.Slots), 0, config.MaxSlots, "cells at once; 0: the node's GPU count"),
		config.CheckInt(src, "--port", int64(o.Port), 0, config.MaxPort, "first server port; 0: a free port per cell"),
		config.CheckDuration(src, "--retry-backoff", o.RetryBackoff, 0, time.Hour),
		config.CheckDuration(src, "--cell-timeout", o.CellTimeout, 0, 7*24*time.Hour),
		config.CheckDuration(src, "--heartbeat", o.Heartbeat, 0, 24*time.Hour),
		config.CheckDuration(src, "--metrics-linger", o.MetricsLinger, 0, 7*24*time.Hour),
	}
	if o.Port > 0 && o.Slots > 0 && o.Port+o.Slots-1 > config.MaxPort {
		checks = append(checks, usageErrorf("--port %d with --slots %d: slot ports run past %d; lower --port", o.Port, o.Slots, config.MaxPort))
	}
	for _, err := range checks {
		if err != nil {
			return o, withCode(exitUsage, err)
		}
	}
	return o, nil
}

// matrixSetup is what plan and run share: the matrix, tables, node and plan.
type matrixSetup struct {
	o        matrixOpts
	log      *zap.Logger
	tables   *config.Tables
	mx       *matrix.Matrix
	gb       gpu.Backend
	devs     []gpu.Device // the visible GPUs (NVML)
	node     matrix.Node
	items    []*matrix.Item
	problems []cell.Problem
}

func loadMatrix(o matrixOpts) (*config.Tables, *matrix.Matrix, error) {
	tables, err := loadTables(o.ConfigsDir, "")
	if err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	mx, err := matrix.Load(o.Matrix, tables)
	if err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	return tables, mx, nil
}

// readResults reads the results root, warning of every directory that is not counted.
func readResults(root string, log *zap.Logger) (map[string]*cell.Manifest, []cell.Problem, error) {
	results, problems, err := matrix.Results(root)
	if err != nil {
		if config.IsConfigError(err) {
			return nil, nil, withCode(exitUsage, err)
		}
		return nil, nil, withCode(exitUsage, fmt.Errorf("read results root %s: %w", root, err))
	}
	for _, p := range problems {
		if p.Mismatch {
			log.Warn("cell directory holds another cell's manifest; not counted for either cell", zap.String("dir", p.Path), zap.String("manifest_id", p.ID), zap.String("problem", p.Err))
		} else {
			log.Warn("unreadable manifest; its cell counts as not run", zap.String("dir", p.Path), zap.String("problem", p.Err))
		}
	}
	return results, problems, nil
}

func setupMatrix(o matrixOpts, log *zap.Logger) (*matrixSetup, error) {
	s := &matrixSetup{o: o, log: log}
	var err error
	if s.tables, s.mx, err = loadMatrix(o); err != nil {
		return nil, err
	}
	if s.gb, err = gpu.Open(log, o.Launch.RequireGPU); err != nil {
		return nil, withCode(exitUsage, err)
	}
	label := o.Hardware
	if s.gb.Available() {
		if s.devs, err = s.gb.Resolve(os.Getenv("CUDA_VISIBLE_DEVICES")); err != nil {
			return nil, usageErrorf("CUDA_VISIBLE_DEVICES=%q: %v", os.Getenv("CUDA_VISIBLE_DEVICES"), err)
		}
		if label == "" {
			label = gpu.Label(s.devs)
		}
	}
	if s.node, err = matrix.ParseNode(label); err != nil {
		return nil, usageErrorf("this node's hardware %q: %v; restrict CUDA_VISIBLE_DEVICES to one GPU family or pass --hardware", label, err)
	}
	po := matrix.Options{IncludeDone: o.IncludeDone, NoSkip: o.NoSkip, RedoFailed: o.RedoFailed}
	if re := o.Only; re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return nil, usageErrorf("--only %q: %v", re, err)
		}
		po.Only = rx.MatchString
	}
	results, problems, err := readResults(o.ResultsFlag, log)
	if err != nil {
		return nil, err
	}
	s.problems = problems
	s.items = matrix.Plan(s.mx, s.tables, s.node, results, po)
	return s, nil
}

// slots is how many cells may run at once: 1 unless --pack; with --pack, --slots or the
// node's GPU count.
func (s *matrixSetup) slots() int {
	if !s.o.Pack {
		return 1
	}
	if n := s.o.Slots; n > 0 {
		return n
	}
	return max(s.node.Count, 1)
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
	s, err := setupMatrix(o, log)
	if err != nil {
		return err
	}
	defer s.gb.Close()
	node := s.node.Label
	if node == "" {
		node = "no GPUs (sim cells only)"
	}
	lay, err := cell.OpenLayout(o.ResultsFlag)
	if err != nil {
		return withCode(exitUsage, err)
	}
	fmt.Printf("matrix   %s\nnode     %s\nresults  %s\n\n", s.mx.Path, node, o.ResultsFlag)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tCELL\tACTION\tSAMPLES\tESTIMATE\tMEMORY\tWHY")
	var total time.Duration
	counts := map[matrix.Action]int{}
	n := 0
	for _, it := range s.items {
		counts[it.Action]++
		if it.Action == matrix.ActNotHere || it.Action == matrix.ActFiltered {
			continue
		}
		idx := ""
		est := ""
		if it.Action == matrix.ActRun {
			n++
			idx = strconv.Itoa(n)
			total += it.Estimate
			est = it.Estimate.Round(time.Second).String()
		}
		mem := fmt.Sprintf("%.0f/%.0f GiB", it.Need/(1<<30), it.Have/(1<<30))
		why := it.Why
		if h := lay.Holder(it.Cell.ID); h != nil && it.Action == matrix.ActRun {
			why += fmt.Sprintf("; held now by PID %d on %s since %s (a run leaves it alone)", h.PID, h.Host, h.StartedAt.Format(time.RFC3339))
		}
		if !it.Feasible {
			mem += " ✗"
			why += "; predicted infeasible: " + it.FeasWhy
		} else if it.Verdict == passcost.UnderBatched {
			// Not infeasible: the server admits fewer at once; the cell measures what it ran.
			mem += fmt.Sprintf(" (%d at once)", it.Concurrent)
			why += fmt.Sprintf("; predicted under-batched: only %d of %d requests fit at once", it.Concurrent, it.Cell.Batch)
		}
		samples := strconv.Itoa(it.Cell.NumSamples)
		if it.Cell.Pinned {
			samples += " (pinned)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", idx, it.Cell.ID, it.Action, samples, est, mem, why)
	}
	tw.Flush()
	slots := s.slots()
	fmt.Printf("\n%d to run, %d kept from results, %d done per matrix, %d skipped-infeasible, %d not for this node, %d filtered out\n",
		counts[matrix.ActRun], counts[matrix.ActKeep], counts[matrix.ActDone], counts[matrix.ActSkip], counts[matrix.ActNotHere], counts[matrix.ActFiltered])
	fmt.Printf("estimated %s over %d slot(s) (roofline floor plus start-up guess, or past runs of the same cell)\n",
		(total / time.Duration(slots)).Round(time.Second), slots)
	printProblems(os.Stdout, s.problems)
	return nil
}

// printProblems lists the results root's directories that are not counted as cells.
func printProblems(w io.Writer, probs []cell.Problem) {
	if len(probs) == 0 {
		return
	}
	fmt.Fprintf(w, "\nnot counted as cells (%d directories of the results root):\n", len(probs))
	for _, p := range probs {
		kind := "unreadable"
		if p.Mismatch {
			kind = "mismatched"
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", kind, p.Name, p.Err)
	}
}

func runMatrixRun(cmd *cobra.Command, args []string) error {
	v0, err := settings(cmd)
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
	mode := o.Progress
	if mode == "auto" {
		mode = "log"
		if term.IsTerminal(int(os.Stderr.Fd())) {
			mode = "tty"
		}
	}
	if mode != "tty" && mode != "log" {
		return usageErrorf("--progress %q: want auto, tty or log", mode)
	}
	prog := matrix.NewProgress()
	var display *matrix.Terminal
	log, err := newLogger(v0)
	if err != nil {
		return err
	}
	if mode == "tty" {
		// Log lines go through the display so they print above the live line, not into it.
		display = matrix.NewTerminal(os.Stderr, prog, 500*time.Millisecond)
		log = zap.New(zapcore.NewCore(newHumanEncoder(), display, log.Level()))
	}
	defer log.Sync()
	s, err := setupMatrix(o, log)
	if err != nil {
		if display != nil {
			display.Close()
		}
		return err
	}
	defer s.gb.Close()
	results, err := filepath.Abs(o.ResultsFlag)
	if err != nil {
		return err
	}

	// GPUs: the pool cells draw from, and the ids the per-GPU locks use.
	var pool, lockIDs []string
	needGPUs := false
	for _, it := range s.items {
		if it.Action == matrix.ActRun && it.Cell.Backend != launcher.BackendSim {
			needGPUs = true
		}
	}
	if needGPUs {
		if len(s.devs) > 0 {
			for _, d := range s.devs {
				pool = append(pool, strconv.Itoa(d.Index))
				lockIDs = append(lockIDs, d.UUID)
			}
		} else if vis := os.Getenv("CUDA_VISIBLE_DEVICES"); vis != "" {
			pool = strings.Split(vis, ",")
			lockIDs = pool
		} else {
			for i := range s.node.Count {
				pool = append(pool, strconv.Itoa(i))
			}
			lockIDs = pool
		}
	}
	lock, err := matrix.Acquire(results, o.LockDir, lockIDs)
	if err != nil {
		if display != nil {
			display.Close()
		}
		return withCode(exitUsage, err)
	}
	defer lock.Release()
	becomeSubreaper(log)
	ctx, stop := signalContext(log)
	defer stop()
	warnExposed(log, "the inference servers (--host)", o.Launch.Host)
	cell.EndOrphans(ctx, results, cell.SweepConfig{Grace: o.Launch.Grace, GPUs: s.gb,
		SlackBytes: uint64(o.Launch.GPUIdleMiB) << 20, Log: log})
	mctx, mstop := context.WithCancel(context.Background())
	defer mstop()
	if addr := o.MetricsAddr; addr != "" {
		got, _, err := matrix.ServeMetrics(mctx, addr, &matrix.Collector{P: prog, GPUs: s.gb, Devs: s.devs, Version: version})
		if err != nil {
			if display != nil {
				display.Close()
			}
			return usageErrorf("--metrics-addr %s: %v; pick a free address", addr, err)
		}
		if host, _, err := net.SplitHostPort(addr); err == nil {
			warnExposed(log, "the Prometheus metrics endpoint (--metrics-addr)", host)
		}
		log.Info("serving Prometheus metrics", zap.String("addr", "http://"+got+"/metrics"))
	}
	if mode == "log" && o.Heartbeat > 0 {
		go func() {
			t := time.NewTicker(o.Heartbeat)
			defer t.Stop()
			for {
				select {
				case <-mctx.Done():
					return
				case <-t.C:
					log.Info("progress", zap.String("line", prog.Snapshot().Line()))
				}
			}
		}()
	}

	extra := args
	r := &matrix.Runner{
		Results: results, Items: s.items, Slots: s.slots(), GPUs: pool, PortBase: o.Port,
		Host: o.Launch.Host, NoSkip: o.NoSkip, Retries: o.Retries,
		Backoff: o.RetryBackoff, CellTimeout: o.CellTimeout,
		Log: log, Progress: prog,
		Build: func(c *matrix.Cell) (*cell.Config, error) { return matrixCellConfig(o.Launch, s.gb, log, c, extra) },
	}
	var toRun int
	for _, it := range s.items {
		if it.Action == matrix.ActRun {
			toRun++
		}
	}
	log.Info("matrix run", zap.String("matrix", s.mx.Path), zap.String("node", s.node.Label), zap.String("results", results),
		zap.Int("cells", toRun), zap.Int("slots", r.Slots), zap.Strings("gpus", pool))
	out, err := r.Run(ctx)
	if display != nil {
		display.Close()
	}
	interrupted := ctx.Err() != nil || out.Interrupted > 0
	if linger := o.MetricsLinger; linger > 0 && o.MetricsAddr != "" && !interrupted {
		// Keep /metrics up so a scraper sees the final state; Ctrl-C ends the wait.
		log.Info("run finished; metrics stay up", zap.String("addr", o.MetricsAddr), zap.Duration("for", linger))
		select {
		case <-ctx.Done():
		case <-time.After(linger):
		}
	}
	mstop()
	printMatrixSummary(os.Stdout, results, s.items)
	// The exit code speaks for the results root, not only this run: cells of this matrix
	// (on this node, through --only) that an earlier run failed and this one kept count too.
	var failedInRoot []string
	if after, _, rerr := matrix.Results(results); rerr == nil {
		failedInRoot = matrix.FailedInResults(s.items, after)
	} else if err == nil {
		err = rerr
	}
	fmt.Printf("matrix: %d ok, %d failed, %d infeasible, %d skipped-infeasible, %d interrupted, %d held by another runner in this run; the results root holds %d failed cell(s) of this matrix; moecapd matrix status --results %s\n",
		out.OK, out.Failed, out.Infeasible, out.Skipped, out.Interrupted, len(out.Held), len(failedInRoot), o.ResultsFlag)
	switch {
	case err != nil:
		return withCode(exitInternal, err)
	case interrupted:
		return withCode(exitInterrupted, fmt.Errorf("interrupted; run the same command again to resume"))
	case len(out.Held) > 0:
		return withCode(exitUsage, fmt.Errorf("%d cell(s) not run because another runner holds them (run again once it finishes): %w", len(out.Held), errors.Join(out.Held...)))
	case len(failedInRoot) > 0:
		return withCode(exitCellsFailed, fmt.Errorf("%d cell(s) failed in the results root (%d in this run): %s; see moecapd matrix status, --redo-failed reruns them",
			len(failedInRoot), out.Failed, strings.Join(failedInRoot, ", ")))
	}
	return nil
}

// matrixCellConfig builds one cell's pipeline config through launch-and-bench's own
// settings-to-config path, from a copy of the shared settings with the matrix's values for
// the per-cell ones.
func matrixCellConfig(base launchOpts, gb gpu.Backend, log *zap.Logger, c *matrix.Cell, extra []string) (*cell.Config, error) {
	o := base
	o.Backend, o.Config, o.BatchSize, o.TP, o.NumSamples = c.Backend, c.BenchFile, c.Batch, c.TP, c.NumSamples
	o.Port, o.PortSet = 0, true // the runner gives each cell its port
	o.Hardware, o.SimHardware, o.Env, o.DryRun = c.Hardware, c.Family, "", false
	// The matrix keeps one NVML handle for the whole run.
	cfg, _, err := cellConfig(o, log, append(append([]string{}, c.ServerArgs...), extra...), gb)
	if err != nil {
		return nil, err
	}
	setPrices(cfg, &cell.Plan{}, o)
	// The matrix logs two lines a cell (starting, finished); the pipeline's own steps are
	// for --log-level debug. Warnings and errors still come through.
	if cfg.Log != nil && !cfg.Log.Core().Enabled(zapcore.DebugLevel) {
		cfg.Log = cfg.Log.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	}
	return cfg, nil
}

// printMatrixSummary prints one line per cell this run took on: status, latency,
// throughput, energy and time, or why it did not complete.
func printMatrixSummary(w io.Writer, results string, items []*matrix.Item) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CELL\tSTATUS\tTPOT ms\tTTFT ms\tTOK/S\tJ/TOK\tTOOK\tWHY")
	n := 0
	for _, it := range items {
		if it.Action != matrix.ActRun {
			continue
		}
		n++
		m, err := cell.ReadManifest(filepath.Join(results, it.Cell.ID))
		if err != nil {
			fmt.Fprintf(tw, "%s\tnot run\t\t\t\t\t\t\n", it.Cell.ID)
			continue
		}
		num := func(p *float64, prec int) string {
			if p == nil {
				return "–"
			}
			return strconv.FormatFloat(roundHuman(*p), 'f', -1, 64)
		}
		var tpot, ttft, tput, jtok string = "–", "–", "–", "–"
		if mt := m.Metrics; mt != nil && m.Status == cell.StatusOK {
			h := mt.Headline()
			tpot, ttft = num(h.TPOTMs, 2), num(h.TTFTMs, 1)
			tput = strconv.FormatFloat(mt.OutputThroughput, 'f', 0, 64)
			if m.Telemetry != nil {
				jtok = num(m.Telemetry.JPerOutputToken, 3)
			}
		}
		why := ""
		if f := m.Failure; f != nil {
			why = fmt.Sprintf("%s in %s: %s", f.Kind, f.Phase, firstLineOf(f.Message))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.Cell.ID, m.Status, tpot, ttft, tput, jtok,
			humanDuration(time.Duration(m.Timings.Total*float64(time.Second))), why)
	}
	if n > 0 {
		tw.Flush()
	}
}

func runMatrixStatus(cmd *cobra.Command, _ []string) error {
	if _, err := settings(cmd); err != nil {
		return err
	}
	o, err := readMatrixOpts(cmd.Flags())
	if err != nil {
		return err
	}
	_, mx, err := loadMatrix(o)
	if err != nil {
		return err
	}
	results, problems, err := matrix.Results(o.ResultsFlag)
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("read results root %s: %w", o.ResultsFlag, err))
	}
	md := false
	switch f := o.Format; f {
	case "markdown":
		md = true
	case "terminal":
	case "auto":
		md = !term.IsTerminal(int(os.Stdout.Fd()))
	default:
		return usageErrorf("--format %q: want markdown, terminal or auto", f)
	}
	matrix.Report(os.Stdout, mx, matrix.Status(mx, results), md)
	// Directories not counted (unreadable, or another cell's manifest) are listed, never
	// silently taken for a cell.
	printProblems(os.Stdout, problems)
	return nil
}
