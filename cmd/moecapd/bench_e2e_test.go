package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/profile"
)

// startSimServer runs `moecapd sim-server` as its own process with the given recorder dir
// and returns its base URL; the process is ended when the test ends.
func startSimServer(t *testing.T, flavor, recorderDir string, extra ...string) string {
	t.Helper()
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(interface{ String() string }).String()
	port = port[strings.LastIndexByte(port, ':')+1:]
	l.Close()
	args := []string{"sim-server", "--flavor", flavor, "--port", port, "--sim-tpot", "1ms", "--sim-ttft", "2ms"}
	if flavor == "sglang" {
		args = append(args, "--model-path", qwen)
	} else {
		args = append(args, "--model", qwen)
	}
	c := exec.Command(bin, append(args, extra...)...)
	c.Env = append(os.Environ(), "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR="+recorderDir)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	base := "http://127.0.0.1:" + port
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get(base + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
	}
	t.Fatal("sim-server never became ready")
	return ""
}

func benchArgs(api, out string, extra ...string) []string {
	a := []string{"bench", "--api-url", api, "--model_name", qwen, "--fixed-length-mode", "--target-input-tokens", "24",
		"--target-output-tokens", "6", "--num-samples", "4", "--server-batch-size", "2", "--output_dir", out,
		"--offline", "--log-format", "json"}
	return append(a, extra...)
}

// TestBenchRunnerFlags drives `moecapd bench` with the runner's own flag spellings against
// the sim binary: space-separated --datasets/--metrics, judge flags, the chat API.
func TestBenchRunnerFlags(t *testing.T) {
	for _, flavor := range []string{"sglang", "vllm"} {
		t.Run(flavor, func(t *testing.T) {
			rec := t.TempDir()
			base := startSimServer(t, flavor, rec)
			out := t.TempDir()
			r := moecapd(t, []string{"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=" + rec},
				benchArgs(base+"/v1/completions", out, "--datasets", "random", "--metrics", "em", "f1",
					"--judge-model", "gpt-4.1", "--use-chat-api", "--backend", flavor)...)
			if r.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, "Sending 4 requests to "+base+"/v1/chat/completions") {
				t.Errorf("the chat API did not switch the URL to /v1/chat/completions:\n%s", r.stdout)
			}
			if !strings.Contains(r.stderr, "--judge-model is accepted for compatibility and ignored") {
				t.Errorf("judge flag not acknowledged:\n%s", r.stderr)
			}
			leaf := filepath.Join(out, "Qwen", "Qwen1.5-MoE-A2.7B-Chat")
			ents, _ := os.ReadDir(leaf)
			if len(ents) != 4 {
				t.Errorf("%s holds %d files, want the runner's 4", leaf, len(ents))
			}
			ms, _ := filepath.Glob(filepath.Join(leaf, "metrics_random_*.json"))
			if len(ms) != 1 {
				t.Fatalf("metrics files %v", ms)
			}
			var mf struct {
				Performance map[string]any `json:"performance"`
				Quality     map[string]any `json:"quality"`
			}
			readJSON(t, ms[0], &mf)
			e2e, rate := mf.Performance["e2e_s"].(float64), mf.Performance["request/s"].(float64)
			if d := e2e*rate - 1; d > 1e-9 || d < -1e-9 {
				t.Errorf("e2e_s × request/s = %v, want 1 (e2e_s is the wall time over N)", e2e*rate)
			}
			if mf.Performance["ttft"] == nil || mf.Quality["completed"] != 4.0 || mf.Quality["acc"] != 0.0 {
				t.Errorf("metrics %+v", mf)
			}
			bf, _ := filepath.Glob(filepath.Join(out, profile.BenchDir, "bench_random_*.json"))
			if len(bf) != 1 {
				t.Errorf("moecapd's own file %v, want one under %s", bf, profile.BenchDir)
			}
		})
	}
}

// TestBenchExitCodes: record-dir mismatch exits 1 like the runner; usage errors exit 2.
func TestBenchExitCodes(t *testing.T) {
	rec := t.TempDir()
	base := startSimServer(t, "sglang", rec)
	api := base + "/v1/completions"
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		msg  string
	}{
		{"record dir mismatch", []string{"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR=" + t.TempDir()}, []string{"--datasets", "random"}, 1, "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"},
		{"arena-hard needs the judge", nil, []string{"--datasets", "arena-hard"}, 2, "LLM judge"},
		{"bad precision", nil, []string{"--datasets", "random", "--precision", "fp7"}, 2, "--precision"},
		{"bad prompt style", nil, []string{"--datasets", "random", "--prompt-style", "chatty"}, 2, "--prompt-style"},
		{"datasets without a value", nil, []string{"--datasets"}, 2, "datasets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := moecapd(t, tt.env, benchArgs(api, t.TempDir(), tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.msg) {
				t.Errorf("exit %d, want %d with %q\n%s", r.code, tt.code, tt.msg, r.stderr)
			}
		})
	}
}

// TestNativeCellValidity: a native-client cell whose server answers some requests with
// HTTP 500, or whose usage lies, is bad_result (exit 5) with the counts in the manifest; an
// explicit tolerance lets it pass and is recorded.
func TestNativeCellValidity(t *testing.T) {
	tests := []struct {
		fault string
		allow int
		code  int
		check func(m *cell.Manifest) string
	}{
		{"http-500-some", 0, 5, func(m *cell.Manifest) string { return fmt.Sprint(m.Metrics.Failed, m.Metrics.Errors["http 500"]) }},
		{"usage-lie", 0, 5, func(m *cell.Manifest) string {
			return fmt.Sprint(m.Metrics.UsageStreamMismatches, m.Metrics.BadRequests)
		}},
		{"http-500-some", 2, 0, func(m *cell.Manifest) string { return fmt.Sprint(m.Metrics.Failed, *m.Metrics.AllowedBadRequests) }},
	}
	for _, tt := range tests {
		t.Run(tt.fault+"/allow"+strconv.Itoa(tt.allow), func(t *testing.T) {
			results := t.TempDir()
			cfg := tinyConfig(t, qwen, 32, 6, 8)
			r := moecapd(t, nil, simArgs(results, cfg, 2, "--allow-bad-requests", strconv.Itoa(tt.allow), "--", "--sim-fault", tt.fault, "--sim-tpot", "1ms")...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\n%s", r.code, tt.code, r.stderr)
			}
			_, m := onlyCell(t, results)
			if got := tt.check(m); got != "2 2" {
				t.Errorf("counts %q, want \"2 2\" (every 4th of 8 requests)", got)
			}
			if tt.code == 5 && (m.Failure == nil || m.Failure.Kind != exitcode.FailBadResult || len(m.Metrics.InvalidReasons) == 0) {
				t.Errorf("failure %+v reasons %v, want bad_result with reasons", m.Failure, m.Metrics.InvalidReasons)
			}
			if tt.code == 0 && m.Status != cell.StatusOK {
				t.Errorf("status %s, want ok within the tolerance", m.Status)
			}
			b, _ := json.Marshal(m.Metrics)
			if !strings.Contains(string(b), `"allowed_bad_requests":`+strconv.Itoa(tt.allow)) || !strings.Contains(string(b), `"prompt_style":"exact-ids"`) {
				t.Errorf("manifest metrics do not record the tolerance and prompt style: %s", b)
			}
		})
	}
}

func TestExpandRunnerLists(t *testing.T) {
	tests := []struct{ in, want string }{
		{"bench --datasets gsm8k longbench_v2 --metrics em f1 --api-url u", "bench --datasets=gsm8k --datasets=longbench_v2 --metrics=em --metrics=f1 --api-url u"},
		{"bench --metrics --datasets random", "bench --metrics= --datasets=random"},
		{"--log-level debug bench --datasets a", "--log-level debug bench --datasets=a"},
		{"launch-and-bench --datasets a b", "launch-and-bench --datasets a b"},
		{"bench --datasets", "bench --datasets"},
		{"launch-and-bench --config bench --datasets a b", "launch-and-bench --config bench --datasets a b"},
	}
	for _, tt := range tests {
		if got := strings.Join(expandRunnerLists(strings.Fields(tt.in)), " "); got != tt.want {
			t.Errorf("expandRunnerLists(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
