package main

// End-to-end tests of moecapd matrix: the real binary over the sim backend, injected faults,
// a supervisor killed with SIGKILL mid-cell and the resume, the locks, a real Prometheus
// scrape checked by promtool.

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
)

const faultsMatrix = "../../testdata/matrix/faults.yaml"

func matrixRunArgs(results, lockDir string, extra ...string) []string {
	a := []string{"matrix", "run", "--matrix", faultsMatrix, "--results", results, "--lock-dir", lockDir,
		"--retries", "1", "--retry-backoff", "50ms", "--ready-hard-timeout", "2s", "--grace", "2s",
		"--progress", "log", "--log-format", "json"}
	return append(a, extra...)
}

// waitCellBench waits until the given cell's server is ready and its bench has begun.
func waitCellBench(t *testing.T, dir string) int {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		m, err := cell.ReadManifest(dir)
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		if err == nil && m.Server.PID > 0 && bytes.Contains(log, []byte("sim: ready")) {
			time.Sleep(300 * time.Millisecond)
			return m.Server.PID
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("cell %s never reached the bench", filepath.Base(dir))
	return 0
}

// serverPIDs lists every server PID any manifest under results (attempts included) records.
func serverPIDs(t *testing.T, results string) []int {
	t.Helper()
	var pids []int
	for _, pat := range []string{"*", ".attempts/*"} {
		ms, _ := filepath.Glob(filepath.Join(results, pat, cell.ManifestFile))
		for _, f := range ms {
			if m, err := cell.ReadManifest(filepath.Dir(f)); err == nil && m.Server.PID > 0 {
				pids = append(pids, m.Server.PID)
			}
		}
	}
	return pids
}

func TestMatrixFaultsKillResume(t *testing.T) {
	results, locks := t.TempDir(), t.TempDir()
	args := matrixRunArgs(results, locks)
	c, out := startMoecapd(t, args...)
	slow := filepath.Join(results, "dsv2_lite.1xA100.32-8.bs4.sim")
	pid := waitCellBench(t, slow)
	tree := descendants(pid)
	if len(tree) < 3 {
		t.Fatalf("slow cell's server tree %v; want the server and its 2 workers", tree)
	}

	// A second run on the same results root must refuse at once, naming the holder.
	r := moecapd(t, nil, args...)
	if r.code != 2 || !strings.Contains(r.stderr, "in use by PID "+strconv.Itoa(c.Process.Pid)) {
		t.Fatalf("second run: exit %d, stderr %s; want 2 and the holder's PID %d", r.code, r.stderr, c.Process.Pid)
	}

	c.Process.Kill()
	c.Wait()
	time.Sleep(200 * time.Millisecond)
	for _, p := range tree {
		if !pidAlive(p) {
			t.Fatalf("pid %d died with its supervisor; the test needs an orphan\n%s", p, out)
		}
	}
	if m, _ := cell.ReadManifest(slow); m == nil || m.Status != cell.StatusRunning {
		t.Fatalf("killed cell's manifest %+v; want it left as running", m)
	}

	// Resume: the same command. Failures (crash, never-ready) exit 8 once all cells ran.
	r = moecapd(t, nil, args...)
	if r.code != exitCellsFailed {
		t.Fatalf("resume: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, exitCellsFailed, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "ending a server left behind by a killed run") {
		t.Errorf("resume did not say it ended the orphan:\n%s", r.stderr)
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("orphan pid %d alive after the resume", p)
		}
	}
	old, _ := filepath.Glob(filepath.Join(results, ".attempts", "dsv2_lite.1xA100.32-8.bs4.sim.*", cell.ManifestFile))
	if len(old) != 1 {
		t.Fatalf("killed attempt not archived exactly once: %v", old)
	}
	if m, _ := cell.ReadManifest(filepath.Dir(old[0])); m == nil || m.Status != cell.StatusInterrupted {
		t.Errorf("archived attempt %+v, want interrupted", m)
	}

	checks := []struct {
		id     string
		status cell.Status
		kind   cell.Kind
		n      int
	}{
		{"dsv2_lite.1xA100.32-8.bs4.sim", cell.StatusOK, "", 40}, // pinned
		{"qwen1_5.1xH100.32-8.bs2.sim", cell.StatusOK, "", 4},    // the bench file's
		{"qwen1_5.1xH100.32-8.bs32.sim", cell.StatusOK, "", 64},  // raised to 2×batch
		{"qwen1_5.1xH100.32-8.bs64.sim", cell.StatusInfeasible, exitcode.FailOOM, 128},
		{"qwen1_5.1xH100.32-8.bs128.sim", cell.StatusInfeasible, exitcode.FailOOM, 256},
		{"dsv2_lite.1xH100.32-8.bs2.sim", cell.StatusFailed, exitcode.FailCrash, 4},
		{"dsv2_lite.1xH200.32-8.bs2.sim", cell.StatusFailed, exitcode.FailHealthTimeout, 4},
	}
	okStart := map[string]time.Time{}
	for _, ck := range checks {
		m, err := cell.ReadManifest(filepath.Join(results, ck.id))
		if err != nil {
			t.Errorf("%s: %v", ck.id, err)
			continue
		}
		if m.Status != ck.status || (ck.kind != "" && (m.Failure == nil || m.Failure.Kind != ck.kind)) || m.Cell.NumSamples != ck.n {
			t.Errorf("%s: %s %+v num_samples %d; want %s/%s with %d", ck.id, m.Status, m.Failure, m.Cell.NumSamples, ck.status, ck.kind, ck.n)
		}
		if ck.status == cell.StatusOK {
			okStart[ck.id] = m.StartedAt
		}
		if ck.kind == exitcode.FailCrash && matrix.NoteOf(m).Attempts != 2 {
			t.Errorf("%s: %d attempts, want 2 (--retries 1)", ck.id, matrix.NoteOf(m).Attempts)
		}
	}
	if _, err := os.Stat(filepath.Join(results, "qwen1_5.1xH100.32-8.bs1.sim")); err == nil {
		t.Error("a cell the matrix marks done was run")
	}

	st := moecapd(t, nil, "matrix", "status", "--matrix", faultsMatrix, "--results", results, "--format", "markdown")
	if st.code != 0 {
		t.Fatalf("status exit %d: %s", st.code, st.stderr)
	}
	for _, want := range []string{
		"8 cells: 4 done (3 measured here, 1 per the matrix), 0 pending, 0 running, 2 failed, 2 infeasible",
		"| DeepSeek-V2-Lite | 1xA100 | 32-8 | sim | 4 | ✅ Done |",
		"| Qwen1.5-MoE | 1xH100 | 32-8 | sim | 1 | ✅ Done (per matrix, no result here) |",
		"| Qwen1.5-MoE | 1xH100 | 32-8 | sim | 2, 32 | ✅ Done |",
		"| DeepSeek-V2-Lite | 1xH100 | 32-8 | sim | 2 | failed |",
		"| DeepSeek-V2-Lite | 1xH200 | 32-8 | sim | 2 | failed |",
		"| dsv2_lite.1xH100.32-8.bs2.sim | failed | bench/crash | server died during the bench",
		"| qwen1_5.1xH100.32-8.bs64.sim | infeasible | ready/oom | server exited during start-up",
		"| qwen1_5.1xH100.32-8.bs128.sim | infeasible | skipped | not run: batch 64",
		"| dsv2_lite.1xH200.32-8.bs2.sim | failed | ready/health_timeout |",
		"- qwen1_5.1xH100.32-8.bs32.sim: TTFT ",
		"64 samples, energy not measured (simulated backend: no GPU to measure)",
	} {
		if !strings.Contains(st.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, st.stdout)
		}
	}

	// A third run has nothing to do: completed cells are neither redone nor duplicated. Its
	// exit code speaks for the results root, which still holds two failed cells: 8, not 0.
	r = moecapd(t, nil, args...)
	if r.code != exitCellsFailed || !strings.Contains(r.stdout, "matrix: 0 ok, 0 failed") ||
		!strings.Contains(r.stdout, "the results root holds 2 failed cell(s)") ||
		!strings.Contains(r.stderr, "dsv2_lite.1xH100.32-8.bs2.sim") || !strings.Contains(r.stderr, "dsv2_lite.1xH200.32-8.bs2.sim") {
		t.Errorf("third run: exit %d\nstdout %s\nstderr %s\nwant %d with nothing run, naming the 2 failed cells of the results root", r.code, r.stdout, r.stderr, exitCellsFailed)
	}
	for id, t0 := range okStart {
		if m, _ := cell.ReadManifest(filepath.Join(results, id)); m == nil || !m.StartedAt.Equal(t0) {
			t.Errorf("%s was rerun by a resume", id)
		}
	}
	for _, p := range serverPIDs(t, results) {
		if pidAlive(p) {
			t.Errorf("server pid %d still alive after the matrix", p)
		}
	}
	if state, _ := filepath.Glob(filepath.Join(results, "*", "server.state.json")); len(state) > 0 {
		t.Errorf("server state files left: %v", state)
	}
}

func TestMatrixMetricsScrape(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not installed in CI (.ci/run installs the prometheus package)")
		}
		t.Skip("promtool not installed (Debian package prometheus: apt-get install -y prometheus); CI installs it")
	}
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	results := t.TempDir()
	c, out := startMoecapd(t, matrixRunArgs(results, t.TempDir(), "--only", `^dsv2_lite\.1xA100`, "--metrics-addr", addr, "--metrics-linger", "4s")...)
	waitCellBench(t, filepath.Join(results, "dsv2_lite.1xA100.32-8.bs4.sim"))
	// The server is ready; the pipeline enters its bench phase a moment later, longer on a
	// busy machine: scrape until it shows (or the deadline; the checks below then say what
	// the last scrape held).
	var body []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("scrape: %v\n%s", err, out)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(body, []byte(`phase="bench"`)) {
			break
		}
	}
	for _, want := range []string{
		`moecapd_matrix_cells_planned 1`,
		`moecapd_matrix_cells{state="running"} 1`,
		`moecapd_matrix_cells{state="pending"} 0`,
		`moecapd_build_info{goversion="go`,
		`moecapd_matrix_cell_running{cell="dsv2_lite.1xA100.32-8.bs4.sim",phase="bench",slot="0"} 1`,
		`moecapd_matrix_eta_seconds `,
		`moecapd_matrix_retries_total 0`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
	if bytes.Contains(body, []byte(`state="planned"`)) {
		t.Error(`a "planned" total among the states: summing over state double-counts`)
	}
	promcheck(t, promtool, body)
	// After the run the endpoint lingers with the final state and the cell's results.
	var final []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(b, []byte(`moecapd_matrix_cells{state="ok"} 1`)) {
			final = b
			break
		}
	}
	if final == nil {
		t.Fatalf("no scrape after the cell finished (--metrics-linger)\n%s", out)
	}
	for _, want := range []string{`moecapd_matrix_cells{state="running"} 0`,
		`moecapd_cell_output_tokens_per_second{backend="sim",batch="4",cell="dsv2_lite.1xA100.32-8.bs4.sim"`} {
		if !bytes.Contains(final, []byte(want)) {
			t.Errorf("final scrape lacks %q:\n%s", want, final)
		}
	}
	// The cell's TPOT: the imposed 40 ms pass, never less; a busy machine only slows it
	// (bounded at 10x, far above any noise).
	const tpotSeries = `moecapd_cell_tpot_seconds{backend="sim",batch="4",cell="dsv2_lite.1xA100.32-8.bs4.sim",hardware="1xA100",model="dsv2_lite",task="32-8"} `
	tpot := math.NaN()
	for _, l := range strings.Split(string(final), "\n") {
		if v, ok := strings.CutPrefix(l, tpotSeries); ok {
			tpot, _ = strconv.ParseFloat(v, 64)
		}
	}
	if !(tpot >= 0.04*0.98 && tpot <= 0.4) {
		t.Errorf("final scrape's TPOT %v s, want the imposed 0.04 s (up to 10x on a busy machine):\n%s", tpot, final)
	}
	if bytes.Contains(final, []byte("moecapd_cell_joules_per_output_token")) {
		t.Error("J/token exported for a cell without telemetry")
	}
	// The per-state counts sum to the planned total.
	sum := 0.0
	for _, l := range strings.Split(string(final), "\n") {
		if strings.HasPrefix(l, "moecapd_matrix_cells{") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	if sum != 1 {
		t.Errorf("states sum to %v, want the planned 1", sum)
	}
	promcheck(t, promtool, final)
	if err := c.Wait(); err != nil {
		t.Fatalf("matrix run: %v\n%s", err, out)
	}
}

func promcheck(t *testing.T, promtool string, body []byte) {
	t.Helper()
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(body)
	if o, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, o)
	}
}

func TestMatrixPlanCLI(t *testing.T) {
	results := t.TempDir()
	r := moecapd(t, nil, "matrix", "plan", "--matrix", faultsMatrix, "--results", results)
	if r.code != 0 {
		t.Fatalf("plan exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(r.stdout, "\n")
	var order []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) > 2 && f[2] == "run" {
			order = append(order, f[1])
		}
	}
	want := "dsv2_lite.1xA100.32-8.bs4.sim dsv2_lite.1xH100.32-8.bs2.sim qwen1_5.1xH100.32-8.bs2.sim qwen1_5.1xH100.32-8.bs32.sim qwen1_5.1xH100.32-8.bs64.sim qwen1_5.1xH100.32-8.bs128.sim dsv2_lite.1xH200.32-8.bs2.sim"
	if got := strings.Join(order, " "); got != want {
		t.Errorf("plan order\n got %s\nwant %s\n%s", got, want, r.stdout)
	}
	if !strings.Contains(r.stdout, "7 to run, 0 kept from results, 1 done per matrix") || !strings.Contains(r.stdout, "40 (pinned)") {
		t.Errorf("plan summary:\n%s", r.stdout)
	}
	// The guide's matrix on an 8xH200 node: 108 cells; DeepSeek-R1 13k-1k at batch 64 and
	// 128 fits only 52 requests at once (147 and 210 GB per GPU): under-batched, not
	// infeasible.
	r = moecapd(t, nil, "matrix", "plan", "--hardware", "8xH200", "--results", results, "--configs-dir", "../../configs", "--matrix", "../../configs/matrix.yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "108 to run") || !strings.Contains(r.stdout, "predicted under-batched: only 52 of 128 requests fit at once") || strings.Contains(r.stdout, "predicted infeasible") {
		t.Errorf("guide plan on 8xH200: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\ntasks: {}\ngroupz: {}\n"), 0o644)
	r = moecapd(t, nil, "matrix", "run", "--matrix", bad, "--results", results)
	if r.code != 2 || !strings.Contains(r.stderr, bad) || !strings.Contains(r.stderr, `key "groupz": unknown key`) {
		t.Errorf("bad matrix: exit %d stderr %s; want 2 naming file and key", r.code, r.stderr)
	}
}

// A signal to the supervisor (SIGTERM, or SIGHUP from a dropped ssh session) ends the running
// cell as interrupted in its phase and exits 130; the next run redoes it.
func TestMatrixSIGTERM(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			results, locks := t.TempDir(), t.TempDir()
			args := matrixRunArgs(results, locks, "--only", `^dsv2_lite\.1xA100`)
			c, out := startMoecapd(t, args...)
			dir := filepath.Join(results, "dsv2_lite.1xA100.32-8.bs4.sim")
			pid := waitCellBench(t, dir)
			tree := descendants(pid)
			c.Process.Signal(sig)
			err := c.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
				t.Fatalf("exit %v, want 130\n%s", err, out)
			}
			for _, p := range tree {
				if pidAlive(p) {
					t.Errorf("pid %d alive after %s", p, sig)
				}
			}
			if m, _ := cell.ReadManifest(dir); m == nil || m.Status != cell.StatusInterrupted || m.Failure.Phase != cell.PhaseBench {
				t.Fatalf("manifest %+v, want interrupted in bench", m)
			}
			r := moecapd(t, nil, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "matrix: 1 ok") {
				t.Errorf("rerun: exit %d %s %s", r.code, r.stdout, r.stderr)
			}
		})
	}
}
