package profile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func baseOptions(f *fakeServer, dir string) Options {
	return Options{
		APIURL: f.url(), Model: "org/model", Backend: "auto",
		BatchSize: 4, NumSamples: 12, InputTokens: 32, OutputTokens: 10, IgnoreEOS: true,
		Dataset: "random", Seed: 7, OutputDir: dir, RecordsDir: filepath.Join(dir, "records"),
		ProgressInterval: time.Hour,
	}
}

func TestRunClosedLoopMetricsAndFiles(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "vllm", ttft: 30 * time.Millisecond, tpot: 5 * time.Millisecond})
	dir := t.TempDir()
	o := baseOptions(f, dir)
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	m := res.Metrics
	if m.Completed != 12 || m.Failed != 0 {
		t.Fatalf("completed/failed = %d/%d, want 12/0 (errors %v)", m.Completed, m.Failed, m.Errors)
	}
	if f.maxInflight != 4 {
		t.Errorf("server saw at most %d requests in flight, want exactly the batch size 4", f.maxInflight)
	}
	if res.Backend != "vllm" {
		t.Errorf("detected backend %q, want vllm", res.Backend)
	}
	// Prompts are token ids of exactly the target length, with the fixed-length knobs set.
	for i, b := range f.bodies {
		ids, ok := b["prompt"].([]any)
		if !ok || len(ids) != 32 {
			t.Fatalf("request %d prompt = %v, want 32 token ids", i, b["prompt"])
		}
		if b["ignore_eos"] != true || b["max_tokens"] != 10.0 || b["stream"] != true {
			t.Errorf("request %d body = %v, want ignore_eos, max_tokens 10, stream", i, b)
		}
	}
	if m.TotalInputTokens != 12*32 || m.TotalOutputTokens != 12*10 || m.LengthMismatches != 0 {
		t.Errorf("tokens in/out/mismatch = %d/%d/%d, want 384/120/0", m.TotalInputTokens, m.TotalOutputTokens, m.LengthMismatches)
	}
	if m.MeanTTFTMs == nil || m.MeanTPOTMs == nil || m.MeanITLMs == nil || m.P99ITLMs == nil || m.MedianITLMs == nil || m.MeanE2ELMs == nil {
		t.Fatalf("client latencies absent: %+v", m)
	}
	// The fake server imposes TTFT 30 ms and TPOT 5 ms: the client cannot measure less
	// (tight lower bounds, a little slack for TPOT's chunk timing); a loaded machine makes
	// everything later, so the upper bounds are loose.
	if *m.MeanTTFTMs < 30 || *m.MeanTTFTMs > 300 {
		t.Errorf("mean TTFT = %.2f ms, want at least the imposed 30 (under 300 on a loaded machine)", *m.MeanTTFTMs)
	}
	// The server sends chunk i at start + TTFT + i×TPOT: a first chunk held up by a loaded
	// machine shortens the gap to the rest (TPOT 3.44 ms was measured so), so the hard
	// lower bound is on E2EL (30 + 9×5 ms), and TPOT gets only loose bounds.
	if *m.MeanE2ELMs < 30+9*5 {
		t.Errorf("mean E2EL = %.2f ms, want at least the imposed 75", *m.MeanE2ELMs)
	}
	if *m.MeanTPOTMs <= 0 || *m.MeanTPOTMs > 25 {
		t.Errorf("mean TPOT = %.2f ms, want about the imposed 5 (under 25 on a loaded machine)", *m.MeanTPOTMs)
	}
	if *m.MeanITLMs <= 0 || *m.P99ITLMs < *m.MedianITLMs || *m.MeanE2ELMs < *m.MeanTTFTMs {
		t.Errorf("inconsistent latencies: %+v", m)
	}
	if m.OutputThroughput <= 0 || m.RequestThroughput <= 0 || m.DurationS <= 0 {
		t.Errorf("throughputs not computed: %+v", m)
	}
	for _, r := range res.Requests {
		if len(r.ITLMs) != 9 {
			t.Fatalf("request %d has %d ITLs, want 9 (10 chunks)", r.Index, len(r.ITLMs))
		}
	}
	// Records: 12 recorded requests → prefill activation 4, decode activation 2, decode batch 3.
	if m.AvgExpertActivationPrefill == nil || *m.AvgExpertActivationPrefill != 4 ||
		m.AvgExpertActivationDecode == nil || *m.AvgExpertActivationDecode != 2 ||
		m.AvgDecodeBatchSize == nil || *m.AvgDecodeBatchSize != 3 {
		t.Errorf("record summary = %v %v %v, want 4 2 3", m.AvgExpertActivationPrefill, m.AvgExpertActivationDecode, m.AvgDecodeBatchSize)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "records", WindowFile)); err != nil || strings.Count(string(b), "\n") != 24 {
		t.Errorf("recording window not kept (24 passes): %v", err)
	}
	// The four runner files in <output_dir>/<org>/<model>/ and nothing else there; moecapd's
	// own file in the hidden <output_dir>/.moecapd/.
	md := filepath.Join(dir, "org", "model")
	for _, p := range []string{res.Files.OutputData, res.Files.Metrics, res.Files.Metadata, res.Files.Detailed} {
		if filepath.Dir(p) != md {
			t.Errorf("%s is not in %s", p, md)
		}
	}
	if entries, _ := os.ReadDir(md); len(entries) != 4 {
		t.Errorf("%s holds %d files, want exactly the runner's 4", md, len(entries))
	}
	if filepath.Dir(res.BenchJSON) != filepath.Join(dir, BenchDir) {
		t.Errorf("bench file %s is not in %s", res.BenchJSON, filepath.Join(dir, BenchDir))
	}
	rm, err := ReadMoECAPOutput(dir, 12, RunnerClock{})
	if err != nil {
		t.Fatalf("ReadMoECAPOutput on our own files: %v", err)
	}
	if rm.Completed != 12 || rm.TotalOutputTokens != 120 || rm.AvgExpertActivationDecode == nil || *rm.AvgExpertActivationDecode != 2 {
		t.Errorf("read back %+v", rm)
	}
	// e2e_s is the wall time divided by the requests: × 12 it is the run's duration.
	if d := rm.DurationS - m.DurationS; d > 1e-6 || d < -1e-6 {
		t.Errorf("e2e_s × N = %v s, want the run's %v s", rm.DurationS, m.DurationS)
	}
	var bf benchFile
	b, _ := os.ReadFile(res.BenchJSON)
	if err := json.Unmarshal(b, &bf); err != nil || len(bf.Requests) != 12 || bf.Metrics.Completed != 12 || bf.PromptStyle != PromptExactIDs {
		t.Errorf("bench file: err %v, %d requests, style %q", err, len(bf.Requests), bf.PromptStyle)
	}
}

func TestRunWavesSchedule(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", tpot: 2 * time.Millisecond})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.Schedule, o.NumSamples = "vllm", true, ScheduleWaves, 16
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Metrics.Completed != 16 {
		t.Fatalf("completed %d, want 16", res.Metrics.Completed)
	}
	// Send 4, wait for 2, send 4: never more than 1.5× the batch in flight.
	if f.maxInflight < 4 || f.maxInflight > 6 {
		t.Errorf("max in flight %d, want between 4 and 6", f.maxInflight)
	}
}

func TestRunRecordsFailuresAndCompletes(t *testing.T) {
	faults := map[int]string{0: "http500", 1: "http400", 2: "truncate", 3: "malformed", 4: "hang", 5: "nousage", 6: "short", 7: "reset", 8: "errorchunk"}
	f := newFakeServer(t, &fakeServer{flavor: "plain", tpot: time.Millisecond, fault: func(n int) string { return faults[n] }})
	o := baseOptions(f, t.TempDir())
	o.Backend, o.NoRecords, o.BatchSize, o.NumSamples = "vllm", true, 1, 12
	o.RequestTimeout = 500 * time.Millisecond
	res, err := Run(t.Context(), o)
	if !errors.Is(err, ErrInvalidResult) || !strings.Contains(err.Error(), "7 of 12 requests failed") {
		t.Fatalf("Run with failures = %v, want ErrInvalidResult naming 7 of 12 failed", err)
	}
	m := res.Metrics
	want := map[string]int{"http 500": 1, "http 400": 1, "truncated stream": 1, "malformed stream": 1, "timeout": 1, "connection reset": 1, "server error in stream": 1}
	for k, v := range want {
		if m.Errors[k] != v {
			t.Errorf("Errors[%q] = %d, want %d (all: %v)", k, m.Errors[k], v, m.Errors)
		}
	}
	if m.Failed != 7 || m.Completed != 5 {
		t.Errorf("failed/completed = %d/%d, want 7/5", m.Failed, m.Completed)
	}
	if m.UsageMissing != 1 || m.LengthMismatches != 1 || m.ShortOutputs != 1 || m.BadRequests != 9 || len(m.InvalidReasons) != 3 {
		t.Errorf("usage missing %d, mismatches %d, short %d, bad %d, reasons %q; want 1, 1, 1, 9 and 3 reasons", m.UsageMissing, m.LengthMismatches, m.ShortOutputs, m.BadRequests, m.InvalidReasons)
	}
	if !res.Requests[6].ShortOutput || res.Requests[6].OutputTokens != 5 {
		t.Errorf("short request row = %+v, want flagged with 5 output tokens", res.Requests[6])
	}
	// The runner-format files carry the failures the way the runner writes them.
	_, rerr := ReadMoECAPOutput(o.OutputDir, 12, RunnerClock{})
	if rerr == nil || !strings.Contains(rerr.Error(), "7 of 12 requests failed") {
		t.Errorf("ReadMoECAPOutput = %v, want '7 of 12 requests failed'", rerr)
	}
}

func TestRunZeroSuccessIsAnError(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", fault: func(int) string { return "http500" }})
	o := baseOptions(f, t.TempDir())
	o.Backend, o.NoRecords = "vllm", true
	res, err := Run(t.Context(), o)
	if !errors.Is(err, ErrNoSuccess) {
		t.Fatalf("err = %v, want ErrNoSuccess", err)
	}
	if res == nil || res.Metrics.Failed != 12 || res.Metrics.Errors["http 500"] != 12 {
		t.Fatalf("result = %+v, want 12 failures by http 500", res)
	}
	if _, err := os.Stat(res.BenchJSON); err != nil {
		t.Errorf("bench file not written for a failed bench: %v", err)
	}
}

func TestRunServerGoneMidRun(t *testing.T) {
	// The server goes away when its 7th request arrives, inside that request's handler:
	// nothing listens any more, every open connection is cut, and a request that still got
	// through is reset. Cutting from a polling goroutine instead let a loaded machine
	// finish most of the run before the poller was scheduled.
	var cut sync.Once
	var f *fakeServer
	f = newFakeServer(t, &fakeServer{flavor: "plain", tpot: 2 * time.Millisecond, fault: func(n int) string {
		if n < 6 {
			return ""
		}
		cut.Do(func() {
			f.srv.Listener.Close()
			go f.srv.CloseClientConnections() // it waits for the closes, this handler's own included
		})
		return "reset"
	}})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.NumSamples, o.BatchSize = "vllm", true, 40, 2
	done := make(chan struct{})
	var res *Result
	var err error
	go func() { res, err = Run(t.Context(), o); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run hung after the server went away")
	}
	if !errors.Is(err, ErrNoSuccess) && !errors.Is(err, ErrInvalidResult) {
		t.Fatalf("Run = %v, want an invalid result", err)
	}
	m := res.Metrics
	if m.Completed+m.Failed != 40 || m.Failed < 20 {
		t.Errorf("completed %d failed %d, want all 40 accounted for and most failed", m.Completed, m.Failed)
	}
	// Requests in flight when the connections are cut may end in a transport error (the
	// stream broke mid-response; how many depends on the machine's load): at most the
	// batch. Every later one finds nothing listening.
	if m.Errors["connection refused"]+m.Errors["connection reset"]+m.Errors["transport error"] != m.Failed || m.Errors["transport error"] > o.BatchSize {
		t.Errorf("errors %v: want connection refused/reset, and a transport error for at most the %d in flight", m.Errors, o.BatchSize)
	}
}

func TestRunCancelWritesPartial(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", tpot: 10 * time.Millisecond})
	o := baseOptions(f, t.TempDir())
	o.Backend, o.NoRecords, o.NumSamples, o.BatchSize, o.OutputTokens = "vllm", true, 100, 2, 20
	o.DrainTimeout = 2 * time.Second
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(500*time.Millisecond, cancel)
	start := time.Now()
	res, err := Run(ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("Run took %v after cancel, want it to stop sending", time.Since(start))
	}
	m := res.Metrics
	if !m.Partial || m.Completed == 0 || len(res.Requests) >= 100 {
		t.Errorf("partial %v completed %d sent %d: want a partial result with what was measured", m.Partial, m.Completed, len(res.Requests))
	}
	// In-flight requests were allowed to finish within the drain grace.
	if m.Errors["interrupted"] != 0 {
		t.Errorf("%d in-flight requests were cut although the grace sufficed", m.Errors["interrupted"])
	}
	b, _ := os.ReadFile(res.BenchJSON)
	if !strings.Contains(string(b), `"partial": true`) {
		t.Errorf("the bench file does not say partial")
	}
}

func TestRunCancelCutsInFlightAfterGrace(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", fault: func(int) string { return "hang" }})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.DrainTimeout = "vllm", true, 100*time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	res, err := Run(ctx, o)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's error", err)
	}
	if res.Metrics.Errors["interrupted"] != 4 || !res.Metrics.Partial {
		t.Errorf("errors %v partial %v, want 4 interrupted and partial", res.Metrics.Errors, res.Metrics.Partial)
	}
}

// TestRunSGLangRecordsAndDetection: the SGLang dump holds every pass since start-up (a
// warm-up probe and the warm-up requests too); only the recording window counts, once.
func TestRunSGLangRecordsAndDetection(t *testing.T) {
	dir := t.TempDir()
	f := newFakeServer(t, &fakeServer{flavor: "sglang", recorderDir: filepath.Join(dir, "records")})
	o := baseOptions(f, dir)
	o.Warmup = 2
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.Backend != "sglang" {
		t.Errorf("backend %q, want sglang (from /get_model_info)", res.Backend)
	}
	m := res.Metrics
	if m.AvgExpertActivationDecode == nil || *m.AvgExpertActivationDecode != 2 || *m.AvgDecodeBatchSize != 3 || *m.AvgExpertActivationPrefill != 4 {
		t.Errorf("activation prefill/decode, decode batch = %v/%v/%v, want 4/2/3 (probe and warm-up excluded)", m.AvgExpertActivationPrefill, m.AvgExpertActivationDecode, m.AvgDecodeBatchSize)
	}
	if want := filepath.Join(dir, "records", "org", "model", "expert_distribution_record.jsonl"); res.RecordsFile != want {
		t.Errorf("records file %q, want %q", res.RecordsFile, want)
	}
	b, _ := os.ReadFile(res.Files.Detailed)
	if passes := strings.Count(string(b), "\n"); passes != 24 || !strings.Contains(string(b), `"ttft":0.02`) || !strings.Contains(string(b), `"per_req_info"`) || !strings.Contains(string(b), `"req_ids"`) {
		t.Errorf("detailed results have %d passes, want the window's 24 with ttft, per_req_info and req_ids", passes)
	}
	// MoE-CAP's TTFT: one 0.02 s prefill pass per request; the 0.5 s probe is dropped.
	if sp := m.ServerPass; sp == nil || sp.TTFTMoECAPMs == nil || !near(sp.TTFTMoECAPMs, 20) || !near(sp.TPOTMoECAPMs, 5) {
		t.Errorf("server pass = %+v, want ttft 20 ms, tpot 5 ms", m.ServerPass)
	}
	if m.MeanTTFTMs == nil {
		t.Errorf("the client's own TTFT is missing next to the server-pass one")
	}
}

// TestRunRecordDirMismatch: a server whose dump lands elsewhere is refused before any
// request is sent (the runner exits 1 on it; moecapd bench maps it to exit 1 too).
func TestRunRecordDirMismatch(t *testing.T) {
	dir := t.TempDir()
	f := newFakeServer(t, &fakeServer{flavor: "sglang", recorderDir: filepath.Join(dir, "server-records")})
	o := baseOptions(f, dir)
	o.SGLangRecorderDir = filepath.Join(dir, "client-records")
	_, err := Run(t.Context(), o)
	if !errors.Is(err, ErrRecordsUnavailable) || !strings.Contains(err.Error(), "client-records") {
		t.Fatalf("err = %v, want ErrRecordsUnavailable naming the client's dir", err)
	}
	if f.n != 0 {
		t.Errorf("%d completions sent before the mismatch was found, want 0", f.n)
	}
}

// TestRunValidity: any failed request, usage that disagrees with the stream, or short output
// makes the result invalid unless the tolerance covers it; the counts are in the metrics.
func TestRunValidity(t *testing.T) {
	tests := []struct {
		fault   string
		allowed int
		counts  func(m *Metrics) int
		reason  string
	}{
		{"http500", 0, func(m *Metrics) int { return m.Failed }, "requests failed"},
		{"truncate", 0, func(m *Metrics) int { return m.Errors["truncated stream"] }, "truncated stream"},
		{"malformed", 0, func(m *Metrics) int { return m.Errors["malformed stream"] }, "malformed stream"},
		{"usage10x", 0, func(m *Metrics) int { return m.UsageStreamMismatches }, "usage disagrees"},
		{"fewchunks", 0, func(m *Metrics) int { return m.UsageStreamMismatches }, "usage disagrees"},
		{"short", 0, func(m *Metrics) int { return m.ShortOutputs }, "fewer than the 10 tokens"},
		{"nousage", 0, func(m *Metrics) int { return m.UsageMissing }, "no usage"},
		{"http500", 3, func(m *Metrics) int { return m.Failed }, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/allow%d", tt.fault, tt.allowed), func(t *testing.T) {
			// Every fourth request misbehaves: 3 of 12.
			f := newFakeServer(t, &fakeServer{flavor: "plain", fault: func(n int) string {
				if n%4 == 1 {
					return tt.fault
				}
				return ""
			}})
			o := baseOptions(f, t.TempDir())
			o.Backend, o.NoRecords, o.AllowedBadRequests = "vllm", true, tt.allowed
			res, err := Run(t.Context(), o)
			m := &res.Metrics
			if got := tt.counts(m); got != 3 || m.BadRequests != 3 || *m.AllowedBadRequests != tt.allowed {
				t.Errorf("count %d, bad %d, allowed %v; want 3, 3, %d", got, m.BadRequests, *m.AllowedBadRequests, tt.allowed)
			}
			if tt.reason == "" {
				if err != nil || len(m.InvalidReasons) != 0 {
					t.Errorf("err %v, reasons %q: want a valid result within the tolerance", err, m.InvalidReasons)
				}
				return
			}
			if !errors.Is(err, ErrInvalidResult) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("err = %v, want ErrInvalidResult mentioning %q", err, tt.reason)
			}
			if _, serr := os.Stat(res.Files.Metrics); serr != nil {
				t.Errorf("the files of an invalid run were not written: %v", serr)
			}
		})
	}
}

func TestRunWithoutRecordsReportsAbsent(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain"})
	o := baseOptions(f, t.TempDir())
	o.Backend = "vllm"
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	m := res.Metrics
	if m.AvgExpertActivationDecode != nil || m.AvgDecodeBatchSize != nil || m.AvgExpertActivationPrefill != nil {
		t.Errorf("expert numbers present without records: %+v", m)
	}
	if !strings.HasPrefix(m.Records, "absent:") || !strings.Contains(m.Records, "404") {
		t.Errorf("Records = %q, want absent with the reason", m.Records)
	}
}

func TestRunDatasetFileTokenizedByServer(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain"})
	dir := t.TempDir()
	file := filepath.Join(dir, "gsm8k.jsonl")
	os.WriteFile(file, []byte(`{"question":"Natalia sold clips to 48 of her friends in April"}`+"\n"+`{"question":"Weng earns 12 an hour for babysitting"}`+"\n"), 0o644)
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.Dataset, o.DatasetFile, o.InputTokens, o.NumSamples = "vllm", true, "gsm8k", file, 25, 4
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if f.tokenizeN != 3 {
		t.Errorf("tokenize called %d times, want once per distinct text (2) and once by the probe", f.tokenizeN)
	}
	// The texts have 10 and 7 words; each prompt is its text repeated and cut to 25 tokens.
	periods := map[int]int{}
	for i, b := range f.bodies {
		p := b["prompt"].([]any)
		if len(p) != 25 {
			t.Fatalf("request %d prompt has %d ids, want 25", i, len(p))
		}
		switch {
		case p[0] == p[10] && p[0] != p[7]:
			periods[10]++
		case p[0] == p[7] && p[0] == p[14]:
			periods[7]++
		default:
			t.Errorf("request %d prompt is not a repeated dataset text: %v", i, p)
		}
	}
	if periods[10] != 2 || periods[7] != 2 {
		t.Errorf("prompt texts used %v, want each of the two texts twice", periods)
	}
	if res.Metrics.LengthMismatches != 0 {
		t.Errorf("mismatches %d, want 0", res.Metrics.LengthMismatches)
	}
}

func TestRunChatAPINeedsDetokenize(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain"})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.UseChatAPI = "vllm", true, true
	_, err := Run(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "drop --use-chat-api") {
		t.Errorf("err = %v, want an explanation naming --use-chat-api", err)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	_, err := Run(t.Context(), Options{APIURL: "localhost:30000", Schedule: "burst"})
	if err == nil {
		t.Fatal("no error for bad options")
	}
	for _, want := range []string{"api url", "model is empty", "batch size 0", "schedule \"burst\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestRunRequestRateSpacesArrivals(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain"})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.NumSamples, o.BatchSize, o.RequestRate, o.OutputTokens = "vllm", true, 10, 10, 20, 2
	start := time.Now()
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	// 10 Poisson arrivals at 20/s take about 0.45 s; unthrottled they would take ~0.
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("10 requests at 20 req/s took %v: not rate limited", el)
	}
}

// TestRunOnProgress: OnProgress hears the measured requests while they run (about once a
// second, whatever ProgressInterval says) and all of them at the end; counts never go
// backwards and never pass the total.
func TestRunOnProgress(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "vllm", ttft: 5 * time.Millisecond, tpot: 60 * time.Millisecond})
	o := baseOptions(f, t.TempDir())
	o.NumSamples, o.BatchSize = 8, 2 // four rounds of 10 tokens at 60 ms: about 2.4 s
	var got []Progress
	o.OnProgress = func(p Progress) { got = append(got, p) } // the progress goroutine is the only caller
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("OnProgress heard %d times over a bench of about 2.4 s; want a report a second and the last one: %+v", len(got), got)
	}
	last := got[len(got)-1]
	if last.Done != 8 || last.Total != 8 || last.Failed != 0 || last.InFlight != 0 {
		t.Errorf("last report %+v; want 8 of 8 done, none failed or in flight", last)
	}
	for i, p := range got {
		if p.Total != 8 || p.Done > p.Total || (i > 0 && p.Done < got[i-1].Done) {
			t.Errorf("report %d %+v after %+v: want 0 ≤ done ≤ total 8, never going back", i, p, got[max(i-1, 0)])
		}
	}
}
