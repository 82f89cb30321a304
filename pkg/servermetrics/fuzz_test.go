package servermetrics

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// checkSummary fails when a summary holds a value that is not finite or cannot be stored
// in a manifest (JSON has no NaN/Inf: one would fail the whole manifest write).
func checkSummary(t *testing.T, sum *Summary) {
	t.Helper()
	for _, p := range []*float64{sum.Preemptions, sum.PromptTokens, sum.GenerationTokens, sum.MeanRunning, sum.PeakRunning, sum.MeanWaiting, sum.PeakWaiting, sum.PeakKVUsage} {
		if p != nil && (math.IsNaN(*p) || math.IsInf(*p, 0)) {
			t.Fatalf("non-finite summary value %v in %+v", *p, sum)
		}
	}
	if _, err := json.Marshal(sum); err != nil {
		t.Fatalf("summary cannot be stored: %v", err)
	}
}

// FuzzMetricsPage: whatever a server answers on /metrics, Parse returns a sample or an
// error, never a panic, and the samples summarise to values a manifest can hold.
func FuzzMetricsPage(f *testing.F) {
	f.Add([]byte("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3\nvllm:num_requests_running{model_name=\"m\",engine=\"1\"} 1\n" +
		"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name=\"m\"} 10\n"))
	f.Add([]byte("# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 1e308\nsglang:num_running_reqs{a=\"b\"} 1e308\nsglang:generation_tokens_total -1e308\n"))
	f.Add([]byte("sglang:token_usage NaN\nvllm:num_preemptions_total +Inf\n"))
	f.Add([]byte("<html><body>not found</body></html>"))
	f.Fuzz(func(t *testing.T, page []byte) {
		t0 := time.Unix(0, 0)
		a, err := Parse(bytes.NewReader(page), t0)
		if err != nil {
			return
		}
		b, _ := Parse(bytes.NewReader([]byte("sglang:generation_tokens_total 1e308\nsglang:num_running_reqs 1e308\n")), t0.Add(time.Second))
		checkSummary(t, Summarize([]Sample{a, a, b}))
		checkSummary(t, Summarize([]Sample{b, a}))
	})
}

// FuzzServerMetricsCSV: a cell's server_metrics.csv, torn, hand-edited or corrupt, reads
// to samples or an error, never a panic, and its samples summarise to storable values.
func FuzzServerMetricsCSV(f *testing.F) {
	f.Add([]byte("time,running,waiting,kv_usage,preemptions_total,prompt_tokens_total,generation_tokens_total\n" +
		"2026-08-14T01:00:25Z,1,0,0.5,0,100,10\n2026-08-14T01:00:26Z,2,,0.6,0,200,20\n2026-08-14T01:00:27Z,3,0"))
	f.Add([]byte("running,time\n1\n1e308,2026-08-14T01:00:25Z\n-1e308,2026-08-14T01:00:26Z\n"))
	f.Add([]byte("time,running\n2026-08-14T01:00:25Z,NaN\n\"unterminated\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ss, _, _ := ReadCSV(bytes.NewReader(data))
		checkSummary(t, Summarize(ss))
	})
}

// TestParseHostilePages: a page past the bound is an error naming it (not a prefix parsed
// into a cut-off number); series summing past the float range are absent, not +Inf.
func TestParseHostilePages(t *testing.T) {
	big := strings.Repeat("# padding of a page that is not an inference server's\n", maxBody/50) + "sglang:num_running_reqs 12\n"
	if _, err := Parse(strings.NewReader(big), time.Now()); err == nil || !strings.Contains(err.Error(), "larger than 8 MiB") {
		t.Errorf("a %d-byte page: err %v, want one naming the bound", len(big), err)
	}
	s, err := Parse(strings.NewReader("sglang:num_running_reqs{a=\"1\"} 1e308\nsglang:num_running_reqs{a=\"2\"} 1e308\nsglang:num_queue_reqs 2\n"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Running != nil || s.Waiting == nil || *s.Waiting != 2 {
		t.Errorf("running %v waiting %v: want running absent (its series overflow), waiting 2", s.Running, s.Waiting)
	}
}
