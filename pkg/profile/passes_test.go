package profile

import (
	"encoding/json"
	"github.com/moecapd/moecapd/pkg/records"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func passesOf(t *testing.T, lines ...string) []Pass {
	t.Helper()
	raws := make([]json.RawMessage, len(lines))
	for i, l := range lines {
		raws[i] = json.RawMessage(l)
	}
	ps, err := ParsePasses("test", raws)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func near(p *float64, want float64) bool { return p != nil && math.Abs(*p-want) < 1e-9 }

// TestUpstreamTTFT: MoE-CAP's TTFT sums a request's prefill chunks (a chunked prefill spans
// several passes), drops probe passes (seq_lens_sum ≤ 10), reads "ttft" where a file-shape
// trace carries the latency, keys by req_id else the pool slot, and leaves out requests whose
// last chunk was not seen.
func TestUpstreamTTFT(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  *float64
	}{
		{"chunked prefill is summed per request", []string{
			`{"forward_mode":"prefill","latency":0.5,"seq_lens_sum":5,"per_req_info":[{"req_id":"probe","is_last_chunk":true}]}`,
			`{"forward_mode":"prefill","latency":0.1,"seq_lens_sum":2048,"per_req_info":[{"req_id":"a","is_last_chunk":false}]}`,
			`{"forward_mode":"prefill","latency":0.1,"seq_lens_sum":4096,"per_req_info":[{"req_id":"a","is_last_chunk":false}]}`,
			`{"forward_mode":"prefill","latency":0.05,"seq_lens_sum":5000,"per_req_info":[{"req_id":"a","is_last_chunk":true},{"req_id":"b","is_last_chunk":true}]}`,
			`{"forward_mode":"decode","latency":0.01,"seq_lens_sum":5002,"req_ids":["a","b"]}`,
		}, ptr(0.15)}, // a: 0.25, b: 0.05
		{"file-shape latency under ttft, pool-slot keys", []string{
			`{"forward_mode":"prefill","ttft":0.2,"seq_lens_sum":100,"per_req_info":[{"req_pool_idx":3,"is_last_chunk":true}]}`,
		}, ptr(0.2)},
		{"no last chunk, no value", []string{
			`{"forward_mode":"prefill","latency":0.2,"seq_lens_sum":100,"per_req_info":[{"req_id":"a","is_last_chunk":false}]}`,
		}, nil},
		{"without per_req_info, no value", []string{
			`{"forward_mode":"prefill","latency":0.2,"seq_lens_sum":100}`,
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := UpstreamTTFTS(passesOf(t, tt.lines...))
			if (got == nil) != (tt.want == nil) || got != nil && !near(got, *tt.want) {
				t.Errorf("UpstreamTTFTS = %v, want %v", deref(got), deref(tt.want))
			}
		})
	}
}

func ptr(v float64) *float64 { return &v }

// TestStatsOf: the runner's selection rules for the other aggregates.
func TestStatsOf(t *testing.T) {
	ps := passesOf(t,
		// A dataset-sized warm-up pass the size filter misses: trimmed because the batch sizes
		// then add up to the 4 client requests exactly.
		`{"forward_mode":"prefill","latency":0.9,"seq_lens_sum":600,"batch_size":1,"expert_activation":50,"scheduled_tokens":600,"gpu_num":8,"gpu_raw_type":"NVIDIA H200"}`,
		`{"forward_mode":"prefill","latency":0.2,"seq_lens_sum":8000,"batch_size":2,"expert_activation":10,"scheduled_tokens":8000}`,
		`{"forward_mode":"prefill","latency":0.4,"seq_lens_sum":8000,"batch_size":2,"expert_activation":20,"scheduled_tokens":8000}`,
		`{"forward_mode":"decode","latency":0.01,"seq_lens_sum":30,"batch_size":30,"expert_activation":5}`,
		`{"forward_mode":"mixed","latency":0.03,"seq_lens_sum":32,"batch_size":32,"expert_activation":-1}`,
		`{"forward_mode":"idle"}`,
	)
	s := StatsOf(ps, 4)
	if !near(s.ActivationPrefill, 15) || !near(s.PrefillBatch, 2) || !near(s.PrefillPassLatencyS, 0.3) {
		t.Errorf("prefill aggregates %v %v %v, want 15, 2, 0.3 (warm-up trimmed)", deref(s.ActivationPrefill), deref(s.PrefillBatch), deref(s.PrefillPassLatencyS))
	}
	if s.PrefillForwardedTokens == nil || *s.PrefillForwardedTokens != 16000 || !near(s.PrefillStepElapsedS, 0.6) {
		t.Errorf("forwarded %v elapsed %v, want 16000 and 0.6", s.PrefillForwardedTokens, deref(s.PrefillStepElapsedS))
	}
	if !near(s.ActivationDecode, 5) || !near(s.DecodeBatch, 31) || !near(s.TPOTS, 0.02) || s.DecodePasses != 2 {
		t.Errorf("decode aggregates %+v", s)
	}
	if s.GPURawType != "NVIDIA H200" || !near(s.GPUNum, 8) {
		t.Errorf("gpu %q %v", s.GPURawType, deref(s.GPUNum))
	}
	// The trim only happens when it lands exactly on the request count.
	if s := StatsOf(ps, 5); !near(s.PrefillBatch, 5.0/3) {
		t.Errorf("untrimmed prefill batch %v, want 5/3", deref(s.PrefillBatch))
	}
	// A pass without scheduled_tokens makes the forwarded total null, not a partial sum.
	ps[1].ScheduledTokens = nil
	if s := StatsOf(ps, 4); s.PrefillForwardedTokens != nil {
		t.Errorf("forwarded tokens %v, want nil", *s.PrefillForwardedTokens)
	}
	empty := StatsOf(nil, 4)
	if empty.TTFTS != nil || empty.TPOTS != nil || empty.ActivationDecode != nil || empty.PrefillForwardedTokens != nil {
		t.Errorf("absent numbers were filled in: %+v", empty)
	}
}

// TestDecodeContexts: vLLM's decode seq_lens_sum is scheduled tokens; the context is rebuilt
// from prompt_len and the decode passes each request took part in (records_test covers
// SGLang, pool slots and mixed steps).
func TestDecodeContexts(t *testing.T) {
	lines := []string{
		`{"forward_mode":"prefill","seq_lens_sum":150,"per_req_info":[{"req_id":"a","prompt_len":100,"total_len":100,"is_last_chunk":true},{"req_id":"b","prompt_len":50,"total_len":50,"is_last_chunk":true}]}`,
		`{"forward_mode":"decode","seq_lens_sum":2,"req_ids":["a","b"]}`,
		`{"forward_mode":"decode","seq_lens_sum":2,"req_ids":["a","b"]}`,
		`{"forward_mode":"decode","seq_lens_sum":2,"req_ids":["a","zz"]}`,
	}
	ps := passesOf(t, lines...)
	records.DecodeContexts(ps)
	want := []*float64{nil, ptr(152), ptr(154), nil} // a: 101,102; b: 51,52; zz unknown
	for i, w := range want {
		if (ps[i].ContextTokens == nil) != (w == nil) || w != nil && *ps[i].ContextTokens != *w {
			t.Errorf("pass %d context %v, want %v", i, deref(ps[i].ContextTokens), deref(w))
		}
	}
	// The window file keeps each record verbatim plus context_tokens.
	dir := t.TempDir()
	path, err := WriteWindow(dir, ps)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if filepath.Base(path) != WindowFile || strings.Count(string(b), "\n") != 4 || !strings.Contains(string(b), `"context_tokens":152`) || !strings.Contains(string(b), `"seq_lens_sum":2`) {
		t.Errorf("window file:\n%s", b)
	}
}

func TestSGLangMarkWindow(t *testing.T) {
	all := passesOf(t,
		`{"forward_pass_id":1,"forward_mode":"prefill"}`, `{"forward_pass_id":2,"forward_mode":"decode"}`,
		`{"forward_pass_id":3,"forward_mode":"prefill"}`, `{"forward_pass_id":4,"forward_mode":"decode"}`)
	if w := (SGLangMark{Before: 2, MaxID: ptr(2)}).Window(all); len(w) != 2 || *w[0].ForwardPassID != 3 {
		t.Errorf("window by id = %d passes", len(w))
	}
	// Without ids, by position; a dump shorter than the mark (a restarted server) is empty.
	noID := passesOf(t, `{"forward_mode":"prefill"}`, `{"forward_mode":"decode"}`, `{"forward_mode":"decode"}`)
	if w := (SGLangMark{Before: 1}).Window(noID); len(w) != 2 {
		t.Errorf("window by position = %d passes, want 2", len(w))
	}
	if w := (SGLangMark{Before: 5}).Window(noID); len(w) != 0 {
		t.Errorf("window past the end = %d passes, want 0", len(w))
	}
}
