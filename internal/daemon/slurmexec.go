package daemon

// The Slurm executor (serve --executor slurm): a submitted job becomes the job arrays of
// moecapd slurm submit (app.SubmitArrays: one array per hardware label, each task running
// one cell with moecapd slurm task), their ids are written to the store before the
// submitter is answered, and a poller follows them (squeue, sacct, the cells' manifests)
// into the same cell states, events and page as the local executor's. The cluster owns the
// GPUs: no node lock, no lease ledger, no orphan sweep here; each task runs its cell under
// the cell's lock on the node Slurm gave it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// SlurmOptions is serve --executor slurm: sbatch's settings for every job's arrays (slurm
// submit's, Matrix and Results set per job by the daemon) and how often Slurm is asked.
type SlurmOptions struct {
	Arrays app.SlurmArrayOptions
	// Poll is the time between two looks at squeue, sacct and the manifests (0: 10 s).
	Poll time.Duration
}

// SlurmJob is a job's Slurm side, in the store.
type SlurmJob struct {
	// Name is the job name of every array of the job, written before the first sbatch so a
	// daemon restarted in the middle of a submission finds what Slurm had already taken.
	Name string `json:"name"`
	// Nice is sbatch --nice of its arrays: minus the job's priority.
	Nice   int          `json:"nice,omitempty"`
	Arrays []SlurmArray `json:"arrays,omitempty"`
	// Submitted says every array of the job is accepted and its id written here.
	Submitted bool `json:"submitted"`
	// Scancelled says the job's cancel reached Slurm (scancel of its arrays answered).
	Scancelled bool `json:"scancelled,omitempty"`
}

// SlurmArray is one array of a job: task i runs Cells[i].
type SlurmArray struct {
	JobID    string   `json:"job_id"`
	Hardware string   `json:"hardware"`
	GPUs     int      `json:"gpus"`
	Cells    []string `json:"cells"`
}

// CellSlurm is Slurm's view of a cell's task at the last poll.
type CellSlurm struct {
	Task  string `json:"task"`            // ARRAYJOBID_INDEX
	State string `json:"state,omitempty"` // squeue's or sacct's state; absent: neither knows it
	Node  string `json:"node,omitempty"`
	Log   string `json:"log"` // the task's output (moecapd slurm task's log)
}

// slurmExec is the executor of a daemon whose cells run on a Slurm cluster.
type slurmExec struct {
	d    *Daemon
	opt  SlurmOptions
	cli  *slurm.CLI
	lay  *cell.Layout
	poll time.Duration
	// submitMu serialises submissions: app.SubmitArrays holds the results root's submit
	// lock, which a second submit would find taken.
	submitMu sync.Mutex
	// unreachable is the last poll's Slurm error, logged once per change.
	unreachable string
}

// Executor names where the daemon's cells run: "local" or "slurm".
func (d *Daemon) Executor() string {
	if _, ok := d.exec.(*slurmExec); ok {
		return "slurm"
	}
	return "local"
}

// newSlurmDaemon is New for --executor slurm: the store and the jobs, no GPUs of this node.
func newSlurmDaemon(ctx context.Context, o app.MatrixOptions, opt Options, t0 time.Time) (*Daemon, error) {
	log := opt.Log
	sx := &slurmExec{opt: *opt.Slurm, cli: opt.Slurm.Arrays.CLI, poll: opt.Slurm.Poll}
	if sx.cli == nil {
		sx.cli = &slurm.CLI{}
	}
	if sx.poll <= 0 {
		sx.poll = 10 * time.Second
	}
	sx.opt.Arrays.Results, sx.opt.Arrays.CLI, sx.opt.Arrays.Log = o.ResultsFlag, sx.cli, log
	lay, err := cell.OpenLayout(o.ResultsFlag)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	sx.lay = lay
	// sbatch's settings are checked once, at start (a dry run of no cells checks them and
	// submits nothing).
	check := sx.opt.Arrays
	check.DryRun = true
	if _, err := app.SubmitArrays(ctx, nil, check); err != nil {
		return nil, err
	}
	// The cluster must answer before the daemon takes jobs for it.
	if _, err := sx.cli.ShowConfig(ctx); err != nil {
		return nil, slurmUsage(fmt.Errorf("--executor slurm: the cluster does not answer: %w", err))
	}
	st, err := OpenStore(o.ResultsFlag)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	d := &Daemon{o: o, log: log, store: st, uuid: map[string]string{},
		jobs: map[string]*Job{}, cells: map[string]*Cell{}, leases: map[string]*Lease{},
		freeGPU: map[string]bool{}, usedPorts: map[int]bool{}, busy: map[string]bool{},
		running: map[string]context.CancelFunc{}, mx: map[string]*matrix.Matrix{},
		wake: make(chan struct{}, 1), events: newHub(), started: time.Now(),
		notify: newNotifier(opt.Webhook, log), exec: sx}
	sx.d = d
	if err := sx.reconcile(ctx); err != nil {
		d.Close()
		return nil, err
	}
	d.reconciled = time.Since(t0)
	return d, nil
}

func slurmUsage(err error) error {
	if errors.Is(err, slurm.ErrNoSlurm) || errors.Is(err, slurm.ErrController) {
		return exitcode.New(exitcode.Usage, err)
	}
	return exitcode.New(exitcode.Internal, err)
}

// plan is slurm submit's: every cell planned as on a node of its own hardware, less those
// the results root holds as ok or Slurm holds queued for this root.
func (sx *slurmExec) plan(s Spec) ([]*Cell, error) {
	if len(s.ServerArgs) > 0 {
		return nil, &SubmitError{400, errors.New("extra server flags (after --) are not carried to Slurm tasks; put them in the matrix (server_args) instead")}
	}
	o := sx.d.o
	o.Matrix, o.Only, o.IncludeDone, o.NoSkip, o.RedoFailed = s.Matrix, s.Only, s.IncludeDone, s.NoSkip, s.RedoFailed
	cells, err := app.PlanSlurmCells(context.Background(), o, sx.cli, sx.d.log)
	if err != nil {
		code := 400
		if exitcode.Of(err) != int(exitcode.Usage) {
			code = 500
		}
		return nil, &SubmitError{code, err}
	}
	if len(cells) == 0 {
		return nil, &SubmitError{422, fmt.Errorf("no cell of %s is left to run (ok in the results root, queued or running in Slurm, or filtered by --only); see moecapd slurm status --results %s", s.Matrix, sx.d.o.ResultsFlag)}
	}
	cs := make([]*Cell, len(cells))
	for i, c := range cells {
		cs[i] = &Cell{ID: c.ID, Index: i, State: CellQueued}
	}
	return cs, nil
}

// matrixCells finds a job's cells in its matrix, read again (the file may have changed
// since an earlier job of the same path).
func (sx *slurmExec) matrixCells(j *Job, ids []string) ([]*matrix.Cell, error) {
	o := sx.d.o
	o.Matrix = j.Spec.Matrix
	mx, err := app.LoadMatrix(o)
	if err != nil {
		return nil, err
	}
	var out []*matrix.Cell
	for _, id := range ids {
		c := mx.Cell(id)
		if c == nil {
			return nil, fmt.Errorf("cell %s is no longer in %s (the file changed since the job was submitted)", id, j.Spec.Matrix)
		}
		out = append(out, c)
	}
	return out, nil
}

// niceOf maps a job's priority (higher first) onto sbatch --nice (lower first).
func niceOf(priority int) int { return -priority }

// submit sends the job's cells to sbatch and writes the arrays' ids before the submitter is
// answered. A refused submission cancels what Slurm took of it and leaves the job
// cancelled with the reason.
func (sx *slurmExec) submit(ctx context.Context, j *Job) error {
	d := sx.d
	sx.submitMu.Lock()
	defer sx.submitMu.Unlock()
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	d.mu.Lock()
	j.Slurm = &SlurmJob{Name: "moecapd-" + j.ID + "-" + hex.EncodeToString(nonce), Nice: niceOf(j.Priority)}
	err := d.store.Save([]*Job{j}, nil, nil, nil)
	d.mu.Unlock()
	if err != nil {
		return sx.refuse(j, &SubmitError{500, fmt.Errorf("write the job: %w", err)})
	}
	arrays, err := sx.sbatch(ctx, j, j.Cells)
	if err != nil {
		var ids []string
		for _, a := range arrays {
			ids = append(ids, a.JobID)
		}
		if len(ids) > 0 {
			if cerr := sx.cli.Cancel(ctx, ids); cerr != nil {
				d.log.Error("a refused submission's arrays could not be cancelled; scancel them", zap.Strings("arrays", ids), zap.Error(cerr))
			}
		}
		code := 500
		var ce *slurm.CommandError
		switch {
		case errors.Is(err, slurm.ErrController) || errors.Is(err, slurm.ErrNoSlurm):
			code = 503
		case errors.As(err, &ce) && j.Slurm.Nice < 0:
			// sbatch refused a job asking to run before others: a negative --nice needs a
			// Slurm operator or admin.
			code = 400
			err = fmt.Errorf("%w (on Slurm --priority N is sbatch --nice=-N; a priority above 0 needs the daemon's user to be a Slurm operator or admin; 0 and below always work)", err)
		}
		return sx.refuse(j, &SubmitError{code, err})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	js := *j.Slurm
	js.Arrays, js.Submitted = arrays, true
	j.Slurm = &js
	cs := sx.assign(j)
	if err := d.store.Save([]*Job{j}, cs, nil, nil); err != nil {
		// The arrays run; the answer says they could not be recorded.
		d.log.Error("arrays submitted but not written to the store", zap.String("job", j.ID), zap.Any("arrays", arrays), zap.Error(err))
		return &SubmitError{500, fmt.Errorf("the job's arrays %v were submitted but could not be written to the store (a restart finds them by name %s): %w", arrayIDs(arrays), j.Slurm.Name, err)}
	}
	return nil
}

// sbatch submits ids (cells of j) as arrays named after the job.
func (sx *slurmExec) sbatch(ctx context.Context, j *Job, ids []string) ([]SlurmArray, error) {
	cells, err := sx.matrixCells(j, ids)
	if err != nil {
		return nil, exitcode.New(exitcode.Internal, err)
	}
	o := sx.opt.Arrays
	o.Matrix = j.Spec.Matrix
	// The job's name and niceness win over the array's defaults (sbatch takes an option's
	// last value).
	o.SbatchArgs = append(slices.Clone(o.SbatchArgs), "--job-name="+j.Slurm.Name)
	if j.Slurm.Nice != 0 {
		o.SbatchArgs = append(o.SbatchArgs, "--nice="+strconv.Itoa(j.Slurm.Nice))
	}
	got, err := app.SubmitArrays(ctx, cells, o)
	var out []SlurmArray
	for _, a := range got {
		if a.JobID != "" {
			out = append(out, SlurmArray{JobID: a.JobID, Hardware: a.Hardware, GPUs: a.GPUs, Cells: a.Cells})
		}
	}
	return out, err
}

func arrayIDs(as []SlurmArray) []string {
	var ids []string
	for _, a := range as {
		ids = append(ids, a.JobID)
	}
	return ids
}

// assign gives each cell of j its task; with d.mu held. It returns the cells it changed.
func (sx *slurmExec) assign(j *Job) []*Cell {
	var cs []*Cell
	for _, a := range j.Slurm.Arrays {
		for i, id := range a.Cells {
			c := sx.d.cells[key(j.ID, id)]
			if c == nil || c.Slurm != nil {
				continue
			}
			c.Slurm = &CellSlurm{Task: a.JobID + "_" + strconv.Itoa(i),
				Log: slurm.Path(sx.d.o.ResultsFlag, slurm.LogsDir, fmt.Sprintf("%s_%d.out", a.JobID, i))}
			cs = append(cs, c)
		}
	}
	return cs
}

// refuse leaves a job Slurm did not take cancelled, with why, and returns why.
func (sx *slurmExec) refuse(j *Job, why *SubmitError) error {
	d := sx.d
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now().UTC()
	j.State, j.Finished, j.CancelledBy = JobCancelled, &now, "moecapd (not submitted to Slurm)"
	var cs []*Cell
	for _, id := range j.Cells {
		if c := d.cells[key(j.ID, id)]; c != nil && !c.Final() {
			c.State, c.Finished, c.Reason = CellCancelled, &now, "not submitted: "+why.Error()
			cs = append(cs, c)
		}
	}
	if err := d.store.Save([]*Job{j}, cs, nil, nil); err != nil {
		d.log.Error("write a refused job", zap.String("job", j.ID), zap.Error(err))
	}
	d.events.publish(Event{Type: "job", Job: j.ID, State: j.State, Reason: why.Error()})
	return why
}

// cancelled (d.mu held) leaves the scancel to the poller, which retries it until Slurm
// answers, also after a restart.
func (sx *slurmExec) cancelled(*Job) { sx.d.kick() }

// reconcile loads the store. Jobs whose arrays are written are followed again as they are;
// a job whose submission a stop interrupted (never acknowledged) keeps the arrays Slurm had
// taken by its name and recorded in the root's submit record, and drops its other cells.
func (sx *slurmExec) reconcile(ctx context.Context) error {
	d := sx.d
	jobs, cells, _, err := d.store.Load()
	if err != nil {
		return exitcode.New(exitcode.Usage, fmt.Errorf("read the daemon's store: %w (move %s aside to start empty)", err, StoreDir))
	}
	for _, j := range jobs {
		d.jobs[j.ID] = j
	}
	for _, c := range cells {
		d.cells[key(c.Job, c.ID)] = c
	}
	follow := 0
	for _, j := range jobs {
		switch {
		case j.Slurm != nil && j.Slurm.Submitted:
			if j.State != JobDone {
				follow++
			}
			continue
		case j.State == JobDone || j.State == JobCancelled:
			// Done, or refused by sbatch (cancelled with the reason).
			continue
		}
		if err := sx.resume(ctx, j); err != nil {
			return err
		}
	}
	d.log.Info("following the Slurm arrays of the jobs in the store", zap.Int("jobs", follow))
	return nil
}

// resume settles a job whose submission was cut short: arrays Slurm holds under the job's
// name and the submit record knows are adopted; arrays it holds but nobody recorded are
// cancelled (their cells are not known); the job's other cells are cancelled, never
// submitted twice.
func (sx *slurmExec) resume(ctx context.Context, j *Job) error {
	d := sx.d
	js := SlurmJob{}
	if j.Slurm != nil {
		js = *j.Slurm
	}
	var adopted []SlurmArray
	if js.Name != "" {
		out, err := sx.cli.Run(ctx, "squeue", "-h", "-t", "all", "--name", js.Name, "-o", "%F")
		if err != nil {
			return slurmUsage(fmt.Errorf("job %s was being submitted when the daemon stopped; squeue cannot say what Slurm took of it: %w", j.ID, err))
		}
		rec, err := slurm.ReadRecord(d.o.ResultsFlag)
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		seen := map[string]bool{}
		var orphans []string
		for _, id := range strings.Fields(out) {
			if seen[id] {
				continue
			}
			seen[id] = true
			i := slices.IndexFunc(rec.Arrays, func(a slurm.Array) bool { return a.JobID == id })
			if i < 0 {
				orphans = append(orphans, id)
				continue
			}
			a := rec.Arrays[i]
			adopted = append(adopted, SlurmArray{JobID: a.JobID, Hardware: a.Hardware, GPUs: a.GPUs, Cells: a.Cells})
		}
		if len(orphans) > 0 {
			d.log.Warn("cancelling arrays of an interrupted submission that the submit record lacks", zap.String("job", j.ID), zap.Strings("arrays", orphans))
			if err := sx.cli.Cancel(ctx, orphans); err != nil {
				return slurmUsage(fmt.Errorf("scancel %s: %w", strings.Join(orphans, " "), err))
			}
		}
	}
	js.Arrays, js.Submitted = adopted, true
	j.Slurm = &js
	cs := sx.assign(j)
	now := time.Now().UTC()
	for _, id := range j.Cells {
		c := d.cells[key(j.ID, id)]
		if c == nil || c.Slurm != nil || c.Final() {
			continue
		}
		c.State, c.Finished = CellCancelled, &now
		c.Reason = "not submitted: the daemon stopped while submitting this job (never acknowledged); submit it again"
		c.Recovery = c.Reason
		cs = append(cs, c)
	}
	d.log.Warn("resumed a job whose submission the daemon's stop cut short", zap.String("job", j.ID), zap.Strings("adopted_arrays", arrayIDs(adopted)))
	if err := d.store.Save([]*Job{j}, cs, nil, nil); err != nil {
		return fmt.Errorf("write the reconciled state: %w", err)
	}
	d.settleJob(j)
	return nil
}

// run polls until ctx ends. Nothing drains: the cluster runs the arrays whether the daemon
// runs or not, and the next start follows them again.
func (sx *slurmExec) run(ctx context.Context, _ time.Duration) {
	t := time.NewTicker(sx.poll)
	defer t.Stop()
	for {
		sx.pollOnce(ctx)
		select {
		case <-ctx.Done():
			sx.d.mu.Lock()
			sx.d.draining = true
			sx.d.mu.Unlock()
			sx.d.log.Info("stopping: the Slurm arrays go on; the next start follows them again")
			return
		case <-t.C:
		case <-sx.d.wake:
		}
	}
}

// followed is one cell the poller asks Slurm about.
type followed struct {
	j    *Job
	c    *Cell
	task string
}

// pollOnce asks Slurm about every live cell of a submitted job, reads their manifests and
// moves each cell to the state they prove; cancelled jobs whose scancel Slurm has not
// answered yet are scancelled.
func (sx *slurmExec) pollOnce(ctx context.Context) {
	d := sx.d
	d.mu.Lock()
	var live []followed
	var cancel []*Job
	arrays := map[string]bool{}
	for _, j := range d.jobs {
		if j.Slurm == nil || !j.Slurm.Submitted {
			continue
		}
		if j.State == JobCancelled && !j.Slurm.Scancelled {
			cancel = append(cancel, j)
		}
		for _, id := range j.Cells {
			c := d.cells[key(j.ID, id)]
			if c == nil || c.Slurm == nil || c.Final() {
				continue
			}
			live = append(live, followed{j, c, c.Slurm.Task})
			arr, _, _ := strings.Cut(c.Slurm.Task, "_")
			arrays[arr] = true
		}
	}
	d.mu.Unlock()
	for _, j := range cancel {
		sx.scancel(ctx, j)
	}
	if len(live) == 0 {
		return
	}
	ids := slices.Sorted(func(yield func(string) bool) {
		for a := range arrays {
			if !yield(a) {
				return
			}
		}
	})
	q, err := sx.cli.Queue(ctx, ids)
	var acct map[string]slurm.Task
	noAcct := true
	if err == nil {
		missing := false
		for _, f := range live {
			if _, ok := q[f.task]; !ok {
				missing = true
			}
		}
		if missing {
			acct, err = sx.cli.Acct(ctx, ids)
			noAcct = errors.Is(err, slurm.ErrNoAccounting) || errors.Is(err, slurm.ErrNoSlurm)
			if noAcct {
				err = nil
			}
		}
	}
	if err != nil {
		if ctx.Err() == nil && err.Error() != sx.unreachable {
			d.log.Warn("Slurm does not answer; cells keep their last state until it does", zap.Error(err))
		}
		sx.unreachable = err.Error()
		return
	}
	if sx.unreachable != "" {
		d.log.Info("Slurm answers again")
		sx.unreachable = ""
	}
	views := make([]taskView, len(live))
	for i, f := range live {
		v := taskView{Task: f.task, NoAccounting: noAcct}
		if t, ok := q[f.task]; ok {
			v.Slurm = &t
		} else if t, ok := acct[f.task]; ok {
			v.Slurm = &t
		}
		if m, err := sx.lay.ReadManifest(f.c.ID); err == nil {
			v.Manifest = m
		}
		views[i] = v
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var save []*Cell
	var started []*Job
	for i, f := range live {
		c, j, v := f.c, f.j, views[i]
		if c.Final() {
			continue
		}
		v.Cancelled, v.CancelledBy, v.Started = j.State == JobCancelled, j.CancelledBy, c.State == CellRunning
		st := slurmCellState(v)
		// Copied, not changed in place: views handed out share the old one.
		cv := *c.Slurm
		cv.State, cv.Node = "", ""
		if t := v.Slurm; t != nil {
			cv.State, cv.Node = t.State, t.Node
		}
		c.Slurm = &cv
		if st.Final() {
			if st.GPUs != nil {
				c.GPUs = st.GPUs
			}
			d.finishCell(c, st.State, st.Reason)
			continue
		}
		if st.State == c.State && st.Phase == c.Phase && st.Reason == c.Reason {
			continue
		}
		if st.State == CellRunning && c.Started == nil {
			now := time.Now().UTC()
			if v.Manifest != nil && st.Phase != "" {
				now = v.Manifest.StartedAt
			}
			c.Started = &now
			c.Attempts++
		}
		if st.GPUs != nil {
			c.GPUs = st.GPUs
		}
		c.State, c.Phase, c.Reason = st.State, st.Phase, st.Reason
		save = append(save, c)
		if st.State == CellRunning && j.State == JobQueued {
			j.State = JobRunning
			started = append(started, j)
		}
		d.events.publish(Event{Type: "cell", Job: c.Job, Cell: c.ID, State: c.State, Phase: c.Phase, GPUs: c.GPUs, Reason: c.Reason})
	}
	if len(save)+len(started) > 0 {
		if err := d.store.Save(started, save, nil, nil); err != nil {
			d.log.Error("write cell states", zap.Error(err))
		}
	}
	for _, j := range started {
		d.events.publish(Event{Type: "job", Job: j.ID, State: j.State})
	}
}

// scancel cancels a cancelled job's arrays (only its own) and records that Slurm took it.
func (sx *slurmExec) scancel(ctx context.Context, j *Job) {
	d := sx.d
	d.mu.Lock()
	ids := arrayIDs(j.Slurm.Arrays)
	d.mu.Unlock()
	if err := sx.cli.Cancel(ctx, ids); err != nil {
		if ctx.Err() == nil {
			d.log.Warn("scancel failed; retried at the next poll", zap.String("job", j.ID), zap.Strings("arrays", ids), zap.Error(err))
		}
		return
	}
	d.log.Info("job's arrays cancelled in Slurm", zap.String("job", j.ID), zap.Strings("arrays", ids))
	d.mu.Lock()
	defer d.mu.Unlock()
	js := *j.Slurm
	js.Scancelled = true
	j.Slurm = &js
	if err := d.store.Save([]*Job{j}, nil, nil, nil); err != nil {
		d.log.Error("write job state", zap.Error(err))
	}
}

// taskView is what one poll learnt of a cell's task.
type taskView struct {
	Task string // ARRAYJOBID_INDEX of this job's task
	// Slurm is squeue's view of the task, else sacct's; nil: neither knows it.
	Slurm *slurm.Task
	// NoAccounting: the cluster keeps no accounting, so a task squeue forgot has ended.
	NoAccounting bool
	// Manifest is the cell's manifest in the results root; nil: none.
	Manifest *cell.Manifest
	// Cancelled says the daemon job was cancelled (by CancelledBy).
	Cancelled   bool
	CancelledBy string
	// Started says an earlier poll saw the task running.
	Started bool
}

// cellView is the state a poll gives a cell.
type cellView struct {
	State, Phase, Reason string
	GPUs                 []string // node:GPU of the task's GPUs, from the manifest
}

// Final says the cell is over.
func (v cellView) Final() bool { return v.State != CellQueued && v.State != CellRunning }

// taskOf is the Slurm task a manifest was written by ("" when no Slurm task wrote it) and
// where it ran.
func taskOf(m *cell.Manifest) (task string, gpus []string) {
	raw, ok := m.Extra[slurm.ExtraKey]
	if !ok {
		return "", nil
	}
	var e slurm.TaskEnv
	if json.Unmarshal(raw, &e) != nil || e.ArrayJobID == "" {
		return "", nil
	}
	for _, g := range e.GPUs {
		gpus = append(gpus, e.Node+":"+g)
	}
	return e.ArrayJobID + "_" + strconv.Itoa(e.TaskID), gpus
}

// slurmCellState maps Slurm's state of a cell's task and the cell's manifest to the cell's
// state. The manifest is the truth of a result; Slurm says whether the task waits, runs or
// has ended without one.
func slurmCellState(v taskView) cellView {
	var ours bool
	var gpus []string
	if v.Manifest != nil {
		var task string
		task, gpus = taskOf(v.Manifest)
		ours = task == v.Task
	}
	m, t := v.Manifest, v.Slurm
	active := t != nil && t.Active()
	where := "Slurm task " + v.Task
	// A result this task wrote is final, whatever Slurm still does with the task.
	if ours && final(m.Status) {
		return cellView{State: stateOf(m), Reason: reasonOf(m), GPUs: gpus}
	}
	if active {
		switch t.State {
		case "RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING":
			r := cellView{State: CellRunning, Reason: where + " running on " + t.Node}
			if ours && m.Status == cell.StatusRunning {
				r.Phase, r.GPUs = string(m.Phase), gpus
			}
			if v.Cancelled {
				r.Reason = where + " cancelled by " + v.CancelledBy + "; tearing down on " + t.Node
			}
			return r
		}
		why := t.Reason
		if why == "" || why == "None" {
			why = strings.ToLower(t.State)
		}
		return cellView{State: CellQueued, Reason: where + " pending (" + why + ")"}
	}
	// The task has ended (or Slurm no longer knows it) without a final result of its own.
	state := ""
	if t != nil {
		state = t.State
	}
	switch {
	case m != nil && m.Status == cell.StatusOK && !ours && (state == "COMPLETED" || state == ""):
		return cellView{State: CellOK, Reason: "kept: the results root already held it ok"}
	case ours && m.Status == cell.StatusInterrupted && v.Cancelled:
		return cellView{State: CellInterrupted, Reason: "torn down: job cancelled by " + v.CancelledBy, GPUs: gpus}
	case ours && m.Status == cell.StatusInterrupted:
		return cellView{State: CellInterrupted, Reason: fmt.Sprintf("%s ended %s: %s", where, orUnknown(state), reasonOf(m)), GPUs: gpus}
	case ours && m.Status == cell.StatusRunning:
		// Killed past KillWait (or the node died) before the manifest was closed.
		return cellView{State: CellInterrupted, Reason: fmt.Sprintf("%s ended %s while the cell was in phase %s", where, orUnknown(state), m.Phase), GPUs: gpus}
	case state == "CANCELLED" && v.Cancelled && v.Started:
		return cellView{State: CellCancelled, Reason: "cancelled by " + v.CancelledBy + " while its task was starting, before the cell wrote a result"}
	case state == "CANCELLED" && v.Cancelled:
		return cellView{State: CellCancelled, Reason: "cancelled by " + v.CancelledBy + " before it started"}
	case state == "CANCELLED":
		return cellView{State: CellCancelled, Reason: where + " cancelled in Slurm (scancel outside moecapd)"}
	case t == nil && !v.NoAccounting:
		return cellView{State: CellFailed, Reason: where + " is unknown to squeue and sacct and left no result"}
	case t == nil:
		return cellView{State: CellFailed, Reason: where + " left the queue without a result (the cluster keeps no accounting to say how it ended)"}
	}
	r := fmt.Sprintf("%s ended %s", where, state)
	if t.ExitCode != "" {
		r += " (exit " + t.ExitCode + ")"
	}
	return cellView{State: CellFailed, Reason: r + " without a result; see its log"}
}

func orUnknown(s string) string {
	if s == "" {
		return "(no longer known to Slurm)"
	}
	return s
}
