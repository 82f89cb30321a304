package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// SlurmStatusRow is one line of slurm status.
type SlurmStatusRow struct {
	Cell    string      `json:"cell"`
	Status  cell.Status `json:"status,omitempty"` // the manifest's; absent: no result yet
	Failure string      `json:"failure,omitempty"`
	Slurm   *SlurmView  `json:"slurm,omitempty"`
}

type SlurmView struct {
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

// SlurmState is a results root's submitted cells as the manifests and Slurm see them.
type SlurmState struct {
	Root string // absolute
	// Rows: every submitted cell (its latest task) and every cell with a result, by id.
	Rows []SlurmStatusRow
	// Unreachable is why Slurm could not be asked (squeue or sacct failed); nil: it
	// answered. The rows then hold the manifests only, their Slurm view "unknown".
	Unreachable error
}

// ReadSlurmState reads the root's submit record and manifests and asks Slurm (squeue, then
// sacct for the tasks squeue no longer holds) for each submitted cell's latest task. The
// manifests are the truth and are read whatever Slurm says; an error is returned only
// where the root or its record cannot be read.
func ReadSlurmState(ctx context.Context, root string, cli *slurm.CLI, log *zap.Logger) (*SlurmState, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	results, _, err := readResults(root, log)
	if err != nil {
		return nil, err
	}
	if cli == nil {
		cli = &slurm.CLI{}
	}
	st := &SlurmState{Root: root}
	v := askSlurm(ctx, cli, rec.JobIDs())
	st.Unreachable = v.unreachable
	latest := rec.Latest()
	for _, id := range stateCells(latest, results) {
		r := SlurmStatusRow{Cell: id}
		if m := results[id]; m != nil {
			r.Status = m.Status
			if m.Failure != nil {
				r.Failure = fmt.Sprintf("%s/%s: %s", m.Failure.Phase, m.Failure.Kind, firstLineOf(m.Failure.Message))
			}
		}
		if a, ok := latest[id]; ok {
			r.Slurm = v.task(root, a)
		}
		st.Rows = append(st.Rows, r)
	}
	if st.Rows == nil {
		st.Rows = []SlurmStatusRow{}
	}
	return st, nil
}

// stateCells is the cells of slurm status, sorted: the submitted ones and those with a
// result.
func stateCells(latest map[string]slurm.Assignment, results map[string]*cell.Manifest) []string {
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
	return names
}

// slurmAnswer is what squeue and sacct said of a root's arrays.
type slurmAnswer struct {
	queue, acct map[string]slurm.Task
	noAcct      bool  // the cluster keeps no accounting (or has no sacct)
	unreachable error // squeue or sacct failed
}

func askSlurm(ctx context.Context, cli *slurm.CLI, ids []string) slurmAnswer {
	var v slurmAnswer
	var err error
	v.noAcct = true
	if v.queue, err = cli.Queue(ctx, ids); err != nil {
		v.unreachable = fmt.Errorf("squeue: %w", err)
		return v
	}
	v.acct, err = cli.Acct(ctx, ids)
	// No slurmdbd, or no sacct at all: squeue's view is all there is.
	v.noAcct = errors.Is(err, slurm.ErrNoAccounting) || errors.Is(err, slurm.ErrNoSlurm)
	if err != nil && !v.noAcct {
		v.unreachable = fmt.Errorf("sacct: %w", err)
	}
	return v
}

// task is Slurm's view of one assignment's task.
func (v slurmAnswer) task(root string, a slurm.Assignment) *SlurmView {
	sv := &SlurmView{ArrayJobID: a.Array.JobID, TaskID: a.Index,
		Log: slurm.Path(root, slurm.LogsDir, fmt.Sprintf("%s_%d.out", a.Array.JobID, a.Index))}
	t, ok := v.queue[a.Key()]
	if !ok {
		t, ok = v.acct[a.Key()]
	}
	switch {
	case v.unreachable != nil:
		sv.View = "unknown (Slurm not reachable)"
	case ok:
		sv.JobID, sv.State, sv.Reason, sv.Node, sv.Elapsed, sv.ExitCode, sv.Source = t.JobID, t.State, t.Reason, t.Node, t.Elapsed, t.ExitCode, t.Source
		sv.View = describeTask(t)
	case v.noAcct:
		sv.View = "no longer in the queue (finished; the cluster keeps no accounting)"
	default:
		sv.View = "unknown to squeue and sacct"
	}
	return sv
}

// SlurmStatusRequest is slurm status: the results root and the output form.
type SlurmStatusRequest struct {
	Results string
	JSON    bool
	Log     *zap.Logger
	Out     io.Writer
}

// SlurmStatus writes each submitted cell's manifest status beside Slurm's view of its task;
// a Slurm that cannot be asked is reported after the table, in the error.
func SlurmStatus(ctx context.Context, req SlurmStatusRequest) error {
	st, err := ReadSlurmState(ctx, req.Results, nil, req.Log)
	if err != nil {
		return err
	}
	if req.JSON {
		enc := json.NewEncoder(req.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st.Rows); err != nil {
			return err
		}
	} else {
		printSlurmStatus(req.Out, st.Root, st.Rows)
	}
	if st.Unreachable != nil {
		return slurmErr(fmt.Errorf("manifests shown without Slurm's view: %w", st.Unreachable))
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

func printSlurmStatus(w io.Writer, root string, rows []SlurmStatusRow) {
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

// SlurmCancelRequest is slurm cancel: the results root, which cells, how long to wait.
type SlurmCancelRequest struct {
	Results string
	Only    string
	Wait    time.Duration
	Out     io.Writer
}

// SlurmCancel cancels the results root's queued and running tasks and waits (up to Wait)
// for them to end with their servers torn down.
func SlurmCancel(ctx context.Context, req SlurmCancelRequest) error {
	root, err := filepath.Abs(req.Results)
	if err != nil {
		return err
	}
	only, err := onlyMatcher(req.Only)
	if err != nil {
		return err
	}
	if only == nil {
		only = func(string) bool { return true }
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
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
		fmt.Fprintln(req.Out, "nothing to cancel: no task of this results root is queued or running")
		return nil
	}
	slices.Sort(ids)
	if err := cli.Cancel(ctx, ids); err != nil {
		return slurmErr(fmt.Errorf("scancel: %w", err))
	}
	sort.Strings(cells)
	fmt.Fprintf(req.Out, "cancelled %d task(s) (%s); running cells end interrupted with their servers torn down\n", len(ids), strings.Join(ids, " "))
	if err := waitCancelled(ctx, cli, rec, ids, req.Wait, root); err != nil {
		return err
	}
	return printCancelled(req.Out, root, cells)
}

// waitCancelled waits up to wait (0: not at all) for the cancelled tasks to end. A task
// has ended once Slurm no longer counts it active: its processes are gone (the server was
// torn down by the task, or killed with the job after KillWait).
func waitCancelled(ctx context.Context, cli *slurm.CLI, rec *slurm.Record, ids []string, wait time.Duration, root string) error {
	if wait <= 0 {
		return nil
	}
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
			return nil
		}
		if time.Now().After(deadline) {
			return exitcode.New(exitcode.Internal, fmt.Errorf("tasks %s still active %s after scancel; see squeue -j and their logs under %s", strings.Join(left, " "), wait, slurm.Path(root, slurm.LogsDir)))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// printCancelled prints each cancelled cell's manifest status.
func printCancelled(w io.Writer, root string, cells []string) error {
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	for _, c := range cells {
		st := "no result"
		if m, err := lay.ReadManifest(c); err == nil {
			st = string(m.Status)
		}
		fmt.Fprintf(w, "  %s  %s\n", c, st)
	}
	return nil
}
