package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/passcost"
	"github.com/moecapd/moecapd/pkg/profile"
)

// MatrixOptions is the settings of matrix plan, run and status, merged once and typed (see
// CellOptions). Cell holds the pipeline's flags every cell shares.
type MatrixOptions struct {
	Cell                            CellOptions
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

// Check refuses settings out of their bounds.
func (o MatrixOptions) Check() error {
	if err := o.Cell.Check(); err != nil {
		return err
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
		checks = append(checks, exitcode.Usagef("--port %d with --slots %d: slot ports run past %d; lower --port", o.Port, o.Slots, config.MaxPort))
	}
	for _, err := range checks {
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
	}
	return nil
}

// matrixSetup is what plan and run share: the matrix, tables, node and plan.
type matrixSetup struct {
	o        MatrixOptions
	log      *zap.Logger
	tables   *config.Tables
	mx       *matrix.Matrix
	gb       gpu.Backend
	devs     []gpu.Device // the visible GPUs (NVML)
	node     matrix.Node
	items    []*matrix.Item
	problems []cell.Problem
}

// onlyMatcher is --only compiled: the cell ids it keeps; nil (every cell) when empty.
func onlyMatcher(re string) (func(string) bool, error) {
	if re == "" {
		return nil, nil
	}
	rx, err := regexp.Compile(re)
	if err != nil {
		return nil, exitcode.Usagef("--only %q: %v", re, err)
	}
	return rx.MatchString, nil
}

func loadMatrix(o MatrixOptions) (*config.Tables, *matrix.Matrix, error) {
	tables, err := loadTables(o.ConfigsDir, "")
	if err != nil {
		return nil, nil, exitcode.New(exitcode.Usage, err)
	}
	mx, err := matrix.Load(o.Matrix, tables)
	if err != nil {
		return nil, nil, exitcode.New(exitcode.Usage, err)
	}
	return tables, mx, nil
}

// checkMatrixLoads refuses, before a plan runs anything, a group's load that the cells'
// client settings o cannot send (an open loop with the MoE-CAP runner…): every cell, not
// cell by cell as they come.
func checkMatrixLoads(o CellOptions, mx *matrix.Matrix) error {
	for _, c := range mx.Cells {
		if err := checkCellLoad(o, c.Backend, c.Repeats, c.Load, c.LoadKeys); err != nil {
			return err
		}
	}
	return nil
}

// readResults reads the results root, warning of every directory that is not counted.
func readResults(root string, log *zap.Logger) (map[string]*cell.Manifest, []cell.Problem, error) {
	results, problems, err := matrix.Results(root)
	if err != nil {
		if config.IsConfigError(err) {
			return nil, nil, exitcode.New(exitcode.Usage, err)
		}
		return nil, nil, exitcode.New(exitcode.Usage, fmt.Errorf("read results root %s: %w", root, err))
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

func setupMatrix(o MatrixOptions, log *zap.Logger) (*matrixSetup, error) {
	s := &matrixSetup{o: o, log: log}
	var err error
	if s.tables, s.mx, err = loadMatrix(o); err != nil {
		return nil, err
	}
	if err := checkMatrixLoads(o.Cell, s.mx); err != nil {
		return nil, err
	}
	if s.gb, err = gpu.Open(log, o.Cell.RequireGPU); err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	label := o.Hardware
	if hint := config.HardwareHint(label, s.tables.Families()); label != "" && hint != "" {
		return nil, exitcode.Usagef("--hardware %q: %s", label, hint)
	}
	if s.gb.Available() {
		if s.devs, err = s.gb.Resolve(os.Getenv("CUDA_VISIBLE_DEVICES")); err != nil {
			return nil, exitcode.Usagef("CUDA_VISIBLE_DEVICES=%q: %v", os.Getenv("CUDA_VISIBLE_DEVICES"), err)
		}
		if label == "" {
			label = gpu.Label(s.devs)
		}
	}
	if s.node, err = matrix.ParseNode(label); err != nil {
		return nil, exitcode.Usagef("this node's hardware %q: %v; restrict CUDA_VISIBLE_DEVICES to one GPU family or pass --hardware", label, err)
	}
	po := matrix.Options{IncludeDone: o.IncludeDone, NoSkip: o.NoSkip, RedoFailed: o.RedoFailed}
	if po.Only, err = onlyMatcher(o.Only); err != nil {
		return nil, err
	}
	results, problems, err := readResults(o.ResultsFlag, log)
	if err != nil {
		return nil, err
	}
	s.problems = problems
	s.items = matrix.Plan(s.mx, s.tables, s.node, results, po)
	if o.Only != "" && len(s.items) > 0 && matrix.Selected(s.items) == 0 {
		return nil, exitcode.Usagef("--only %q matches none of the matrix's %d cells, so there is no cell to run (%sids look like %s; it is a regular expression over them)",
			o.Only, len(s.items), nearestSelector(o.Only, s.items), s.items[0].Cell.ID)
	}
	return s, nil
}

// nearestSelector is "did you mean X? " for an --only that matched nothing: the cell id,
// or the id part (model key, hardware label, task, batch, backend), nearest to it; "" when
// none is near.
func nearestSelector(only string, items []*matrix.Item) string {
	var cands []string
	seen := map[string]bool{}
	for _, it := range items {
		for _, c := range append([]string{it.Cell.ID}, strings.Split(it.Cell.ID, ".")...) {
			if !seen[c] {
				seen[c] = true
				cands = append(cands, c)
			}
		}
	}
	if c := config.Closest(strings.Trim(only, "^$"), cands); c != "" {
		return fmt.Sprintf("did you mean %q? ", c)
	}
	return ""
}

// slots is how many cells may run at once: 1 unless --pack; with --pack, --slots or
// matrix.PackSlots's choice for this node.
func (s *matrixSetup) slots() int {
	n, _ := s.packSlots()
	return n
}

// packSlots is slots with the reason when moecapd chose the number (--pack without
// --slots), for the log.
func (s *matrixSetup) packSlots() (int, string) {
	if !s.o.Pack {
		return 1, ""
	}
	if n := s.o.Slots; n > 0 {
		return n, ""
	}
	return matrix.PackSlots(s.node.Count, runtime.NumCPU())
}

// MatrixPlanRequest is matrix plan: which cells apply to this node, in run order.
type MatrixPlanRequest struct {
	Matrix MatrixOptions
	Log    *zap.Logger
	Out    io.Writer // the plan's table
}

// MatrixPlan writes the plan: every cell that applies to this node with its action,
// samples, estimate, memory and why, then the totals.
func MatrixPlan(req MatrixPlanRequest) error {
	o, log := req.Matrix, req.Log
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
		return exitcode.New(exitcode.Usage, err)
	}
	fmt.Fprintf(req.Out, "matrix   %s\nnode     %s\nresults  %s\n\n", s.mx.Path, node, o.ResultsFlag)
	tw := tabwriter.NewWriter(req.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tCELL\tACTION\tSAMPLES\tLOAD\tESTIMATE\tMEMORY\tWHY")
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
			est = "–" // unknown (a cell that cannot run): no estimate, not "0s"
			if it.Estimate > 0 {
				est = it.Estimate.Round(time.Second).String()
			}
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", idx, it.Cell.ID, it.Action, samples, it.Cell.Load.Describe(), est, mem, why)
	}
	tw.Flush()
	slots := s.slots()
	fmt.Fprintf(req.Out, "\n%d to run, %d kept from results, %d done per matrix, %d skipped-infeasible, %d not for this node, %d filtered out\n",
		counts[matrix.ActRun], counts[matrix.ActKeep], counts[matrix.ActDone], counts[matrix.ActSkip], counts[matrix.ActNotHere], counts[matrix.ActFiltered])
	fmt.Fprintf(req.Out, "estimated %s over %d slot(s) and %d CPU core(s) (roofline floor plus start-up guess, the sim's CPU cost, or past runs of the same cell)\n",
		matrix.Wall(s.items, slots, runtime.NumCPU()).Round(time.Second), slots, runtime.NumCPU())
	printProblems(req.Out, s.problems)
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

// MatrixRunRequest is matrix run: the settings, the extra server flags for every cell
// (after --), the logger and where the summary goes.
type MatrixRunRequest struct {
	Matrix MatrixOptions
	Extra  []string
	Log    *zap.Logger
	Out    io.Writer // the per-cell summary and the totals line
}

// MatrixRun runs the matrix's cells for this node: GPU pool and locks, orphan sweep,
// metrics server, heartbeat, the runner, then the summary and the exit verdict, which
// speaks for the results root.
func MatrixRun(req MatrixRunRequest) error {
	o := req.Matrix
	if err := refuseUnderDaemon(); err != nil {
		return err
	}
	mode, err := progressMode(o.Progress)
	if err != nil {
		return err
	}
	prog := matrix.NewProgress()
	log, closeDisplay := progressDisplay(mode, prog, req.Log)
	defer closeDisplay()
	defer log.Sync()
	s, err := setupMatrix(o, log)
	if err != nil {
		return err
	}
	defer s.gb.Close()
	lay, err := cell.OpenLayout(o.ResultsFlag)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	pool, lockIDs := s.gpuPool()
	lock, err := matrix.Acquire(lay.Root, o.LockDir, lockIDs)
	if err != nil {
		if err := cell.StorageError(err); exitcode.Of(err) == int(exitcode.Usage) {
			return err // a read-only or full results disk, with what to do
		}
		return exitcode.New(exitcode.Usage, err)
	}
	defer lock.Release()
	BecomeSubreaper(log)
	ctx, stop := SignalContext(log)
	defer stop()
	warnExposed(log, "the inference servers (--host)", o.Cell.Host)
	cell.EndOrphans(ctx, lay.Root, cell.SweepConfig{Grace: o.Cell.Grace, GPUs: s.gb,
		SlackBytes: uint64(o.Cell.GPUIdleMiB) << 20, Log: log})
	mctx, mstop := context.WithCancel(context.Background())
	defer mstop()
	if err := s.serveMetrics(mctx, prog); err != nil {
		return err
	}
	if mode == "log" && o.Heartbeat > 0 {
		go heartbeat(mctx, log, prog, o.Heartbeat)
	}
	r := s.runner(lay.Root, pool, req.Extra, prog)
	out, err := r.Run(ctx)
	closeDisplay()
	interrupted := ctx.Err() != nil || out.Interrupted > 0
	if !interrupted {
		s.lingerMetrics(ctx)
	}
	mstop()
	printMatrixSummary(req.Out, lay, s.items, out.Unrecorded)
	return s.verdict(req.Out, lay.Root, out, err, interrupted)
}

// progressMode is --progress resolved: auto is tty on a terminal, log otherwise.
func progressMode(mode string) (string, error) {
	if mode == "auto" {
		mode = "log"
		if term.IsTerminal(int(os.Stderr.Fd())) {
			mode = "tty"
		}
	}
	if mode != "tty" && mode != "log" {
		return "", exitcode.Usagef("--progress %q: want auto, tty or log", mode)
	}
	return mode, nil
}

// progressDisplay is the live progress line in tty mode: the logger to use (its lines go
// through the display so they print above the live line, not into it) and the display's
// close (once; a no-op in log mode).
func progressDisplay(mode string, prog *matrix.Progress, log *zap.Logger) (*zap.Logger, func()) {
	if mode != "tty" {
		return log, func() {}
	}
	display := matrix.NewTerminal(os.Stderr, prog, 500*time.Millisecond)
	log = zap.New(zapcore.NewCore(NewHumanEncoder(), display, log.Level()))
	return log, sync.OnceFunc(display.Close)
}

// gpuPool is the GPUs cells draw from and the ids the per-GPU locks use: none unless a
// cell to run needs a GPU; NVML's visible GPUs (by UUID for the locks), else
// CUDA_VISIBLE_DEVICES' entries, else the node's count.
func (s *matrixSetup) gpuPool() (pool, lockIDs []string) {
	needGPUs := false
	for _, it := range s.items {
		if it.Action == matrix.ActRun && it.Cell.Backend != launcher.BackendSim {
			needGPUs = true
		}
	}
	if !needGPUs {
		return nil, nil
	}
	if len(s.devs) > 0 {
		return devicePool(s.devs)
	}
	if pool = visiblePool(); pool != nil {
		return pool, pool
	}
	for i := range s.node.Count {
		pool = append(pool, strconv.Itoa(i))
	}
	return pool, pool
}

// serveMetrics serves Prometheus metrics on --metrics-addr (none: nothing) until ctx ends.
func (s *matrixSetup) serveMetrics(ctx context.Context, prog *matrix.Progress) error {
	addr := s.o.MetricsAddr
	if addr == "" {
		return nil
	}
	got, _, err := matrix.ServeMetrics(ctx, addr, &matrix.Collector{P: prog, GPUs: s.gb, Devs: s.devs, Version: s.o.Cell.Version})
	if err != nil {
		return exitcode.Usagef("--metrics-addr %s: %v; pick a free address", addr, err)
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		warnExposed(s.log, "the Prometheus metrics endpoint (--metrics-addr)", host)
	}
	s.log.Info("serving Prometheus metrics", zap.String("addr", "http://"+got+"/metrics"))
	return nil
}

// heartbeat logs the progress line every period until ctx ends (log mode's progress).
func heartbeat(ctx context.Context, log *zap.Logger, prog *matrix.Progress, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			log.Info("progress", zap.String("line", prog.Snapshot().Line()))
		}
	}
}

// runner is the matrix runner over the plan, each cell's config built as launch-and-bench
// builds it with the extra server flags; it logs the run's start.
func (s *matrixSetup) runner(results string, pool, extra []string, prog *matrix.Progress) *matrix.Runner {
	o, log := s.o, s.log
	r := &matrix.Runner{
		Results: results, Items: s.items, Slots: s.slots(), GPUs: pool, PortBase: o.Port,
		Host: o.Cell.Host, NoSkip: o.NoSkip, Retries: o.Retries,
		Backoff: o.RetryBackoff, CellTimeout: o.CellTimeout,
		Log: log, Progress: prog,
		Build: func(c *matrix.Cell) (*cell.Config, error) { return matrixCellConfig(o.Cell, s.gb, log, c, extra) },
	}
	var toRun int
	for _, it := range s.items {
		if it.Action == matrix.ActRun {
			toRun++
		}
	}
	if n, why := s.packSlots(); why != "" {
		log.Info(fmt.Sprintf("--pack: %d slots (%s; --slots sets it)", n, why))
	}
	log.Info("matrix run", zap.String("matrix", s.mx.Path), zap.String("node", s.node.Label), zap.String("results", results),
		zap.Int("cells", toRun), zap.Int("slots", r.Slots), zap.Strings("gpus", pool))
	return r
}

// lingerMetrics keeps /metrics up for --metrics-linger after a run that finished, so a
// scraper sees the final state; Ctrl-C ends the wait.
func (s *matrixSetup) lingerMetrics(ctx context.Context) {
	linger := s.o.MetricsLinger
	if linger <= 0 || s.o.MetricsAddr == "" {
		return
	}
	s.log.Info("run finished; metrics stay up", zap.String("addr", s.o.MetricsAddr), zap.Duration("for", linger))
	select {
	case <-ctx.Done():
	case <-time.After(linger):
	}
}

// verdict prints the totals line and returns the run's exit error. It speaks for the
// results root, not only this run: cells of this matrix (on this node, through --only)
// that an earlier run failed and this one kept count too.
func (s *matrixSetup) verdict(w io.Writer, results string, out matrix.Outcome, err error, interrupted bool) error {
	var failedInRoot []string
	if after, _, rerr := matrix.Results(results); rerr == nil {
		failedInRoot = matrix.FailedInResults(s.items, after)
	} else if err == nil {
		err = rerr
	}
	fmt.Fprintf(w, "matrix: %d ok, %d failed, %d infeasible, %d skipped-infeasible, %d interrupted, %d held by another runner in this run; the results root holds %d failed cell(s) of this matrix; moecapd matrix status --results %s\n",
		out.OK, out.Failed, out.Infeasible, out.Skipped, out.Interrupted, len(out.Held), len(failedInRoot), s.o.ResultsFlag)
	switch {
	case err != nil && exitcode.Of(cell.StorageError(err)) != int(exitcode.Internal):
		// Classified: a results disk full, read-only or not writable is a setup problem (2).
		return cell.StorageError(err)
	case err != nil:
		return exitcode.New(exitcode.Internal, err)
	case interrupted:
		return exitcode.New(exitcode.Interrupted, fmt.Errorf("interrupted; run the same command again to resume"))
	case len(out.Held) > 0:
		return exitcode.New(exitcode.Usage, fmt.Errorf("%d cell(s) not run because another runner holds them (run again once it finishes): %w", len(out.Held), errors.Join(out.Held...)))
	case len(failedInRoot) > 0:
		return exitcode.New(exitcode.CellsFailed, fmt.Errorf("%d cell(s) failed in the results root (%d in this run): %s; see moecapd matrix status, --redo-failed reruns them",
			len(failedInRoot), out.Failed, strings.Join(failedInRoot, ", ")))
	}
	return nil
}

// matrixCellConfig builds one cell's pipeline config through launch-and-bench's own
// settings-to-config path, from a copy of the shared settings with the matrix's values for
// the per-cell ones.
func matrixCellConfig(base CellOptions, gb gpu.Backend, log *zap.Logger, c *matrix.Cell, extra []string) (*cell.Config, error) {
	o := base
	o.Backend, o.Config, o.BatchSize, o.TP, o.NumSamples = c.Backend, c.BenchFile, c.Batch, c.TP, c.NumSamples
	o.Repeats = c.Repeats
	o.Load, o.LoadKeys = c.Load, c.LoadKeys
	o.Port, o.PortSet = 0, true // the runner gives each cell its port
	o.Hardware, o.SimHardware, o.Env, o.DryRun = c.Hardware, c.Family, "", false
	// The matrix keeps one NVML handle for the whole run.
	cfg, _, err := cellConfig(o, log, append(append([]string{}, c.ServerArgs...), extra...), gb)
	if err != nil {
		return nil, err
	}
	// The matrix logs two lines a cell (starting, finished); the pipeline's own steps are
	// for --log-level debug. Warnings and errors still come through.
	if cfg.Log != nil && !cfg.Log.Core().Enabled(zapcore.DebugLevel) {
		cfg.Log = cfg.Log.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	}
	return cfg, nil
}

// printMatrixSummary prints one line per cell this run took on: status, latency,
// throughput, energy and time, or why it did not complete. unrecorded holds the outcomes
// whose manifest could not be written (the disk does not have them).
func printMatrixSummary(w io.Writer, lay *cell.Layout, items []*matrix.Item, unrecorded map[string]*cell.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CELL\tSTATUS\tTPOT ms\tTTFT ms\tTOK/S\tJ/TOK\tTOOK\tWHY")
	n := 0
	for _, it := range items {
		if it.Action != matrix.ActRun {
			continue
		}
		n++
		m, err := lay.ReadManifest(it.Cell.ID)
		if um := unrecorded[it.Cell.ID]; um != nil {
			m, err = um, nil
		}
		if err != nil {
			fmt.Fprintf(tw, "%s\tnot run\t\t\t\t\t\t\n", it.Cell.ID)
			continue
		}
		num := func(p *float64, prec int) string {
			if p == nil {
				return "–"
			}
			return strconv.FormatFloat(RoundHuman(*p), 'f', -1, 64)
		}
		var tpot, ttft, tput, jtok string = "–", "–", "–", "–"
		if mt := m.PhysicalMetrics(); mt != nil && m.Status == cell.StatusOK {
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
		} else if l := profile.ScaleLabel(m.TimeScale()); l != "" {
			why = l + ": client numbers un-scaled to physical units"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.Cell.ID, m.Status, tpot, ttft, tput, jtok,
			HumanDuration(time.Duration(m.Timings.Total*float64(time.Second))), why)
	}
	if n > 0 {
		tw.Flush()
	}
}

// MatrixStatusRequest is matrix status: the guide's tables from the results root.
type MatrixStatusRequest struct {
	Matrix MatrixOptions
	Out    io.Writer // --format auto: markdown unless Out is a terminal
}

// MatrixStatus writes the guide's Completed/Pending tables, failures and per-cell numbers.
func MatrixStatus(req MatrixStatusRequest) error {
	o := req.Matrix
	_, mx, err := loadMatrix(o)
	if err != nil {
		return err
	}
	results, problems, err := matrix.Results(o.ResultsFlag)
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("read results root %s: %w", o.ResultsFlag, err))
	}
	md := false
	switch f := o.Format; f {
	case "markdown":
		md = true
	case "terminal":
	case "auto":
		f, ok := req.Out.(*os.File)
		md = !ok || !term.IsTerminal(int(f.Fd()))
	default:
		return exitcode.Usagef("--format %q: want markdown, terminal or auto", f)
	}
	matrix.Report(req.Out, mx, matrix.Status(mx, results), md)
	// Directories not counted (unreadable, or another cell's manifest) are listed, never
	// silently taken for a cell.
	printProblems(req.Out, problems)
	return nil
}
