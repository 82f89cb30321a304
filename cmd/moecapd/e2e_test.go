package main

// End-to-end tests of launch-and-bench: the real binary, real server processes (the built-in
// sim), real HTTP, real files and real signals.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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
	"github.com/moecapd/moecapd/pkg/launcher"
)

var bin string

// exitUsage is the table's usage exit code (pkg/exitcode).
var exitUsage = int(exitcode.Usage)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "moecapd-e2e-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "moecapd")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build moecapd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := launcher.RunTests(func() int {
		c := m.Run()
		// The Slurm tests' private cluster, if one of them started it: stopped before
		// RunTests looks for processes the tests left behind (its daemons carry the token).
		stopTestSlurm()
		return c
	})
	os.RemoveAll(dir)
	os.Exit(code)
}

// tinyConfig writes a benchmark file in the runner's format with small token counts.
func tinyConfig(t *testing.T, modelID string, in, out, samples int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tiny.yaml")
	body := fmt.Sprintf("dataset_names: [\"gsm8k\"]\nmetrics: []\nmodel_id: %q\nfixed_length_mode: true\ntarget_input_tokens: %d\ntarget_output_tokens: %d\nnum_samples: %d\n", modelID, in, out, samples)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const qwen = "Qwen/Qwen1.5-MoE-A2.7B-Chat"

type run struct {
	code           int
	stdout, stderr string
}

func moecapd(t *testing.T, env []string, args ...string) run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, bin, args...)
	c.Env = append(os.Environ(), env...)
	var so, se bytes.Buffer
	c.Stdout, c.Stderr = &so, &se
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run moecapd: %v", err)
	}
	return run{code, so.String(), se.String()}
}

func simArgs(results, cfg string, bs int, extra ...string) []string {
	a := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--batch-size", strconv.Itoa(bs),
		"--port", "0", "--results", results, "--grace", "2s", "--log-format", "json"}
	return append(a, extra...)
}

func onlyCell(t *testing.T, results string) (string, *cell.Manifest) {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
	if len(ms) != 1 {
		t.Fatalf("want one cell manifest under %s, got %v", results, ms)
	}
	dir := filepath.Dir(ms[0])
	m, err := cell.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func pidAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

// descendants lists pid and every live process below it.
func descendants(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	kids := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		pp, _ := strconv.Atoi(f[1])
		kids[pp] = append(kids[pp], p)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, kids[out[i]]...)
	}
	return out
}

func TestSimCellOK(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 64, 16, 8)
	r := moecapd(t, nil, simArgs(results, cfg, 4, "--", "--sim-tpot", "2ms", "--sim-ttft", "5ms")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	dir, m := onlyCell(t, results)
	if want := "qwen1_5.1xH100.64-16.bs4.sim"; m.Cell.ID != want || filepath.Base(dir) != want {
		t.Errorf("cell id %q in %s, want %q", m.Cell.ID, dir, want)
	}
	if m.Status != cell.StatusOK || m.Metrics == nil || m.Metrics.Completed != 8 || m.Metrics.Failed != 0 {
		t.Fatalf("manifest status %s metrics %+v", m.Status, m.Metrics)
	}
	if m.Metrics.TotalOutputTokens != 8*16 || m.Metrics.TotalInputTokens != 8*64 {
		t.Errorf("tokens in/out %d/%d, want %d/%d", m.Metrics.TotalInputTokens, m.Metrics.TotalOutputTokens, 8*64, 8*16)
	}
	if tp := m.Metrics.MeanTPOTMs; tp == nil || *tp < 1.5 || *tp > 20 { // 10x: a busy machine slows passes, never speeds them
		t.Errorf("mean TPOT %v ms, want ≈ 2 ms (imposed)", tp)
	}
	if m.Telemetry == nil || m.Telemetry.Available {
		t.Errorf("telemetry %+v, want present and marked unavailable", m.Telemetry)
	}
	for _, f := range []string{"server.log", "client.log", "client", "records"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	// Once the cell ended, moecapd's own bulky files are compressed (zstd, NAME.zst); the
	// small ones stay as they are.
	for _, c := range []struct {
		glob string
		zst  bool
	}{
		{"records/moecapd_window.jsonl", true},
		{"records/*/*/expert_distribution_record.jsonl", true},
		{"client/.moecapd/bench_random_*.json", true},
		{"client/*/*/detailed_results_random_*.jsonl", true},
		{"client/*/*/output_data_random_*.jsonl", false},
		{"client/*/*/metrics_random_*.json", false},
	} {
		plain, _ := filepath.Glob(filepath.Join(dir, c.glob))
		zst, _ := filepath.Glob(filepath.Join(dir, c.glob+".zst"))
		if c.zst && (len(plain) != 0 || len(zst) != 1) || !c.zst && (len(plain) != 1 || len(zst) != 0) {
			t.Errorf("%s: plain %v, compressed %v; want compressed=%v", c.glob, plain, zst, c.zst)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "server.state.json")); !os.IsNotExist(err) {
		t.Error("state file left after a clean teardown")
	}
	if pidAlive(m.Server.PID) {
		t.Errorf("server pid %d alive after the cell", m.Server.PID)
	}
	if !strings.Contains(r.stdout, "TPOT ms") {
		t.Errorf("summary not printed:\n%s", r.stdout)
	}
}

func TestSimFaults(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	cases := []struct {
		name     string
		extra    []string
		code     int
		status   cell.Status
		phase    cell.Phase
		kind     cell.Kind
		inTail   string
		inReason string
	}{
		{"exits during start-up", []string{"--", "--sim-fault", "exit-on-start"}, 3, cell.StatusFailed, cell.PhaseReady, exitcode.FailCrash, "Traceback", "exited during start-up"},
		{"out of memory", []string{"--", "--sim-fault", "oom-on-start"}, 4, cell.StatusInfeasible, cell.PhaseReady, exitcode.FailOOM, "CUDA out of memory", "ran out of memory"},
		{"never ready", []string{"--ready-hard-timeout", "1500ms", "--", "--sim-fault", "never-ready"}, 3, cell.StatusFailed, cell.PhaseReady, exitcode.FailHealthTimeout, "", "not ready"},
		{"crash mid-run", []string{"--", "--sim-fault", "crash-mid-run", "--sim-tpot", "5ms"}, 5, cell.StatusFailed, cell.PhaseBench, exitcode.FailCrash, "illegal memory access", "server died during the bench"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			results := t.TempDir()
			r := moecapd(t, nil, simArgs(results, cfg, 2, c.extra...)...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, c.code, r.stdout, r.stderr)
			}
			_, m := onlyCell(t, results)
			if m.Status != c.status || m.Failure == nil || m.Failure.Phase != c.phase || m.Failure.Kind != c.kind {
				t.Fatalf("status %s failure %+v; want %s %s/%s", m.Status, m.Failure, c.status, c.phase, c.kind)
			}
			if !strings.Contains(m.Failure.LogTail, c.inTail) || !strings.Contains(m.Failure.Message, c.inReason) {
				t.Errorf("failure message %q / log tail %q; want %q in message and %q in tail", m.Failure.Message, m.Failure.LogTail, c.inReason, c.inTail)
			}
			if pidAlive(m.Server.PID) {
				t.Errorf("server %d alive after a failed cell", m.Server.PID)
			}
		})
	}
}

// waitBench waits until the cell's server is up and the bench has begun, and returns the
// cell dir and the server's PID.
func waitBench(t *testing.T, results string) (string, int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile))
		if len(ms) == 1 {
			dir := filepath.Dir(ms[0])
			m, err := cell.ReadManifest(dir)
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			if err == nil && m.Server.PID > 0 && bytes.Contains(log, []byte("sim: ready")) {
				if _, err := os.Stat(filepath.Join(dir, "client.log")); err == nil {
					time.Sleep(300 * time.Millisecond)
					return dir, m.Server.PID
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("cell never reached the bench")
	return "", 0
}

func startMoecapd(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	c := exec.Command(bin, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c, &out
}

func TestTeardownIgnoresSIGTERMAndWorkers(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 100, 12)
	c, out := startMoecapd(t, simArgs(results, cfg, 2, "--grace", "700ms", "--", "--sim-fault", "ignore-sigterm", "--sim-workers", "3", "--sim-tpot", "10ms")...)
	_, pid := waitBench(t, results)
	tree := descendants(pid)
	if len(tree) < 4 {
		t.Fatalf("server tree %v, want the server and 3 workers", tree)
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("launch-and-bench: %v\n%s", err, out)
	}
	_, m := onlyCell(t, results)
	if m.Status != cell.StatusOK {
		t.Fatalf("status %s failure %+v", m.Status, m.Failure)
	}
	if m.Timings.Teardown < 0.7 {
		t.Errorf("teardown took %.2fs; a server ignoring SIGTERM must get the full 700ms grace before SIGKILL", m.Timings.Teardown)
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("pid %d of the server's tree alive after teardown (tree %v)", p, tree)
		}
	}
}

func TestSignalMidBench(t *testing.T) {
	// SIGHUP is what an ssh session that drops sends.
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			results := t.TempDir()
			cfg := tinyConfig(t, qwen, 32, 200, 50)
			c, out := startMoecapd(t, simArgs(results, cfg, 2, "--", "--sim-tpot", "20ms", "--sim-workers", "1")...)
			_, pid := waitBench(t, results)
			tree := descendants(pid)
			c.Process.Signal(sig)
			err := c.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
				t.Fatalf("exit %v, want 130\n%s", err, out)
			}
			_, m := onlyCell(t, results)
			if m.Status != cell.StatusInterrupted || m.Failure == nil || m.Failure.Kind != exitcode.FailInterrupted || m.Failure.Phase != cell.PhaseBench {
				t.Errorf("status %s failure %+v, want interrupted in bench", m.Status, m.Failure)
			} else if name := "SIG" + map[syscall.Signal]string{syscall.SIGINT: "INT", syscall.SIGTERM: "TERM", syscall.SIGHUP: "HUP"}[sig]; !strings.Contains(m.Failure.Message, name) {
				t.Errorf("failure message %q does not name %s", m.Failure.Message, name)
			}
			for _, p := range tree {
				if pidAlive(p) {
					t.Errorf("pid %d alive after an interrupted cell", p)
				}
			}
		})
	}
}

func TestSIGKILLThenNextRunEndsOrphan(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 200, 50)
	c, _ := startMoecapd(t, simArgs(results, cfg, 2, "--", "--sim-tpot", "20ms", "--sim-workers", "2")...)
	dir, pid := waitBench(t, results)
	tree := descendants(pid)
	c.Process.Kill()
	c.Wait()
	time.Sleep(200 * time.Millisecond)
	for _, p := range tree {
		if !pidAlive(p) {
			t.Fatalf("pid %d died with its supervisor; the test needs an orphan", p)
		}
	}
	small := tinyConfig(t, qwen, 32, 200, 4) // same cell id, fewer samples
	r := moecapd(t, nil, simArgs(results, small, 2, "--", "--sim-tpot", "2ms")...)
	if r.code != 0 {
		t.Fatalf("next run exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, p := range tree {
		if pidAlive(p) {
			t.Errorf("orphan pid %d still alive after the next run", p)
		}
	}
	if !strings.Contains(r.stderr, "ending a server left behind") {
		t.Errorf("the next run did not say it ended the orphan:\n%s", r.stderr)
	}
	// The killed attempt is kept, marked interrupted, not mistaken for live.
	old, _ := filepath.Glob(filepath.Join(results, ".attempts", filepath.Base(dir)+".*", cell.ManifestFile))
	if len(old) != 1 {
		t.Fatalf("earlier attempt not archived: %v", old)
	}
	if m, _ := cell.ReadManifest(filepath.Dir(old[0])); m == nil || m.Status != cell.StatusInterrupted {
		t.Errorf("archived attempt status %v, want interrupted", m)
	}
}

func TestDryRunStartsNothing(t *testing.T) {
	results := filepath.Join(t.TempDir(), "r")
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	r := moecapd(t, nil, "launch-and-bench", "--backend", "sglang", "--config", cfg, "--batch-size", "32",
		"--conda-root", "/opt/my conda", "--env", "sg env", "--results", results, "--dry-run", "--", "--mem-fraction-static", "0.8")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{`"bash"`, `"/opt/my conda"`, `"sg env"`, `"--max-running-requests"`, `"--mem-fraction-static"`,
		"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=", `"moe_cap.runner.openai_api_profile"`, `"--server-batch-size"`, `"--output_dir"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dry run output lacks %s:\n%s", want, r.stdout)
		}
	}
	if _, err := os.Stat(results); !os.IsNotExist(err) {
		t.Error("dry run created the results directory")
	}
}

func TestBadInputsExit2(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	good := tinyConfig(t, qwen, 32, 8, 4)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown key", []string{"--config", write("typo.yaml", "model_id: "+qwen+"\ntarget_input_tokens: 4\ntarget_output_tokens: 4\nnum_samples: 1\ndataset_names: [gsm8k]\nbatch: 3\n"), "--batch-size", "1"}, []string{"typo.yaml", `"batch"`, "unknown key"}},
		{"wrong type", []string{"--config", write("type.yaml", "model_id: "+qwen+"\ntarget_input_tokens: lots\n"), "--batch-size", "1"}, []string{"type.yaml", "target_input_tokens", "integer"}},
		{"missing model_id", []string{"--config", write("nomodel.yaml", "target_input_tokens: 4\n"), "--batch-size", "1"}, []string{"nomodel.yaml", "model_id", "missing"}},
		// A model moecapd cannot describe is no usage error: it runs, its CAP numbers absent
		// (TestUndescribedModelStillRuns).
		{"batch size 0", []string{"--config", good, "--batch-size", "0"}, []string{"--batch-size", "positive"}},
		{"tp does not divide heads", []string{"--config", good, "--batch-size", "1", "--tp", "3"}, []string{"TP 3", "16 attention heads"}},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.yaml"), "--batch-size", "1"}, []string{"nope.yaml", "no such file"}},
		{"bad backend", []string{"--config", good, "--batch-size", "1", "--backend", "trt"}, []string{"trt", "sglang, vllm or sim"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"launch-and-bench", "--results", filepath.Join(dir, "r"), "--backend", "sim"}, c.args...)
			r := moecapd(t, nil, args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

func TestPortTaken(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(interface{ String() string }).String()
	port = port[strings.LastIndexByte(port, ':')+1:]
	args := simArgs(results, cfg, 2)
	for i, a := range args {
		if a == "--port" {
			args[i+1] = port
		}
	}
	r := moecapd(t, nil, args...)
	if r.code != 3 {
		t.Fatalf("exit %d, want 3\n%s", r.code, r.stderr)
	}
	_, m := onlyCell(t, results)
	if m.Failure == nil || m.Failure.Kind != exitcode.FailPortInUse || !strings.Contains(m.Failure.Message, "--port 0") {
		t.Errorf("failure %+v, want port_in_use naming the fix", m.Failure)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
