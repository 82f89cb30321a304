package daemon

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// manifestOf is a cell manifest as a Slurm task writes it: extra.slurm names the task.
func manifestOf(status cell.Status, phase cell.Phase, array string, task int) *cell.Manifest {
	m := &cell.Manifest{Status: status, Phase: phase}
	if array != "" {
		m.Extra = map[string]json.RawMessage{}
		m.Extra[slurm.ExtraKey] = slurm.TaskNote(slurm.TaskEnv{JobID: "99", ArrayJobID: array, TaskID: task, Node: "n1", GPUs: []string{"2", "3"}})
	}
	if status == cell.StatusFailed || status == cell.StatusInterrupted {
		kind := exitcode.FailCrash
		if status == cell.StatusInterrupted {
			kind = exitcode.FailInterrupted
		}
		m.Failure = &cell.Failure{Kind: kind, Phase: cell.PhaseBench, Message: "what happened\nmore"}
	}
	return m
}

// TestSlurmCellState: squeue's and sacct's lines (as the commands print them) with the
// cell's manifest give the cell's state; a result the task wrote wins over Slurm's state.
func TestSlurmCellState(t *testing.T) {
	const task = "12_0"
	onN1 := []string{"n1:2", "n1:3"} // the GPUs its manifest says the task had
	tests := []struct {
		name      string
		squeue    string // a line of squeue -o %i|%A|%F|%K|%T|%r|%N|%M|%l, or ""
		sacct     string // a line of sacct -P -o JobID,JobIDRaw,State,ExitCode,Start,End,NodeList
		noAcct    bool
		m         *cell.Manifest
		cancelled bool
		started   bool // an earlier poll saw the task running
		state     string
		phase     string
		reason    string // a part of the reason
		gpus      []string
	}{
		{name: "pending", squeue: "12_0|12|12|0|PENDING|Resources||0:00|1:00:00",
			state: CellQueued, reason: "12_0 pending (Resources)"},
		{name: "requeued after a node failure: queued again", squeue: "12_0|12|12|0|REQUEUED|None||0:00|1:00:00",
			m: manifestOf(cell.StatusInterrupted, "", "12", 0), state: CellQueued, reason: "pending (requeued)"},
		{name: "running, its manifest says the phase", squeue: "12_0|13|12|0|RUNNING|None|n1|0:05|1:00:00",
			m: manifestOf(cell.StatusRunning, cell.PhaseBench, "12", 0), state: CellRunning, phase: "bench", reason: "running on n1",
			gpus: onN1},
		{name: "running, an older task's manifest is not its phase", squeue: "12_0|13|12|0|RUNNING|None|n1|0:05|1:00:00",
			m: manifestOf(cell.StatusFailed, "", "9", 0), state: CellRunning, reason: "running on n1"},
		{name: "running in a cancelled job: tearing down", squeue: "12_0|13|12|0|RUNNING|None|n1|0:05|1:00:00",
			m: manifestOf(cell.StatusRunning, cell.PhaseTeardown, "12", 0), cancelled: true, state: CellRunning, phase: "teardown",
			reason: "cancelled by alice; tearing down", gpus: onN1},
		{name: "ok while Slurm still completes the task", squeue: "12_0|13|12|0|COMPLETING|None|n1|0:09|1:00:00",
			m: manifestOf(cell.StatusOK, "", "12", 0), state: CellOK, gpus: onN1},
		{name: "failed result from sacct's finished task", sacct: "12_0|13|COMPLETED|0:0|x|y|n1",
			m: manifestOf(cell.StatusFailed, "", "12", 0), state: CellFailed, reason: "crash in bench: what happened", gpus: onN1},
		{name: "infeasible", sacct: "12_0|13|COMPLETED|0:0|x|y|n1",
			m: manifestOf(cell.StatusInfeasible, "", "12", 0), state: CellInfeasible, gpus: onN1},
		{name: "cancelled job, interrupted by its scancel", squeue: "12_0|13|12|0|CANCELLED|None|n1|0:09|1:00:00",
			m: manifestOf(cell.StatusInterrupted, "", "12", 0), cancelled: true, state: CellInterrupted, reason: "torn down: job cancelled by alice", gpus: onN1},
		{name: "cancelled job, cancelled before it started", sacct: "12_0|13|CANCELLED by 0|0:0|None|x|None assigned",
			cancelled: true, state: CellCancelled, reason: "cancelled by alice before it started"},
		{name: "cancelled job, cancelled as its task started", squeue: "12_0|13|12|0|CANCELLED|None|n1|0:01|1:00:00",
			cancelled: true, started: true, state: CellCancelled, reason: "cancelled by alice while its task was starting"},
		{name: "scancel outside moecapd", squeue: "12_0|12|12|0|CANCELLED|None||0:00|1:00:00",
			state: CellCancelled, reason: "cancelled in Slurm (scancel outside moecapd)"},
		{name: "time limit while the cell ran", sacct: "12_0|13|TIMEOUT|0:15|x|y|n1",
			m: manifestOf(cell.StatusRunning, cell.PhaseBench, "12", 0), state: CellInterrupted, reason: "ended TIMEOUT while the cell was in phase bench", gpus: onN1},
		{name: "preempted, interrupted result", sacct: "12_0|13|PREEMPTED|0:15|x|y|n1",
			m: manifestOf(cell.StatusInterrupted, "", "12", 0), state: CellInterrupted, reason: "ended PREEMPTED: interrupted in bench", gpus: onN1},
		{name: "task failed without writing a result", sacct: "12_0|13|FAILED|2:0|x|y|n1",
			state: CellFailed, reason: "12_0 ended FAILED (exit 2:0) without a result"},
		{name: "an older task's result is not this task's", sacct: "12_0|13|FAILED|2:0|x|y|n1",
			m: manifestOf(cell.StatusFailed, "", "9", 0), state: CellFailed, reason: "ended FAILED (exit 2:0) without a result"},
		{name: "task found the cell already ok", sacct: "12_0|13|COMPLETED|0:0|x|y|n1",
			m: manifestOf(cell.StatusOK, "", "9", 0), state: CellOK, reason: "kept: the results root already held it ok"},
		{name: "forgotten by squeue, no accounting", noAcct: true,
			state: CellFailed, reason: "left the queue without a result"},
		{name: "forgotten by squeue, no accounting, its result ok", noAcct: true,
			m: manifestOf(cell.StatusOK, "", "12", 0), state: CellOK, gpus: onN1},
		{name: "unknown to squeue and sacct", state: CellFailed, reason: "unknown to squeue and sacct"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := taskView{Task: task, NoAccounting: tc.noAcct, Manifest: tc.m, Cancelled: tc.cancelled, Started: tc.started}
			if tc.cancelled {
				v.CancelledBy = "alice"
			}
			if tc.squeue != "" {
				q, err := slurm.ParseQueue(tc.squeue + "\n")
				if err != nil {
					t.Fatal(err)
				}
				tk, ok := q[task]
				if !ok {
					t.Fatalf("squeue line %q is not task %s: %+v", tc.squeue, task, q)
				}
				v.Slurm = &tk
			}
			if tc.sacct != "" {
				a, err := slurm.ParseAcct(tc.sacct + "\n")
				if err != nil {
					t.Fatal(err)
				}
				tk, ok := a[task]
				if !ok {
					t.Fatalf("sacct line %q is not task %s: %+v", tc.sacct, task, a)
				}
				v.Slurm = &tk
			}
			got := slurmCellState(v)
			if got.State != tc.state || got.Phase != tc.phase || !strings.Contains(got.Reason, tc.reason) || !slices.Equal(got.GPUs, tc.gpus) {
				t.Errorf("got %+v\nwant state %s, phase %q, reason containing %q, gpus %v", got, tc.state, tc.phase, tc.reason, tc.gpus)
			}
			if got.Final() != (tc.state != CellQueued && tc.state != CellRunning) {
				t.Errorf("Final() %v for %s", got.Final(), got.State)
			}
		})
	}
}

// TestNiceOf: a higher priority is a lower niceness (Slurm runs lower first); 0 is none.
func TestNiceOf(t *testing.T) {
	for p, want := range map[int]int{0: 0, 5: -5, -3: 3, MaxPriority: -MaxPriority} {
		if got := niceOf(p); got != want {
			t.Errorf("niceOf(%d) = %d, want %d", p, got, want)
		}
	}
}
