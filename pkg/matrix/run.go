package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
)

// Runner runs the cells a plan marked ActRun. Cells of one chain run in batch order, one
// at a time, so an out-of-memory at batch N can skip the larger ones; other cells run side
// by side when Slots > 1, each on GPUs and a port no other running cell has.
type Runner struct {
	Results string
	Items   []*Item
	// Build makes a cell's pipeline config; the runner then sets port, GPUs and OnPhase.
	// It is called from one goroutine at a time.
	Build func(c *Cell) (*cell.Config, error)
	// Extra are the caller's notes for every manifest the runner writes or runs (a Slurm
	// task's extra.slurm); the matrix adds its own (extra.matrix). Optional.
	Extra map[string]json.RawMessage
	// Exec runs one cell (cell.Run; tests may substitute).
	Exec func(ctx context.Context, c *cell.Config, p *cell.Plan) (*cell.Manifest, error)
	// Slots is how many cells may run at once (1: exclusive).
	Slots int
	// CPUs is the cores sim cells share, for the ETA (0: runtime.NumCPU()).
	CPUs int
	// GPUs is the pool of GPU ids (CUDA_VISIBLE_DEVICES entries) real cells are given from;
	// empty: cells keep the caller's CUDA_VISIBLE_DEVICES and run one at a time.
	GPUs []string
	// PortBase > 0 gives slot i port PortBase+i; 0 picks a free port per cell.
	PortBase    int
	Host        string
	NoSkip      bool
	Retries     int
	Backoff     time.Duration
	CellTimeout time.Duration
	Log         *zap.Logger
	Progress    *Progress

	layout  *cell.Layout
	buildMu sync.Mutex
}

// Outcome is what a run did in the end.
type Outcome struct {
	OK, Failed, Infeasible, Skipped, Interrupted int
	// Held lists the cells another runner held (launch-and-bench, a Slurm task): not run,
	// not touched, each a *cell.LockedError naming its holder.
	Held []error
	// Unrecorded holds, by cell id, the outcome of each cell whose manifest could not be
	// written (a full or read-only disk): its directory does not say what happened, this
	// does (failed, record/manifest_write). Such a cell ends the run (Run's error).
	Unrecorded map[string]*cell.Manifest
}

type job struct {
	it     *Item
	unlock func() // the cell's lock, held from start to finish
	slot   int
	gpus   []string
	port   int
	cfg    *cell.Config
	m      *cell.Manifest
	err    error
	start  time.Time
}

// Run runs the plan. ctx cancelled (SIGINT/SIGTERM) stops starting cells; running ones end
// as interrupted with their servers torn down. The error is for problems outside the
// cells' own outcomes (the results root cannot be written).
func (r *Runner) Run(ctx context.Context) (Outcome, error) {
	log := r.Log
	if log == nil {
		log = zap.NewNop()
	}
	if r.Exec == nil {
		r.Exec = cell.Run
	}
	lay, err := cell.OpenLayout(r.Results)
	if err != nil {
		return Outcome{}, err
	}
	r.layout = lay
	slots := max(r.Slots, 1)
	var pending []*Item
	for _, it := range r.Items {
		if it.Action == ActRun {
			pending = append(pending, it)
		}
	}
	if r.Progress == nil {
		r.Progress = NewProgress()
	}
	p := r.Progress
	cpus := r.CPUs
	if cpus <= 0 {
		cpus = runtime.NumCPU()
	}
	p.begin(pending, slots, cpus)

	var out Outcome
	freeSlots := make([]bool, slots)
	for i := range freeSlots {
		freeSlots[i] = true
	}
	freeGPU := map[string]bool{}
	for _, g := range r.GPUs {
		freeGPU[g] = true
	}
	busyChain := map[string]bool{}
	usedPorts := map[int]bool{}
	done := make(chan *job)
	running := 0
	var fatal error

	// start runs a cell, holding its lock from here until its job is done: the lock every
	// runner of a cell shares, so a cell some other runner holds is neither run nor
	// archived nor written. It reports false for such a cell.
	start := func(it *Item, slot int, gpus []string) bool {
		c := it.Cell
		// A caller that holds the cell's lock already (a Slurm task, which also writes the
		// manifest after the run) keeps it: this process is the one runner.
		unlock, err := func() {}, error(nil)
		if !lay.Held(c.ID) {
			unlock, err = lay.Lock(c.ID)
		}
		if err != nil {
			if errors.Is(err, cell.ErrLocked) {
				out.Held = append(out.Held, err)
				p.skipped(it)
				log.Warn("cell not run: another runner holds it", zap.String("cell", c.ID), zap.Error(err))
				return false
			}
			fatal = fmt.Errorf("cell %s: %w", c.ID, err)
			return false
		}
		j := &job{it: it, unlock: unlock, slot: slot, gpus: gpus, start: time.Now()}
		busyChain[c.Chain()] = true
		freeSlots[slot] = false
		for _, g := range gpus {
			freeGPU[g] = false
		}
		cfg, err := r.Build(c)
		if err == nil {
			j.port, err = r.port(slot, usedPorts)
		}
		if err != nil {
			// A cell whose config cannot be built is recorded as failed; the rest go on.
			j.m = r.configFailure(c, err)
			running++
			go func() { done <- j }()
			return true
		}
		usedPorts[j.port] = true
		cfg.Port = j.port
		if len(r.GPUs) > 0 && c.Backend != launcher.BackendSim {
			cfg.CUDAVisibleDevices = strings.Join(gpus, ",")
		}
		cfg.OnPhase = func(id string, ph cell.Phase) { p.phase(slot, ph) }
		j.cfg = cfg
		p.started(slot, it)
		log.Info("cell starting", zap.String("cell", c.ID), zap.Int("slot", slot), zap.Strings("gpus", gpus),
			zap.Int("port", j.port), zap.Int("num_samples", c.NumSamples), zap.Duration("estimate", it.Estimate))
		running++
		go func() {
			j.m, j.err = r.runCell(ctx, j, log)
			done <- j
		}()
		return true
	}

	for len(pending) > 0 || running > 0 {
		if ctx.Err() == nil && fatal == nil {
			for i := 0; i < len(pending); i++ {
				it := pending[i]
				c := it.Cell
				if busyChain[c.Chain()] {
					continue
				}
				slot := -1
				for s, free := range freeSlots {
					if free {
						slot = s
						break
					}
				}
				if slot < 0 {
					break
				}
				gpus, err := PickGPUs(c, r.GPUs, freeGPU)
				if err != nil {
					fatal = err
					break
				}
				if gpus == nil && len(r.GPUs) > 0 && c.Backend != launcher.BackendSim {
					continue
				}
				pending = append(pending[:i], pending[i+1:]...)
				i--
				if !start(it, slot, gpus) && fatal != nil {
					break
				}
			}
		}
		if running == 0 {
			break
		}
		j := <-done
		running--
		c := j.it.Cell
		busyChain[c.Chain()] = false
		freeSlots[j.slot] = true
		for _, g := range j.gpus {
			freeGPU[g] = true
		}
		delete(usedPorts, j.port)
		if j.err != nil {
			// The cell's directory could not be written: the next cells would fail alike.
			// The error keeps its kind (a full or read-only disk is a setup problem).
			fatal = fmt.Errorf("cell %s: %w", c.ID, j.err)
			if j.m == nil {
				j.m = r.configFailure(c, j.err)
			}
			if out.Unrecorded == nil {
				out.Unrecorded = map[string]*cell.Manifest{}
			}
			out.Unrecorded[c.ID] = j.m
		}
		j.unlock()
		m := j.m
		switch m.Status {
		case cell.StatusOK:
			out.OK++
		case cell.StatusInfeasible:
			out.Infeasible++
		case cell.StatusInterrupted:
			out.Interrupted++
		default:
			out.Failed++
		}
		p.finished(j.slot, j.it, m, time.Since(j.start))
		fields := []zap.Field{zap.String("cell", c.ID), zap.String("status", string(m.Status)),
			zap.Duration("took", time.Since(j.start).Round(time.Millisecond))}
		if m.Failure != nil {
			fields = append(fields, zap.String("phase", string(m.Failure.Phase)), zap.String("kind", string(m.Failure.Kind)), zap.String("why", firstLine(m.Failure.Message)))
		}
		s := p.Snapshot()
		fields = append(fields, zap.String("progress", fmt.Sprintf("%d/%d", s.Finished(), s.Total)), zap.Duration("eta", s.ETA().Round(time.Second)))
		if m.Status == cell.StatusOK {
			log.Info("cell finished", fields...)
		} else {
			log.Warn("cell did not succeed", fields...)
		}
		if m.Status == cell.StatusInfeasible && !r.NoSkip {
			kept := pending[:0]
			for _, it := range pending {
				if SkipsAfterOOM(c, it.Cell) {
					if err := r.WriteSkipped(it.Cell, c); errors.Is(err, cell.ErrLocked) {
						log.Warn("skipped cell's manifest not written: another runner holds it", zap.String("cell", it.Cell.ID), zap.Error(err))
					} else if err != nil {
						fatal = err
					}
					it.Action, it.Why = ActSkip, fmt.Sprintf("skipped-infeasible after %s ran out of memory", c.ID)
					out.Skipped++
					p.skipped(it)
					log.Warn("cell skipped: a smaller batch of it ran out of memory; --no-skip runs it anyway",
						zap.String("cell", it.Cell.ID), zap.String("because", c.ID))
					continue
				}
				kept = append(kept, it)
			}
			pending = kept
		}
	}
	p.end()
	return out, fatal
}

// PickGPUs is the packing rule every scheduler of cells shares (matrix run --pack, the
// daemon): the first c.TP GPUs of the pool that are free, in pool order. nil without an
// error: a sim cell or an empty pool (no GPUs to give), or too few free now (wait). An
// error: the cell needs more GPUs than the pool has at all.
func PickGPUs(c *Cell, pool []string, free map[string]bool) ([]string, error) {
	if len(pool) == 0 || c.Backend == launcher.BackendSim {
		return nil, nil
	}
	if c.TP > len(pool) {
		return nil, fmt.Errorf("cell %s needs %d GPUs but the run has %d (%s); free GPUs or lower tp", c.ID, c.TP, len(pool), strings.Join(pool, ","))
	}
	var gpus []string
	for _, g := range pool {
		if free[g] && len(gpus) < c.TP {
			gpus = append(gpus, g)
		}
	}
	if len(gpus) < c.TP {
		return nil, nil
	}
	return gpus, nil
}

// SkipsAfterOOM says whether cell c is skipped once oom, a cell of the same chain, ran out
// of memory: a larger batch of the same model, hardware, task and backend would too.
func SkipsAfterOOM(oom, c *Cell) bool {
	return c.Chain() == oom.Chain() && c.Batch > oom.Batch
}

// PickPort is a port for a cell that none of used holds: PortBase+slot when set, else a
// free one.
func (r *Runner) PickPort(slot int, used map[int]bool) (int, error) { return r.port(slot, used) }

// Open readies the runner for RunCell (Run does it itself).
func (r *Runner) Open() error {
	if r.Exec == nil {
		r.Exec = cell.Run
	}
	if r.Progress == nil {
		r.Progress = NewProgress()
	}
	if r.Log == nil {
		r.Log = zap.NewNop()
	}
	lay, err := cell.OpenLayout(r.Results)
	if err != nil {
		return err
	}
	r.layout = lay
	return nil
}

// CellHooks are what a scheduler of its own hears of a cell RunCell runs.
type CellHooks struct {
	Phase    func(cell.Phase)
	Progress func(profile.Progress) // the built-in client's requests (the MoE-CAP runner reports none)
}

// RunCell runs one cell for a scheduler of its own (the daemon), with Run's rules: it takes
// the cell's lock (a cell another runner holds gives a *cell.LockedError and is not
// touched), builds the config, gives it the port and GPUs, and runs it with the retries
// and time limit. Build is called under buildMu, so RunCell may run from many goroutines.
// The hooks (each may be nil) hear the pipeline's phases and the built-in client's bench
// progress.
func (r *Runner) RunCell(ctx context.Context, it *Item, gpus []string, port int, h CellHooks) (*cell.Manifest, error) {
	c := it.Cell
	unlock, err := r.layout.Lock(c.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r.buildMu.Lock()
	cfg, err := r.Build(c)
	r.buildMu.Unlock()
	if err != nil {
		return r.configFailure(c, err), nil
	}
	cfg.Port = port
	if len(gpus) > 0 && c.Backend != launcher.BackendSim {
		cfg.CUDAVisibleDevices = strings.Join(gpus, ",")
	}
	cfg.OnPhase = func(_ string, ph cell.Phase) {
		if h.Phase != nil {
			h.Phase(ph)
		}
	}
	if h.Progress != nil {
		cfg.Native.OnProgress = h.Progress
	}
	j := &job{it: it, gpus: gpus, port: port, cfg: cfg, start: time.Now()}
	m, err := r.runCell(ctx, j, r.Log)
	if err != nil && m == nil {
		m = r.configFailure(c, err)
	}
	return m, err
}

func (r *Runner) port(slot int, used map[int]bool) (int, error) {
	if r.PortBase > 0 {
		return r.PortBase + slot, nil
	}
	host := r.Host
	if host == "" {
		host = "127.0.0.1"
	}
	// A port just handed to a cell whose server is not listening yet looks free; skip those.
	for range 20 {
		p, err := launcher.FreePort(host)
		if err != nil {
			return 0, fmt.Errorf("pick a free port on %s: %w", host, err)
		}
		if !used[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port on %s distinct from the running cells'", host)
}

// transient failures are worth another attempt: a server that crashed or never became
// ready may do better on a second try; an out-of-memory will not.
func transient(m *cell.Manifest) bool {
	return m.Status == cell.StatusFailed && m.Failure != nil &&
		(m.Failure.Kind == exitcode.FailCrash || m.Failure.Kind == exitcode.FailHealthTimeout)
}

// contamination says why a cell's truth verdict is contaminated ("" when it is not): the
// failed contamination checks.
func contamination(m *cell.Manifest) string {
	if m == nil || m.Status != cell.StatusOK {
		return ""
	}
	t, ok := m.Truth()
	if !ok || t.Verdict != cell.TruthContaminated {
		return ""
	}
	var why []string
	for _, c := range t.Checks {
		if c.Kind == cell.CheckContamination && !c.Pass {
			why = append(why, fmt.Sprintf("%s %.3g, bound %s", c.Name, c.Value, c.Bound))
		}
	}
	return strings.Join(why, "; ")
}

// RetryReason says, for a record of the cell kept outside its manifest (the daemon's), why
// the kept run is not the first: the contaminated attempt the runner ran again, and whether
// the rerun was contaminated too; "" for a cell that ran once. The decision itself is
// runCell's, for matrix run and the daemon alike.
func RetryReason(m *cell.Manifest) string {
	if m == nil {
		return ""
	}
	r := NoteOf(m).ContaminatedRetry
	if r == "" {
		return ""
	}
	if why := contamination(m); why != "" {
		r += "; the rerun was contaminated too (" + why + ") and is kept as it is"
	}
	return r
}

func (r *Runner) runCell(ctx context.Context, j *job, log *zap.Logger) (*cell.Manifest, error) {
	c := j.it.Cell
	timeout := r.CellTimeout
	if c.Timeout > 0 {
		timeout = c.Timeout
	}
	var m *cell.Manifest
	contaminatedRetry := "" // why the cell was run once more, when a run was contaminated
	for attempt := 1; ; attempt++ {
		plan, err := cell.MakePlan(j.cfg)
		if err != nil {
			return r.configFailure(c, err), nil
		}
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			// The pipeline honours the limit and records failed/timeout itself.
			cctx, cancel = cell.WithTimeLimit(ctx, timeout)
		}
		// The matrix's note goes in through the pipeline, the manifest's one writer.
		j.cfg.Extra = maps.Clone(r.Extra)
		if j.cfg.Extra == nil {
			j.cfg.Extra = map[string]json.RawMessage{}
		}
		maps.Copy(j.cfg.Extra, j.it.Extra)
		j.cfg.Extra[ExtraKey] = noteJSON(Note{Group: c.Group, Attempts: attempt, PinnedSamples: c.Pinned, ContaminatedRetry: contaminatedRetry})
		m, err = r.Exec(cctx, j.cfg, plan)
		cancel()
		if err != nil && m == nil {
			return nil, err
		}
		// A contaminated cell (its truth verdict: another load disturbed the measurement)
		// runs once more, whatever --retries says; the second run's manifest records why.
		if why := contamination(m); why != "" && contaminatedRetry == "" && ctx.Err() == nil {
			contaminatedRetry = fmt.Sprintf("attempt %d was contaminated (%s); run once more", attempt, why)
			log.Warn("contaminated measurement; running the cell once more", zap.String("cell", c.ID), zap.String("why", why), zap.Int("attempt", attempt))
			r.Progress.retried()
			continue
		}
		if !transient(m) || attempt > r.Retries || ctx.Err() != nil {
			return m, err
		}
		wait := r.Backoff << (attempt - 1)
		log.Warn("transient failure; retrying", zap.String("cell", c.ID), zap.String("kind", string(m.Failure.Kind)),
			zap.Int("attempt", attempt), zap.Int("retries", r.Retries), zap.Duration("backoff", wait))
		r.Progress.retried()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return m, nil
		}
	}
}

func identity(c *Cell) cell.Identity {
	return cell.Identity{ID: c.ID, Model: c.Model, ModelID: c.Bench.ModelID, Hardware: c.Hardware,
		GPUCount: c.TP, GPUIndices: []int{}, Task: c.Task, Dataset: c.Bench.Dataset(),
		InputTokens: c.Bench.TargetInputTokens, OutputTokens: c.Bench.TargetOutputTokens,
		NumSamples: c.NumSamples, BatchSize: c.Batch, Backend: c.Backend, TP: c.TP, ConfigFile: c.Bench.Path}
}

// record writes a manifest for a cell the pipeline never ran, moving an earlier attempt
// aside first so nothing is lost. It takes the cell's lock unless this process holds it;
// a cell another runner holds is left alone (a *cell.LockedError).
func (r *Runner) record(c *Cell, m *cell.Manifest) error {
	if !r.layout.Held(c.ID) {
		unlock, err := r.layout.Lock(c.ID)
		if err != nil {
			return err
		}
		defer unlock()
	}
	d, err := r.layout.Create(c.ID)
	if err != nil {
		return err
	}
	for k, v := range r.Extra {
		if m.Extra == nil {
			m.Extra = map[string]json.RawMessage{}
		}
		m.Extra[k] = v
	}
	return cell.WriteManifest(d.Path, m)
}

// WriteSkipped records a cell not run because a smaller batch of its chain (because) ran
// out of memory.
func (r *Runner) WriteSkipped(c, because *Cell) error {
	now := time.Now().UTC()
	m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Cell: identity(c), Status: cell.StatusInfeasible,
		StartedAt: now, FinishedAt: &now,
		Failure: &cell.Failure{Phase: cell.PhasePreflight, Kind: exitcode.FailOOM,
			Message: fmt.Sprintf("not run: batch %d of the same model, hardware, task and backend (%s) ran out of GPU memory, so batch %d would too; run with --no-skip to try it anyway", because.Batch, because.ID, c.Batch)}}
	SetNote(m, Note{Group: c.Group, SkippedBecause: because.ID, PinnedSamples: c.Pinned})
	return r.record(c, m)
}

func (r *Runner) configFailure(c *Cell, err error) *cell.Manifest {
	now := time.Now().UTC()
	m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Cell: identity(c), Status: cell.StatusFailed,
		StartedAt: now, FinishedAt: &now,
		Failure: &cell.Failure{Phase: cell.PhasePreflight, Kind: exitcode.FailConfig, Message: err.Error()}}
	SetNote(m, Note{Group: c.Group, PinnedSamples: c.Pinned})
	_ = r.record(c, m)
	return m
}
