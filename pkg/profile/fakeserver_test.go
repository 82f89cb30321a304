package profile

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer is an in-test OpenAI-compatible server shaped like the MoE-CAP wrappers: SSE
// completions with usage, /tokenize, backend discovery and the record endpoints. Fault
// behaviour is chosen per request (in arrival order) by fault.
type fakeServer struct {
	flavor      string // "sglang", "vllm" or "plain" (no record endpoints)
	ttft, tpot  time.Duration
	recorderDir string // sglang: where dump writes
	// fault returns the behaviour of the n-th completion request (0-based): "" (normal),
	// "http500", "http400", "truncate", "malformed", "hang", "nousage", "short", "reset",
	// "errorchunk", "usage10x" (usage claims 10× the tokens streamed), "fewchunks" (3 chunks
	// streamed, usage claims all of max_tokens).
	fault func(n int) string

	mu          sync.Mutex
	n           int
	inflight    int
	maxInflight int
	bodies      []map[string]any
	recording   bool
	recorded    int // completions finished while recording (sglang: since start-up)
	starts      []time.Time
	tokenizeN   int

	srv *httptest.Server
}

func newFakeServer(t *testing.T, f *fakeServer) *fakeServer {
	t.Helper()
	if f.flavor == "" {
		f.flavor = "vllm"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"org/model"}]}`)
	})
	if f.flavor == "sglang" {
		mux.HandleFunc("GET /get_model_info", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"model_path":"org/model","is_generation":true}`)
		})
	}
	mux.HandleFunc("POST /tokenize", f.tokenize)
	mux.HandleFunc("POST /v1/completions", f.complete)
	mux.HandleFunc("POST /v1/chat/completions", f.complete)
	switch f.flavor {
	case "sglang":
		mux.HandleFunc("POST /start_expert_distribution_record", f.setRecording(true))
		mux.HandleFunc("POST /stop_expert_distribution_record", f.setRecording(false))
		mux.HandleFunc("POST /dump_expert_distribution_record", func(w http.ResponseWriter, r *http.Request) {
			dir := filepath.Join(f.recorderDir, "org/model")
			os.MkdirAll(dir, 0o755)
			var b strings.Builder
			for _, rec := range f.records() {
				j, _ := json.Marshal(rec)
				b.Write(j)
				b.WriteByte('\n')
			}
			os.WriteFile(filepath.Join(dir, "expert_distribution_record.jsonl"), []byte(b.String()), 0o644)
		})
	case "vllm":
		mux.HandleFunc("POST /start_batch_recording", f.setRecording(true))
		mux.HandleFunc("POST /stop_batch_recording", f.setRecording(false))
		mux.HandleFunc("POST /dump_batch_recording", func(w http.ResponseWriter, r *http.Request) {
			recs := f.records()
			json.NewEncoder(w).Encode(map[string]any{"status": "success", "records": recs, "total_records": len(recs)})
		})
	}
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) url() string { return f.srv.URL + "/v1/completions" }

func (f *fakeServer) setRecording(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.recording = on
		f.mu.Unlock()
		fmt.Fprint(w, `{"status":"ok"}`)
	}
}

// records are two passes per recorded request: one prefill (batch 1, 4 experts) and one
// decode (batch 3, 2 experts), so the summary is predictable. Like the real SGLang wrapper,
// the sglang flavor keeps every pass since start-up, beginning with a warm-up probe.
func (f *fakeServer) records() []map[string]any {
	f.mu.Lock()
	n := f.recorded
	f.mu.Unlock()
	var out []map[string]any
	if f.flavor == "sglang" {
		out = append(out, map[string]any{"forward_pass_id": 0, "batch_size": 1, "latency": 0.5, "seq_lens_sum": 6, "forward_mode": "prefill", "expert_activation": 1.0, "gpu_num": 1, "gpu_raw_type": "NVIDIA H100 80GB HBM3", "per_req_info": []map[string]any{{"req_pool_idx": 0, "req_id": "0_0", "extend_len": 6, "total_len": 6, "is_last_chunk": true}}})
	}
	for i := range n {
		out = append(out,
			map[string]any{"forward_pass_id": 2*i + 1, "batch_size": 1, "latency": 0.02, "seq_lens_sum": 64, "forward_mode": "prefill", "expert_activation": 4.0, "gpu_num": 1, "gpu_raw_type": "NVIDIA H100 80GB HBM3", "scheduled_tokens": 64, "per_req_info": []map[string]any{{"req_id": fmt.Sprint(i), "extend_len": 64, "total_len": 64, "prompt_len": 64, "is_last_chunk": true}}},
			map[string]any{"forward_pass_id": 2*i + 2, "batch_size": 3, "latency": 0.005, "seq_lens_sum": 200, "forward_mode": "decode", "expert_activation": 2.0, "gpu_num": 1, "gpu_raw_type": "NVIDIA H100 80GB HBM3", "scheduled_tokens": 3, "req_ids": []string{fmt.Sprint(i)}},
		)
	}
	return out
}

func (f *fakeServer) tokenize(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Prompt string `json:"prompt"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	f.tokenizeN++
	f.mu.Unlock()
	var ids []int
	for _, word := range strings.Fields(req.Prompt) {
		h := fnv.New32a()
		h.Write([]byte(word))
		ids = append(ids, int(h.Sum32()%50000)+100)
	}
	json.NewEncoder(w).Encode(map[string]any{"tokens": ids, "count": len(ids), "max_model_len": 8192})
}

func (f *fakeServer) complete(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, "bad json", 400)
		return
	}
	f.mu.Lock()
	n := f.n
	f.n++
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	f.bodies = append(f.bodies, body)
	f.starts = append(f.starts, time.Now())
	f.mu.Unlock()
	// A request stops counting as in flight before its last bytes go out: the client frees
	// its slot (and may send the next request) the moment it reads [DONE].
	left := false
	leave := func() {
		f.mu.Lock()
		if !left {
			f.inflight--
			left = true
		}
		f.mu.Unlock()
	}
	defer leave()
	fault := ""
	if f.fault != nil {
		fault = f.fault(n)
	}
	promptLen := 0
	switch p := body["prompt"].(type) {
	case []any:
		promptLen = len(p)
	case string:
		promptLen = len(strings.Fields(p))
	}
	maxTok := int(body["max_tokens"].(float64))
	switch fault {
	case "http500":
		http.Error(w, `{"error":"internal"}`, 500)
		return
	case "http400":
		http.Error(w, `{"error":"prompt too long"}`, 400)
		return
	case "reset":
		hj, _ := w.(http.Hijacker)
		c, _, _ := hj.Hijack()
		c.Close()
		return
	case "short":
		maxTok = max(1, maxTok/2)
	}
	claimed := maxTok
	switch fault {
	case "usage10x":
		claimed = 10 * maxTok
	case "fewchunks":
		maxTok = 3
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	start := time.Now()
	sleepUntil(r, start.Add(f.ttft))
	chat := strings.HasSuffix(r.URL.Path, "/chat/completions")
	for i := range maxTok {
		if i > 0 {
			sleepUntil(r, start.Add(f.ttft+time.Duration(i)*f.tpot))
		}
		if r.Context().Err() != nil {
			return
		}
		if fault == "hang" && i == 1 {
			<-r.Context().Done()
			return
		}
		if fault == "malformed" && i == 2 {
			fmt.Fprint(w, "data: {\"choices\": [\n\n")
			fl.Flush()
			continue
		}
		if fault == "errorchunk" && i == 1 {
			fmt.Fprint(w, "data: {\"error\":{\"message\":\"KV cache exhausted\"}}\n\n")
			fl.Flush()
			return
		}
		if chat {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d \"}}]}\n\n", i)
		} else {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"t%d \",\"finish_reason\":null}]}\n\n", i)
		}
		fl.Flush()
		if fault == "truncate" && i == 3 {
			return
		}
	}
	// Count the request as recorded before the client can see its end: once [DONE] is out
	// the client may stop the recording, and a count taken after that would race it.
	f.mu.Lock()
	if f.recording || f.flavor == "sglang" {
		f.recorded++
	}
	f.mu.Unlock()
	if fault != "nousage" {
		fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", promptLen, claimed, promptLen+claimed)
	}
	leave()
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

func sleepUntil(r *http.Request, t time.Time) {
	if d := time.Until(t); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
}
