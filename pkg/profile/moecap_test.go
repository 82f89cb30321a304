package profile

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const fixtures = "../../testdata/profile"

func TestReadMoECAPOutputMapsRunnerNumbers(t *testing.T) {
	m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-ok"), 4)
	if err != nil {
		t.Fatalf("ReadMoECAPOutput: %v", err)
	}
	if m.Source != "moe-cap" || m.LatencyKind != "server_pass" {
		t.Errorf("source/kind = %q/%q, want moe-cap/server_pass", m.Source, m.LatencyKind)
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"completed", float64(m.Completed), 4},
		{"input tokens", float64(m.TotalInputTokens), 4 * 4021},
		{"output tokens", float64(m.TotalOutputTokens), 4000},
		{"duration", m.DurationS, 62.5},
		{"output throughput", m.OutputThroughput, 4000 / 62.5},
		{"server-pass ttft ms", *m.ServerPass.TTFTMoECAPMs, 412},
		{"server-pass tpot ms", *m.ServerPass.TPOTMoECAPMs, 18.3},
		{"median e2el ms", *m.MedianE2ELMs, 20750}, // latencies 20.0, 20.5, 21.0, 21.5 s
		{"activation prefill", *m.AvgExpertActivationPrefill, 3.7},
		{"activation decode", *m.AvgExpertActivationDecode, 2.9},
		{"decode batch", *m.AvgDecodeBatchSize, 28.5},
	}
	for _, c := range checks {
		if math.Abs(c.got-c.want) > 1e-6 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	var raw map[string]any
	if err := json.Unmarshal(m.MoECAP, &raw); err != nil || raw["performance"] == nil {
		t.Errorf("MoECAP is not the verbatim metrics file: %v", err)
	}
}

func TestReadMoECAPOutputRejects(t *testing.T) {
	tests := []struct {
		dir  string
		want int
		msg  []string
	}{
		{"runner-failed", 4, []string{"output_data_gsm8k_20260801_120000.jsonl", "2 of 4 requests failed", "request 1", "ServerDisconnectedError: Server disconnected"}},
		{"runner-short", 4, []string{"metrics_gsm8k_20260801_120000.json", "quality.completed is 3, want 4"}},
		{"runner-ok", 5, []string{"quality.completed is 4, want 5"}},
		{"runner-nosuccess", 4, []string{"No successful requests"}},
		{"does-not-exist", 4, []string{"does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			_, err := ReadMoECAPOutput(filepath.Join(fixtures, tt.dir), tt.want)
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.msg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
	t.Run("empty dir", func(t *testing.T) {
		_, err := ReadMoECAPOutput(t.TempDir(), 1)
		if err == nil || !strings.Contains(err.Error(), "no metrics_<dataset>_<timestamp>.json") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestReadMoECAPOutputZeroActivationIsAbsent(t *testing.T) {
	m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-norecords"), 4)
	if err != nil {
		t.Fatal(err)
	}
	if m.AvgExpertActivationDecode != nil || m.AvgDecodeBatchSize != nil || !strings.HasPrefix(m.Records, "absent") {
		t.Errorf("zeros were taken as measurements: %+v", m)
	}
}

func TestWriteRunnerFilesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	n := 3
	f := &RunnerFiles{Metrics: RunnerMetrics{Performance: RunnerPerformance{E2ES: 3, TTFT: 0.1, TPOT: 0.01}, Quality: &RunnerQuality{Completed: &n}}}
	for i := range n {
		f.Requests = append(f.Requests, RunnerRequest{Index: i, InputTokenCount: 10, OutputTokenCount: 5, Success: true, LatencyS: 1})
	}
	ts := time.Date(2026, 8, 1, 9, 5, 7, 0, time.UTC)
	p, err := WriteRunnerFiles(ModelDir(dir, "org/name"), "gsm8k", ts, f)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "org", "name", "metrics_gsm8k_20260801_090507.json"); p.Metrics != want {
		t.Errorf("metrics path %q, want %q", p.Metrics, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(p.Metrics))
	if len(entries) != 4 {
		t.Errorf("%d files written, want exactly the 4 (no temp files left)", len(entries))
	}
	// Field names are the runner's, including "request/s" and "output_tokens" as text.
	b, _ := os.ReadFile(p.Metrics)
	for _, k := range []string{`"e2e_s"`, `"request/s"`, `"ttft"`, `"tpot"`, `"completed": 3`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("metrics file lacks %s:\n%s", k, b)
		}
	}
	m, err := ReadMoECAPOutput(dir, 3)
	if err != nil || m.Completed != 3 || m.TotalOutputTokens != 15 {
		t.Errorf("round trip: %v %+v", err, m)
	}
}

func TestModelDir(t *testing.T) {
	for _, c := range [][3]string{
		{"out", "Qwen/Qwen1.5-MoE-A2.7B-Chat", "out/Qwen/Qwen1.5-MoE-A2.7B-Chat"},
		{"out", "/models/deepseek-ai/DeepSeek-R1", "out/deepseek-ai/DeepSeek-R1"},
		{"out", "mixtral", "out/mixtral"},
	} {
		if got := ModelDir(c[0], c[1]); got != c[2] {
			t.Errorf("ModelDir(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

func TestRunnerArgs(t *testing.T) {
	got := RunnerArgs("configs/fixed_4k_1k_qwen1_5.yaml", "http://127.0.0.1:30000/v1/completions", "sglang", 32, "/r/cell/client", "--num-samples", "256")
	want := []string{"-m", "moe_cap.runner.openai_api_profile", "--config-file", "configs/fixed_4k_1k_qwen1_5.yaml",
		"--api-url", "http://127.0.0.1:30000/v1/completions", "--backend", "sglang", "--ignore-eos",
		"--server-batch-size", "32", "--output_dir", "/r/cell/client", "--num-samples", "256"}
	if !slices.Equal(got, want) {
		t.Errorf("RunnerArgs =\n%q\nwant\n%q", got, want)
	}
}
