package profile

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/records"
)

// bodyTransport answers every request with body as a 200 event stream, no network.
type bodyTransport struct{ body []byte }

func (b bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: http.Header{"Content-Type": {"text/event-stream"}},
		Body: io.NopCloser(bytes.NewReader(b.body)), Request: r}, nil
}

// FuzzSSEStream: whatever a server streams, the reader ends with a success or a classified
// failure, never a panic, and never records more chunks than max_tokens allows.
func FuzzSSEStream(f *testing.F) {
	f.Add([]byte(chunkLine + chunkLine + `data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}` + "\n\ndata: [DONE]\n\n"))
	f.Add([]byte(`{"object":"error","message":"no"}`))
	f.Add([]byte("data: {\"error\":{\"message\":\"x\"}}\n\n"))
	f.Add([]byte("data: [DONE]\n"))
	f.Add([]byte(": ping\r\n\r\ndata:{\"choices\":[{\"delta\":{\"content\":\"é\"}}]}\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		s := &streamer{hc: &http.Client{Transport: bodyTransport{body}}, url: "http://fuzz/v1/completions", maxTokens: 4, idle: time.Minute}
		var r RequestResult
		s.do(t.Context(), []byte("{}"), &r)
		if !r.Success && r.ErrorKind == "" {
			t.Fatalf("failure without a reason: %+v", r)
		}
		if r.Chunks > 4+tokenMargin(4) {
			t.Fatalf("%d chunks recorded for max_tokens=4", r.Chunks)
		}
	})
}

// FuzzRunnerFiles: the runner's per-request file, whatever it holds, reads without a panic.
func FuzzRunnerFiles(f *testing.F) {
	for _, d := range []string{"runner-ok", "runner-failed", "runner-truncated", "runner-zero"} {
		matches, _ := filepath.Glob(filepath.Join("../../testdata/profile", d, "*", "*", "*.jsonl"))
		for _, m := range matches {
			if b, err := os.ReadFile(m); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte(`{"index":0,"success":true,"latency_s":NaN}` + "\n" + `{"index":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "requests.jsonl")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, _ = readRunnerRequests(p)
	})
}

// FuzzRunnerOutput: whatever the MoE-CAP runner (or a file put in its place) wrote as its
// metrics file and per-request data, ReadMoECAPOutput returns metrics or an error, never a
// panic, and the metrics it returns are what a manifest can hold (JSON has no NaN or Inf: one
// would fail the whole manifest write).
func FuzzRunnerOutput(f *testing.F) {
	for _, d := range []string{"runner-ok", "runner-failed", "runner-noclock", "runner-norecords", "runner-short", "runner-zero"} {
		metrics, _ := filepath.Glob(filepath.Join("../../testdata/profile", d, "*", "*", "metrics_*.json"))
		data, _ := filepath.Glob(filepath.Join("../../testdata/profile", d, "*", "*", "output_data_*.jsonl"))
		if len(metrics) == 1 && len(data) == 1 {
			m, _ := os.ReadFile(metrics[0])
			r, _ := os.ReadFile(data[0])
			f.Add(m, r, uint16(1000))
		}
	}
	f.Add([]byte(`{"performance":{"e2e_s":1e308,"request/s":1e-308,"ttft":1e308,"tpot":NaN},"expert_activation":{"avg_expert_activation_decode":Infinity}}`),
		[]byte(`{"index":0,"success":true,"latency_s":1e308,"input_token_count":1,"output_token_count":1}`+"\n"+`{"index":1,"success":true,"latency_s":NaN}`), uint16(0))
	f.Fuzz(func(t *testing.T, metrics, data []byte, phaseMs uint16) {
		dir := t.TempDir()
		sub := filepath.Join(dir, "org", "model")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "metrics_gsm8k_20260801_120000.json"), metrics, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "output_data_gsm8k_20260801_120000.jsonl"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, _ := ReadMoECAPOutput(dir, 2, RunnerClock{RequestPhase: time.Duration(phaseMs) * time.Millisecond})
		if m == nil {
			return
		}
		if _, err := json.Marshal(m); err != nil {
			t.Fatalf("metrics a manifest cannot hold: %v", err)
		}
	})
}

// FuzzPassStats: whatever pass records a server returned, the figures the client derives
// from them (and writes into the manifest and the runner-format files) are finite: records
// of 1e308 summed to +Inf, which no JSON can hold.
func FuzzPassStats(f *testing.F) {
	matches, _ := filepath.Glob("../../testdata/profile/*/*/*/detailed_results_*.jsonl")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(b, uint8(4))
		}
	}
	f.Add([]byte(`{"forward_mode":"decode","latency":1e308,"batch_size":1e308,"expert_activation":1e308}`+"\n"+
		`{"forward_mode":"decode","latency":1e308,"batch_size":1e308,"expert_activation":1e308}`+"\n"+
		`{"forward_mode":"prefill","latency":1e308,"scheduled_tokens":1e300,"seq_lens_sum":4000,"batch_size":1,"per_req_info":[{"req_id":"a","is_last_chunk":true}]}`+"\n"+
		`{"forward_mode":"prefill","latency":1e308,"scheduled_tokens":1e300,"seq_lens_sum":4000,"batch_size":1,"per_req_info":[{"req_id":"a","is_last_chunk":true}]}`), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		var raws []json.RawMessage
		for _, l := range bytes.Split(data, []byte("\n")) {
			if l = records.PythonJSON(l); json.Valid(l) {
				raws = append(raws, json.RawMessage(l))
			}
		}
		passes, err := ParsePasses("fuzz", raws)
		if err != nil {
			return
		}
		s := StatsOf(passes, int(n))
		if _, err := json.Marshal(s); err != nil {
			t.Fatalf("pass stats no manifest can hold: %v", err)
		}
	})
}
