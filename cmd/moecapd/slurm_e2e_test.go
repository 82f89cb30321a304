package main

// End-to-end tests of moecapd slurm against a real Slurm: a private single-node cluster
// (slurmctld, slurmd, munged; 8 fake GPUs as GRES) started by tools/slurm/start.sh, the
// real moecapd binary submitting, running (as array tasks), reporting and cancelling a sim
// matrix of 1-, 2-, 4- and 8-GPU cells.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/slurm"
)

const slurmMatrix = "../../testdata/slurm/matrix.yaml"

// testKillWait is the test cluster's KillWait: a cancelled task's moecapd has this long to
// tear its server down before Slurm kills it.
const testKillWait = 5 * time.Second

var testSlurm struct {
	once sync.Once
	dir  string
	env  []string
	skip string
	err  error
}

// slurmCluster starts the package's private cluster on first use and returns the
// environment that points moecapd and the Slurm clients at it; stopTestSlurm (TestMain)
// stops it. Without Slurm installed the test skips, loudly, unless CI is set: there a
// missing Slurm is a failure.
func slurmCluster(t *testing.T) []string {
	t.Helper()
	if !launcher.E2E() {
		t.Skip("the Slurm cluster tests are end to end: make test-e2e (" + launcher.E2EEnv + "=1)")
	}
	testSlurm.once.Do(func() {
		for _, b := range []string{"slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged"} {
			if _, err := exec.LookPath(b); err != nil {
				if _, err := os.Stat("/usr/sbin/" + b); err != nil {
					testSlurm.skip = b + " is not installed (apt-get install slurmctld slurmd slurm-client munge; .ci/run does)"
					return
				}
			}
		}
		if os.Geteuid() != 0 {
			testSlurm.skip = "tools/slurm/start.sh needs root (slurmd, mknod of the fake GPUs)"
			return
		}
		dir, err := os.MkdirTemp("", "moecapd-slurm-")
		if err != nil {
			testSlurm.err = err
			return
		}
		testSlurm.dir = dir
		c := exec.Command("bash", "../../tools/slurm/start.sh", dir)
		c.Env = append(os.Environ(), "MOECAP_SLURM_KILLWAIT="+strconv.Itoa(int(testKillWait/time.Second)))
		if out, err := c.CombinedOutput(); err != nil {
			testSlurm.err = fmt.Errorf("tools/slurm/start.sh: %v\n%s", err, out)
			return
		}
		testSlurm.env = []string{"SLURM_CONF=" + filepath.Join(dir, "etc", "slurm.conf")}
	})
	if testSlurm.skip != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but the Slurm tests cannot run: %s", testSlurm.skip)
		}
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING the Slurm tests: %s ***\n\n", testSlurm.skip)
		t.Skip(testSlurm.skip)
	}
	if testSlurm.err != nil {
		t.Fatal(testSlurm.err)
	}
	return testSlurm.env
}

// stopTestSlurm stops the package's cluster if a test started it.
func stopTestSlurm() {
	if testSlurm.dir == "" {
		return
	}
	out, err := exec.Command("bash", "../../tools/slurm/stop.sh", testSlurm.dir).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tools/slurm/stop.sh: %v\n%s", err, out)
		return
	}
	os.RemoveAll(testSlurm.dir)
}

func slurmStatus(t *testing.T, env []string, root string) []app.SlurmStatusRow {
	t.Helper()
	r := moecapd(t, env, "slurm", "status", "--results", root, "--json")
	if r.code != 0 {
		t.Fatalf("slurm status: exit %d\n%s", r.code, r.stderr)
	}
	var rows []app.SlurmStatusRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("slurm status --json: %v\n%s", err, r.stdout)
	}
	return rows
}

// waitStatus polls slurm status until done says so.
func waitStatus(t *testing.T, env []string, root string, timeout time.Duration, what string, done func([]app.SlurmStatusRow) bool) []app.SlurmStatusRow {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rows := slurmStatus(t, env, root)
		if done(rows) {
			return rows
		}
		if time.Now().After(deadline) {
			logs, _ := filepath.Glob(slurm.Path(root, slurm.LogsDir, "*.out"))
			var tails []string
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				if len(b) > 1500 {
					b = b[len(b)-1500:]
				}
				tails = append(tails, l+":\n"+string(b))
			}
			b, _ := json.MarshalIndent(rows, "", "  ")
			t.Fatalf("waited %s for %s; status:\n%s\n%s", timeout, what, b, strings.Join(tails, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func allOK(n int) func([]app.SlurmStatusRow) bool {
	return func(rows []app.SlurmStatusRow) bool {
		ok := 0
		for _, r := range rows {
			// ok and Slurm done with it: the task wrote extra.slurm after the cell.
			if r.Status == cell.StatusOK && r.Slurm != nil && !slurmActive(r.Slurm.State) {
				ok++
			}
		}
		return ok == n
	}
}

func slurmActive(state string) bool { return slurm.Task{State: state}.Active() }

func submitArgs(root string, extra ...string) []string {
	return append([]string{"slurm", "submit", "--matrix", slurmMatrix, "--results", root, "--grace", "2s",
		"--retries", "0", "--ready-hard-timeout", "30s", "--log-format", "json"}, extra...)
}

func taskEnv(t *testing.T, m *cell.Manifest) slurm.TaskEnv {
	t.Helper()
	var e slurm.TaskEnv
	raw, ok := m.Extra[slurm.ExtraKey]
	if !ok {
		t.Fatalf("%s: manifest has no extra.%s", m.Cell.ID, slurm.ExtraKey)
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestSlurmMatrix(t *testing.T) {
	env := slurmCluster(t)
	root := t.TempDir()
	cells := map[string]int{ // the 1-, 2-, 4- and 8-GPU cells and their GPU counts
		"qwen1_5.1xH100.32-8.bs1.sim": 1, "qwen1_5.1xH100.32-8.bs2.sim": 1, "qwen1_5.2xH100.32-8.bs2.sim": 2,
		"qwen1_5.4xH100.32-8.bs2.sim": 4, "qwen1_5.8xH100.32-8.bs2.sim": 8, "dsv2_lite.8xH100.32-8.bs2.sim": 8,
	}
	only := []string{"--only", `\.[0-9]xH100\.`}

	// --max-parallel 1: the tasks of one array run one after another.
	r := moecapd(t, env, submitArgs(root, append(only, "--max-parallel", "1")...)...)
	if r.code != 0 || strings.Count(r.stdout, "submitted array") != 4 {
		t.Fatalf("submit: exit %d, want 4 arrays (1, 2, 4, 8 GPUs)\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil || len(rec.Arrays) != 4 {
		t.Fatalf("record: %v, %+v; want 4 arrays", err, rec)
	}
	for _, a := range rec.Arrays {
		if !slices.Contains(a.SbatchArgv, "--gpus="+strconv.Itoa(a.GPUs)) || !slices.Contains(a.SbatchArgv, fmt.Sprintf("--array=0-%d%%1", len(a.Cells)-1)) {
			t.Errorf("array %s: sbatch argv %q, want --gpus=%d and --array=0-%d%%1", a.JobID, a.SbatchArgv, a.GPUs, len(a.Cells)-1)
		}
		for _, id := range a.Cells {
			if cells[id] != a.GPUs {
				t.Errorf("cell %s in the %d-GPU array; want %d", id, a.GPUs, cells[id])
			}
		}
	}

	// Submitted again while queued or running: nothing new.
	r = moecapd(t, env, submitArgs(root, only...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "nothing to submit") {
		t.Fatalf("resubmit while queued: exit %d, stdout %s\nstderr %s; want nothing to submit", r.code, r.stdout, r.stderr)
	}

	rows := waitStatus(t, env, root, 3*time.Minute, "every cell ok", allOK(len(cells)))
	for _, row := range rows {
		if row.Slurm == nil || row.Slurm.State != "COMPLETED" || row.Slurm.View != "finished" || row.Slurm.Node != "moecapd-n1" {
			t.Errorf("%s: slurm view %+v; want COMPLETED on moecapd-n1", row.Cell, row.Slurm)
		}
	}

	// Each cell ran on as many GPUs as its label names, and cells that overlapped in time
	// shared none.
	type run struct {
		id         string
		gpus       []string
		start, end time.Time
	}
	var runs []run
	started := map[string]time.Time{}
	for id, n := range cells {
		m, err := cell.ReadManifest(filepath.Join(root, id))
		if err != nil {
			t.Fatal(err)
		}
		e := taskEnv(t, m)
		if len(e.GPUs) != n || e.CUDAVisibleDevices == "" || e.RestartCount != 0 {
			t.Errorf("%s: Slurm gave GPUs %v (CUDA_VISIBLE_DEVICES %q, restart %d); want %d GPUs", id, e.GPUs, e.CUDAVisibleDevices, e.RestartCount, n)
		}
		if got := m.Server.EnvAdded["CUDA_VISIBLE_DEVICES"]; got != e.CUDAVisibleDevices {
			t.Errorf("%s: server got CUDA_VISIBLE_DEVICES=%q, Slurm gave %q", id, got, e.CUDAVisibleDevices)
		}
		runs = append(runs, run{id, e.GPUs, m.StartedAt, *m.FinishedAt})
		started[id] = m.StartedAt
	}
	overlaps := 0
	for i := range runs {
		for j := i + 1; j < len(runs); j++ {
			a, b := runs[i], runs[j]
			if a.start.Before(b.end) && b.start.Before(a.end) {
				if cells[a.id] == cells[b.id] {
					t.Errorf("%s and %s, tasks of one array, overlapped despite --max-parallel 1", a.id, b.id)
				}
				overlaps++
				for _, g := range a.gpus {
					if slices.Contains(b.gpus, g) {
						t.Errorf("%s and %s ran at the same time on GPU %s", a.id, b.id, g)
					}
				}
			}
		}
	}
	if overlaps == 0 {
		t.Errorf("no two cells ran at the same time; the test needs concurrent tasks to check GPU sharing")
	}

	// Complete: a second submit submits nothing.
	r = moecapd(t, env, submitArgs(root, only...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "nothing to submit: 6 cell(s) kept from results") {
		t.Fatalf("resubmit when complete: exit %d, stdout %s; want nothing to submit, 6 kept", r.code, r.stdout)
	}

	// A deleted result is redone, alone.
	gone := "qwen1_5.2xH100.32-8.bs2.sim"
	if err := os.RemoveAll(filepath.Join(root, gone)); err != nil {
		t.Fatal(err)
	}
	r = moecapd(t, env, submitArgs(root, only...)...)
	if r.code != 0 || strings.Count(r.stdout, "submitted array") != 1 {
		t.Fatalf("submit after delete: exit %d, stdout %s; want one array", r.code, r.stdout)
	}
	rec, _ = slurm.ReadRecord(root)
	if last := rec.Arrays[len(rec.Arrays)-1]; len(rec.Arrays) != 5 || !slices.Equal(last.Cells, []string{gone}) || last.GPUs != 2 {
		t.Fatalf("after delete: %d arrays, last %+v; want a fifth array of just %s on 2 GPUs", len(rec.Arrays), last, gone)
	}
	waitStatus(t, env, root, 2*time.Minute, "the deleted cell redone", allOK(len(cells)))
	for id := range cells {
		m, err := cell.ReadManifest(filepath.Join(root, id))
		if err != nil {
			t.Fatal(err)
		}
		if id != gone && !m.StartedAt.Equal(started[id]) {
			t.Errorf("%s was run again (started %s, first %s); only %s should be", id, m.StartedAt, started[id], gone)
		}
		if id == gone && taskEnv(t, m).ArrayJobID != rec.Arrays[4].JobID {
			t.Errorf("%s: ran as job %s, want the new array %s", id, taskEnv(t, m).ArrayJobID, rec.Arrays[4].JobID)
		}
	}

	// The text view shows the same.
	r = moecapd(t, env, "slurm", "status", "--results", root)
	if r.code != 0 || !strings.Contains(r.stdout, "6 cell(s): 6 ok") || !strings.Contains(r.stdout, gone) {
		t.Errorf("slurm status: exit %d\n%s", r.code, r.stdout)
	}
}

func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
	if err == nil {
		c.Close()
		return true
	}
	return false
}

func TestSlurmCancelTearsDown(t *testing.T) {
	env := slurmCluster(t)
	root := t.TempDir()
	id := "dsv2_lite.1xH200.32-8.bs4.sim" // slow: minutes of bench, server with 2 workers
	only := []string{"--only", `^` + strings.ReplaceAll(id, ".", `\.`) + `$`}
	r := moecapd(t, env, submitArgs(root, only...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "submitted array") {
		t.Fatalf("submit: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	dir := filepath.Join(root, id)
	pid := waitCellBench(t, dir)
	tree := descendants(pid)
	m, _ := cell.ReadManifest(dir)
	port := m.Server.Port
	if len(tree) < 3 || !portOpen(port) {
		t.Fatalf("server tree %v, port %d open %v; want the server and 2 workers serving", tree, port, portOpen(port))
	}
	rows := slurmStatus(t, env, root)
	if len(rows) != 1 || rows[0].Slurm == nil || rows[0].Slurm.State != "RUNNING" || !strings.HasPrefix(rows[0].Slurm.View, "running on moecapd-n1") {
		t.Fatalf("status while running: %+v", rows)
	}

	r = moecapd(t, env, "slurm", "cancel", "--results", root, "--only", "no-such-cell")
	if r.code != 0 || !strings.Contains(r.stdout, "nothing to cancel") {
		t.Fatalf("cancel --only matching nothing: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t0 := time.Now()
	r = moecapd(t, env, "slurm", "cancel", "--results", root, "--only", `dsv2_lite\.1xH200`)
	// cancel waits for the task to end: when it returns, the cell is interrupted and the
	// server gone.
	if r.code != 0 || !strings.Contains(r.stdout, "cancelled 1 task") || !strings.Contains(r.stdout, id+"  interrupted") {
		t.Fatalf("cancel: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	took := time.Since(t0)
	rows = slurmStatus(t, env, root)
	if len(rows) != 1 || rows[0].Status != cell.StatusInterrupted || rows[0].Slurm == nil || rows[0].Slurm.State != "CANCELLED" {
		t.Fatalf("status after cancel: %+v; want interrupted and CANCELLED", rows)
	}
	if rows[0].Slurm.View != "cancelled" {
		t.Errorf("slurm view %q, want cancelled", rows[0].Slurm.View)
	}
	m, err := cell.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Failure == nil || m.Failure.Kind != exitcode.FailInterrupted {
		t.Errorf("cancelled cell: %s %+v; want interrupted", m.Status, m.Failure)
	}
	if _, ok := m.Extra[slurm.ExtraKey]; !ok {
		t.Errorf("cancelled cell's manifest lacks extra.slurm: the task was killed before it finished writing")
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("server process %d alive after the cancel", p)
		}
	}
	if portOpen(port) {
		t.Errorf("port %d still open after the cancel", port)
	}
	if _, err := os.Stat(filepath.Join(dir, "server.state.json")); err == nil {
		t.Errorf("server.state.json left behind: teardown did not finish")
	}
	t.Logf("cancel → interrupted, server gone: %s (KillWait %s)", took.Round(time.Millisecond), testKillWait)

	// Resubmittable: the interrupted cell is submitted again (dry run: nothing runs).
	r = moecapd(t, env, submitArgs(root, append(only, "--dry-run")...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "task 0  "+id) {
		t.Errorf("dry-run after cancel: exit %d\n%s; want the interrupted cell listed", r.code, r.stdout)
	}
}

func TestSlurmRequeueRedoesCell(t *testing.T) {
	env := slurmCluster(t)
	root := t.TempDir()
	id := "qwen1_5.1xA100.32-8.bs4.sim"
	only := []string{"--only", `^` + strings.ReplaceAll(id, ".", `\.`) + `$`}
	r := moecapd(t, env, submitArgs(root, only...)...)
	if r.code != 0 {
		t.Fatalf("submit: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	rec, _ := slurm.ReadRecord(root)
	job := rec.Arrays[0].JobID + "_0"
	dir := filepath.Join(root, id)
	waitCellBench(t, dir)
	// As after a node failure: the task is requeued, then released as soon as it is
	// pending again (Slurm would hold it for about two minutes).
	scontrol := func(args ...string) string {
		c := exec.Command("scontrol", args...)
		c.Env = append(os.Environ(), env...)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("scontrol %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	scontrol("requeue", job)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(scontrol("show", "job", job), "JobState=PENDING") {
		if time.Now().After(deadline) {
			t.Fatalf("requeued task never pending again:\n%s", scontrol("show", "job", job))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The old run's credential is revoked with a one-second timestamp: a restart within the
	// same second is refused ("Job credential revoked") and the task fails instead of rerunning.
	time.Sleep(2 * time.Second)
	scontrol("update", "jobid="+job, "starttime=now")
	waitStatus(t, env, root, 2*time.Minute, "the requeued cell redone", func(rows []app.SlurmStatusRow) bool {
		if len(rows) != 1 || rows[0].Status != cell.StatusOK || rows[0].Slurm == nil || slurmActive(rows[0].Slurm.State) {
			return false
		}
		m, err := cell.ReadManifest(dir)
		var e slurm.TaskEnv
		return err == nil && json.Unmarshal(m.Extra[slurm.ExtraKey], &e) == nil && e.RestartCount == 1
	})
	old, _ := filepath.Glob(filepath.Join(root, ".attempts", id+".*", cell.ManifestFile))
	if len(old) != 1 {
		t.Fatalf("attempts of the requeued cell: %v; want the interrupted first one", old)
	}
	if m, _ := cell.ReadManifest(filepath.Dir(old[0])); m == nil || m.Status != cell.StatusInterrupted {
		t.Errorf("first attempt %+v; want interrupted", m)
	}
}

// The Slurm commands missing or the controller not answering: a clear error, exit 2.
func TestSlurmUnavailable(t *testing.T) {
	root := t.TempDir()
	// A dry run on a root never submitted needs no Slurm at all.
	r := moecapd(t, []string{"PATH=" + t.TempDir()}, submitArgs(root, "--only", `xH100\.`, "--dry-run")...)
	if r.code != 0 || strings.Count(r.stdout, "sbatch --parsable") != 4 || !strings.Contains(r.stdout, "--grace=2s") {
		t.Errorf("dry run without Slurm: exit %d\n%s\n%s; want 4 sbatch lines and the forwarded settings", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(slurm.Path(root, slurm.JobsFile)); err == nil {
		t.Errorf("a dry run recorded a submission")
	}
	// The guide's matrix: one array per kind of node, never two GPU families in one.
	r = moecapd(t, []string{"PATH=" + t.TempDir()}, "slurm", "submit", "--matrix", "../../configs/matrix.yaml", "--results", root, "--dry-run")
	for _, want := range []string{"12 1xA100 cell(s), 1 GPU(s)", "28 1xH200 cell(s), 1 GPU(s)", "64 8xA100 cell(s), 8 GPU(s)",
		"64 8xH100 cell(s), 8 GPU(s)", "80 8xH200 cell(s), 8 GPU(s)", "--job-name=moecapd-8xH200 --gpus=8"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("guide matrix dry run lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.code != 0 || strings.Count(r.stdout, "sbatch --parsable") != 5 || !strings.Contains(r.stderr, "several GPU families") {
		t.Errorf("guide matrix dry run: exit %d, %d arrays, stderr %s; want 5 arrays and the mixed-family warning", r.code, strings.Count(r.stdout, "sbatch --parsable"), r.stderr)
	}
	r = moecapd(t, nil, submitArgs(root, "--hardware", "8xH20", "--dry-run")...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "--hardware 8xH20: no cell") || !strings.Contains(r.stderr, "8xH100") {
		t.Errorf("unknown --hardware: exit %d, stderr %s; want 2 listing the matrix's labels", r.code, r.stderr)
	}
	r = moecapd(t, []string{"PATH=" + t.TempDir()}, submitArgs(root, "--only", `xH100\.`)...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "not on PATH") || !strings.Contains(r.stderr, "slurm-client") {
		t.Errorf("no Slurm on PATH: exit %d, stderr %s; want 2 naming the missing command and the package", r.code, r.stderr)
	}
	if _, err := exec.LookPath("squeue"); err != nil {
		t.Skip("squeue not installed: the controller case needs the real client")
	}
	// A cluster whose controller is not there: a port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	conf := filepath.Join(t.TempDir(), "slurm.conf")
	body := fmt.Sprintf("ClusterName=gone\nSlurmctldHost=%s\nSlurmctldPort=%d\nAuthType=auth/munge\nAuthInfo=socket=%s\nMessageTimeout=2\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n",
		host, port, filepath.Join(t.TempDir(), "munge.socket"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	r = moecapd(t, []string{"SLURM_CONF=" + conf}, submitArgs(root, "--only", `xH100\.`)...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "Unable to contact slurm controller") || !strings.Contains(r.stderr, "SLURM_CONF") {
		t.Errorf("controller down: exit %d, stderr %s; want 2 and what to check", r.code, r.stderr)
	}
	// Status still shows the manifests (the truth) when Slurm cannot be asked, then says why.
	if err := slurm.WriteRecord(root, &slurm.Record{Arrays: []slurm.Array{{JobID: "77", GPUs: 1, Cells: []string{"a.1xH100.32-8.bs1.sim"}}}}); err != nil {
		t.Fatal(err)
	}
	r = moecapd(t, []string{"SLURM_CONF=" + conf}, "slurm", "status", "--results", root)
	if r.code != exitUsage || !strings.Contains(r.stdout, "a.1xH100.32-8.bs1.sim") || !strings.Contains(r.stdout, "Slurm not reachable") ||
		!strings.Contains(r.stderr, "manifests shown without Slurm's view") {
		t.Errorf("status, controller down: exit %d\nstdout %s\nstderr %s; want the table, then exit 2", r.code, r.stdout, r.stderr)
	}
}

// A task whose cell another runner holds (here: this test, through pkg/cell's lock) leaves
// the cell alone and fails, saying who holds it.
func TestSlurmTaskLeavesHeldCell(t *testing.T) {
	env := slurmCluster(t)
	root := t.TempDir()
	id := "qwen1_5.1xH100.32-8.bs1.sim"
	lay, err := cell.OpenLayout(root)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := lay.Lock(id)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	r := moecapd(t, env, submitArgs(root, "--only", `^`+strings.ReplaceAll(id, ".", `\.`)+`$`)...)
	if r.code != 0 {
		t.Fatalf("submit: exit %d\n%s", r.code, r.stderr)
	}
	rows := waitStatus(t, env, root, time.Minute, "the task to end", func(rows []app.SlurmStatusRow) bool {
		return len(rows) == 1 && rows[0].Slurm != nil && rows[0].Slurm.State != "" && !slurmActive(rows[0].Slurm.State)
	})
	if rows[0].Slurm.State != "FAILED" || rows[0].Status != "" {
		t.Errorf("held cell: %+v, slurm %+v; want the task FAILED and no manifest written", rows[0], rows[0].Slurm)
	}
	logb, _ := os.ReadFile(rows[0].Slurm.Log)
	if !strings.Contains(string(logb), "leaves cell "+id+" alone") || !strings.Contains(string(logb), fmt.Sprintf("PID %d", os.Getpid())) {
		t.Errorf("task log does not say who holds the cell:\n%s", logb)
	}
}

// TestSlurmOpenLoopGroup: a matrix with a rates: group beside a closed-loop group of the same
// configuration, submitted to Slurm: the array holds both cells under their own ids, and
// the task runs the sweep the group names (each rate's bench in the manifest, extra.slurm
// beside it), as matrix run does.
func TestSlurmOpenLoopGroup(t *testing.T) {
	env := slurmCluster(t)
	mx := loadMatrixFile(t, `rates: [50, 100]`)
	root := t.TempDir()
	const closedID, sweepID = "qwen1_5.1xH100.32-8.bs1.sim", "qwen1_5.1xH100.32-8.bs1.sim.rates50-100"
	r := moecapd(t, env, "slurm", "submit", "--matrix", mx, "--results", root, "--grace", "2s",
		"--retries", "0", "--ready-hard-timeout", "30s", "--log-format", "json")
	if r.code != 0 || strings.Count(r.stdout, "submitted array") != 1 {
		t.Fatalf("submit: exit %d, want one array\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	rec, err := slurm.ReadRecord(root)
	if err != nil || len(rec.Arrays) != 1 {
		t.Fatalf("record: %v, %+v; want one array", err, rec)
	}
	if got := slices.Sorted(slices.Values(rec.Arrays[0].Cells)); !slices.Equal(got, []string{closedID, sweepID}) {
		t.Fatalf("array cells %v, want %s and %s", got, closedID, sweepID)
	}
	waitStatus(t, env, root, 3*time.Minute, "both cells ok", allOK(2))
	closed, err := cell.ReadManifest(filepath.Join(root, closedID))
	if err != nil || closed.Cell.Load != "" || len(closed.Rates) != 0 {
		t.Fatalf("closed-loop cell: load %q, %d rates, %v; want the closed loop", closed.Cell.Load, len(closed.Rates), err)
	}
	sweep, err := cell.ReadManifest(filepath.Join(root, sweepID))
	if err != nil {
		t.Fatal(err)
	}
	if sweep.Cell.Load != "rates50-100" || len(sweep.Rates) != 2 {
		t.Fatalf("sweep cell: load %q, %d rates; want rates50-100 with 2", sweep.Cell.Load, len(sweep.Rates))
	}
	for i, want := range []float64{50, 100} {
		if p := sweep.Rates[i]; p.Rate != want || p.Metrics == nil || p.Metrics.Completed != 4 {
			t.Errorf("rate %d: %+v, want %g req/s with 4 requests", i+1, p, want)
		}
	}
	if e := taskEnv(t, sweep); e.ArrayJobID != rec.Arrays[0].JobID {
		t.Errorf("sweep ran as job %s, want the array %s", e.ArrayJobID, rec.Arrays[0].JobID)
	}
}
