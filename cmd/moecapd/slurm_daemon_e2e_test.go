package main

// End-to-end test of moecapd serve --executor slurm against the private Slurm of
// slurm_e2e_test.go: the real daemon process submits jobs as job arrays, follows them to
// their cells' results, survives kill -9 without submitting anything twice, and cancels
// only the cancelled job's own arrays.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/nodelock"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// slurmCmd runs a Slurm client against the test cluster.
func slurmCmd(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	c := exec.Command(name, args...)
	c.Env = append(os.Environ(), env...)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// waitCellState waits until the daemon reports a job's cell in state (and phase, when
// given).
func (e *daemonEnv) waitCellState(job, id, state, phase string, within time.Duration) daemon.Cell {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, cs, err := e.client().Job(context.Background(), job)
		if err == nil {
			for _, c := range cs {
				if c.ID == id && c.State == state && (phase == "" || c.Phase == phase) {
					return c
				}
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("cell %s of job %s not %s %s within %s: %+v (err %v)", id, job, state, phase, within, cs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSlurmDaemon(t *testing.T) {
	env := slurmCluster(t)
	e := newDaemonEnv(t)
	e.env = append(e.env, env...)
	t.Cleanup(func() {
		// A failed test leaves no task writing into its results root.
		rec, err := slurm.ReadRecord(e.results)
		if err != nil || len(rec.Arrays) == 0 {
			return
		}
		c := exec.Command("scancel", rec.JobIDs()...)
		c.Env = append(os.Environ(), env...)
		_ = c.Run()
		for range 300 {
			c := exec.Command("squeue", "-h", "-j", strings.Join(rec.JobIDs(), ","), "-o", "%T")
			c.Env = append(os.Environ(), env...)
			if out, err := c.Output(); err != nil || strings.TrimSpace(string(out)) == "" {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	// Cell flags given to serve reach every task (--ready-hard-timeout, --retries …).
	serve := []string{"--executor", "slurm", "--slurm-poll", "300ms", "--ready-hard-timeout", "30s", "--retries", "0"}
	p := e.start(serve...)

	// Job 1: three cells, two hardware labels, so two arrays.
	medium := "qwen1_5.1xA100.32-8.bs4.sim" // seconds of bench: the daemon is killed while it runs
	cells1 := []string{"qwen1_5.1xH100.32-8.bs1.sim", "qwen1_5.1xH100.32-8.bs2.sim", medium}
	r := e.cli("submit", "--matrix", slurmMatrix, "--only", `^qwen1_5\.(1xH100\.32-8\.bs[12]|1xA100\.32-8\.bs4)\.sim$`)
	if r.code != 0 {
		t.Fatalf("submit: exit %d\n%s\n%s\ndaemon:\n%s", r.code, r.stdout, r.stderr, p.output())
	}
	j1 := strings.TrimSpace(r.stdout)
	// The arrays' ids are in the store when the job id is answered.
	jv, cs, err := e.client().Job(context.Background(), j1)
	if err != nil {
		t.Fatal(err)
	}
	if jv.Slurm == nil || !jv.Slurm.Submitted || len(jv.Slurm.Arrays) != 2 || !strings.HasPrefix(jv.Slurm.Name, "moecapd-"+j1+"-") {
		t.Fatalf("job %s right after submit: slurm %+v; want 2 arrays recorded, named after the job", j1, jv.Slurm)
	}
	arrays1 := jv.Slurm.Arrays
	var got []string
	for _, c := range cs {
		got = append(got, c.ID)
		if c.Slurm == nil || c.Slurm.Task == "" {
			t.Errorf("cell %s has no Slurm task recorded", c.ID)
		}
	}
	if slices.Sort(got); !slices.Equal(got, slices.Sorted(slices.Values(cells1))) {
		t.Fatalf("job %s cells %v, want %v", j1, got, cells1)
	}
	rec, err := slurm.ReadRecord(e.results)
	if err != nil || len(rec.Arrays) != 2 {
		t.Fatalf("submit record: %v %+v; want the 2 arrays (slurm status sees them)", err, rec)
	}

	// Job 2: one slow cell at priority -3 (sbatch --nice=3), cancelled while it runs.
	slow := "dsv2_lite.1xH200.32-8.bs4.sim"
	r = e.cli("submit", "--matrix", slurmMatrix, "--only", `^dsv2_lite\.1xH200\.32-8\.bs4\.sim$`, "--priority", "-3")
	if r.code != 0 {
		t.Fatalf("submit 2: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	j2 := strings.TrimSpace(r.stdout)
	jv2, _, err := e.client().Job(context.Background(), j2)
	if err != nil || jv2.Slurm == nil || len(jv2.Slurm.Arrays) != 1 {
		t.Fatalf("job %s: %+v %v; want one array", j2, jv2.Slurm, err)
	}
	arr2 := jv2.Slurm.Arrays[0].JobID
	if nice := strings.Fields(slurmCmd(t, env, "squeue", "-h", "-r", "-t", "all", "-j", arr2, "-o", "%y")); len(nice) != 1 || nice[0] != "3" {
		t.Errorf("job %s's array %s: nice %q, want 3 (priority -3)", j2, arr2, nice)
	}

	// kill -9 of the daemon while job 1 runs; the next daemon follows the same arrays.
	e.waitCellState(j1, medium, daemon.CellRunning, "", 3*time.Minute)
	p.cmd.Process.Kill()
	<-p.done
	p = e.start(serve...)

	// The cluster owns the GPUs: the daemon holds no node lock.
	t.Setenv(nodelock.EnvRunDir, e.runDir)
	if err := nodelock.Check(); err != nil {
		t.Errorf("a Slurm daemon holds the node lock: %v", err)
	}
	// What follows is announced on /v1/events, as on a node.
	evctx, evstop := context.WithCancel(context.Background())
	defer evstop()
	events := make(chan daemon.Event, 1024)
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		_ = e.client().Events(evctx, func(ev daemon.Event) {
			if ev.Job == j2 {
				select {
				case events <- ev:
				default:
				}
			}
		})
	}()
	defer func() { evstop(); <-evDone }()

	// Cancel job 2 once its cell benches (its manifest says so): its task is cancelled in
	// Slurm, the cell torn down and interrupted.
	e.waitCellState(j2, slow, daemon.CellRunning, string(cell.PhaseBench), 3*time.Minute)
	if r = e.cli("cancel", j2); r.code != 0 || !strings.Contains(r.stdout, "cancelled") {
		t.Fatalf("cancel %s: exit %d\n%s\n%s", j2, r.code, r.stdout, r.stderr)
	}
	jv2, cs2 := e.waitJob(j2, 3*time.Minute)
	if jv2.State != daemon.JobCancelled || len(cs2) != 1 || cs2[0].State != daemon.CellInterrupted {
		t.Fatalf("job %s after cancel: %s, cells %+v; want cancelled, the cell interrupted\ndaemon:\n%s", j2, jv2.State, cs2, p.output())
	}
	if st := settledState(t, env, arr2, "-r"); st != "CANCELLED" {
		t.Errorf("job %s's task in squeue: %q, want CANCELLED", j2, st)
	}
	if m, err := cell.ReadManifest(filepath.Join(e.results, slow)); err != nil || m.Status != cell.StatusInterrupted {
		t.Errorf("cancelled cell's manifest: %v %+v; want interrupted", err, m)
	}
	var seen []string
	for got := false; !got; {
		select {
		case ev := <-events:
			seen = append(seen, ev.Type+":"+ev.Cell+":"+ev.State)
			got = ev.Type == "cell" && ev.Cell == slow && ev.State == daemon.CellInterrupted
		case <-time.After(time.Minute):
			t.Fatalf("no cell event of %s interrupted on /v1/events; saw %v", slow, seen)
		}
	}
	if !slices.Contains(seen, "job::"+daemon.JobCancelled) {
		t.Errorf("events of job %s: %v; want the job cancelled before its cell interrupted", j2, seen)
	}

	// Job 1 finishes ok, through the CLI's views.
	jv1, cs1 := e.waitJob(j1, 4*time.Minute)
	if jv1.State != daemon.JobDone || jv1.Counts[daemon.CellOK] != 3 {
		t.Fatalf("job %s: %s %v, cells %+v; want done, 3 ok\ndaemon:\n%s", j1, jv1.State, jv1.Counts, cs1, p.output())
	}
	r = e.cli("job", j1)
	if r.code != 0 || strings.Count(r.stdout, "  ok  ") != 3 || !strings.Contains(r.stdout, "state done") {
		t.Errorf("moecapd job %s: exit %d\n%s", j1, r.code, r.stdout)
	}
	r = e.cli("jobs")
	if r.code != 0 || !strings.Contains(r.stdout, j2) || !regexp.MustCompile(`(?m)^`+j1+` +\S+ +0 +done +3 +0 +0 +0 +0 `).MatchString(r.stdout) {
		t.Errorf("moecapd jobs: exit %d\n%s", r.code, r.stdout)
	}

	// Nothing was submitted twice: the store and the record still hold the first arrays,
	// each cell ran once, as the task of its job's array, and job 1's tasks were not
	// cancelled with job 2's.
	jv1, _, _ = e.client().Job(context.Background(), j1)
	if !slices.EqualFunc(jv1.Slurm.Arrays, arrays1, func(a, b daemon.SlurmArray) bool { return a.JobID == b.JobID }) {
		t.Errorf("job %s's arrays changed across the restart: %+v, first %+v", j1, jv1.Slurm.Arrays, arrays1)
	}
	if rec, _ = slurm.ReadRecord(e.results); len(rec.Arrays) != 3 {
		t.Errorf("submit record holds %d arrays, want 3 (2 + 1): the restarted daemon submitted again", len(rec.Arrays))
	}
	var ids1 []string
	for _, a := range arrays1 {
		ids1 = append(ids1, a.JobID)
	}
	for _, id := range cells1 {
		m, err := cell.ReadManifest(filepath.Join(e.results, id))
		if err != nil {
			t.Fatal(err)
		}
		var te slurm.TaskEnv
		if err := json.Unmarshal(m.Extra[slurm.ExtraKey], &te); err != nil || !slices.Contains(ids1, te.ArrayJobID) || te.RestartCount != 0 {
			t.Errorf("%s ran as task %+v (%v); want a task of job %s's arrays %v, run once", id, te, err, j1, ids1)
		}
	}
	if old, _ := filepath.Glob(filepath.Join(e.results, ".attempts", "*")); len(old) != 0 {
		t.Errorf("earlier attempts %v: a cell ran twice", old)
	}
	// (The controller forgets a finished task after MinJobAge: those it still knows.)
	states := strings.Fields(slurmCmd(t, env, "squeue", "-h", "-r", "-t", "all", "-j", strings.Join(ids1, ","), "-o", "%T"))
	if slices.ContainsFunc(states, func(s string) bool { return s != "COMPLETED" }) {
		t.Errorf("job %s's tasks in squeue: %v, want every one COMPLETED", j1, states)
	}
	// The cluster owns the GPUs: no pool, no lease; the cells say where Slurm ran them.
	var cv struct {
		Executor string         `json:"executor"`
		GPUs     []string       `json:"gpus"`
		Leases   []daemon.Lease `json:"leases"`
		Cells    []daemon.Cell  `json:"cells"`
	}
	if err := e.client().Call(context.Background(), "GET", "/v1/cells?job="+j1, nil, &cv); err != nil {
		t.Fatal(err)
	}
	if cv.Executor != "slurm" || len(cv.GPUs) != 0 || len(cv.Leases) != 0 || len(cv.Cells) != 3 {
		t.Errorf("/v1/cells: executor %q, gpus %v, leases %v, %d cells; want slurm, no pool, no lease, 3 cells", cv.Executor, cv.GPUs, cv.Leases, len(cv.Cells))
	}
	for _, c := range cv.Cells {
		if len(c.GPUs) == 0 || !strings.HasPrefix(c.GPUs[0], "moecapd-n1:") || c.Slurm == nil || c.Slurm.Node != "moecapd-n1" {
			t.Errorf("%s: gpus %v, slurm %+v; want the node's GPUs as NODE:GPU and the task's node", c.ID, c.GPUs, c.Slurm)
		}
	}
	if !strings.Contains(p.output(), "following the Slurm arrays") {
		t.Errorf("the restarted daemon did not say it follows the stored arrays:\n%s", p.output())
	}
}

// A daemon killed in the middle of a submission (the job and its name written, sbatch
// called, the arrays' ids not yet written) never answered it. The next start adopts the
// array Slurm took under the job's name that the submit record knows, cancels the one
// nobody recorded, drops the job's other cells, and submits nothing.
func TestSlurmDaemonResumesSubmit(t *testing.T) {
	env := slurmCluster(t)
	e := newDaemonEnv(t)
	e.env = append(e.env, env...)
	adopted, dropped := "qwen1_5.1xH100.32-8.bs1.sim", "qwen1_5.2xH100.32-8.bs2.sim"
	mx, err := filepath.Abs(slurmMatrix)
	if err != nil {
		t.Fatal(err)
	}
	// What the killed daemon left: the job with its Slurm name, no arrays recorded.
	st, err := daemon.OpenStore(e.results)
	if err != nil {
		t.Fatal(err)
	}
	j := &daemon.Job{Owner: "root", State: daemon.JobQueued, Created: time.Now().UTC(), Spec: daemon.Spec{Matrix: mx}, Cells: []string{adopted, dropped}}
	if err := st.AddJob(j, []*daemon.Cell{{ID: adopted, Index: 0, State: daemon.CellQueued}, {ID: dropped, Index: 1, State: daemon.CellQueued}}); err != nil {
		t.Fatal(err)
	}
	name := "moecapd-" + j.ID + "-0123456789ab"
	j.Slurm = &daemon.SlurmJob{Name: name}
	if err := st.Save([]*daemon.Job{j}, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()
	// The array sbatch took and the submit record holds …
	r := moecapd(t, env, submitArgs(e.results, "--only", `^`+strings.ReplaceAll(adopted, ".", `\.`)+`$`, "--sbatch-arg=--job-name="+name)...)
	if r.code != 0 || !strings.Contains(r.stdout, "submitted array") {
		t.Fatalf("slurm submit: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// … and one under the same name that nobody recorded.
	orphan := strings.TrimSpace(slurmCmd(t, env, "sbatch", "--parsable", "--job-name="+name, "--output=/dev/null", "--wrap", "sleep 300"))

	p := e.start("--executor", "slurm", "--slurm-poll", "300ms", "--ready-hard-timeout", "30s", "--retries", "0")
	jv, cs := e.waitJob(j.ID, 3*time.Minute)
	got := states(cs)
	if jv.State != daemon.JobDone || got[adopted] != daemon.CellOK || got[dropped] != daemon.CellCancelled {
		t.Fatalf("job %s: %s, cells %v; want done, %s ok (adopted), %s cancelled\ndaemon:\n%s", j.ID, jv.State, got, adopted, dropped, p.output())
	}
	for _, c := range cs {
		if c.ID == dropped && !strings.Contains(c.Reason, "never acknowledged") {
			t.Errorf("dropped cell's reason %q; want it to say the submission was never acknowledged", c.Reason)
		}
	}
	rec, err := slurm.ReadRecord(e.results)
	if err != nil || len(rec.Arrays) != 1 || len(jv.Slurm.Arrays) != 1 || jv.Slurm.Arrays[0].JobID != rec.Arrays[0].JobID {
		t.Errorf("record %+v (%v), job's arrays %+v; want the one adopted array and nothing submitted", rec, err, jv.Slurm.Arrays)
	}
	if state := settledState(t, env, orphan); state != "CANCELLED" {
		t.Errorf("unrecorded array %s: %q, want CANCELLED", orphan, state)
	}
}

// settledState is a Slurm job's state in squeue once it has left COMPLETING (a cancelled
// job passes through it while slurmd ends its step), waiting at most a minute.
func settledState(t *testing.T, env []string, job string, flags ...string) string {
	t.Helper()
	args := append([]string{"-h", "-t", "all", "-j", job, "-o", "%T"}, flags...)
	deadline := time.Now().Add(time.Minute)
	for {
		st := strings.TrimSpace(slurmCmd(t, env, "squeue", args...))
		if st != "COMPLETING" || time.Now().After(deadline) {
			return st
		}
		time.Sleep(200 * time.Millisecond)
	}
}
