package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// fakeCondaRoot builds a conda-shaped root: etc/profile.d/conda.sh defines a `conda` shell
// function whose activate sets CONDA_PREFIX and PATH and sources the env's activate.d
// scripts; envs/<name>/bin/python dispatches `-m moe_cap.systems.*` to the sim server and
// `-m moe_cap.runner.openai_api_profile` to `moecapd bench` (which accepts the runner's
// flags and writes its files).
func fakeCondaRoot(t *testing.T, env string) (root, prefix string) {
	t.Helper()
	root = t.TempDir()
	prefix = filepath.Join(root, "envs", env)
	for _, d := range []string{filepath.Join(root, "etc", "profile.d"), filepath.Join(prefix, "bin"), filepath.Join(prefix, "etc", "conda", "activate.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(root, "etc", "profile.d", "conda.sh"): `
conda() {
  if [ "$1" = activate ]; then
    case "$2" in /*) p="$2" ;; *) p="$FAKE_CONDA_ROOT/envs/$2" ;; esac
    [ -d "$p" ] || { echo "EnvironmentNameNotFound: Could not find conda environment: $2" >&2; return 1; }
    export CONDA_PREFIX="$p" CONDA_DEFAULT_ENV="$2" PATH="$p/bin:$PATH"
    for f in "$p"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done
    return 0
  fi
  return 1
}
`,
		filepath.Join(prefix, "etc", "conda", "activate.d", "moecap.sh"): "export FAKE_ENV_ACTIVATED=yes\n",
		filepath.Join(prefix, "bin", "python"): `#!/bin/sh
[ "$FAKE_ENV_ACTIVATED" = yes ] || { echo "python run outside the activated env" >&2; exit 97; }
if [ "$1" = -c ]; then
  case "$2|$3" in *importlib.metadata*"|moe_cap") echo 0.4.2 ; exit 0 ;; esac
fi
if [ "$1" = -m ]; then
  mod="$2"; shift 2
  case "$mod" in
    moe_cap.systems.sglang) exec "$MOECAPD_TEST_BIN" sim-server --flavor sglang --sim-tpot 2ms "$@" ;;
    moe_cap.systems.vllm) exec "$MOECAPD_TEST_BIN" sim-server --flavor vllm --sim-tpot 2ms "$@" ;;
    moe_cap.runner.openai_api_profile)
      out=""; prev=""
      for a in "$@"; do [ "$prev" = --output_dir ] && out="$a"; prev="$a"; done
      case "$FAKE_RUNNER" in
        crash) printf 'Traceback (most recent call last):\n  File "openai_api_profile.py", line 1\nmoe_cap.runner.openai_api_profile.ServerRecordsUnavailableError: SGLang wrote no record file\n' >&2; exit 1 ;;
        garbage) mkdir -p "$out/Qwen/Qwen1.5-MoE-A2.7B-Chat"; printf '{"performance": {"e2e_s": 0.' > "$out/Qwen/Qwen1.5-MoE-A2.7B-Chat/metrics_gsm8k_20261201_120000.json"; exit 0 ;;
      esac
      exec "$MOECAPD_TEST_BIN" bench --log-format json --datasets random --offline "$@" ;;
  esac
fi
echo "fake python: unsupported $*" >&2
exit 1
`,
	}
	for p, body := range files {
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// conda.sh finds envs by name under its root, as the real one does.
	t.Setenv("FAKE_CONDA_ROOT", root)
	return root, prefix
}

func TestCondaPathHostileNames(t *testing.T) {
	for _, backend := range []string{"sglang", "vllm"} {
		t.Run(backend, func(t *testing.T) {
			env := "env with space;'q'\"dq\" $(touch PWNED_ENV) `touch PWNED_ENV2`"
			root, prefix := fakeCondaRoot(t, env)
			work := t.TempDir()
			// A local model directory (named like the hub id) under a hostile parent path.
			modelDir := filepath.Join(work, "m $(touch PWNED_MODEL);`touch PWNED_MODEL2`'\"", "Qwen1.5-MoE-A2.7B-Chat")
			os.MkdirAll(modelDir, 0o755)
			cfg := tinyConfig(t, modelDir, 32, 8, 4)
			results := filepath.Join(work, "results")
			argvFile := filepath.Join(work, "sim-argv.json")
			r := moecapd(t, []string{"MOECAPD_TEST_BIN=" + bin, "MOECAPD_SIM_ARGV_FILE=" + argvFile},
				"launch-and-bench", "--backend", backend, "--config", cfg, "--batch-size", "2", "--port", "0",
				"--conda-root", root, "--env", env, "--results", results, "--grace", "2s", "--log-format", "json",
				"--", "--trust-remote-code")
			if r.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			dir, m := onlyCell(t, results)
			if m.Status != cell.StatusOK || m.Client.Kind != "moe-cap" || m.Metrics == nil || m.Metrics.Source != "moe-cap" || m.Metrics.Completed != 4 {
				t.Fatalf("manifest %+v metrics %+v", m, m.Metrics)
			}
			// MoE-CAP's version, asked in the runner's env (its python, activated).
			if m.Versions.MoECAP != "0.4.2" {
				t.Errorf("versions.moecap %q, want 0.4.2 from the env's importlib.metadata", m.Versions.MoECAP)
			}
			var seen struct {
				Argv []string          `json:"argv"`
				Env  map[string]string `json:"env"`
			}
			readJSON(t, argvFile, &seen)
			// Everything after the fake python's own flags is what moecapd passed to python -m.
			i := slices.Index(seen.Argv, "--sim-tpot")
			if i < 0 {
				t.Fatalf("sim argv %q", seen.Argv)
			}
			got := seen.Argv[i+2:]
			want := m.Server.Argv[slices.Index(m.Server.Argv, "python")+3:]
			if !slices.Equal(got, want) {
				t.Errorf("server argv\n got %q\nwant %q", got, want)
			}
			if !slices.Contains(got, modelDir) || !slices.Contains(got, "--trust-remote-code") {
				t.Errorf("model path or extra flag not passed byte for byte: %q", got)
			}
			if seen.Env["CONDA_PREFIX"] != prefix {
				t.Errorf("server CONDA_PREFIX %q, want %q", seen.Env["CONDA_PREFIX"], prefix)
			}
			if seen.Env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] != filepath.Join(dir, "records") {
				t.Errorf("records dir %q", seen.Env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"])
			}
			if backend == "vllm" && seen.Env["MOE_CAP_ENABLE_EXPERT_PATCHING"] != "1" {
				t.Errorf("vllm expert patching env %q, want 1", seen.Env["MOE_CAP_ENABLE_EXPERT_PATCHING"])
			}
			// The cell's duration is moecapd's own clock of the runner's request phase, compared
			// with the runner's e2e_s × N; the server-pass figures come from the recording window.
			mt := m.Metrics
			if cc := mt.ClockCheck; cc == nil || cc.MoecapdRequestPhaseS == nil || cc.RunnerE2ETimesNS == nil || mt.DurationS != *cc.RunnerE2ETimesNS {
				t.Errorf("clock check %+v, duration %v: want the runner's wall time, confirmed by moecapd's request-phase clock", cc, mt.DurationS)
			}
			// server_pass carries the runner's own ttft/tpot, and moecapd's over the window.
			var rf struct {
				Performance struct{ TTFT, TPOT float64 } `json:"performance"`
			}
			json.Unmarshal(mt.MoECAP, &rf)
			if sp := mt.ServerPass; sp == nil || sp.TTFTMoECAPMs == nil || *sp.TTFTMoECAPMs != rf.Performance.TTFT*1000 ||
				sp.TPOTMoECAPMs == nil || sp.WindowTTFTMs == nil || sp.WindowTPOTMs == nil || !strings.Contains(sp.Source, "recording window") {
				t.Errorf("server pass %+v, want the runner's TTFT/TPOT and moecapd's window ones", sp)
			}
			if mt.MeanTTFTMs != nil || mt.MeanTPOTMs != nil {
				t.Errorf("client TTFT/TPOT present for a runner cell (non-streaming: it measures none)")
			}
			if backend == "vllm" && mt.AvgDecodeContextTokens == nil {
				t.Errorf("vLLM decode context not rebuilt from the trace")
			}
			// moecapd's own window file, compressed once the cell ended (cell.Compact).
			if _, err := os.Stat(filepath.Join(dir, "records", "moecapd_window.jsonl.zst")); err != nil {
				t.Errorf("recording window file: %v", err)
			}
			ms, _ := filepath.Glob(filepath.Join(dir, "client", "*", "*", "metrics_*.json"))
			if len(ms) != 1 {
				t.Errorf("runner metrics files %v, want one under client/<org>/<model>/", ms)
			}
			filepath.Walk(work, func(p string, _ os.FileInfo, _ error) error {
				if strings.HasPrefix(filepath.Base(p), "PWNED") {
					t.Errorf("%s exists: a value was executed as shell", p)
				}
				return nil
			})
			for _, f := range []string{"PWNED_ENV", "PWNED_ENV2", "PWNED_MODEL", "PWNED_MODEL2"} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s created in the working directory", f)
					os.Remove(f)
				}
			}
		})
	}
}

func TestMissingCondaEnv(t *testing.T) {
	root, _ := fakeCondaRoot(t, "sglang")
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	results := t.TempDir()
	r := moecapd(t, nil, "launch-and-bench", "--backend", "vllm", "--config", cfg, "--batch-size", "1",
		"--port", "0", "--conda-root", root, "--results", results)
	if r.code != 2 {
		t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "conda env create -f envs/vllm.yml") {
		t.Errorf("error does not say how to create the env:\n%s", r.stderr)
	}
}

// TestRunnerBadOutputs: a runner that crashes (the runner exits 1 when the SGLang record file
// is missing), one whose metrics file does not parse, and one whose requests all failed each
// fail the cell with a clear message and exit 5; what was measured stays in the manifest.
func TestRunnerBadOutputs(t *testing.T) {
	tests := []struct {
		name, runner string
		extra        []string
		kind         cell.Kind
		msg          string
	}{
		{"crash", "crash", nil, exitcode.FailClientError, "ServerRecordsUnavailableError: SGLang wrote no record file"},
		{"unparseable metrics", "garbage", nil, exitcode.FailBadResult, "not a MoE-CAP metrics file"},
		// moecapd bench as the runner exits 5 on failed requests (the real runner exits 0 and
		// the cell's own check makes it bad_result); either way the numbers are kept.
		{"failed requests", "", []string{"--", "--sim-fault", "http-500-some"}, "", "requests failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, _ := fakeCondaRoot(t, "sglang")
			cfg := tinyConfig(t, qwen, 32, 8, 4)
			results := t.TempDir()
			args := append([]string{"launch-and-bench", "--backend", "sglang", "--config", cfg, "--batch-size", "2", "--port", "0",
				"--conda-root", root, "--results", results, "--grace", "2s", "--log-format", "json"}, tt.extra...)
			r := moecapd(t, []string{"MOECAPD_TEST_BIN=" + bin, "FAKE_RUNNER=" + tt.runner}, args...)
			if r.code != 5 {
				t.Fatalf("exit %d, want 5\n%s", r.code, r.stderr)
			}
			_, m := onlyCell(t, results)
			if m.Failure == nil || tt.kind != "" && m.Failure.Kind != tt.kind || !strings.Contains(m.Failure.Message, tt.msg) {
				t.Errorf("failure %+v, want %s with %q", m.Failure, tt.kind, tt.msg)
			}
			if tt.name == "failed requests" && (m.Metrics == nil || m.Metrics.Failed != 1 || m.Metrics.Completed != 3) {
				t.Errorf("the failed run's numbers were lost: %+v", m.Metrics)
			}
		})
	}
}

// The sim server with the MoE-CAP runner as the client: the server runs without conda, the
// runner inside the activated env (here `moecapd bench`, through the fake env's python).
func TestSimWithRunnerClient(t *testing.T) {
	root, _ := fakeCondaRoot(t, "sglang")
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	results := t.TempDir()
	r := moecapd(t, []string{"MOECAPD_TEST_BIN=" + bin}, "launch-and-bench", "--backend", "sim", "--client", "moe-cap",
		"--config", cfg, "--batch-size", "2", "--port", "0", "--conda-root", root, "--results", results,
		"--grace", "2s", "--log-format", "json", "--", "--sim-tpot", "2ms")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	dir, m := onlyCell(t, results)
	if m.Status != cell.StatusOK || m.Client.Kind != "moe-cap" || m.Metrics == nil || m.Metrics.Source != "moe-cap" || m.Metrics.Completed != 4 {
		t.Fatalf("manifest %+v metrics %+v", m, m.Metrics)
	}
	if slices.Contains(m.Server.Argv, "conda") || len(m.Server.Argv) == 0 || m.Server.Argv[0] != bin && !strings.HasSuffix(m.Server.Argv[0], "moecapd") {
		t.Errorf("sim server argv %q: want the moecapd binary itself, not a conda activation", m.Server.Argv)
	}
	ms, _ := filepath.Glob(filepath.Join(dir, "client", "*", "*", "metrics_*.json"))
	if len(ms) != 1 {
		t.Errorf("runner metrics files %v, want one under client/<org>/<model>/", ms)
	}
}

// A supervisor killed with SIGKILL while the MoE-CAP runner (its client, a process of its
// own) is mid-bench: the next run on the root ends the orphaned runner along with the server,
// so it cannot go on writing into the cell directory that the rerun recreates.
func TestSIGKILLMidBenchEndsOrphanedRunner(t *testing.T) {
	root, _ := fakeCondaRoot(t, "sglang")
	results := t.TempDir()
	long := tinyConfig(t, qwen, 32, 400, 64)
	args := []string{"launch-and-bench", "--backend", "sim", "--client", "moe-cap", "--batch-size", "2", "--port", "0",
		"--conda-root", root, "--results", results, "--grace", "2s", "--log-format", "json"}
	c := exec.Command(bin, append(append(slices.Clone(args), "--config", long), "--", "--sim-tpot", "20ms")...)
	c.Env = append(os.Environ(), "MOECAPD_TEST_BIN="+bin)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	dir, m0 := waitManifest(t, results, "the bench", func(dir string, m *cell.Manifest) bool {
		_, err := os.Stat(filepath.Join(dir, "client.log"))
		return m.Phase == cell.PhaseBench && err == nil
	})
	time.Sleep(500 * time.Millisecond)
	all := descendants(c.Process.Pid)
	var runner []int
	for _, p := range all {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(b), "openai_api_profile") || strings.Contains(string(b), "\x00bench\x00") {
			runner = append(runner, p)
		}
	}
	if len(runner) == 0 {
		t.Fatalf("no runner process among the supervisor's descendants %v (server %d, dir %s)", all, m0.Server.PID, dir)
	}
	c.Process.Kill()
	c.Wait()
	short := tinyConfig(t, qwen, 32, 8, 4)
	r := moecapd(t, []string{"MOECAPD_TEST_BIN=" + bin}, append(append(slices.Clone(args), "--config", short), "--", "--sim-tpot", "2ms")...)
	if r.code != 0 {
		t.Fatalf("next run exit %d\n%s", r.code, r.stderr)
	}
	// The sweep must have ended the runner as one of the server's processes (it would die on
	// its own once the server is gone, but only after writing into the cell directory).
	var ended []int
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.Contains(line, "ending a server left behind") {
			var l struct {
				PIDs []int `json:"pids"`
			}
			json.Unmarshal([]byte(line), &l)
			ended = l.PIDs
		}
	}
	for _, p := range runner {
		if !slices.Contains(ended, p) {
			t.Errorf("runner pid %d not among the processes the sweep ended %v\n%s", p, ended, r.stderr)
		}
	}
	for _, p := range all {
		if pidAlive(p) {
			t.Errorf("pid %d of the killed run (runner pids %v) alive after the next run", p, runner)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}
