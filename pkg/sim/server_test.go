package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

const qwenPath = "Qwen/Qwen1.5-MoE-A2.7B-Chat"

// client keeps a connection per concurrent stream alive, so timing tests measure the
// server and not TCP set-up under -race.
var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

func newTestServer(t *testing.T, flavor string, mod func(*Config)) (*Server, string) {
	t.Helper()
	tb := tables(t)
	cfg := Config{
		Flavor:      flavor,
		ServedModel: qwenPath,
		Model:       tb.Models["qwen1_5"],
		Hardware:    tb.Hardware["H100"],
		MaxRunning:  8,
		RecordsDir:  t.TempDir(),
		TimeScale:   0.01,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	srv.SetReady(true)
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
	})
	return srv, ts.URL
}

func post(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type streamChunk struct {
	Choices []struct {
		Index        int     `json:"index"`
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

type streamResult struct {
	sent    time.Time
	times   []time.Time // arrival of each chunk with text
	chunks  []streamChunk
	usage   *usage
	done    bool
	finish  []string
	indexes map[int]int
}

func (r streamResult) ttft() time.Duration { return r.times[0].Sub(r.sent) }
func (r streamResult) tpot() time.Duration {
	n := len(r.times)
	return r.times[n-1].Sub(r.times[0]) / time.Duration(n-1)
}

func streamCompletion(t *testing.T, url, body string) streamResult {
	t.Helper()
	res := streamResult{sent: time.Now(), indexes: map[int]int{}}
	resp, err := client.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Errorf("stream: %v", err)
		return res
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("stream: status %d: %s", resp.StatusCode, b)
		return res
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Errorf("stream line without data: prefix: %q", line)
			continue
		}
		if data == "[DONE]" {
			res.done = true
			continue
		}
		now := time.Now()
		var c streamChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Errorf("bad chunk %q: %v", data, err)
			continue
		}
		if res.done {
			t.Errorf("chunk after [DONE]: %s", data)
		}
		if c.Usage != nil {
			if len(c.Choices) != 0 {
				t.Errorf("usage chunk has choices: %s", data)
			}
			res.usage = c.Usage
			continue
		}
		for _, ch := range c.Choices {
			if ch.Text == "" {
				t.Errorf("chunk with empty text: %s", data)
			}
			res.indexes[ch.Index]++
			if ch.FinishReason != nil {
				res.finish = append(res.finish, *ch.FinishReason)
			}
		}
		res.times = append(res.times, now)
		res.chunks = append(res.chunks, c)
	}
	return res
}

func TestEndpoints(t *testing.T) {
	type tc struct {
		method, path, body string
		want               int
		contains           string
	}
	common := []tc{
		{"GET", "/health", "", 200, ""},
		{"GET", "/v1/models", "", 200, `"id":"` + qwenPath + `"`},
		{"GET", "/v1/models", "", 200, `"max_model_len":32768`},
		{"POST", "/tokenize", `{"model":"` + qwenPath + `","prompt":"Hello, world!"}`, 200, `"count":4`},
		{"POST", "/tokenize", `{"model":"` + qwenPath + `","prompt":"a"}`, 200, `"max_model_len":32768`},
		{"POST", "/detokenize", `{"model":"` + qwenPath + `","tokens":[1,2,3]}`, 200, `"prompt":`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":"hi","max_tokens":3}`, 200, `"completion_tokens":3`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":[5,6,7],"max_tokens":2}`, 200, `"prompt_tokens":3`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":["a b","c"],"max_tokens":2}`, 200, `"index":1`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":[[1,2],[3]],"max_tokens":2}`, 200, `"total_tokens":7`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":"x","ignore_eos":true,"temperature":0}`, 200, `"completion_tokens":16`},
		{"POST", "/v1/completions", `{"model":`, 400, "not valid JSON"},
		{"POST", "/v1/completions", `{"prompt":"hi"}`, 400, `\"model\" is required`},
		{"POST", "/v1/completions", `{"model":"other/model","prompt":"hi"}`, 404, "does not exist"},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `"}`, 400, `\"prompt\" is required`},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":"hi","max_tokens":0}`, 400, "max_tokens"},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":[999999999]}`, 400, "outside the vocabulary"},
		{"POST", "/v1/completions", `{"model":"` + qwenPath + `","prompt":"` + strings.Repeat("w ", 32766) + `","max_tokens":10}`, 400, "maximum context length is 32768"},
		{"GET", "/v1/completions", "", 405, "use POST"},
		{"GET", "/nope", "", 404, "no such endpoint"},
	}
	flavors := map[string][]tc{
		FlavorSGLang: append(slices.Clone(common),
			tc{"GET", "/get_model_info", "", 200, `"model_path":"` + qwenPath + `"`},
			tc{"GET", "/get_model_info", "", 200, `"is_generation":true`},
			tc{"POST", "/start_expert_distribution_record", "", 200, "Start recording"},
			tc{"POST", "/stop_expert_distribution_record", "", 200, "Stop recording"},
			tc{"POST", "/dump_expert_distribution_record", "", 200, "Dump expert distribution"},
			tc{"POST", "/start_batch_recording", "", 404, ""},
		),
		FlavorVLLM: append(slices.Clone(common),
			tc{"GET", "/get_model_info", "", 404, ""}, // how the MoE-CAP runner recognises vLLM
			tc{"POST", "/start_batch_recording", "", 200, `"status":"success"`},
			tc{"GET", "/batch_recording_status", "", 200, `"is_recording":true`},
			tc{"POST", "/stop_batch_recording", "", 200, `"total_records"`},
			tc{"POST", "/dump_batch_recording", "", 200, `"records":[`},
			tc{"POST", "/clear_batch_recording", "", 200, "Cleared"},
			tc{"GET", "/start_batch_recording", "", 405, ""},
			tc{"POST", "/start_expert_distribution_record", "", 404, ""},
		),
	}
	for flavor, cases := range flavors {
		t.Run(flavor, func(t *testing.T) {
			_, url := newTestServer(t, flavor, nil)
			for _, c := range cases {
				req, _ := http.NewRequest(c.method, url+c.path, strings.NewReader(c.body))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", c.method, c.path, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != c.want || !strings.Contains(string(b), c.contains) {
					t.Errorf("%s %s %.60s: got %d %.300s; want %d containing %q", c.method, c.path, c.body, resp.StatusCode, b, c.want, c.contains)
				}
				if c.want >= 400 && resp.Header.Get("Content-Type") == "application/json" {
					var e struct {
						Error struct{ Message string } `json:"error"`
					}
					if json.Unmarshal(b, &e) != nil || e.Error.Message == "" {
						t.Errorf("%s %s: error body is not OpenAI-shaped: %s", c.method, c.path, b)
					}
				}
			}
		})
	}
}

func TestNotReadyAnswers503(t *testing.T) {
	srv, url := newTestServer(t, FlavorSGLang, nil)
	srv.SetReady(false)
	for _, p := range []string{"/health", "/v1/models", "/get_model_info"} {
		if code, _ := get(t, url+p); code != http.StatusServiceUnavailable {
			t.Errorf("GET %s while loading = %d, want 503", p, code)
		}
	}
	srv.SetReady(true)
	if code, _ := get(t, url+"/health"); code != 200 {
		t.Errorf("GET /health when ready = %d, want 200", code)
	}
}

func TestStreaming(t *testing.T) {
	for _, tc := range []struct {
		name, prompt string
		usage        bool
		prompts      int
	}{
		{"text with usage", `"one two three"`, true, 1},
		{"text without usage", `"one two three"`, false, 1},
		{"token ids", `[1,2,3,4]`, true, 1},
		{"two prompts", `["a b", "c d e"]`, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, url := newTestServer(t, FlavorVLLM, nil)
			const n = 25
			body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":%d,"stream":true,"ignore_eos":true,"stream_options":{"include_usage":%v}}`, qwenPath, tc.prompt, n, tc.usage)
			res := streamCompletion(t, url, body)
			if len(res.chunks) != n*tc.prompts {
				t.Errorf("got %d token chunks, want %d", len(res.chunks), n*tc.prompts)
			}
			for i := 0; i < tc.prompts; i++ {
				if res.indexes[i] != n {
					t.Errorf("choice %d got %d chunks, want %d", i, res.indexes[i], n)
				}
			}
			if len(res.finish) != tc.prompts || res.finish[0] != "length" {
				t.Errorf("finish reasons %v, want one \"length\" per prompt", res.finish)
			}
			if last := res.chunks[len(res.chunks)-1]; last.Choices[0].FinishReason == nil {
				t.Errorf("last token chunk has no finish_reason")
			}
			if !res.done {
				t.Errorf("no data: [DONE]")
			}
			switch {
			case tc.usage && res.usage == nil:
				t.Errorf("no usage chunk with include_usage")
			case !tc.usage && res.usage != nil:
				t.Errorf("usage chunk without include_usage")
			case tc.usage && (res.usage.CompletionTokens != n*tc.prompts || res.usage.TotalTokens != res.usage.PromptTokens+n*tc.prompts || res.usage.PromptTokens == 0):
				t.Errorf("usage = %+v, want %d completion tokens", *res.usage, n*tc.prompts)
			}
		})
	}
}

// runBatch streams batch concurrent completions and returns their results.
func runBatch(t *testing.T, url string, batch, maxTokens int) []streamResult {
	t.Helper()
	res := make([]streamResult, batch)
	var wg sync.WaitGroup
	for i := range batch {
		wg.Go(func() {
			body := fmt.Sprintf(`{"model":%q,"prompt":"request %d asks something","max_tokens":%d,"stream":true,"ignore_eos":true}`, qwenPath, i, maxTokens)
			res[i] = streamCompletion(t, url, body)
		})
	}
	wg.Wait()
	return res
}

func TestTimingOverrides(t *testing.T) {
	const (
		tpot      = 20 * time.Millisecond
		ttft      = 60 * time.Millisecond
		maxTokens = 40
	)
	for _, batch := range []int{1, 32} {
		t.Run(fmt.Sprintf("batch%d", batch), func(t *testing.T) {
			_, url := newTestServer(t, FlavorSGLang, func(c *Config) {
				c.TPOT, c.TTFT, c.TimeScale, c.MaxRunning = tpot, ttft, 1, batch
			})
			runBatch(t, url, batch, 1) // opens the connections
			res := runBatch(t, url, batch, maxTokens)
			var sumTPOT, sumTTFT time.Duration
			var lastSent time.Time
			for _, r := range res {
				if r.sent.After(lastSent) {
					lastSent = r.sent
				}
			}
			for _, r := range res {
				if len(r.times) != maxTokens {
					t.Fatalf("got %d chunks, want %d", len(r.times), maxTokens)
				}
				sumTPOT += r.tpot()
				// A wave's prefill pass starts when its last request is in (every member's
				// first token comes when the whole wave is prefilled): TTFT counts from there.
				sumTTFT += r.ttft() - lastSent.Sub(r.sent)
			}
			meanTPOT, meanTTFT := sumTPOT/time.Duration(batch), sumTTFT/time.Duration(batch)
			t.Logf("batch %d: mean TTFT %v (want %v), mean TPOT %v (want %v)", batch, meanTTFT, ttft, meanTPOT, tpot)
			// The sim never beats its pass times (a late pass ends late): the lower bounds
			// are the contract (less 2% for the client's read jitter); the upper ones are
			// loose, as the test machine is shared and -race slows everything (the precise
			// numbers are the benchmarks' job).
			if d := meanTPOT - tpot; d < -tpot/50 || d > tpot {
				t.Errorf("mean TPOT %v, want %v within -2%%/+100%%", meanTPOT, tpot)
			}
			// A request the loaded client sends after the wave's first token waits for the
			// next wave: up to about two more passes.
			if d := meanTTFT - ttft; d < -2*time.Millisecond || d > 3*ttft {
				t.Errorf("mean TTFT %v, want %v (-2ms/+300%%)", meanTTFT, ttft)
			}
		})
	}
}

// wireRecord is a record as the wrappers write it: SGLang's decode req_ids are pool slots
// (ints), vLLM's request ids (strings), so ids are read raw.
type wireRecord struct {
	ForwardPassID    *int    `json:"forward_pass_id"`
	BatchSize        int     `json:"batch_size"`
	Latency          float64 `json:"latency"`
	SeqLensSum       int     `json:"seq_lens_sum"`
	ForwardMode      string  `json:"forward_mode"`
	ExpertActivation float64 `json:"expert_activation"`
	GPUNum           int     `json:"gpu_num"`
	GPURawType       string  `json:"gpu_raw_type"`
	ScheduledTokens  int     `json:"scheduled_tokens"`
	PerReqInfo       []struct {
		ReqID       string `json:"req_id"`
		ExtendLen   int    `json:"extend_len"`
		TotalLen    int    `json:"total_len"`
		PromptLen   int    `json:"prompt_len"`
		IsLastChunk bool   `json:"is_last_chunk"`
	} `json:"per_req_info"`
	ReqIDs []json.RawMessage `json:"req_ids"`
}

// fetchRecords reads the records of the flavor's recorder the way the MoE-CAP runner does.
func fetchRecords(t *testing.T, srv *Server, url string) []wireRecord {
	t.Helper()
	var recs []wireRecord
	if srv.Config().Flavor == FlavorSGLang {
		if code, b := post(t, url+"/dump_expert_distribution_record", ""); code != 200 {
			t.Fatalf("dump: %d %s", code, b)
		}
		data, err := os.ReadFile(SGLangRecordPath(srv.Config().RecordsDir, qwenPath))
		if err != nil {
			t.Fatalf("sglang dump file: %v", err)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if line == "" {
				continue
			}
			var r wireRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("line %d of dump: %v", i+1, err)
			}
			recs = append(recs, r)
		}
		return recs
	}
	code, b := post(t, url+"/dump_batch_recording", "")
	var d struct {
		Status       string       `json:"status"`
		Records      []wireRecord `json:"records"`
		TotalRecords int          `json:"total_records"`
	}
	if code != 200 || json.Unmarshal(b, &d) != nil || d.Status != "success" || d.TotalRecords != len(d.Records) {
		t.Fatalf("dump_batch_recording: %d %s", code, b)
	}
	return d.Records
}

// TestContinuousBatchingAndRecords checks batching and that each flavor keeps and writes its
// passes as its real wrapper does: SGLang every pass since start-up (its own warm-up first,
// passes outside start/stop included, seq_lens_sum the batch context); vLLM only the passes
// between start and stop, seq_lens_sum the tokens scheduled, appended to the data file.
func TestContinuousBatchingAndRecords(t *testing.T) {
	for _, flavor := range []string{FlavorSGLang, FlavorVLLM} {
		t.Run(flavor, func(t *testing.T) {
			srv, url := newTestServer(t, flavor, func(c *Config) {
				c.MaxRunning, c.TPOT, c.TTFT, c.TimeScale = 4, 2*time.Millisecond, 3*time.Millisecond, 1
			})
			start, stop := "/start_expert_distribution_record", "/stop_expert_distribution_record"
			if flavor == FlavorVLLM {
				start, stop = "/start_batch_recording", "/stop_batch_recording"
			}
			post(t, url+"/v1/completions", `{"model":"`+qwenPath+`","prompt":"before","max_tokens":3}`)
			post(t, url+start, "")
			const reqs = 12
			var wg sync.WaitGroup
			for i := range reqs {
				wg.Go(func() {
					body := fmt.Sprintf(`{"model":%q,"prompt":"%s","max_tokens":%d}`, qwenPath, strings.Repeat("w ", 20+i), 5+i)
					if code, b := post(t, url+"/v1/completions", body); code != 200 {
						t.Errorf("completion %d: %d %s", i, code, b)
					}
				})
			}
			wg.Wait()
			post(t, url+stop, "")
			post(t, url+"/v1/completions", `{"model":"`+qwenPath+`","prompt":"after","max_tokens":3}`)

			recs := fetchRecords(t, srv, url)
			prompt := map[string]int{} // req key → prompt_len
			decodes := map[string]int{}
			peak := 0
			for i, r := range recs {
				if r.BatchSize > 4 {
					t.Errorf("record %d: batch_size %d exceeds max running 4", i, r.BatchSize)
				}
				peak = max(peak, r.BatchSize)
				if r.GPUNum != 1 || r.GPURawType != "NVIDIA-H100-HBM3-80GB" || r.Latency <= 0 || r.ExpertActivation <= 0 || r.ExpertActivation > 60 {
					t.Errorf("record %d: bad common fields %+v", i, r)
				}
				if flavor == FlavorSGLang {
					if r.ForwardPassID == nil || i > 0 && *r.ForwardPassID <= *recs[i-1].ForwardPassID {
						t.Errorf("record %d: forward_pass_id missing or not increasing", i)
					}
				} else if r.ForwardPassID != nil {
					t.Errorf("record %d: vLLM batch records carry no forward_pass_id", i)
				}
				switch r.ForwardMode {
				case "prefill":
					sum := 0
					for _, p := range r.PerReqInfo {
						prompt[p.ReqID] = p.PromptLen
						sum += p.ExtendLen
					}
					if len(r.PerReqInfo) != r.BatchSize || r.ScheduledTokens != sum || r.SeqLensSum != sum {
						t.Errorf("prefill record %d: %+v", i, r)
					}
				case "decode":
					ctx := 0
					for _, raw := range r.ReqIDs {
						id := strings.Trim(string(raw), `"`)
						if flavor == FlavorSGLang {
							id += "_0" // a decode names the pool slot; per_req_info's req_id is slot_counter
							if raw[0] == '"' {
								t.Errorf("decode record %d: SGLang req_ids are pool slots (ints), got %s", i, raw)
							}
						}
						decodes[id]++
						ctx += prompt[id] + decodes[id]
					}
					if len(r.ReqIDs) != r.BatchSize || r.ScheduledTokens != r.BatchSize {
						t.Errorf("decode record %d: %+v", i, r)
					}
					want := r.BatchSize // vLLM: scheduled tokens
					if flavor == FlavorSGLang {
						want = ctx // SGLang: the batch's context, prompt + tokens so far
					}
					if r.SeqLensSum != want {
						t.Errorf("decode record %d: seq_lens_sum %d, want %d", i, r.SeqLensSum, want)
					}
				default:
					t.Errorf("record %d: forward_mode %q", i, r.ForwardMode)
				}
			}
			wantReqs := reqs // vLLM: only between start and stop
			if flavor == FlavorSGLang {
				wantReqs = reqs + 3 // + the server's warm-up, "before" and "after"
				if recs[0].ForwardMode != "prefill" || recs[0].SeqLensSum > 10 {
					t.Errorf("first SGLang record %+v, want the warm-up prefill (seq_lens_sum ≤ 10)", recs[0])
				}
			}
			if len(prompt) != wantReqs {
				t.Errorf("%d requests prefilled in the records, want %d", len(prompt), wantReqs)
			}
			if peak != 4 {
				t.Errorf("peak batch %d, want 4: 12 concurrent requests should fill the batch", peak)
			}
			if flavor == FlavorVLLM {
				data, err := os.ReadFile(filepath.Join(srv.Config().RecordsDir, "vllm_batch_records.jsonl"))
				if err != nil || bytes.Count(data, []byte("\n")) != len(recs) {
					t.Errorf("vllm_batch_records.jsonl holds %d lines (err %v), want the %d dumped records", bytes.Count(data, []byte("\n")), err, len(recs))
				}
			}
		})
	}
}

func TestRecordFieldNames(t *testing.T) {
	srv, url := newTestServer(t, FlavorSGLang, nil)
	post(t, url+"/start_expert_distribution_record", "")
	post(t, url+"/v1/completions", `{"model":"`+qwenPath+`","prompt":"a b c","max_tokens":2}`)
	post(t, url+"/stop_expert_distribution_record", "")
	post(t, url+"/dump_expert_distribution_record", "")
	data, err := os.ReadFile(SGLangRecordPath(srv.Config().RecordsDir, qwenPath))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) != 3 {
		t.Fatalf("got %d records, want the start-up probe, a prefill and a decode:\n%s", len(lines), data)
	}
	lines = lines[1:]
	base := []string{"batch_size", "expert_activation", "forward_mode", "forward_pass_id", "gpu_num", "gpu_raw_type", "latency", "scheduled_tokens", "seq_lens_sum"}
	for i, extra := range []string{"per_req_info", "req_ids"} {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(lines[i], &m); err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		want := append(slices.Clone(base), extra)
		sort.Strings(want)
		if !slices.Equal(keys, want) {
			t.Errorf("record %d keys %v, want %v", i, keys, want)
		}
	}
	var p struct {
		PerReqInfo []map[string]any `json:"per_req_info"`
	}
	json.Unmarshal(lines[0], &p)
	want := []string{"extend_len", "is_last_chunk", "orig_len", "prompt_len", "req_id", "req_pool_idx", "total_len"}
	var got []string
	if len(p.PerReqInfo) == 1 {
		for k := range p.PerReqInfo[0] {
			got = append(got, k)
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) || p.PerReqInfo[0]["is_last_chunk"] != true {
		t.Errorf("per_req_info = %v, want the keys %v", p.PerReqInfo, want)
	}
}

// TestVLLMExpertLog: with --enable-expert-distribution-metrics the vLLM wrapper also logs
// every pass since start-up, outside the recording window too, under logs/ in the recorder
// dir (a second copy that a reader must not count).
func TestVLLMExpertLog(t *testing.T) {
	srv, url := newTestServer(t, FlavorVLLM, func(c *Config) { c.ExpertDistributionMetrics = true })
	post(t, url+"/v1/completions", `{"model":"`+qwenPath+`","prompt":"before","max_tokens":2}`)
	post(t, url+"/start_batch_recording", "")
	post(t, url+"/v1/completions", `{"model":"`+qwenPath+`","prompt":"a b c","max_tokens":2}`)
	post(t, url+"/stop_batch_recording", "")
	recs := fetchRecords(t, srv, url)
	logs, _ := filepath.Glob(filepath.Join(srv.Config().RecordsDir, "logs", "expert_distribution", "*", "expert_distribution_record.jsonl"))
	if len(logs) != 1 {
		t.Fatalf("expert logs %v, want one", logs)
	}
	srv.Close()
	data, _ := os.ReadFile(logs[0])
	if n := bytes.Count(data, []byte("\n")); n != 4 || len(recs) != 2 {
		t.Errorf("expert log %d passes, batch records %d: want 4 (both requests) and 2 (the window)", n, len(recs))
	}
}

// TestNeverFasterThanRoofline: in real time a pass lasts at least its model time, however
// late the scheduler got to it: every request's TTFT is at least its prefill pass and its
// whole latency at least that plus one decode pass per further token (a late pass ends
// late, never short to catch up).
func TestNeverFasterThanRoofline(t *testing.T) {
	const (
		tpot      = time.Millisecond
		ttft      = 4 * time.Millisecond
		maxTokens = 30
		batch     = 16
	)
	_, url := newTestServer(t, FlavorSGLang, func(c *Config) {
		c.TPOT, c.TTFT, c.TimeScale, c.MaxRunning = tpot, ttft, 1, batch
	})
	for _, r := range runBatch(t, url, batch, maxTokens) {
		if len(r.times) != maxTokens {
			t.Fatalf("got %d chunks, want %d", len(r.times), maxTokens)
		}
		if got := r.ttft(); got < ttft {
			t.Errorf("TTFT %v below the prefill pass %v", got, ttft)
		}
		if got, floor := r.times[maxTokens-1].Sub(r.sent), ttft+(maxTokens-1)*tpot; got < floor {
			t.Errorf("request latency %v below its passes' %v", got, floor)
		}
	}
}
