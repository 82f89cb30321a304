package servermetrics

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A server whose counters grow on every scrape; vLLM or SGLang names; optionally a broken
// page.
func fakeServer(t *testing.T, flavor string, preempt bool, broken *atomic.Bool) (*httptest.Server, *atomic.Int64) {
	n := new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if broken != nil && broken.Load() {
			fmt.Fprintln(w, "this is { not prometheus")
			return
		}
		p := 0
		if preempt {
			p = int(i)
		}
		if flavor == "vllm" {
			fmt.Fprintf(w, "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} %d\nvllm:num_requests_running{model_name=\"m\",engine=\"1\"} 1\n", i)
			fmt.Fprintf(w, "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 2\n")
			fmt.Fprintf(w, "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.%d\n", i)
			fmt.Fprintf(w, "# TYPE vllm:num_preemptions_total counter\nvllm:num_preemptions_total{model_name=\"m\"} %d\n", p)
			fmt.Fprintf(w, "# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{model_name=\"m\"} %d\n", 100*i)
			fmt.Fprintf(w, "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name=\"m\"} %d\n", 10*i)
			return
		}
		fmt.Fprintf(w, "# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name=\"m\"} %d\n", i)
		fmt.Fprintf(w, "# TYPE sglang:token_usage gauge\nsglang:token_usage{model_name=\"m\"} 0.5\n")
		fmt.Fprintf(w, "# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total{model_name=\"m\"} %d\n", 10*i)
	}))
	t.Cleanup(srv.Close)
	return srv, n
}

// waitScrapes waits (bounded) until the server has answered n scrapes.
func waitScrapes(t *testing.T, got *atomic.Int64, n int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); got.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d scrapes in 20 s", got.Load())
		}
	}
}

func TestScraper(t *testing.T) {
	for _, tc := range []struct {
		flavor      string
		preempt     bool
		preemptions bool // exported
		waiting     bool
	}{
		{"vllm", false, true, true},
		{"vllm", true, true, true},
		{"sglang", false, false, false},
	} {
		t.Run(fmt.Sprintf("%s preempt=%v", tc.flavor, tc.preempt), func(t *testing.T) {
			srv, got := fakeServer(t, tc.flavor, tc.preempt, nil)
			var csv bytes.Buffer
			s := Start(srv.URL+"/metrics", 5*time.Millisecond, &csv)
			waitScrapes(t, got, 3)
			sum := s.Stop()
			if sum.Samples < 2 || sum.ScrapeErrors != 0 {
				t.Fatalf("%+v", sum)
			}
			n := float64(sum.Samples)
			// Scrapes cancelled in flight still advance the server's counter: the delta is at
			// least one step per sample after the first, in steps of 10.
			if g := sum.GenerationTokens; g == nil || *g < 10*(n-1) || int(*g)%10 != 0 {
				t.Errorf("generation tokens delta %v over %v samples", sum.GenerationTokens, n)
			}
			if sum.PeakRunning == nil || sum.PeakKVUsage == nil {
				t.Errorf("gauges absent: %+v", sum)
			}
			if (sum.Preemptions != nil) != tc.preemptions || (sum.MeanWaiting != nil) != tc.waiting || sum.Preempted != tc.preempt {
				t.Errorf("preemptions %v waiting %v preempted %v", sum.Preemptions, sum.MeanWaiting, sum.Preempted)
			}
			lines := strings.Split(strings.TrimSpace(csv.String()), "\n")
			if len(lines) != sum.Samples+1 || !strings.HasPrefix(lines[0], "time,running,waiting") {
				t.Errorf("csv has %d lines for %d samples:\n%s", len(lines), sum.Samples, csv.String())
			}
		})
	}
}

// A page that is not Prometheus text, or a server that is gone, is counted as a scrape
// error; the summary keeps what was scraped before.
func TestScrapeErrors(t *testing.T) {
	var broken atomic.Bool
	srv, got := fakeServer(t, "vllm", false, &broken)
	s := Start(srv.URL+"/metrics", 5*time.Millisecond, nil)
	waitScrapes(t, got, 2)
	broken.Store(true)
	waitScrapes(t, got, 4)
	sum := s.Stop()
	if sum.Samples == 0 || sum.ScrapeErrors == 0 || !strings.Contains(sum.LastError, "parse") {
		t.Errorf("%+v", sum)
	}
	gone := Start("http://127.0.0.1:1/metrics", 5*time.Millisecond, nil).Stop()
	if gone.Samples != 0 || gone.ScrapeErrors == 0 || gone.Preemptions != nil {
		t.Errorf("%+v", gone)
	}
}

// Parse sums a metric's series (one per engine) and leaves absent metrics nil; vLLM's old
// cache-usage name is read too.
func TestParse(t *testing.T) {
	page := `# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0"} 3
vllm:num_requests_running{engine="1"} 4
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc 0.25
`
	s, err := Parse(strings.NewReader(page), time.Now())
	if err != nil || s.Running == nil || *s.Running != 7 || s.KVUsage == nil || *s.KVUsage != 0.25 || s.Waiting != nil || s.Preemptions != nil {
		t.Errorf("%v %+v", err, s)
	}
	if _, err := Parse(strings.NewReader("a{ 1"), time.Now()); err == nil {
		t.Error("a broken page parsed")
	}
}

// The window's summary brackets it with the samples just outside, so the counters' deltas
// cover all of it.
func TestStopWindow(t *testing.T) {
	srv, got := fakeServer(t, "vllm", false, nil)
	s := Start(srv.URL+"/metrics", time.Millisecond, nil)
	waitScrapes(t, got, 3)
	lo := time.Now()
	waitScrapes(t, got, got.Load()+3)
	hi := time.Now()
	waitScrapes(t, got, got.Load()+3)
	sum := s.StopWindow(lo, hi)
	all := Summarize(s.samples)
	if sum.Samples < 2 || sum.Samples >= all.Samples || *sum.GenerationTokens >= *all.GenerationTokens {
		t.Errorf("window %+v, all %+v", sum, all)
	}
}

// ReadCSV reads back what the scraper wrote: absent stays absent, a torn or non-finite row
// is skipped and counted.
func TestReadCSV(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	one, kv := 3.0, 0.25
	var buf bytes.Buffer
	buf.WriteString(strings.Join(csvHeader, ",") + "\n")
	buf.WriteString(strings.Join(row(Sample{T: t0, Running: &one, KVUsage: &kv}), ",") + "\n")
	buf.WriteString("not a time,1,2,3,4,5,6\n")
	buf.WriteString(t0.Add(time.Second).Format(time.RFC3339Nano) + ",NaN,,,,,\n")
	buf.WriteString(t0.Add(2*time.Second).Format(time.RFC3339Nano) + ",4,1,0.5,2,100,10\n")
	buf.WriteString(t0.Add(3*time.Second).Format(time.RFC3339Nano) + ",\"4\n") // torn last line
	ss, bad, err := ReadCSV(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 || bad != 3 {
		t.Fatalf("%d samples, %d bad; want 2 and 3", len(ss), bad)
	}
	if !ss[0].T.Equal(t0) || ss[0].Running == nil || *ss[0].Running != 3 || *ss[0].KVUsage != 0.25 || ss[0].Waiting != nil || ss[0].Preemptions != nil {
		t.Errorf("first sample %+v, want running 3, kv 0.25, the rest absent", ss[0])
	}
	if s := ss[1]; *s.Running != 4 || *s.Waiting != 1 || *s.Preemptions != 2 || *s.PromptTokens != 100 || *s.GenTokens != 10 {
		t.Errorf("second sample %+v", s)
	}
	if _, _, err := ReadCSV(strings.NewReader("a,b\n1,2\n")); err == nil {
		t.Error("a file without a time column read without error")
	}
}
