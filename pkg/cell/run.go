package cell

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/moecapd/moecapd/pkg/records"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// Result is a finished cell: its manifest and where it lives.
type Result struct {
	Plan     *Plan
	Manifest *Manifest
}

// Outcome is a finished cell's row of the exit-code table (pkg/exitcode): ok, infeasible
// and interrupted by status; a failure by its phase. A missing environment is the user's to
// fix (usage) even though preflight finds it; any other preflight failure counts as a launch
// failure.
func (m *Manifest) Outcome() exitcode.Kind {
	switch m.Status {
	case StatusOK:
		return exitcode.OK
	case StatusInfeasible:
		return exitcode.Infeasible
	case StatusInterrupted:
		return exitcode.Interrupted
	}
	if m.Failure == nil {
		return exitcode.Internal
	}
	switch m.Failure.Phase {
	case PhasePreflight:
		if m.Failure.Kind == exitcode.FailEnvMissing {
			return exitcode.Usage
		}
		return exitcode.Launch
	case PhaseLaunch, PhaseReady:
		if m.Failure.Kind == exitcode.FailServerLacks {
			return exitcode.Usage // the prompt style or the server is the user's to change
		}
		return exitcode.Launch
	case PhaseBench:
		return exitcode.Bench
	case PhaseTeardown:
		return exitcode.Teardown
	case PhaseRecord:
		// The results directory could not take the manifest: the user's disk or permissions.
		if m.Failure.Kind == exitcode.FailManifestWrite {
			return exitcode.Usage
		}
		return exitcode.Bench // a file of the record is missing: the result is not valid
	}
	return exitcode.Internal
}

// Err is nil for an ok cell, else an error carrying its Outcome and saying what happened.
func (m *Manifest) Err() error {
	k := m.Outcome()
	if k == exitcode.OK {
		return nil
	}
	if m.Failure != nil {
		return exitcode.Errorf(k, "cell %s %s in %w", m.Cell.ID, m.Status, m.Failure.Err())
	}
	return exitcode.Errorf(k, "cell %s %s", m.Cell.ID, m.Status)
}

// runner carries one cell's state through the phases.
type runner struct {
	c    *Config
	p    *Plan
	m    *Manifest
	log  *zap.Logger
	t0   time.Time
	sm_  seams
	srv  RunningServer // nil before launch
	smp  Telemetry
	csv  *os.File
	base map[int]uint64
	// stopRecord ends the refreshing of the state file's member list (nil before launch).
	stopRecord func()
	// dirID is the cell directory's identity when the cell started (device, inode): a cell
	// is ok only in the directory it started in.
	dirID dirIdentity
	// live is the running server for the sampler's goroutine (srv changes when
	// --repeat-fresh-server restarts it).
	live atomic.Pointer[RunningServer]
	// sm scrapes the server's metrics during the bench; measureFrom/To are repeat 1's
	// measured window.
	sm                     MetricsScraper
	smFile                 *os.File
	measureFrom, measureTo time.Time
	// cur is the measured bench being run (bench sets it; nativeClient reads its files and
	// rate).
	cur benchRun
}

// Run runs one cell end to end. ctx cancelled (SIGINT/SIGTERM) ends the cell as
// interrupted, after tearing the server down. The returned error is for problems outside
// the cell's own outcome (cannot write the results directory); the outcome is the manifest.
func Run(ctx context.Context, c *Config, p *Plan) (*Manifest, error) {
	log := c.Log
	if log == nil {
		log = zap.NewNop()
	}
	r := &runner{c: c, p: p, log: log.With(zap.String("cell", p.ID)), t0: time.Now(), sm_: c.seams.withDefaults(c)}
	lay := p.Layout
	if lay == nil {
		// A Plan built by hand (tests): the layout follows from its directory.
		var err error
		if lay, err = OpenLayout(filepath.Dir(p.Dir)); err != nil {
			return nil, err
		}
		if p.Files, err = lay.Cell(p.ID); err != nil {
			return nil, err
		}
	}
	// One runner per cell: the caller (the matrix, which also writes the manifest after
	// Run) may hold the cell's lock already; otherwise Run holds it while it runs. A held
	// lock is a *LockedError naming the holder, and nothing of the cell is touched.
	if !lay.Held(p.ID) {
		unlock, err := lay.Lock(p.ID)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	// A server of an earlier, killed supervisor on this results root may still hold the
	// GPUs or the port: end it first (and wait until its GPUs are back to baseline).
	EndOrphans(ctx, lay.Root, SweepConfig{Grace: c.Grace, GPUs: c.GPUs, SlackBytes: c.MemSlackBytes, Log: r.log})
	if _, err := lay.Create(p.ID); err != nil {
		return nil, StorageError(err)
	}
	r.dirID, _ = identityOf(p.Dir)
	if err := WriteFileAtomic(p.Files.Bench(), c.Bench.Raw); err != nil {
		return nil, StorageError(fmt.Errorf("copy the benchmark file into %s: %w", p.Dir, err))
	}
	self := launcher.Self()
	r.m = &Manifest{
		SchemaVersion: SchemaVersion, Cell: p.Identity, Status: StatusRunning, Phase: PhasePreflight, Supervisor: &self,
		StartedAt: time.Now().UTC(),
		Server: Server{Argv: p.LaunchArgv, EnvAdded: p.EnvAdded, Port: p.Spec.Port, Host: p.Spec.Host, CondaEnv: p.CondaEnv,
			Tracking: launcher.Tracking()},
		Client:   Client{Kind: c.Client, Argv: p.ClientLaunch},
		Versions: Versions{Moecapd: c.Version},
		Extra:    maps.Clone(c.Extra),
	}
	if g := r.sm_.gpus; g != nil {
		r.m.Versions.Driver = g.DriverVersion()
	}
	if p.ClientLaunch != nil {
		r.m.Client.EnvAdded = p.EnvAdded
	}
	r.wrote(p.Files.Bench())
	if err := r.sm_.writeManifest(p.Dir, r.m); err != nil {
		return nil, StorageError(fmt.Errorf("write the first manifest of cell %s: %w", p.ID, err))
	}
	r.run(ctx)
	r.finish()
	if err := r.sm_.writeManifest(p.Dir, r.m); err != nil {
		// The cell's record on disk is not its outcome (it still says running): the cell
		// failed, whatever it measured, and the caller learns why (exit 2: a setup problem).
		return r.m, r.unrecorded(err)
	}
	// The cell has ended and its numbers are in the manifest: compress the bulky files of
	// moecapd's own (readers go through fsx). A failure costs disk, not results.
	done, err := p.Files.Compact(Writers{SimServer: c.Backend == launcher.BackendSim, NativeClient: c.Client == ClientNative})
	if err != nil {
		r.log.Warn("compress the cell's records: left uncompressed", zap.Error(err))
	} else if len(done) > 0 {
		r.log.Debug("compressed the cell's records", zap.Int("files", len(done)))
	}
	return r.m, nil
}

// wrote names files of the cell's record (absolute paths inside the cell directory) in the
// manifest's Files, once each; a path outside the directory or empty is not named.
func (r *runner) wrote(paths ...string) {
	for _, p := range paths {
		rel, err := filepath.Rel(r.p.Dir, p)
		if p == "" || err != nil || rel == "." || strings.HasPrefix(rel, "..") || slices.Contains(r.m.Files, rel) {
			continue
		}
		r.m.Files = append(r.m.Files, rel)
	}
}

// unrecorded fails the cell whose final manifest could not be written (werr) and returns the
// error its caller reports: the outcome in memory is failed (record/manifest_write), an
// earlier failure stays the cell's failure; either way the disk does not hold the outcome.
func (r *runner) unrecorded(werr error) error {
	msg := fmt.Sprintf("the final manifest could not be written (%v): the directory still says %q; %s", werr, StatusRunning, storageFix(werr))
	if r.m.Failure == nil {
		r.fail(PhaseRecord, exitcode.FailManifestWrite, msg)
	} else {
		r.m.Failure.Message += "; and " + msg
	}
	return exitcode.New(exitcode.Usage, errors.New(msg))
}

// storageFix is what to do about an error writing the results directory.
func storageFix(err error) string {
	if why := StorageProblem(err); why != "" {
		return why
	}
	return "check that --results is writable (permissions, disk) and run the cell again"
}

func (r *runner) phase(ph Phase) {
	r.log.Debug("phase", zap.String("phase", string(ph)))
	if r.m.Phase != ph {
		// Kept current on disk: a supervisor killed now leaves the phase it was in.
		r.m.Phase = ph
		if err := r.sm_.writeManifest(r.p.Dir, r.m); err != nil {
			r.log.Warn("cannot update manifest.json with the current phase", zap.Error(err))
		}
	}
	if r.c.OnPhase != nil {
		r.c.OnPhase(r.p.ID, ph)
	}
}

func (r *runner) fail(ph Phase, kind Kind, msg string) {
	if r.m.Failure != nil {
		return
	}
	r.m.Status = StatusOf(kind)
	r.m.Failure = &Failure{Phase: ph, Kind: kind, Message: msg}
	if r.srv != nil {
		r.m.Failure.LogTail = r.srv.LogTail()
	}
	r.log.Error("cell failed", zap.String("phase", string(ph)), zap.String("kind", string(kind)), zap.String("why", msg))
}

// interrupted records the cell stopped in phase ph by its context: failed/timeout at the
// cell's time limit, else interrupted (Stopped).
func (r *runner) interrupted(ctx context.Context, ph Phase) {
	kind, msg := Stopped(ctx, ph)
	r.fail(ph, kind, msg)
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }

func (r *runner) run(ctx context.Context) {
	defer r.teardown()

	r.phase(PhasePreflight)
	t := time.Now()
	ok := r.preflight(ctx)
	r.m.Timings.Preflight = since(t)
	if !ok {
		return
	}

	if ctx.Err() != nil {
		r.interrupted(ctx, PhasePreflight)
		return
	}

	r.phase(PhaseLaunch)
	t = time.Now()
	if !r.launch() {
		return
	}
	if ctx.Err() != nil {
		r.interrupted(ctx, PhaseLaunch)
		return
	}
	r.phase(PhaseReady)
	ok = r.ready(ctx)
	r.m.Timings.LaunchToReady = since(t)
	if !ok {
		return
	}

	r.phase(PhaseBench)
	t = time.Now()
	// The telemetry window opens when the client sends its first measured request (native:
	// profile's hook; runner: its "Sending" line), not at the client's start-up; the mark
	// after the bench closes it if the client did not.
	r.startServerMetrics()
	r.benchRepeats(ctx)
	r.stopServerMetrics()
	r.m.Timings.Bench = since(t)
}

// startServerMetrics scrapes the server's /metrics on the telemetry clock for the whole
// bench phase into server_metrics.csv.
func (r *runner) startServerMetrics() {
	f, err := os.Create(r.p.Files.ServerMetrics())
	if err != nil {
		r.log.Warn("no server metrics: cannot create the file", zap.Error(err))
		return
	}
	r.smFile = f
	every := r.c.GPUInterval
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	r.sm = r.sm_.scrape(strings.TrimSuffix(r.p.BaseURL, "/")+"/metrics", every, f)
}

// stopServerMetrics ends the scraping; the manifest gets the summary over the measured
// window (the client's first to last measured request of repeat 1), or over the whole
// bench phase when the client marked none. A server without the endpoint leaves it absent.
func (r *runner) stopServerMetrics() {
	if r.sm == nil {
		return
	}
	sum := r.sm.StopWindow(r.measureFrom, r.measureTo)
	sum.Window = servermetrics.WindowBench
	if !r.measureFrom.IsZero() && !r.measureTo.IsZero() {
		sum.Window = servermetrics.WindowMeasured
	}
	_ = r.smFile.Close()
	if sum.Samples == 0 {
		r.log.Info("the server exported no metrics during the bench", zap.String("url", sum.URL), zap.String("last_error", sum.LastError))
		_ = os.Remove(r.p.Files.ServerMetrics())
		return
	}
	r.m.ServerMetrics = sum
	r.wrote(r.p.Files.ServerMetrics())
	if sum.Preempted {
		r.log.Warn("the server preempted requests during the bench: their latencies include recomputation", zap.Float64("preemptions", *sum.Preemptions))
	}
}

// measureStart and measureEnd mark the measured window of repeat 1 for the telemetry
// sampler and the server metrics.
func (r *runner) measureStart() {
	if r.measureFrom.IsZero() {
		// A server-metrics sample right at the edge: the counters' deltas then start after
		// the warm-up, not at the last tick before the window.
		if r.sm != nil {
			r.sm.Mark()
		}
		r.measureFrom = time.Now()
	}
	if r.smp != nil {
		r.smp.MarkBenchStart()
	}
}

func (r *runner) measureEnd() {
	if r.measureTo.IsZero() && !r.measureFrom.IsZero() {
		r.measureTo = time.Now()
		if r.sm != nil {
			r.sm.Mark()
		}
	}
	if r.smp != nil {
		r.smp.MarkBenchEnd()
	}
}

// repeatHooks are the client's measure marks of repeat k: repeat 1's open and close the
// cell's telemetry window; with repeats, each also bounds repeat k's own energy window.
func (r *runner) repeatHooks(k int) (start, end func()) {
	repeated := max(r.c.Repeats, 1) > 1
	return func() {
			if k == 1 {
				r.measureStart()
			}
			if repeated && r.smp != nil {
				r.smp.MarkRepeatStart(k)
			}
		}, func() {
			if k == 1 {
				r.measureEnd()
			}
			if repeated && r.smp != nil {
				r.smp.MarkRepeatEnd(k)
			}
		}
}

// repeatJPerToken gives every repeat its J/token over its own window (gpu.RepeatEnergy,
// Summary.Finish's rule); absent where the window's energy was not measured. Repeat 1
// falls back on the cell's window, which is its own.
func (r *runner) repeatJPerToken() {
	t := r.m.Telemetry
	if t == nil {
		return
	}
	for i := range r.m.Repeats {
		rep := &r.m.Repeats[i]
		rep.JPerOutputToken = nil
		for _, e := range t.Repeats {
			if e.Repeat == rep.Index && rep.Metrics != nil {
				rep.JPerOutputToken = e.JPerOutputToken(rep.Metrics.TotalOutputTokens)
			}
		}
		if rep.Index == 1 && rep.JPerOutputToken == nil {
			rep.JPerOutputToken = t.JPerOutputToken
		}
	}
}

// benchRepeats runs the measured bench Config.Repeats times. Repeat 1 is the cell's usual
// bench (its files in client/ and records/, the telemetry window its measured requests);
// repeat k ≥ 2 writes under repeats/<k>/. The manifest keeps every repeat's metrics and
// their summary; its metrics are repeat 1's. A failed repeat ends the cell as failed.
func (r *runner) benchRepeats(ctx context.Context) {
	if r.c.sweepsRates() {
		r.benchRates(ctx)
		return
	}
	n := max(r.c.Repeats, 1)
	var first *profile.Metrics
	for i := 1; i <= n; i++ {
		if i > 1 && r.c.RepeatFreshServer && !r.restart(ctx) {
			break
		}
		r.m.Metrics = nil
		start := time.Now().UTC()
		r.bench(ctx, benchRun{index: i, files: r.p.Files.Repeat(i), what: "repeat"})
		if i == 1 {
			r.measureEnd()
			first = r.m.Metrics
		}
		if n > 1 && r.smp != nil {
			r.smp.MarkRepeatEnd(i) // a client that did not close its window
		}
		if n > 1 {
			r.m.Repeats = append(r.m.Repeats, Repeat{Index: i, StartedAt: start, Metrics: r.m.Metrics})
			r.log.Info("repeat done", zap.Int("repeat", i), zap.Int("of", n), zap.Bool("ok", r.m.Failure == nil))
			_ = r.sm_.writeManifest(r.p.Dir, r.m)
		}
		if r.m.Failure != nil {
			break
		}
	}
	if n > 1 {
		r.m.Metrics = first
	}
}

// restart stops the server and starts it again (--repeat-fresh-server): what the next
// repeat measures owes nothing to the state the last one left.
func (r *runner) restart(ctx context.Context) bool {
	r.stopRecord()
	rep := r.srv.Stop(r.c.Grace)
	if len(rep.Left) > 0 {
		r.fail(PhaseBench, exitcode.FailOrphans, fmt.Sprintf("restarting the server between repeats: PIDs %v survived SIGKILL", rep.Left))
		return false
	}
	r.log.Info("server stopped for a fresh start before the next repeat", zap.Bool("graceful", rep.Graceful))
	if ctx.Err() != nil {
		r.interrupted(ctx, PhaseBench)
		return false
	}
	return r.launch() && r.ready(ctx)
}

func (r *runner) preflight(ctx context.Context) bool {
	if r.c.Backend != launcher.BackendSim {
		gpu.NoticeUnavailable(r.log, r.c.GPUs) // the sim has no GPU to sample
	}
	c, p := r.c, r.p
	if c.Client == ClientNative {
		o := c.Native
		if o.Dataset == "" {
			o.Dataset = c.Bench.Dataset()
		}
		if err := profile.CheckDataset(o, o.Warmup+c.numSamples()); err != nil {
			r.fail(PhasePreflight, exitcode.FailEnvMissing, err.Error()+" (checked before the server was started)")
			return false
		}
	}
	if c.Client == ClientMoECAP && p.CondaRoot != "" && p.CondaErr == nil {
		// The runner's package, asked in the env the runner will run in (before the server
		// starts, so no phase's timing pays for it).
		r.m.Versions.MoECAP = launcher.PackageVersion(ctx, p.CondaRoot, p.CondaEnv, MoECAPDistribution, 30*time.Second)
	}
	if err := r.sm_.servers.PortFree(p.Spec.Host, p.Spec.Port); err != nil {
		r.fail(PhasePreflight, exitcode.FailPortInUse, fmt.Sprintf("port %d on %s is taken (%v; %s); stop what holds it or pass --port 0 to pick a free one", p.Spec.Port, p.Spec.Host, err, launcher.DescribeHolders(p.Spec.Port)))
		return false
	}
	if c.Backend != launcher.BackendSim {
		if p.CondaErr != nil {
			r.fail(PhasePreflight, exitcode.FailEnvMissing, p.CondaErr.Error())
			return false
		}
		if _, err := launcher.ResolveEnv(p.CondaRoot, p.CondaEnv, c.Backend); err != nil {
			r.fail(PhasePreflight, exitcode.FailEnvMissing, err.Error())
			return false
		}
	}
	if g := r.sm_.gpus; g != nil && g.Available() && len(p.Devices) > 0 {
		note := func(b *gpu.BusyError) {
			r.log.Warn("GPUs busy; waiting for them to become idle (--gpu-wait)", zap.Duration("waited", b.Waited.Round(time.Second)),
				zap.Duration("at_most", c.GPUWait), zap.String("busy", b.Error()))
		}
		if err := g.WaitIdle(ctx, p.Devices, c.MemSlackBytes, c.GPUWait, note); err != nil {
			if ctx.Err() != nil {
				r.interrupted(ctx, PhasePreflight)
				return false
			}
			r.fail(PhasePreflight, exitcode.FailGPUBusy, err.Error())
			return false
		}
		base, err := g.MemoryUsed(p.Devices)
		if err == nil {
			r.base = base
		}
	}
	return true
}

func (r *runner) launch() bool {
	c, p := r.c, r.p
	logPath := p.Files.ServerLog()
	env := launcher.MergeEnv(c.BaseEnv, p.EnvAdded)
	// The state file is written while the server waits in the launcher's gate, before it runs
	// any code of its own: a supervisor killed at any moment leaves a state file or nothing.
	var st launcher.State
	record := func(proc *launcher.Process) error {
		st = launcher.NewState(proc, p.ServerArgv, p.Spec.Port)
		for _, d := range p.Devices {
			g := launcher.StateGPU{Index: d.Index, UUID: d.UUID}
			if b, ok := r.base[d.Index]; ok {
				g.BaselineBytes = &b
			}
			st.GPUs = append(st.GPUs, g)
		}
		if err := launcher.WriteState(p.Dir, st); err != nil {
			return fmt.Errorf("cannot record the server in %s (%w); it was not started, as a crash now would orphan it: check the disk and permissions of --results", launcher.StateFile, err)
		}
		return nil
	}
	srv, err := r.sm_.servers.Start(launcher.Spec{Argv: p.LaunchArgv, Env: env, Dir: p.Dir, LogPath: logPath, BeforeRun: record})
	if err != nil {
		kind := exitcode.FailCrash
		if errors.Is(err, launcher.ErrNotFound) {
			kind = exitcode.FailEnvMissing
		}
		r.fail(PhaseLaunch, kind, fmt.Sprintf("could not start the server: %v", err))
		return false
	}
	r.srv = srv
	r.wrote(logPath)
	r.stopRecord = srv.Record(p.Dir, st, 2*time.Second)
	r.m.Server.PID = srv.PID()
	_ = r.sm_.writeManifest(p.Dir, r.m)
	r.log.Info("server started", zap.Int("pid", srv.PID()), zap.Int("port", p.Spec.Port), zap.String("log", logPath),
		zap.String("tracking", r.m.Server.Tracking))
	r.live.Store(&srv)
	if g := r.sm_.gpus; r.smp == nil && g != nil && g.Available() && len(p.Devices) > 0 {
		f, err := os.Create(p.Files.Telemetry())
		if err == nil {
			r.wrote(f.Name())
			r.csv = f
			r.smp = g.Sample(p.Devices, c.GPUInterval, func() []int { return (*r.live.Load()).Members() }, f)
		}
	}
	return true
}

func (r *runner) ready(ctx context.Context) bool {
	err := r.srv.WaitReady(ctx, launcher.ReadySpec{
		BaseURL: r.p.BaseURL, Model: r.p.Spec.Model, Flavor: r.p.Spec.APIFlavor(),
		Interval: 100 * time.Millisecond, Stall: r.c.ReadyStall, Hard: r.c.ReadyHard, Port: r.p.Spec.Port,
	})
	if err == nil {
		r.log.Info("server ready")
		return r.probe(ctx)
	}
	if ctx.Err() != nil {
		r.interrupted(ctx, PhaseReady)
		return false
	}
	var re *launcher.ReadyError
	if errors.As(err, &re) && re.Kind == exitcode.FailPortInUse && !re.Exited {
		r.fail(PhaseReady, exitcode.FailPortInUse, re.Msg)
		return false
	}
	if errors.As(err, &re) && re.Exited {
		kind, line := r.srv.Diagnosis()
		r.fail(PhaseReady, Kind(kind), re.Msg+": "+launcher.Explain(kind, line))
		return false
	}
	r.fail(PhaseReady, exitcode.FailHealthTimeout, err.Error())
	return false
}

// probe asks the ready server for what the native client's options need of it (/tokenize,
// /detokenize: profile.Needs), as its own step: a missing one fails the cell at once,
// server_lacks in ready (exit 2), naming it with what to do. A server that does not answer
// the probe at all is left to the bench to classify.
func (r *runner) probe(ctx context.Context) bool {
	if r.c.Client != ClientNative {
		return true // the MoE-CAP runner tokenizes itself
	}
	o := r.nativeOptions()
	if len(profile.Needs(o)) == 0 {
		return true
	}
	err := profile.Probe(ctx, o)
	switch {
	case err == nil:
		r.log.Info("server serves what the client needs", zap.Strings("endpoints", profile.Needs(o)))
	case errors.Is(err, profile.ErrServerLacks):
		r.fail(PhaseReady, exitcode.FailServerLacks, err.Error())
		return false
	case ctx.Err() != nil:
		r.interrupted(ctx, PhaseReady)
		return false
	default:
		r.log.Warn("could not probe the server for what the client needs; the bench will tell", zap.Error(err))
	}
	return true
}

// nativeOptions are the native client's options for this cell's server and workload,
// before any repeat's own files and hooks.
func (r *runner) nativeOptions() profile.Options {
	c, p := r.c, r.p
	o := c.Native
	o.APIURL = p.APIURL
	o.Model = c.Bench.ModelID
	o.Backend = p.Spec.APIFlavor()
	o.BatchSize = c.BatchSize
	o.NumSamples = c.numSamples()
	o.InputTokens = c.Bench.TargetInputTokens
	o.OutputTokens = c.Bench.TargetOutputTokens
	o.IgnoreEOS = true
	if o.Dataset == "" {
		o.Dataset = c.Bench.Dataset()
	}
	o.Probed = true // probe, right after readiness
	return o
}

// badResult marks a client that ran but whose output does not hold up (missing files,
// failed requests behind a zero exit code).
type badResult struct{ error }

// benchRun is one measured bench of a cell: index 1 is the cell's own (its files in the
// cell's client/ and records/, the telemetry window its measured requests); the others
// (repeats, rates) write under files. rate, when > 0, is the open-loop rate in physical
// requests/s, replacing the native options' own.
type benchRun struct {
	index int
	files Dir
	rate  float64
	what  string // "repeat" or "rate": how logs and errors name the run
}

func (r *runner) bench(ctx context.Context, run benchRun) {
	r.cur = run
	// The server dying mid-bench must end the bench at once, not after every request
	// times out.
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.srv.Done():
			cancel()
		case <-bctx.Done():
		}
	}()
	met, err := r.sm_.client(r).Bench(bctx, run.index)
	if met != nil {
		// A time-scaled sim's client numbers are recorded in physical units (issue 19).
		r.m.Metrics = met.Unscaled(r.m.TimeScale())
	}
	if r.m.Versions.Backend == "" {
		// What the server said its version is, as the client recorded it (absent when it
		// did not say): compare sets the two sides' versions side by side.
		r.m.Versions.Backend = profile.EngineVersionOf(run.files.Client())
	}
	if err != nil && ctx.Err() == nil {
		// Requests fail the moment a server dies, a little before the exit is reaped: give
		// the reaper a moment so the cell blames the server, not the client.
		select {
		case <-r.srv.Done():
		case <-time.After(r.sm_.reapWait):
		}
	}
	switch {
	case ctx.Err() != nil:
		r.interrupted(ctx, PhaseBench)
	case r.srv.Exited():
		kind, line := r.srv.Diagnosis()
		fk := Kind(kind)
		if fk == exitcode.FailPortInUse || fk == exitcode.FailEnvMissing {
			fk = exitcode.FailCrash
		}
		r.fail(PhaseBench, fk, "server died during the bench ("+r.srv.ExitDescription()+"): "+launcher.Explain(kind, line))
	case err != nil:
		kind := exitcode.FailClientError
		var bad badResult
		if errors.As(err, &bad) {
			kind = exitcode.FailBadResult
		}
		// Requests refused because not even one fits in GPU memory (the server logged it,
		// as vLLM and the sim do): the cell is infeasible, not failed.
		if kind == exitcode.FailClientError {
			if k, line := r.srv.Diagnosis(); Kind(k) == exitcode.FailOOM {
				r.fail(PhaseBench, exitcode.FailOOM, err.Error()+": "+launcher.Explain(k, line))
				return
			}
		}
		r.fail(PhaseBench, kind, err.Error())
	}
}

// nativeClient is moecapd's own bench client (pkg/profile) run in this process.
type nativeClient struct{ r *runner }

// Bench runs one measured bench of the native client (the runner's current run: a repeat
// or a rate of a sweep); profile.Run applies the bench deadline itself.
func (n nativeClient) Bench(ctx context.Context, repeat int) (*profile.Metrics, error) {
	r := n.r
	run := r.cur
	if run.index != repeat || run.what == "" {
		run = benchRun{index: repeat, files: r.p.Files.Repeat(repeat), what: "repeat"}
	}
	c, p := r.c, r.p
	o := r.nativeOptions()
	files := run.files
	o.OutputDir = files.Client()
	// The server records into the cell's records/; each repeat keeps its own window.
	o.SGLangRecorderDir = p.Files.Records()
	o.RecordsDir = files.Records()
	bs := c.BatchSize
	o.ServerBatchSize = &bs
	switch {
	case run.what == "repeat":
		o.OnMeasureStart, o.OnMeasureEnd = r.repeatHooks(run.index)
	case run.index == 1:
		o.OnMeasureStart, o.OnMeasureEnd = r.measureStart, r.measureEnd
	}
	if run.index > 1 && !c.RepeatFreshServer {
		o.Warmup = 0 // the server is warm: the runs before this one warmed it
	}
	r.openLoop(&o, run.rate)
	o.Log = r.log.With(zap.Int(run.what, run.index))
	if run.index > 1 {
		if err := os.MkdirAll(files.Client(), 0o755); err != nil {
			return nil, fmt.Errorf("create the directory of %s %d: %w", run.what, run.index, err)
		}
	}
	// client.log gets the client's own log lines (JSON), not a terminal progress bar.
	if cl, err := os.OpenFile(files.ClientLog(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644); err == nil {
		defer cl.Close()
		r.wrote(files.ClientLog())
		core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(cl), zap.InfoLevel)
		o.Log = zap.New(zapcore.NewTee(r.log.Core(), core))
		if o.Progress == nil {
			o.ProgressInterval = 10 * time.Second
		}
	}
	res, err := profile.Run(ctx, o)
	// A run whose requests failed or whose counts do not hold up is an invalid result
	// (bad_result, exit 5); its numbers are kept in the manifest all the same.
	if err != nil && ctx.Err() == nil && (errors.Is(err, profile.ErrInvalidResult) || errors.Is(err, profile.ErrNoSuccess)) {
		err = badResult{err}
	}
	if res != nil {
		if err == nil {
			r.wrote(res.Files.OutputData, res.Files.Metrics, res.Files.Metadata, res.Files.Detailed, res.BenchJSON)
		}
		if _, serr := os.Stat(res.RecordsFile); res.RecordsFile != "" && serr == nil {
			r.wrote(res.RecordsFile) // the server's pass records, when it wrote them here
		}
		return &res.Metrics, err
	}
	return nil, err
}

// MoECAPDistribution is the MoE-CAP package's distribution name (importlib.metadata).
const MoECAPDistribution = "moe_cap"

// moecapRunner is MoE-CAP's own runner (moe_cap.runner.openai_api_profile), started as a
// process in the server's env; it runs once (Config.Repeats is for the native client).
type moecapRunner struct{ r *runner }

// Bench runs the MoE-CAP runner under the bench deadline (--bench-timeout).
func (m moecapRunner) Bench(ctx context.Context, _ int) (*profile.Metrics, error) {
	rctx := ctx
	if d := m.r.c.Native.BenchTimeout; d > 0 {
		var stop context.CancelFunc
		rctx, stop = context.WithTimeoutCause(ctx, d, fmt.Errorf("%w: the runner ran for %s (--bench-timeout)", profile.ErrBenchDeadline, d))
		defer stop()
	}
	met, err := m.run(rctx)
	if err != nil && rctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("%w (the runner was stopped)", context.Cause(rctx))
	}
	return met, err
}

func (m moecapRunner) run(ctx context.Context) (*profile.Metrics, error) {
	r := m.r
	c, p := r.c, r.p
	// Unbuffered prints put the runner's request-phase markers into client.log when they
	// happen, so moecapd can time that phase itself (profile.PhaseClock).
	env := launcher.MergeEnv(c.BaseEnv, p.EnvAdded)
	env = launcher.MergeEnv(env, map[string]string{"PYTHONUNBUFFERED": "1"})
	recordsDir := p.Files.Records()
	flavor := p.Spec.APIFlavor()
	var mark *profile.SGLangMark
	if flavor == "sglang" {
		// The SGLang dump holds every pass since start-up: note where this run's begin.
		hc := &http.Client{Timeout: 5 * time.Minute}
		if m, err := profile.MarkSGLang(ctx, hc, p.BaseURL, "", recordsDir, p.Spec.Model); err != nil {
			r.log.Warn("could not mark the start of the recording window; moecapd's server-pass figures will come from the whole dump (probes filtered)", zap.Error(err))
		} else {
			mark = &m
		}
	}
	logPath := p.Files.ClientLog()
	onStart, onEnd := r.measureStart, r.measureEnd
	clock := profile.WatchRunnerLog(logPath, 5*time.Millisecond, onStart, onEnd)
	t0 := time.Now()
	// The runner carries the server's token: a supervisor killed mid-bench leaves it recorded
	// among the server's processes, so the next run's sweep ends it too instead of leaving it
	// to write into a directory that a rerun has since recreated.
	proc, err := launcher.Start(launcher.Spec{Argv: p.ClientLaunch, Env: env, Dir: p.Dir, LogPath: logPath, Token: r.srv.Token()})
	if err != nil {
		clock.Stop()
		return nil, fmt.Errorf("start the MoE-CAP runner: %w", err)
	}
	r.wrote(logPath)
	select {
	case <-proc.Done():
	case <-ctx.Done():
		proc.Stop(5 * time.Second)
		clock.Stop()
		return nil, ctx.Err()
	}
	rc := profile.RunnerClock{Process: time.Since(t0), RequestPhase: clock.Stop()}
	code := proc.ExitCode()
	r.m.Client.ExitCode = &code
	met, err := profile.ReadMoECAPOutput(p.Files.Client(), c.numSamples(), rc)
	if code != 0 {
		// Whatever the runner wrote before failing is kept (nothing measured is lost).
		if met != nil {
			r.windowStats(met, recordsDir, flavor, mark)
		}
		return met, fmt.Errorf("the MoE-CAP runner failed (%s): %s; see client.log in %s", proc.ExitDescription(), lastLogLine(logPath), p.Dir)
	}
	if met != nil {
		r.windowStats(met, recordsDir, flavor, mark)
	}
	if err != nil {
		return met, badResult{err}
	}
	r.wrote(profile.RunnerResultFiles(p.Files.Client())...)
	return met, nil
}

// windowStats recomputes the server-pass figures from the recording window in records/
// (each pass once, probes dropped, vLLM decode context rebuilt) and keeps the window in
// records/moecapd_window.jsonl; the runner's own figures stay in metrics.moe_cap.
func (r *runner) windowStats(met *profile.Metrics, recordsDir, flavor string, mark *profile.SGLangMark) {
	passes, file, err := profile.ReadRunnerWindow(recordsDir, flavor, r.p.Spec.Model, mark)
	if err != nil || len(passes) == 0 {
		r.log.Info("no pass records in the recording window; server-pass figures are the runner's", zap.String("file", file), zap.Error(err))
		return
	}
	records.DecodeContexts(passes)
	st := profile.StatsOf(passes, met.Completed+met.Failed)
	profile.ApplyStats(met, &st)
	met.Records = fmt.Sprintf("%d passes (%d prefill, %d decode) in the recording window, from %s", st.Passes, st.PrefillPasses, st.DecodePasses, file)
	if f, err := profile.WriteWindow(recordsDir, passes); err != nil {
		r.log.Warn("could not write the recording window file", zap.Error(err))
	} else {
		r.wrote(f)
	}
}

// lastLogLine is the last non-empty line of a log (a Python traceback's last line names the
// exception).
func lastLogLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "no client.log"
	}
	defer f.Close()
	// Only the tail: a runner that printed for hours leaves a log of gigabytes.
	const tail = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > tail {
		_, _ = f.Seek(fi.Size()-tail, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, tail))
	lines := strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' || r == '\r' })
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return "client.log is empty"
}

func (r *runner) teardown() {
	if r.srv == nil {
		return
	}
	r.phase(PhaseTeardown)
	t := time.Now()
	r.stopRecord()
	rep := r.srv.Stop(r.c.Grace)
	code := rep.ExitCode
	r.m.Server.ExitCode = &code
	var problems []string
	if !rep.Graceful {
		r.log.Warn("server ignored SIGTERM for the grace period; killed", zap.Ints("pids", rep.Killed), zap.Duration("grace", r.c.Grace))
	}
	if len(rep.Left) > 0 {
		problems = append(problems, fmt.Sprintf("PIDs %v survived SIGKILL", rep.Left))
	}
	if !r.sm_.servers.PortClosed(r.p.Spec.Host, r.p.Spec.Port) {
		problems = append(problems, fmt.Sprintf("port %d still accepts connections (%s)", r.p.Spec.Port, launcher.DescribeHolders(r.p.Spec.Port)))
	}
	if r.smp != nil {
		sum := r.smp.Stop()
		r.m.Telemetry = &sum
		if err := r.csv.Close(); err != nil {
			r.log.Warn("telemetry.csv incomplete", zap.Error(err))
		}
	}
	if g := r.sm_.gpus; g != nil && g.Available() && len(r.p.Devices) > 0 && r.base != nil {
		left, err := g.WaitBaseline(context.Background(), r.p.Devices, r.base, r.c.MemSlackBytes, 30*time.Second)
		if err != nil {
			var pids []string
			for _, lp := range left {
				pids = append(pids, fmt.Sprintf("%d (%s)", lp.PID, lp.Cmdline))
			}
			problems = append(problems, fmt.Sprintf("GPU memory not back to baseline: %v; held by %s", err, strings.Join(pids, ", ")))
		}
	}
	r.m.Timings.Teardown = since(t)
	if len(problems) > 0 {
		// Every problem is logged and recorded, also after an earlier failure: what is left
		// holding the GPUs or the port is what the user must act on before the next cell.
		for _, pr := range problems {
			r.log.Error("teardown left something behind", zap.String("problem", pr))
		}
		if r.m.Failure != nil {
			r.m.Failure.Teardown = append(r.m.Failure.Teardown, problems...)
			return
		}
		r.fail(PhaseTeardown, exitcode.FailOrphans, strings.Join(problems, "; ")+"; kill them by hand (kill -9 PID) before the next cell")
		r.m.Failure.Teardown = problems
		return
	}
	_ = launcher.RemoveState(r.p.Dir)
	r.log.Info("server torn down", zap.Bool("graceful", rep.Graceful), zap.Duration("took", rep.Took))
}

func (r *runner) finish() {
	now := time.Now().UTC()
	r.m.FinishedAt = &now
	r.m.Timings.Total = since(r.t0)
	r.m.Phase = "" // finished: the failure (if any) says where it stopped
	if r.m.Status == StatusRunning {
		if why := r.dirID.changed(r.p.Dir); why != "" {
			r.fail(PhaseBench, exitcode.FailBadResult, why)
		} else if miss := r.m.MissingFiles(r.p.Dir); len(miss) > 0 {
			r.fail(PhaseRecord, exitcode.FailMissingFile, fmt.Sprintf("%s missing from the cell directory %s at the end of the run (deleted, or never written): the manifest names it and its record is incomplete; the cell is not ok, run it again",
				strings.Join(miss, ", "), r.p.Dir))
		} else {
			r.m.Status = StatusOK
		}
	}
	if r.m.Telemetry == nil && r.srv != nil {
		// No NVML: say so, and still price the GPU-hours of the bench.
		reason := "NVML unavailable"
		if g := r.sm_.gpus; g != nil && g.Reason() != "" {
			reason = g.Reason()
		}
		if r.c.Backend == launcher.BackendSim {
			reason = "simulated backend: no GPU to measure"
		}
		// No sampler measured a window: bench_window_s stays absent (the cost prices the
		// client's request window, else the bench phase, each named by its clock).
		r.m.Telemetry = &gpu.Summary{Available: false, Reason: reason, GPUs: r.p.Identity.GPUCount}
	}
	if r.m.Telemetry != nil && r.m.Metrics != nil {
		r.m.Telemetry.Finish(r.m.Metrics.TotalOutputTokens)
	}
	r.repeatJPerToken()
	if r.m.Status == StatusOK {
		r.m.RepeatStats = SummarizeRepeats(r.m.Repeats, RepeatLevel, r.c.UnstableCV)
		if rs := r.m.RepeatStats; rs != nil && len(rs.Unstable) > 0 {
			r.log.Warn("cell unstable: the repeats spread more than --unstable-cv", zap.Strings("metrics", rs.Unstable), zap.Float64("cv_max", rs.UnstableCV))
		}
	}
	// Every cell gets its CAP block: one that ran its floors, one that did not its
	// prediction (memory verdict, expected TPOT/TTFT).
	if r.c.Tables != nil {
		if err := r.m.AnnotateCAP(r.c.Tables, r.p.Dir, &r.p.Prices); err != nil {
			r.log.Warn("CAP numbers (S-MBU, S-MFU, floors) not derived; the report will try again from records/", zap.Error(err))
		}
	}
}
