package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// This file is a reader of MoE-CAP result leaves (<output_dir>/<org>/<model>/) written from
// the documented semantics of the files, the way MoE-CAP's own analysis and verification
// code reads them: one file per kind found by glob in the leaf, output_data read line by line
// (success, output_tokens as the generated text, token counts), metrics' performance,
// batch_token_profile and quality blocks, detailed_results rows with the pass latency under
// ttft/tpot and per_req_info. It is used on the runner's files and on moecapd's alike.

// leaf is one dataset run as the reader sees it.
type leaf struct {
	metrics, metadata map[string]any
	rows, detailed    []map[string]any
	// types maps every key path to the JSON type of its value ("float" for a number with a
	// decimal point or exponent, "int" without), per file.
	types map[string]string
}

func readLeaf(t *testing.T, dir, ds string) *leaf {
	t.Helper()
	one := func(pattern string) string {
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		if len(m) != 1 {
			t.Fatalf("%s: %d files match %s, want 1", dir, len(m), pattern)
		}
		return m[0]
	}
	l := &leaf{types: map[string]string{}}
	readJSON := func(path, name string) map[string]any {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		typesOf(b, name, l.types)
		return v
	}
	readRows := func(path, name string, key func(map[string]any) string) []map[string]any {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out []map[string]any
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var v map[string]any
			if err := json.Unmarshal(line, &v); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			typesOf(line, name+"."+key(v), l.types)
			out = append(out, v)
		}
		return out
	}
	l.metrics = readJSON(one("metrics_"+ds+"_*.json"), "metrics")
	l.metadata = readJSON(one("metadata_"+ds+"_*.json"), "metadata")
	l.rows = readRows(one("output_data_"+ds+"_*.jsonl"), "output_data", func(r map[string]any) string { return fmt.Sprint(r["success"]) })
	l.detailed = readRows(one("detailed_results_"+ds+"_*.jsonl"), "detailed", func(r map[string]any) string { return fmt.Sprint(r["forward_mode"]) })
	return l
}

// typesOf records the JSON type of every value under prefix (objects recursed, lists by
// their first element).
func typesOf(b []byte, prefix string, out map[string]string) {
	var raw json.RawMessage = bytes.TrimSpace(b)
	var walk func(r json.RawMessage, path string)
	walk = func(r json.RawMessage, path string) {
		r = bytes.TrimSpace(r)
		switch {
		case len(r) == 0:
		case r[0] == '{':
			var m map[string]json.RawMessage
			json.Unmarshal(r, &m)
			for k, v := range m {
				walk(v, path+"."+k)
			}
		case r[0] == '[':
			var l []json.RawMessage
			json.Unmarshal(r, &l)
			out[path] = "list"
			if len(l) > 0 {
				walk(l[0], path+"[]")
			}
		case r[0] == '"':
			out[path] = "str"
		case r[0] == 't' || r[0] == 'f':
			out[path] = "bool"
		case r[0] == 'n':
			out[path] = "null"
		case bytes.ContainsAny(r, ".eE"):
			out[path] = "float"
		default:
			out[path] = "int"
		}
	}
	walk(raw, prefix)
}

func num(t *testing.T, m map[string]any, path string) float64 {
	t.Helper()
	var v any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: not an object at %s", path, k)
		}
		v = mm[k]
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("%s = %v (%T), want a number", path, v, v)
	}
	return f
}

// serverTTFT is the per-request TTFT the reader rebuilds from detailed_results: a request's
// prefill chunks summed until its last chunk, probe passes (seq_lens_sum ≤ 10) dropped.
func (l *leaf) serverTTFT() float64 {
	open := map[string]float64{}
	var sum float64
	var n int
	for _, r := range l.detailed {
		if r["forward_mode"] != "prefill" || r["seq_lens_sum"].(float64) <= 10 {
			continue
		}
		lat := r["ttft"].(float64)
		infos, _ := r["per_req_info"].([]any)
		for _, x := range infos {
			in := x.(map[string]any)
			k := fmt.Sprint(in["req_id"])
			open[k] += lat
			if in["is_last_chunk"] == true {
				sum += open[k]
				n++
				delete(open, k)
			}
		}
	}
	return sum / float64(n)
}

// facts are what the reader derives from a leaf; two leaves of one server run must agree on
// every one (timing-free) and hold the same relations between timed ones.
func (l *leaf) facts(t *testing.T) map[string]float64 {
	t.Helper()
	f := map[string]float64{}
	for _, k := range []string{
		"performance.ttft", "performance.prefill_pass_latency_s", "performance.tpot",
		"performance.prefill_forwarded_tokens", "performance.prefill_step_elapsed_s",
		"expert_activation.avg_expert_activation_prefill", "expert_activation.avg_expert_activation_decode",
		"batch_token_profile.prefill_tokens", "batch_token_profile.prefill_tokens_per_request",
		"batch_token_profile.prefill_avg_batch_size", "batch_token_profile.decode_generated_tokens",
		"batch_token_profile.decode_generated_tokens_per_request", "batch_token_profile.decode_avg_batch_size",
		"batch_token_profile.prefill_tokens_attempted", "batch_token_profile.prefill_tokens_completed",
		"quality.acc", "quality.total", "quality.attempted", "quality.served", "quality.completed",
	} {
		f[k] = num(t, l.metrics, k)
	}
	for _, k := range []string{"hardware.num_gpus", "system_environment.batch_size", "system_environment.avg_batch_size_prefill", "system_environment.avg_batch_size_decode"} {
		f["metadata."+k] = num(t, l.metadata, k)
	}
	var in, out, ok float64
	for _, r := range l.rows {
		in += r["input_token_count"].(float64)
		out += r["output_token_count"].(float64)
		if r["success"] == true {
			ok++
			if r["output_tokens"] == "" {
				t.Errorf("a successful request's output_tokens (the generated text) is empty")
			}
			if r["ttft_s"] != r["latency_s"] {
				t.Errorf("non-streaming completion: ttft_s %v, want its latency_s %v", r["ttft_s"], r["latency_s"])
			}
		}
	}
	f["rows"], f["rows.input"], f["rows.output"], f["rows.success"] = float64(len(l.rows)), in, out, ok
	f["detailed.server_ttft"] = l.serverTTFT()
	// e2e_s is the wall time over the requests, request/s the requests over the wall time.
	f["e2e_s×request/s"] = num(t, l.metrics, "performance.e2e_s") * num(t, l.metrics, "performance.request/s")
	return f
}

// replayServer is an SGLang-shaped server whose record dump replays records.jsonl: the
// dump before the run holds the warm-up probe only, the one after it every record.
type replayServer struct {
	recs  [][]byte
	dir   string
	mu    sync.Mutex
	dumps int
}

func (s *replayServer) handler(t *testing.T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /get_model_info", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"model_path":"org/model"}`)
	})
	mux.HandleFunc("GET /get_server_info", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"version":"0.5.8"}`) })
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"data":[{"id":"org/model"}]}`) })
	// The tokenizer: a word is a token; the chat template of the runner's two messages
	// comes to 40 tokens with the 32-token fixed-length text.
	mux.HandleFunc("POST /tokenize", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Prompt   *string          `json:"prompt"`
			Messages []map[string]any `json:"messages"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		var n int
		switch {
		case req.Messages != nil:
			n = 40
		case strings.HasPrefix(*req.Prompt, "<|im_start|>"):
			n = 40
		default:
			n = len(strings.Fields(*req.Prompt))
		}
		ids := make([]int, n)
		for i := range ids {
			ids[i] = 100 + i
		}
		json.NewEncoder(w).Encode(map[string]any{"tokens": ids, "count": n, "max_model_len": 4096})
	})
	mux.HandleFunc("POST /detokenize", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Tokens []int `json:"tokens"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		text := strings.Repeat("w ", len(req.Tokens))
		if len(req.Tokens) == 40 {
			text = "<|im_start|>system ... <|im_start|>assistant"
		}
		json.NewEncoder(w).Encode(map[string]any{"prompt": text})
	})
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		if req["stream"] != false || req["prompt"] != "<|im_start|>system ... <|im_start|>assistant" || req["max_tokens"] != 4.0 {
			t.Errorf("request %v is not the runner's non-streaming templated text", req)
		}
		fmt.Fprint(w, `{"choices":[{"index":0,"text":" lorem ipsum dolor sit","finish_reason":"length"}],"usage":{"prompt_tokens":40,"completion_tokens":4,"total_tokens":44}}`)
	})
	for _, p := range []string{"start", "stop"} {
		mux.HandleFunc("POST /"+p+"_expert_distribution_record", func(w http.ResponseWriter, r *http.Request) {})
	}
	mux.HandleFunc("POST /dump_expert_distribution_record", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := len(s.recs)
		if s.dumps == 0 {
			n = 1 // before the run: start-up's probe only
		}
		s.dumps++
		f := filepath.Join(s.dir, "org", "model", "expert_distribution_record.jsonl")
		os.MkdirAll(filepath.Dir(f), 0o755)
		os.WriteFile(f, append(bytes.Join(s.recs[:n], []byte("\n")), '\n'), 0o644)
	})
	return mux
}

// TestUpstreamReaderSameRun reads the runner's files of a server run (a fixture written from
// the documented format) and moecapd bench's files of the same server run (the same records
// replayed) through the one reader above: every timing-free fact agrees, keys and types are
// the same, e2e_s × request/s is 1 in both and e2e_s × N is moecapd's own clock.
func TestUpstreamReaderSameRun(t *testing.T) {
	fix := filepath.Join(fixtures, "upstream-sglang")
	b, err := os.ReadFile(filepath.Join(fix, "records.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rs := &replayServer{recs: bytes.Split(bytes.TrimSpace(b), []byte("\n")), dir: t.TempDir()}
	srv := httptest.NewServer(rs.handler(t))
	defer srv.Close()

	out := t.TempDir()
	bs := 2
	o := Options{
		APIURL: srv.URL + "/v1/completions", Model: "org/model", Backend: "auto", BatchSize: 2, ServerBatchSize: &bs,
		NumSamples: 4, InputTokens: 32, OutputTokens: 4, IgnoreEOS: true, Dataset: "gsm8k", PromptStyle: PromptUpstream,
		DatasetFile: writeRows(t, `{"question":"one two three four five six seven eight"}`),
		OutputDir:   out, RecordsDir: filepath.Join(out, BenchDir, "records"), SGLangRecorderDir: rs.dir,
	}
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	up := readLeaf(t, filepath.Join(fix, "output", "org", "model"), "gsm8k")
	ours := readLeaf(t, filepath.Join(out, "org", "model"), "gsm8k")
	uf, of := up.facts(t), ours.facts(t)
	var keys []string
	for k := range uf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if math.Abs(uf[k]-of[k]) > 1e-9*math.Max(1, math.Abs(uf[k])) {
			t.Errorf("%s: runner %v, moecapd %v", k, uf[k], of[k])
		}
	}
	if math.Abs(uf["e2e_s×request/s"]-1) > 1e-9 {
		t.Errorf("runner fixture: e2e_s × request/s = %v, want 1", uf["e2e_s×request/s"])
	}
	if got := num(t, ours.metrics, "performance.e2e_s") * 4; math.Abs(got-res.Finished.Sub(res.Started).Seconds()) > 1e-9 {
		t.Errorf("moecapd: e2e_s × N = %v, want its wall time %v", got, res.Finished.Sub(res.Started).Seconds())
	}
	if uf["detailed.server_ttft"] != uf["performance.ttft"] || math.Abs(of["detailed.server_ttft"]-of["performance.ttft"]) > 1e-12 {
		t.Errorf("the reader's TTFT from detailed_results differs from performance.ttft")
	}
	// Same keys, same types. The runner's SGLang detailed_results also hold the pre-window
	// probe (it writes the whole dump); moecapd's hold the window: compare the key/type sets.
	for k, v := range up.types {
		if ours.types[k] != v {
			t.Errorf("%s: runner %s, moecapd %q", k, v, ours.types[k])
		}
	}
	for k, v := range ours.types {
		if _, ok := up.types[k]; !ok {
			t.Errorf("%s (%s): moecapd writes a key the runner does not", k, v)
		}
	}
	if len(ours.detailed) != len(up.detailed)-1 {
		t.Errorf("moecapd detailed_results %d rows, want the runner's %d minus the pre-window probe", len(ours.detailed), len(up.detailed))
	}
	if v := ours.metadata["system_environment"].(map[string]any)["inference_engine_version"]; v != "0.5.8" {
		t.Errorf("engine version %v, want the server's 0.5.8", v)
	}
	// Nothing but the runner's four files inside <org>/<model>/.
	if e, _ := os.ReadDir(filepath.Join(out, "org", "model")); len(e) != 4 {
		t.Errorf("%d entries in <org>/<model>/, want 4", len(e))
	}
	if m, _ := filepath.Glob(filepath.Join(out, "*", "*", "*.json")); len(m) != 2 {
		t.Errorf("json files a <org>/<model> glob sees: %v, want metrics and metadata only", m)
	}
}

func writeRows(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rows.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
