// Package servermetrics scrapes an inference server's Prometheus endpoint during the bench
// (vLLM's /metrics; SGLang's with --enable-metrics): running and waiting requests, KV-cache
// usage, preemptions and token counters, one row per tick into a CSV file, and a summary
// over the window (counters as deltas, gauges as mean and peak). A metric the server does
// not export is absent, never 0.
package servermetrics

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Sample is one scrape; a nil field is a metric the server did not export.
type Sample struct {
	T            time.Time
	Running      *float64 // requests running (in the batch)
	Waiting      *float64 // requests queued
	KVUsage      *float64 // KV cache in use, 0..1
	Preemptions  *float64 // counter
	PromptTokens *float64 // counter
	GenTokens    *float64 // counter
}

// names maps each field to the metric names that carry it, per server (vLLM renamed
// gpu_cache_usage_perc to kv_cache_usage_perc in v0.10).
var names = map[string][]string{
	"running":       {"vllm:num_requests_running", "sglang:num_running_reqs"},
	"waiting":       {"vllm:num_requests_waiting", "sglang:num_queue_reqs"},
	"kv_usage":      {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"},
	"preemptions":   {"vllm:num_preemptions_total", "vllm:num_preemptions"},
	"prompt_tokens": {"vllm:prompt_tokens_total", "vllm:prompt_tokens", "sglang:prompt_tokens_total", "sglang:prompt_tokens"},
	"gen_tokens":    {"vllm:generation_tokens_total", "vllm:generation_tokens", "sglang:generation_tokens_total", "sglang:generation_tokens"},
}

// maxBody bounds a scrape: a /metrics page of an inference server is tens of kB.
const maxBody = 8 << 20

// Parse reads a Prometheus text exposition. Series of one metric (one per model or engine
// label set) are summed.
func Parse(r io.Reader, t time.Time) (Sample, error) {
	// Read the page whole, one byte past the bound: a page cut at the bound could end
	// inside a number ("…_running 12" read as 1), which would parse into a wrong value.
	page, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return Sample{}, fmt.Errorf("read the metrics page: %w", err)
	}
	if len(page) > maxBody {
		return Sample{}, fmt.Errorf("the metrics page is larger than %d MiB (an inference server's is tens of kB): this scrape is left out (check what answers /metrics on the server's port)", maxBody>>20)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		return Sample{}, fmt.Errorf("parse the metrics page: %w", err)
	}
	s := Sample{T: t}
	get := func(key string) *float64 {
		for _, n := range names[key] {
			if f, ok := fams[n]; ok {
				if v, ok := sum(f); ok {
					return &v
				}
			}
		}
		return nil
	}
	s.Running, s.Waiting, s.KVUsage = get("running"), get("waiting"), get("kv_usage")
	s.Preemptions, s.PromptTokens, s.GenTokens = get("preemptions"), get("prompt_tokens"), get("gen_tokens")
	return s, nil
}

func sum(f *dto.MetricFamily) (float64, bool) {
	var v float64
	n := 0
	for _, m := range f.GetMetric() {
		var x float64
		switch {
		case m.Gauge != nil:
			x = m.Gauge.GetValue()
		case m.Counter != nil:
			x = m.Counter.GetValue()
		case m.Untyped != nil:
			x = m.Untyped.GetValue()
		default:
			continue
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		v += x
		n++
	}
	// Series of 1e308 each (a broken or hostile exporter) sum to +Inf: no usable value,
	// absent like a metric not exported, never an Inf that no manifest can hold.
	return v, n > 0 && !math.IsInf(v, 0)
}

// Scraper polls a metrics URL on an interval until Stop.
type Scraper struct {
	url      string
	interval time.Duration
	hc       *http.Client
	out      *csv.Writer
	cancel   context.CancelFunc
	done     chan struct{}
	// one serialises scrapes (the ticker's and Mark's), so samples are appended in the order
	// they were taken.
	one sync.Mutex

	mu      sync.Mutex
	samples []Sample
	errs    int
	lastErr string
}

// Start begins scraping url every interval, writing each sample as a CSV row to w (nil: no
// file). The first scrape happens at once.
func Start(url string, interval time.Duration, w io.Writer) *Scraper {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scraper{url: url, interval: interval, hc: &http.Client{Timeout: max(interval, time.Second)}, cancel: cancel, done: make(chan struct{})}
	if w != nil {
		s.out = csv.NewWriter(w)
		_ = s.out.Write(csvHeader)
	}
	go s.run(ctx)
	return s
}

func (s *Scraper) run(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.scrape(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Mark takes one sample now and returns when it is stored: called right before the measured
// window opens (after the warm-up) and right after it closes, it puts a sample at each edge,
// so the counters' deltas over the window are the window's own, not the warm-up's tail or a
// tick's worth more.
func (s *Scraper) Mark() {
	select {
	case <-s.done:
		return // stopped
	default:
	}
	s.scrape(context.Background())
}

// scrape takes one sample. Its time is when the request was sent: the server's counters are
// at least what they were then.
func (s *Scraper) scrape(ctx context.Context) {
	s.one.Lock()
	defer s.one.Unlock()
	sent := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		s.fail(err)
		return
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			s.fail(err)
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.fail(fmt.Errorf("%s answered %s", s.url, resp.Status))
		return
	}
	smp, err := Parse(resp.Body, sent)
	if err != nil {
		s.fail(err)
		return
	}
	s.mu.Lock()
	s.samples = append(s.samples, smp)
	if s.out != nil {
		_ = s.out.Write(row(smp))
		s.out.Flush()
	}
	s.mu.Unlock()
}

func (s *Scraper) fail(err error) {
	s.mu.Lock()
	s.errs++
	s.lastErr = err.Error()
	s.mu.Unlock()
}

// csvHeader is the first row of the per-cell file; ReadCSV reads columns by these names.
var csvHeader = []string{"time", "running", "waiting", "kv_usage", "preemptions_total", "prompt_tokens_total", "generation_tokens_total"}

// ReadCSV reads the samples a Scraper wrote (the cell's server_metrics.csv), in file order.
// An empty field is a metric the server did not export (nil); a row whose time or a value
// does not parse, or whose value is not finite, is skipped and counted in bad, so a torn
// last line does not lose the file.
func ReadCSV(r io.Reader) (ss []Sample, bad int, err error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	head, err := cr.Read()
	if err != nil {
		return nil, 0, fmt.Errorf("server metrics header: %w", err)
	}
	col := map[string]int{}
	for i, h := range head {
		col[h] = i
	}
	if _, ok := col["time"]; !ok {
		return nil, 0, fmt.Errorf("server metrics: no time column in %q", head)
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return ss, bad, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				bad++
				continue
			}
			return ss, bad, err
		}
		// A torn or hand-edited row may be shorter than the header (FieldsPerRecord is -1).
		ti := col["time"]
		if ti >= len(rec) {
			bad++
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, rec[ti])
		if err != nil {
			bad++
			continue
		}
		s := Sample{T: t}
		ok := true
		for name, dst := range map[string]**float64{"running": &s.Running, "waiting": &s.Waiting, "kv_usage": &s.KVUsage,
			"preemptions_total": &s.Preemptions, "prompt_tokens_total": &s.PromptTokens, "generation_tokens_total": &s.GenTokens} {
			i, has := col[name]
			if !has || i >= len(rec) || rec[i] == "" {
				continue
			}
			v, err := strconv.ParseFloat(rec[i], 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				ok = false
				break
			}
			*dst = &v
		}
		if !ok {
			bad++
			continue
		}
		ss = append(ss, s)
	}
}

func row(s Sample) []string {
	f := func(p *float64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatFloat(*p, 'g', -1, 64)
	}
	return []string{s.T.UTC().Format(time.RFC3339Nano), f(s.Running), f(s.Waiting), f(s.KVUsage), f(s.Preemptions), f(s.PromptTokens), f(s.GenTokens)}
}

// StopWindow is Stop with the summary over the window from lo to hi (the measured
// requests'; the CSV keeps every sample): the samples inside it plus the last one before lo
// and the first after hi, so the counters' deltas cover the whole window (and at most one
// tick more on each side). A zero lo or hi leaves that side open.
func (s *Scraper) StopWindow(lo, hi time.Time) *Summary {
	s.cancel()
	<-s.done
	s.scrape(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out != nil {
		s.out.Flush()
	}
	var in []Sample
	before, after := -1, -1
	for i, x := range s.samples {
		switch {
		case !lo.IsZero() && x.T.Before(lo):
			before = i
		case !hi.IsZero() && x.T.After(hi):
			if after < 0 {
				after = i
			}
		default:
			in = append(in, x)
		}
	}
	if before >= 0 {
		in = append([]Sample{s.samples[before]}, in...)
	}
	if after >= 0 {
		in = append(in, s.samples[after])
	}
	sum := Summarize(in)
	sum.URL, sum.ScrapeErrors, sum.LastError = s.url, s.errs, s.lastErr
	return sum
}

// Stop takes a last sample, ends the scraping and summarises every sample (StopWindow
// with both sides open).
func (s *Scraper) Stop() *Summary { return s.StopWindow(time.Time{}, time.Time{}) }

// Summary is the window's server metrics, stored under "server_metrics" in the manifest.
type Summary struct {
	URL string `json:"url"`
	// Window says what the counters' deltas cover: WindowMeasured (the measured requests,
	// a sample taken at each edge) or WindowBench (the whole bench phase, warm-up included).
	Window       string `json:"window,omitempty"`
	Samples      int    `json:"samples"`
	ScrapeErrors int    `json:"scrape_errors,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	// Counter deltas over the window (last − first sample; absent when not exported or
	// reset in between).
	Preemptions      *float64 `json:"preemptions,omitempty"`
	PromptTokens     *float64 `json:"prompt_tokens,omitempty"`
	GenerationTokens *float64 `json:"generation_tokens,omitempty"`
	// Gauges over the window.
	MeanRunning *float64 `json:"mean_running,omitempty"`
	PeakRunning *float64 `json:"peak_running,omitempty"`
	MeanWaiting *float64 `json:"mean_waiting,omitempty"`
	PeakWaiting *float64 `json:"peak_waiting,omitempty"`
	PeakKVUsage *float64 `json:"peak_kv_usage,omitempty"`
	// Preempted is true when the server preempted requests during the window: their
	// latencies include recomputation.
	Preempted bool `json:"preempted,omitempty"`
}

// Summary windows.
const (
	WindowMeasured = "measured requests"
	WindowBench    = "bench phase"
)

// Summarize summarises samples in time order.
func Summarize(ss []Sample) *Summary {
	sum := &Summary{Samples: len(ss)}
	if len(ss) == 0 {
		return sum
	}
	delta := func(f func(Sample) *float64) *float64 {
		a, b := f(ss[0]), f(ss[len(ss)-1])
		if a == nil || b == nil || *b < *a {
			return nil
		}
		d := *b - *a
		if math.IsInf(d, 0) {
			return nil // 1e308 - -1e308: not a count (JSON cannot hold it either)
		}
		return &d
	}
	gauge := func(f func(Sample) *float64) (mean, peak *float64) {
		var s, p float64
		n := 0
		for _, x := range ss {
			if v := f(x); v != nil {
				s += *v
				p = max(p, *v)
				n++
			}
		}
		if n == 0 {
			return nil, nil
		}
		m := s / float64(n)
		if math.IsInf(m, 0) {
			return nil, &p // samples near 1e308 summed past the float range
		}
		return &m, &p
	}
	sum.Preemptions = delta(func(s Sample) *float64 { return s.Preemptions })
	sum.PromptTokens = delta(func(s Sample) *float64 { return s.PromptTokens })
	sum.GenerationTokens = delta(func(s Sample) *float64 { return s.GenTokens })
	sum.MeanRunning, sum.PeakRunning = gauge(func(s Sample) *float64 { return s.Running })
	sum.MeanWaiting, sum.PeakWaiting = gauge(func(s Sample) *float64 { return s.Waiting })
	_, sum.PeakKVUsage = gauge(func(s Sample) *float64 { return s.KVUsage })
	sum.Preempted = sum.Preemptions != nil && *sum.Preemptions > 0
	return sum
}
