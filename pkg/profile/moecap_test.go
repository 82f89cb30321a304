package profile

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const fixtures = "../../testdata/profile"

func TestReadMoECAPOutputMapsRunnerNumbers(t *testing.T) {
	// The fixture's run: 4 requests over 21.5 s of wall time, so e2e_s = 21.5/4 = 5.375 and
	// request/s = 4/21.5, as the runner writes them. moecapd's own clock said 21.6 s.
	m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-ok"), 4, RunnerClock{RequestPhase: 21600 * time.Millisecond, Process: 40 * time.Second})
	if err != nil {
		t.Fatalf("ReadMoECAPOutput: %v", err)
	}
	if m.Source != "moe-cap" || m.LatencyKind != "server_pass" || m.PromptStyle != PromptUpstream {
		t.Errorf("source/kind/style = %q/%q/%q, want moe-cap/server_pass/upstream", m.Source, m.LatencyKind, m.PromptStyle)
	}
	checks := []struct {
		name      string
		got, want float64
	}{
		{"completed", float64(m.Completed), 4},
		{"input tokens", float64(m.TotalInputTokens), 4 * 4021},
		{"output tokens", float64(m.TotalOutputTokens), 4000},
		{"duration (the runner's wall, confirmed)", m.DurationS, 21.5},
		{"request throughput", m.RequestThroughput, 4 / 21.5},
		{"output throughput", m.OutputThroughput, 4000 / 21.5},
		{"runner e2e_s × N", *m.ClockCheck.RunnerE2ETimesNS, 21.5},
		{"runner N / request/s", *m.ClockCheck.RunnerNOverRateS, 21.5},
		{"moecapd's clock", *m.ClockCheck.MoecapdRequestPhaseS, 21.6},
		{"disagreement", *m.ClockCheck.MaxDisagreement, 0.1 / 21.6},
		{"server-pass ttft ms", *m.ServerPass.TTFTMoECAPMs, 412},
		{"server-pass tpot ms", *m.ServerPass.TPOTMoECAPMs, 18.3},
		{"mean prefill pass ms", *m.ServerPass.MeanPrefillPassMs, 200},
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
	if !m.ClockCheck.Agree || m.ClockCheck.Note != "" {
		t.Errorf("clock check %+v, want agreement within 2%%", m.ClockCheck)
	}
	// The runner measures no client TTFT/TPOT/ITL: absent, never 0.
	if m.MeanTTFTMs != nil || m.MedianTPOTMs != nil || m.P99ITLMs != nil {
		t.Errorf("client latencies present for a runner cell: %+v", m)
	}
	var raw map[string]any
	if err := json.Unmarshal(m.MoECAP, &raw); err != nil || raw["performance"] == nil {
		t.Errorf("MoECAP is not the verbatim metrics file: %v", err)
	}
	b, _ := json.Marshal(m)
	for _, k := range []string{`"mean_ttft_ms"`, `"median_tpot_ms"`, `"p99_itl_ms"`} {
		if strings.Contains(string(b), k) {
			t.Errorf("manifest metrics carry %s for a runner cell: %s", k, b)
		}
	}
}

func TestReadMoECAPOutputClockDisagreement(t *testing.T) {
	tests := []struct {
		name     string
		clock    RunnerClock
		duration float64
		agree    bool
		note     string
	}{
		// moecapd's window also holds the runner's CUDA start-up: the runner's wall stands.
		{"moecapd saw 30 s", RunnerClock{RequestPhase: 30 * time.Second}, 21.5, false, "28.3% longer than the runner's"},
		// A runner wall longer than moecapd's window is wrong (an e2e_s not divided by N).
		{"moecapd saw 20 s", RunnerClock{RequestPhase: 20 * time.Second}, 20, false, "cannot be right"},
		{"no markers in client.log", RunnerClock{Process: 50 * time.Second}, 21.5, false, "could not time the request phase"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-ok"), 4, tt.clock)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(m.DurationS-tt.duration) > 1e-9 || m.ClockCheck.Agree != tt.agree || !strings.Contains(m.ClockCheck.Note, tt.note) {
				t.Errorf("duration %v, clock check %+v; want %v, agree %v, note containing %q", m.DurationS, m.ClockCheck, tt.duration, tt.agree, tt.note)
			}
		})
	}
}

func TestReadMoECAPOutputRejects(t *testing.T) {
	tests := []struct {
		dir     string
		want    int
		msg     []string
		metrics bool // the numbers still come back with the error
	}{
		{"runner-failed", 4, []string{"output_data_gsm8k_20260801_120000.jsonl", "2 of 4 requests failed", "request 1", "ServerDisconnectedError: Server disconnected"}, true},
		{"runner-short", 4, []string{"metrics_gsm8k_20260801_120000.json", "quality.completed is 3, want 4"}, true},
		{"runner-ok", 5, []string{"quality.completed is 4, want 5"}, true},
		{"runner-zero", 4, []string{"4 of 4 requests failed", "ClientConnectorError"}, true},
		// No e2e_s, no request rate, no client.log markers: no duration, so no throughputs.
		{"runner-noclock", 4, []string{"duration is unknown", "none: no request-phase markers"}, true},
		{"runner-nosuccess", 4, []string{"No successful requests"}, false},
		{"runner-truncated", 4, []string{"not a MoE-CAP metrics file", "client.log"}, false},
		{"does-not-exist", 4, []string{"does not exist"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			m, err := ReadMoECAPOutput(filepath.Join(fixtures, tt.dir), tt.want, RunnerClock{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, s := range tt.msg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if (m != nil) != tt.metrics {
				t.Errorf("metrics returned: %v, want %v", m != nil, tt.metrics)
			}
		})
	}
	t.Run("empty dir", func(t *testing.T) {
		_, err := ReadMoECAPOutput(t.TempDir(), 1, RunnerClock{})
		if err == nil || !strings.Contains(err.Error(), "no metrics_<dataset>_<timestamp>.json") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestReadMoECAPOutputZeroActivationIsAbsent(t *testing.T) {
	m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-norecords"), 4, RunnerClock{})
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
	ttft := PyFloat(0.1)
	f := &RunnerFiles{Metrics: RunnerMetrics{Performance: RunnerPerformance{E2ES: 1, RequestsPerS: 1, TTFT: &ttft, TPOT: 0.01}, Quality: RunnerQuality{Completed: &n}}}
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
	// Field names and types are the runner's: "request/s", floats with a decimal point, and
	// null (not 0, not missing) where a measurement is absent.
	b, _ := os.ReadFile(p.Metrics)
	for _, k := range []string{`"e2e_s": 1.0`, `"request/s": 1.0`, `"ttft": 0.1`, `"tpot": 0.01`, `"completed": 3`, `"prefill_pass_latency_s": null`, `"prefill_forwarded_tokens": null`, `"avg_expert_activation_decode": 0`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("metrics file lacks %s:\n%s", k, b)
		}
	}
	m, err := ReadMoECAPOutput(dir, 3, RunnerClock{})
	if err != nil || m.Completed != 3 || m.TotalOutputTokens != 15 || m.DurationS != 3 {
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

// TestNoClockNoZeros: the numbers of a runner run without a duration source come back with
// the error, and its duration and throughputs are absent from the manifest's JSON, not 0.
func TestNoClockNoZeros(t *testing.T) {
	m, err := ReadMoECAPOutput(filepath.Join(fixtures, "runner-noclock"), 4, RunnerClock{})
	if err == nil || m == nil {
		t.Fatalf("err %v, metrics %v; want both", err, m)
	}
	b, _ := json.Marshal(m)
	for _, k := range []string{`"duration_s"`, `"request_throughput"`, `"output_throughput"`, `"total_token_throughput"`} {
		if strings.Contains(string(b), k) {
			t.Errorf("%s present in %s", k, b)
		}
	}
	if m.Completed != 4 || m.TotalOutputTokens == 0 {
		t.Errorf("measured counts lost: %+v", m)
	}
}

func TestEngineVersionOf(t *testing.T) {
	for _, tc := range []struct{ wrote, want string }{{"0.5.8", "0.5.8"}, {"unknown", ""}, {"", ""}} {
		dir := t.TempDir()
		f := &RunnerFiles{}
		f.Metadata.SystemEnvironment.InferenceEngineVersion = tc.wrote
		if _, err := WriteRunnerFiles(ModelDir(dir, "org/name"), "gsm8k", time.Now(), f); err != nil {
			t.Fatal(err)
		}
		if got := EngineVersionOf(dir); got != tc.want {
			t.Errorf("metadata says %q: EngineVersionOf = %q, want %q", tc.wrote, got, tc.want)
		}
	}
	if got := EngineVersionOf(t.TempDir()); got != "" {
		t.Errorf("no result files: %q, want absent", got)
	}
}

// The runner is Python: a metric it could not compute is written as NaN (json's allow_nan
// default), which is absent here, not a metrics file rejected whole; a latency_s of NaN or
// past the float range on a successful request is left out of E2EL and fails the result by
// name; nothing non-finite reaches the metrics a manifest stores.
func TestReadMoECAPOutputPythonNaNAndHugeNumbers(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(fixtures, "runner-ok"))); err != nil {
		t.Fatal(err)
	}
	metrics, _ := filepath.Glob(filepath.Join(dir, "*", "*", "metrics_*.json"))
	data, _ := filepath.Glob(filepath.Join(dir, "*", "*", "output_data_*.jsonl"))
	if len(metrics) != 1 || len(data) != 1 {
		t.Fatalf("fixture: %v %v", metrics, data)
	}
	b, _ := os.ReadFile(metrics[0])
	b = bytes.Replace(b, []byte(`"ttft": 0.412`), []byte(`"ttft": NaN`), 1)
	b = bytes.Replace(b, []byte(`"avg_expert_activation_decode": 2.9`), []byte(`"avg_expert_activation_decode": 1e308`), 1)
	if err := os.WriteFile(metrics[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	clock := RunnerClock{RequestPhase: 21600 * time.Millisecond}
	m, err := ReadMoECAPOutput(dir, 4, clock)
	if err != nil {
		t.Fatalf("a metrics file with NaN: %v", err)
	}
	if m.ServerPass.TTFTMoECAPMs != nil || m.ServerPass.TPOTMoECAPMs == nil || m.AvgExpertActivationDecode == nil || *m.AvgExpertActivationDecode != 1e308 {
		t.Errorf("ttft %v (want absent), tpot %v, decode activation %v", m.ServerPass.TTFTMoECAPMs, m.ServerPass.TPOTMoECAPMs, m.AvgExpertActivationDecode)
	}
	rows, _ := os.ReadFile(data[0])
	lines := bytes.Split(bytes.TrimSpace(rows), []byte("\n"))
	lines[1] = regexp.MustCompile(`"latency_s": ?[0-9.e+-]+`).ReplaceAll(lines[1], []byte(`"latency_s": NaN`))
	lines[2] = regexp.MustCompile(`"latency_s": ?[0-9.e+-]+`).ReplaceAll(lines[2], []byte(`"latency_s": 1e308`))
	if err := os.WriteFile(data[0], bytes.Join(lines, []byte("\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err = ReadMoECAPOutput(dir, 4, clock)
	if err == nil || !strings.Contains(err.Error(), "2 successful requests have no usable latency_s") {
		t.Errorf("err %v, want one naming the 2 unusable latencies", err)
	}
	if m == nil || m.Completed != 4 || m.MeanE2ELMs == nil {
		t.Fatalf("metrics %+v: want the 4 completed kept, E2EL from the 2 usable", m)
	}
	if _, err := json.Marshal(m); err != nil {
		t.Errorf("metrics a manifest cannot hold: %v", err)
	}
}
