package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/profile"
)

// MaxPriority bounds --priority both ways.
const MaxPriority = 1000

// Daemon is the scheduler and its state. Every change is written to the store before it is
// acted on (a lease before its server is spawned) and before a client is answered.
type Daemon struct {
	o      app.MatrixOptions // serve's pipeline settings (the results root among them)
	log    *zap.Logger
	store  *Store
	runner *matrix.Runner
	gb     gpu.Backend
	pool   []string
	uuid   map[string]string
	slots  int
	events *hub
	notify *notifier
	// exec is where cells run: this node's GPUs (localExec) or a Slurm cluster (slurmExec).
	exec executor

	mu        sync.Mutex
	jobs      map[string]*Job
	cells     map[string]*Cell // job/cell
	leases    map[string]*Lease
	freeGPU   map[string]bool
	usedPorts map[int]bool
	busy      map[string]bool // chains and cell ids running now
	running   map[string]context.CancelFunc
	nRunning  int
	mx        map[string]*matrix.Matrix
	wake      chan struct{}
	draining  bool
	wg        sync.WaitGroup
	started   time.Time
	// reconciled is how long the restart's reconcile took.
	reconciled time.Duration
	// recon is the restart's ledger reconciliation (nil when the killed daemon left no
	// lease); reconTold once a cell's manifest carries it. holds are GPUs kept from the next
	// lease until their memory is back at baseline; gpuProof the proof of a released one,
	// for the next cell leased it. holdStop/holdDone end releaseHolds.
	recon     *Reconciliation
	reconTold bool
	holds     map[string]*gpuHold
	gpuProof  map[string]*GPUProof
	holdStop  context.CancelFunc
	holdDone  chan struct{}
}

// Options is what serve gives the daemon besides the pipeline's settings.
type Options struct {
	Matrix  app.MatrixOptions
	Log     *zap.Logger
	Webhook string
	// Slurm, when set, runs every job as Slurm job arrays instead of on this node's GPUs
	// (serve --executor slurm).
	Slurm *SlurmOptions
}

// executor is the seam between the daemon's jobs (store, queue view, API, events) and where
// their cells run. localExec runs them on this node's GPUs with the scheduler of this file;
// slurmExec (slurmexec.go) turns a job into the arrays of moecapd slurm submit and follows
// them.
type executor interface {
	// plan lists the cells a submission runs, queued and in run order (a *SubmitError when
	// refused).
	plan(s Spec) ([]*Cell, error)
	// submit is called once the job and its cells are durable and before the submitter is
	// answered, without d.mu; an error refuses the submission.
	submit(ctx context.Context, j *Job) error
	// cancelled is called with d.mu held once a job's cancel is durable: it stops the job's
	// running cells.
	cancelled(j *Job)
	// reconcile settles what an earlier daemon left (New, before the API answers).
	reconcile(ctx context.Context) error
	// run runs cells until ctx ends, then drains.
	run(ctx context.Context, drain time.Duration)
}

// localExec runs cells on this node's GPUs: the scheduler, the lease ledger and the
// restart reconcile of this file.
type localExec struct{ d *Daemon }

func (e localExec) plan(s Spec) ([]*Cell, error) {
	d := e.d
	o := d.o
	o.Matrix, o.Only, o.IncludeDone, o.NoSkip, o.RedoFailed = s.Matrix, s.Only, s.IncludeDone, s.NoSkip, s.RedoFailed
	items, err := app.PlanMatrix(o, d.log)
	if err != nil {
		return nil, &SubmitError{400, err}
	}
	var cs []*Cell
	for _, it := range items {
		if it.Action == matrix.ActRun {
			c := &Cell{ID: it.Cell.ID, Index: len(cs), State: CellQueued}
			if it.Prev != nil {
				c.Reason = it.Why // an earlier attempt: interrupted (its supervisor gone), failed…
			}
			if it.Estimate > 0 {
				v := it.Estimate.Seconds()
				c.EstimateS = &v
			}
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return nil, &SubmitError{422, fmt.Errorf("no cell of %s is left to run on this node (done, kept from the results root, filtered by --only, or for other hardware); see moecapd matrix plan --matrix %s --results %s", s.Matrix, s.Matrix, d.o.ResultsFlag)}
	}
	return cs, nil
}

func (localExec) submit(context.Context, *Job) error { return nil }

func (e localExec) cancelled(j *Job) {
	for _, cid := range j.Cells {
		if stop := e.d.running[key(j.ID, cid)]; stop != nil {
			stop()
		}
	}
}

func (e localExec) reconcile(ctx context.Context) error { return e.d.reconcile(ctx) }

func (e localExec) run(ctx context.Context, drain time.Duration) { e.d.runLocal(ctx, drain) }

// New opens the store under the results root, reconciles it with what is left of an
// earlier daemon (ledger, servers, manifests) and readies the scheduler.
func New(ctx context.Context, opt Options) (*Daemon, error) {
	o, log := opt.Matrix, opt.Log
	t0 := time.Now()
	results, err := filepath.Abs(o.ResultsFlag)
	if err != nil {
		return nil, err
	}
	o.ResultsFlag, o.Cell.Results = results, results
	if err := os.MkdirAll(results, 0o755); err != nil {
		return nil, exitcode.Usagef("results root %s: %v", results, err)
	}
	if opt.Slurm != nil {
		return newSlurmDaemon(ctx, o, opt, t0)
	}
	gb, pool, uuids, err := app.NodeGPUs(o, log)
	if err != nil {
		return nil, err
	}
	st, err := OpenStore(results)
	if err != nil {
		gb.Close()
		return nil, exitcode.New(exitcode.Usage, err)
	}
	d := &Daemon{o: o, log: log, store: st, gb: gb, pool: pool, uuid: map[string]string{},
		jobs: map[string]*Job{}, cells: map[string]*Cell{}, leases: map[string]*Lease{},
		freeGPU: map[string]bool{}, usedPorts: map[int]bool{}, busy: map[string]bool{},
		running: map[string]context.CancelFunc{}, mx: map[string]*matrix.Matrix{},
		wake: make(chan struct{}, 1), events: newHub(), started: time.Now(),
		notify: newNotifier(opt.Webhook, log), holds: map[string]*gpuHold{}, gpuProof: map[string]*GPUProof{}}
	for i, g := range pool {
		d.freeGPU[g] = true
		d.uuid[g] = uuids[i]
	}
	d.slots = o.Slots
	if d.slots <= 0 {
		d.slots = max(len(pool), 1)
	}
	d.exec = localExec{d}
	d.runner = &matrix.Runner{Results: results, Slots: d.slots, GPUs: pool, PortBase: 0, Host: o.Cell.Host,
		NoSkip: o.NoSkip, Retries: o.Retries, Backoff: o.RetryBackoff, CellTimeout: o.CellTimeout, Log: log,
		Build: app.CellBuilder(o.Cell, gb, log, nil)}
	if err := d.runner.Open(); err != nil {
		d.Close()
		return nil, exitcode.New(exitcode.Usage, err)
	}
	if err := d.exec.reconcile(ctx); err != nil {
		d.Close()
		return nil, err
	}
	d.reconciled = time.Since(t0)
	hctx, hstop := context.WithCancel(context.Background())
	d.holdStop, d.holdDone = hstop, make(chan struct{})
	go func() { defer close(d.holdDone); d.releaseHolds(hctx) }()
	return d, nil
}

// Close closes the store and the GPU backend (after Run returned).
func (d *Daemon) Close() {
	if d.holdStop != nil {
		d.holdStop()
		<-d.holdDone
	}
	d.store.Close()
	if d.gb != nil {
		d.gb.Close()
	}
}

func key(job, id string) string { return job + "/" + id }

// reconcile loads the store and settles what a killed daemon left: its ledger is
// reconciled (reconcileLedger: the servers of its cells checked in /proc and NVML and ended
// through the launcher's verified-identity sweep, its GPUs held until back at baseline),
// and each leased cell takes the state its manifest proves: a result the killed daemon
// finished is kept, a cell it was running is queued again.
func (d *Daemon) reconcile(ctx context.Context) error {
	jobs, cells, leases, err := d.store.Load()
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("read the daemon's store: %w (move %s aside to start empty)", err, filepath.Join(d.o.ResultsFlag, StoreDir)))
	}
	for _, j := range jobs {
		d.jobs[j.ID] = j
	}
	for _, c := range cells {
		d.cells[key(c.Job, c.ID)] = c
	}
	var stale []*Cell
	for _, c := range cells {
		if c.State == CellRunning {
			stale = append(stale, c)
		}
	}
	if len(stale) == 0 && len(leases) == 0 {
		return nil
	}
	d.recon = d.reconcileLedger(ctx, leases)
	byCell := map[string]*LedgerCheck{}
	for i := range d.recon.Ledger {
		lc := &d.recon.Ledger[i]
		byCell[key(lc.Job, lc.Cell)] = lc
	}
	lease := map[string]*Lease{}
	for _, l := range leases {
		lease[key(l.Job, l.Cell)] = l
	}
	now := time.Now().UTC()
	var saveJobs []*Job
	for _, c := range stale {
		l, lc := lease[key(c.Job, c.ID)], byCell[key(c.Job, c.ID)]
		proof := "no lease recorded (killed before its server was spawned)"
		since := time.Time{}
		if c.Started != nil {
			since = *c.Started
		}
		if l != nil && lc != nil {
			since = l.Start
			proof = fmt.Sprintf("lease of GPUs %v since %s (daemon PID %d): server %s", l.GPUs, l.Start.Format(time.RFC3339), l.DaemonPID, lc.Outcome)
			if len(lc.EndedPIDs) > 0 {
				proof += fmt.Sprintf(" (PIDs %v)", lc.EndedPIDs)
			}
			if lc.Why != "" {
				proof += ": " + lc.Why
			}
		}
		m, merr := cell.ReadManifest(filepath.Join(d.o.ResultsFlag, c.ID))
		j := d.jobs[c.Job]
		switch {
		case merr == nil && m.FinishedAt != nil && !m.StartedAt.Before(since.Add(-time.Second)) && final(m.Status):
			c.State, c.Reason = stateOf(m), reasonOf(m)
			c.Finished = m.FinishedAt
			c.Recovery = "finished before the daemon stopped; result kept from its manifest; " + proof
		case j != nil && j.State == JobCancelled:
			c.State, c.Finished = CellInterrupted, &now
			c.Recovery = "its job was cancelled; " + proof
		default:
			c.State, c.Phase, c.Reruns = CellQueued, "", c.Reruns+1
			c.Recovery = "the daemon stopped while it ran; queued again; " + proof
			if merr == nil && m.InterruptedWhy() != "" {
				c.Reason = "earlier attempt " + m.InterruptedWhy()
			}
		}
		d.log.Warn("reconciled a cell the previous daemon was running", zap.String("job", c.Job), zap.String("cell", c.ID),
			zap.String("state", c.State), zap.String("recovery", c.Recovery))
		if j != nil {
			saveJobs = append(saveJobs, j)
		}
	}
	if err := d.store.Save(nil, stale, nil, leaseCells(leases)); err != nil {
		return fmt.Errorf("write the reconciled state: %w", err)
	}
	for _, j := range saveJobs {
		d.settleJob(j)
	}
	return nil
}

func leaseCells(ls []*Lease) []*Cell {
	var out []*Cell
	for _, l := range ls {
		out = append(out, &Cell{Job: l.Job, ID: l.Cell})
	}
	return out
}

func final(s cell.Status) bool {
	return s == cell.StatusOK || s == cell.StatusFailed || s == cell.StatusInfeasible
}

func stateOf(m *cell.Manifest) string {
	switch m.Status {
	case cell.StatusOK:
		return CellOK
	case cell.StatusInfeasible:
		return CellInfeasible
	case cell.StatusInterrupted:
		return CellInterrupted
	}
	return CellFailed
}

func reasonOf(m *cell.Manifest) string {
	if f := m.Failure; f != nil {
		msg := f.Message
		if i := indexNL(msg); i >= 0 {
			msg = msg[:i]
		}
		return fmt.Sprintf("%s in %s: %s", f.Kind, f.Phase, msg)
	}
	// A contaminated run was run once more (matrix.Runner.RunCell's one decision): the
	// cell's record says so, as its manifest does.
	return matrix.RetryReason(m)
}

func indexNL(s string) int {
	for i := range len(s) {
		if s[i] == '\n' {
			return i
		}
	}
	return -1
}

// SubmitError is a refused submission: the status code and the reason.
type SubmitError struct {
	Code int
	Err  error
}

func (e *SubmitError) Error() string { return e.Err.Error() }
func (e *SubmitError) Unwrap() error { return e.Err }

// Submit validates and plans a submission, writes the job and its cells, and only then
// returns it (the submitter's acknowledgement).
func (d *Daemon) Submit(owner string, s Spec) (*Job, error) {
	if s.Cell != nil {
		if s.Matrix != "" {
			return nil, &SubmitError{400, errors.New("give a matrix or one cell's flags, not both")}
		}
		if !filepath.IsAbs(s.Cell.Config) {
			return nil, &SubmitError{400, fmt.Errorf("--config %q: give an absolute path on the daemon's node (the CLI makes it absolute)", s.Cell.Config)}
		}
		y, err := app.OneCellMatrix(d.o, *s.Cell)
		if err != nil {
			return nil, &SubmitError{400, err}
		}
		dir := filepath.Join(d.o.ResultsFlag, StoreDir, "cells")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, &SubmitError{500, err}
		}
		f, err := os.CreateTemp(dir, "cell-*.yaml")
		if err != nil {
			return nil, &SubmitError{500, err}
		}
		_, werr := f.Write(y)
		if serr := f.Sync(); werr == nil {
			werr = serr
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, &SubmitError{500, werr}
		}
		s.Matrix = f.Name()
	}
	if s.Matrix == "" {
		return nil, &SubmitError{400, errors.New("no matrix: give the matrix file (--matrix FILE), or one cell's --backend, --config and --batch-size")}
	}
	if !filepath.IsAbs(s.Matrix) {
		return nil, &SubmitError{400, fmt.Errorf("matrix %q: give an absolute path on the daemon's node (the CLI makes it absolute)", s.Matrix)}
	}
	if s.Priority < -MaxPriority || s.Priority > MaxPriority {
		return nil, &SubmitError{400, fmt.Errorf("--priority %d: want %d to %d (higher runs first)", s.Priority, -MaxPriority, MaxPriority)}
	}
	if s.Only != "" {
		if _, err := regexp.Compile(s.Only); err != nil {
			return nil, &SubmitError{400, fmt.Errorf("--only %q: %v", s.Only, err)}
		}
	}
	if len(s.ServerArgs) > 256 {
		return nil, &SubmitError{400, fmt.Errorf("%d extra server flags: at most 256", len(s.ServerArgs))}
	}
	cs, err := d.exec.plan(s)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	j := &Job{Owner: owner, Priority: s.Priority, State: JobQueued, Created: time.Now().UTC(), Spec: s, Cells: ids}
	if err := d.addJob(j, cs); err != nil {
		return nil, err
	}
	// Where the cells run learns of the job (Slurm: the arrays are submitted and their ids
	// written) before the submitter is answered.
	if err := d.exec.submit(context.Background(), j); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log.Info("job submitted", zap.String("job", j.ID), zap.String("owner", owner), zap.Int("cells", len(ids)), zap.Int("priority", s.Priority), zap.String("matrix", s.Matrix))
	d.events.publish(Event{Type: "job", Job: j.ID, State: j.State})
	d.kick()
	cp := *j
	return &cp, nil
}

// addJob writes a new job and its cells to the store and takes them into the daemon.
func (d *Daemon) addJob(j *Job, cs []*Cell) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return &SubmitError{503, errors.New("the daemon is stopping; submit again once it is back")}
	}
	if err := d.store.AddJob(j, cs); err != nil {
		return &SubmitError{500, fmt.Errorf("write the job: %w", err)}
	}
	d.jobs[j.ID] = j
	for _, c := range cs {
		d.cells[key(j.ID, c.ID)] = c
	}
	return nil
}

// ErrNotFound is a job the daemon does not know.
var ErrNotFound = errors.New("no such job")

// ErrForbidden is a cancel by neither the owner nor an admin.
var ErrForbidden = errors.New("only the job's owner or an admin may cancel it")

// Cancel drops a job's queued cells (cancelled) and tears its running ones down
// (interrupted).
func (d *Daemon) Cancel(id, who string, admin bool) (*Job, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	j := d.jobs[id]
	if j == nil {
		return nil, ErrNotFound
	}
	if j.Owner != who && !admin {
		return nil, ErrForbidden
	}
	if j.State == JobDone || j.State == JobCancelled {
		return j, nil
	}
	now := time.Now().UTC()
	j.State, j.Finished, j.CancelledBy = JobCancelled, &now, who
	var cs []*Cell
	for _, cid := range j.Cells {
		c := d.cells[key(id, cid)]
		if c.State == CellQueued {
			c.State, c.Finished, c.Reason = CellCancelled, &now, "cancelled by "+who+" before it started"
			cs = append(cs, c)
		}
	}
	if err := d.store.Save([]*Job{j}, cs, nil, nil); err != nil {
		return nil, err
	}
	d.exec.cancelled(j)
	d.log.Info("job cancelled", zap.String("job", id), zap.String("by", who))
	d.events.publish(Event{Type: "job", Job: id, State: j.State})
	d.notify.send(fmt.Sprintf("moecapd: job %s (%s) cancelled by %s", id, j.Owner, who))
	return j, nil
}

func (d *Daemon) kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// queueOrder is the one queue: higher priority first, then first submitted first, then the
// matrix's own order.
func (d *Daemon) queueOrder() []*Cell {
	var q []*Cell
	for _, c := range d.cells {
		if c.State == CellQueued {
			q = append(q, c)
		}
	}
	sort.Slice(q, func(a, b int) bool {
		ja, jb := d.jobs[q[a].Job], d.jobs[q[b].Job]
		if ja.Priority != jb.Priority {
			return ja.Priority > jb.Priority
		}
		if ja.Seq != jb.Seq {
			return ja.Seq < jb.Seq
		}
		return q[a].Index < q[b].Index
	})
	return q
}

// item finds a queued cell in its job's matrix (loaded once per path).
func (d *Daemon) item(j *Job, id string) (*matrix.Item, error) {
	mx := d.mx[j.Spec.Matrix]
	if mx == nil {
		o := d.o
		o.Matrix = j.Spec.Matrix
		var err error
		if mx, err = app.LoadMatrix(o); err != nil {
			return nil, err
		}
		d.mx[j.Spec.Matrix] = mx
	}
	c := mx.Cell(id)
	if c == nil {
		return nil, fmt.Errorf("cell %s is no longer in %s (the file changed since the job was submitted)", id, j.Spec.Matrix)
	}
	if len(j.Spec.ServerArgs) > 0 {
		// The submit's extra server flags (after --) follow the matrix's own, as matrix
		// run's do.
		cp := *c
		cp.ServerArgs = append(slices.Clone(c.ServerArgs), j.Spec.ServerArgs...)
		c = &cp
	}
	return &matrix.Item{Cell: c, Action: matrix.ActRun}, nil
}

// Run runs the jobs' cells until ctx ends, then drains.
func (d *Daemon) Run(ctx context.Context, drain time.Duration) { d.exec.run(ctx, drain) }

// runLocal schedules until ctx ends, then drains: running cells get drain to finish, then
// are interrupted (and stay queued for the next start).
func (d *Daemon) runLocal(ctx context.Context, drain time.Duration) {
	cellCtx, stopCells := context.WithCancel(context.Background())
	defer stopCells()
	for {
		d.schedule(cellCtx)
		select {
		case <-ctx.Done():
			d.mu.Lock()
			d.draining = true
			n := d.nRunning
			d.mu.Unlock()
			d.log.Info("draining: no new cells; running ones may finish", zap.Int("running", n), zap.Duration("drain_timeout", drain))
			done := make(chan struct{})
			go func() { d.wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(drain):
				d.log.Warn("drain timeout: interrupting the running cells; they stay queued for the next start")
				stopCells()
				<-done
			}
			return
		case <-d.wake:
		}
	}
}

func (d *Daemon) schedule(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return
	}
	for _, c := range d.queueOrder() {
		if d.nRunning >= d.slots {
			return
		}
		j := d.jobs[c.Job]
		it, err := d.item(j, c.ID)
		if err != nil {
			d.finishCell(c, CellFailed, err.Error())
			continue
		}
		mc := it.Cell
		if d.busy["chain:"+mc.Chain()] || d.busy["cell:"+mc.ID] {
			continue
		}
		gpus, err := matrix.PickGPUs(mc, d.pool, d.freeGPU)
		if err != nil {
			d.finishCell(c, CellFailed, err.Error())
			continue
		}
		if gpus == nil && len(d.pool) > 0 && mc.Backend != "sim" {
			continue
		}
		port, err := d.runner.PickPort(0, d.usedPorts)
		if err != nil {
			d.log.Warn("no free port; waiting", zap.Error(err))
			return
		}
		now := time.Now().UTC()
		// Reason keeps what the queue knew of it (an earlier attempt interrupted, its
		// supervisor gone) until the cell's own outcome replaces it.
		c.State, c.Attempts, c.Started, c.GPUs, c.Phase, c.Progress = CellRunning, c.Attempts+1, &now, gpus, string(cell.PhasePreflight), nil
		self := launcher.Self()
		l := &Lease{Job: c.Job, Cell: c.ID, GPUs: gpus, Start: now, DaemonPID: self.PID, Port: port, Supervisor: &self,
			BaselineBytes: d.baselines(gpus)}
		for _, g := range gpus {
			l.UUIDs = append(l.UUIDs, d.uuid[g])
		}
		var js []*Job
		if j.State == JobQueued {
			j.State = JobRunning
			js = append(js, j)
		}
		// The lease is durable before the server can exist.
		if err := d.store.Save(js, []*Cell{c}, []*Lease{l}, nil); err != nil {
			d.log.Error("cannot write the lease; not starting the cell", zap.String("cell", c.ID), zap.Error(err))
			c.State = CellQueued
			return
		}
		k := key(c.Job, c.ID)
		d.leases[k] = l
		it.Extra = d.takeProof(gpus)
		d.busy["chain:"+mc.Chain()], d.busy["cell:"+mc.ID] = true, true
		for _, g := range gpus {
			d.freeGPU[g] = false
		}
		d.usedPorts[port] = true
		cctx, cancel := context.WithCancel(ctx)
		d.running[k] = cancel
		d.nRunning++
		d.wg.Add(1)
		d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: c.State, Phase: c.Phase, GPUs: gpus})
		d.log.Info("cell starting", zap.String("job", c.Job), zap.String("cell", c.ID), zap.Strings("gpus", gpus), zap.Int("port", port), zap.Int("attempt", c.Attempts))
		go d.runCell(cctx, cancel, c, it, gpus, port)
	}
}

func (d *Daemon) runCell(ctx context.Context, cancel context.CancelFunc, c *Cell, it *matrix.Item, gpus []string, port int) {
	defer d.wg.Done()
	defer cancel()
	k := key(c.Job, c.ID)
	m, err := d.runner.RunCell(ctx, it, gpus, port, matrix.CellHooks{Phase: func(ph cell.Phase) {
		d.mu.Lock()
		defer d.mu.Unlock()
		c.Phase = string(ph)
		if ph == cell.PhasePreflight {
			c.Progress = nil // a retry starts over
		}
		if l := d.leases[k]; l != nil && l.Server == nil && (ph == cell.PhaseReady || ph == cell.PhaseBench) {
			// The server's identity as the launcher recorded it before the server ran.
			if st, err := launcher.ReadState(filepath.Join(d.o.ResultsFlag, c.ID)); err == nil && st.PID > 0 {
				l.ServerPID = st.PID
				l.Server = &launcher.ProcessID{PID: st.PID, StartTicks: st.StartTicks, BootID: st.BootID}
				_ = d.store.Save(nil, []*Cell{c}, []*Lease{l}, nil)
			}
		}
		d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: c.State, Phase: c.Phase, GPUs: gpus})
	}, Progress: func(p profile.Progress) {
		// Held in memory and announced; written with the cell's next state change (a
		// store write a second per running cell buys nothing a restart needs).
		cp := &Progress{Done: p.Done, Failed: p.Failed, InFlight: p.InFlight, Total: p.Total, TokensPerS: p.TokensPerS}
		if p.ETA > 0 {
			v := p.ETA.Seconds()
			cp.ETAS = &v
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if c.State != CellRunning {
			return
		}
		c.Progress = cp
		d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: c.State, Phase: c.Phase, GPUs: gpus, Progress: cp})
	}})
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nRunning--
	delete(d.running, k)
	delete(d.usedPorts, port)
	for _, g := range gpus {
		d.freeGPU[g] = true
	}
	d.busy["chain:"+it.Cell.Chain()], d.busy["cell:"+it.Cell.ID] = false, false
	defer d.kick()
	j := d.jobs[c.Job]
	switch {
	case m == nil && errors.Is(err, cell.ErrLocked):
		d.finishCell(c, CellFailed, "not run: "+err.Error())
	case m == nil:
		d.finishCell(c, CellFailed, fmt.Sprintf("the cell could not be run: %v", err))
	case m.Status == cell.StatusInterrupted && j.State == JobCancelled:
		d.finishCell(c, CellInterrupted, "torn down: job cancelled by "+j.CancelledBy)
	case m.Status == cell.StatusInterrupted:
		// The daemon is stopping: the cell stays queued for the next start.
		c.State, c.Phase, c.Reruns, c.Reason = CellQueued, "", c.Reruns+1, "interrupted by the daemon stopping; queued again"
		if err := d.store.Save(nil, []*Cell{c}, nil, []*Cell{c}); err != nil {
			d.log.Error("write cell state", zap.Error(err))
		}
		delete(d.leases, k)
		d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: c.State})
	default:
		st := stateOf(m)
		d.finishCell(c, st, reasonOf(m))
		if st == CellInfeasible && !j.Spec.NoSkip && !d.o.NoSkip {
			d.skipLarger(j, it.Cell)
		}
	}
}

// skipLarger is matrix run's skip-after-OOM inside one job: the queued larger batches of
// the chain are recorded skipped (with a manifest saying why), not run.
func (d *Daemon) skipLarger(j *Job, oom *matrix.Cell) {
	for _, cid := range j.Cells {
		c := d.cells[key(j.ID, cid)]
		if c.State != CellQueued {
			continue
		}
		it, err := d.item(j, cid)
		if err != nil || !matrix.SkipsAfterOOM(oom, it.Cell) {
			continue
		}
		if err := d.runner.WriteSkipped(it.Cell, oom); err != nil {
			d.log.Warn("skipped cell's manifest not written", zap.String("cell", cid), zap.Error(err))
		}
		d.finishCell(c, CellSkipped, fmt.Sprintf("skipped-infeasible after %s ran out of memory", oom.ID))
	}
}

// finishCell records a final state (and drops the lease), then settles the job. Called
// with d.mu held.
func (d *Daemon) finishCell(c *Cell, state, reason string) {
	now := time.Now().UTC()
	c.State, c.Reason, c.Finished = state, reason, &now
	if err := d.store.Save(nil, []*Cell{c}, nil, []*Cell{c}); err != nil {
		d.log.Error("write cell state", zap.String("cell", c.ID), zap.Error(err))
	}
	delete(d.leases, key(c.Job, c.ID))
	f := []zap.Field{zap.String("job", c.Job), zap.String("cell", c.ID), zap.String("state", state)}
	if reason != "" {
		f = append(f, zap.String("why", reason))
	}
	if state == CellOK {
		d.log.Info("cell finished", f...)
	} else {
		d.log.Warn("cell did not succeed", f...)
	}
	d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: state, Reason: reason})
	if state == CellFailed || state == CellInfeasible {
		d.notify.send(fmt.Sprintf("moecapd: cell %s of job %s %s: %s", c.ID, c.Job, state, reason))
	}
	if j := d.jobs[c.Job]; j != nil {
		d.settleJob(j)
	}
}

// settleJob marks a job done once none of its cells is queued or running.
func (d *Daemon) settleJob(j *Job) {
	if j.State == JobDone || j.State == JobCancelled {
		return
	}
	n := d.counts(j)
	if n[CellQueued]+n[CellRunning] > 0 {
		return
	}
	now := time.Now().UTC()
	j.State, j.Finished = JobDone, &now
	if err := d.store.Save([]*Job{j}, nil, nil, nil); err != nil {
		d.log.Error("write job state", zap.Error(err))
	}
	d.log.Info("job done", zap.String("job", j.ID), zap.Any("cells", n))
	d.events.publish(Event{Type: "job", Job: j.ID, State: j.State})
	d.notify.send(fmt.Sprintf("moecapd: job %s (%s) done: %d ok, %d failed, %d infeasible, %d skipped", j.ID, j.Owner,
		n[CellOK], n[CellFailed], n[CellInfeasible], n[CellSkipped]))
}

func (d *Daemon) counts(j *Job) map[string]int {
	n := map[string]int{}
	for _, cid := range j.Cells {
		if c := d.cells[key(j.ID, cid)]; c != nil {
			n[c.State]++
		}
	}
	return n
}

// JobView is a job with its cells' counts, as the API shows it.
type JobView struct {
	*Job
	Counts map[string]int `json:"counts"`
}

// Jobs lists the jobs, newest first.
func (d *Daemon) Jobs() []JobView {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []JobView
	for _, j := range d.jobs {
		cp := *j
		out = append(out, JobView{Job: &cp, Counts: d.counts(j)})
	}
	slices.SortFunc(out, func(a, b JobView) int { return int(b.Seq) - int(a.Seq) })
	return out
}

// JobCells is one job and its cells in run order.
func (d *Daemon) JobCells(id string) (JobView, []Cell, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	j := d.jobs[id]
	if j == nil {
		return JobView{}, nil, ErrNotFound
	}
	cp := *j
	var cs []Cell
	for _, cid := range j.Cells {
		cs = append(cs, *d.cells[key(id, cid)])
	}
	return JobView{Job: &cp, Counts: d.counts(j)}, cs, nil
}

// Cells lists every cell (of one job, or in one state, when given), queue order for the
// queued ones.
func (d *Daemon) Cells(job, state string) []Cell {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Cell
	for _, c := range d.cells {
		if (job == "" || c.Job == job) && (state == "" || c.State == state) {
			out = append(out, *c)
		}
	}
	slices.SortFunc(out, func(a, b Cell) int {
		ja, jb := d.jobs[a.Job], d.jobs[b.Job]
		if ja.Seq != jb.Seq {
			return int(ja.Seq) - int(jb.Seq)
		}
		return a.Index - b.Index
	})
	return out
}

// Leases is the ledger now.
func (d *Daemon) Leases() []Lease {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Lease
	for _, l := range d.leases {
		out = append(out, *l)
	}
	return out
}
