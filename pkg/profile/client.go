package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/records"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Schedules.
const (
	// ScheduleClosedLoop keeps exactly BatchSize requests in flight: a new one is sent the
	// moment one finishes, so the server always sees the batch it is benchmarked at.
	ScheduleClosedLoop = "closed-loop"
	// ScheduleWaves reproduces the MoE-CAP runner: send BatchSize, wait until half of that
	// wave has finished, send the next BatchSize (so up to 1.5× BatchSize can be in flight).
	ScheduleWaves = "waves"
)

// ErrNoSuccess is returned (wrapped) when not one request succeeded: a failed bench, which
// launch-and-bench maps to exit 5.
var ErrNoSuccess = errors.New("no request succeeded")

// ErrInvalidResult is returned (wrapped) when the run finished but its result does not hold
// up: requests failed, a server's usage disagrees with what it streamed, or outputs came back
// short, beyond Options.AllowedBadRequests. The files are written all the same.
var ErrInvalidResult = errors.New("bench result invalid")

// Options configures one native benchmark run. The zero value of an optional field means
// its documented default.
type Options struct {
	APIURL  string // the completions URL, e.g. http://127.0.0.1:30000/v1/completions
	Model   string // model id sent in requests; must equal the server's model path
	Backend string // "sglang", "vllm" or "auto" (detected as the runner does; default)
	APIKey  string // sent as a bearer token when set

	BatchSize    int // requests in flight (closed loop) or per wave
	NumSamples   int // measured requests
	InputTokens  int // exact prompt length, in tokens
	OutputTokens int // max_tokens; with IgnoreEOS every request generates exactly this many
	IgnoreEOS    bool
	Schedule     string  // ScheduleClosedLoop (default) or ScheduleWaves
	Warmup       int     // unmeasured requests sent first (distinct prompts, so no prefix-cache hits)
	RequestRate  float64 // mean requests/s of Poisson arrivals; 0 sends as fast as slots free up
	Seed         int64   // fixes random prompts and arrival times
	UseChatAPI   bool    // post to /v1/chat/completions (messages) instead of /v1/completions
	// PromptStyle is PromptUpstream (the runner's chat-templated text, non-streaming) or
	// PromptExactIDs (exact token ids, streaming; the default).
	PromptStyle string
	// AllowedBadRequests is how many requests may fail or come back invalid (usage/stream
	// mismatch, short output, no usage) before the run is invalid; 0 (the default) tolerates
	// none. It is recorded in the metrics.
	AllowedBadRequests int
	// ServerBatchSize is what metadata's batch_size says: the runner's --server-batch-size,
	// nil (null) when everything is sent at once. Run sets it to &BatchSize when nil and
	// BatchSize < NumSamples.
	ServerBatchSize *int

	// Dataset is "gsm8k", "longbench_v2", "random" (seeded ids, no tokenizer needed), or any
	// name together with DatasetFile.
	Dataset         string
	DatasetFile     string // local JSONL, one {"text": …} (or the dataset's own fields) per line
	DatasetSubset   string // hub config override (gsm8k: main)
	DatasetSplit    string // hub split override (gsm8k: test)
	DatasetCacheDir string // where hub rows are cached; empty: no cache
	HubURL          string // dataset viewer base URL; default DefaultHubURL
	Offline         bool   // never fetch from the hub

	OutputDir string // runner-compatible files land in OutputDir/<org>/<model>/; empty: none written
	// RecordsDir keeps the server's pass records. For SGLang it must be (or hold a copy of)
	// the server's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, where the dump lands; see
	// SGLangRecorderDir.
	RecordsDir        string
	SGLangRecorderDir string // the SGLang server's recorder dir; default RecordsDir
	NoRecords         bool   // do not drive the record endpoints at all

	RequestTimeout time.Duration // per request, send to last byte; default DefaultRequestTimeout
	// IdleTimeout fails a request when the server sends no byte for this long (headers
	// included); default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// BenchTimeout bounds the whole run (warm-up, measured requests); past it the run ends
	// as a failed bench wrapping ErrBenchDeadline, what was measured kept (partial);
	// default DefaultBenchTimeout.
	BenchTimeout time.Duration
	DrainTimeout time.Duration // after ctx is cancelled, how long in-flight requests may finish; default 5 s

	// Progress, when set, gets a progress line redrawn in place (meant for a terminal).
	// Otherwise a log line is written every ProgressInterval (default 10 s).
	Progress         io.Writer
	ProgressInterval time.Duration
	// OnProgress, when set, hears where the measured requests stand about once a second
	// and once at their end (a supervisor's status page); it must not block.
	OnProgress func(Progress)
	Log        *zap.Logger
	HTTPClient *http.Client // default: a client sized for BatchSize connections
	// Markers, when set, gets the runner's two progress lines around the measured requests
	// ("Sending N requests to URL", then "Stopped … recording on server"), so a supervisor
	// timing client.log (PhaseClock) times this client exactly as it times the runner.
	Markers io.Writer
	// OnMeasureStart and OnMeasureEnd, when set, are called right before the first measured
	// request is sent and right after the last one finished: the cell pipeline opens and
	// closes the GPU telemetry window there, so energy and cost cover the measured requests.
	OnMeasureStart, OnMeasureEnd func()
	Precision                    string // written to the metadata file; default bfloat16
}

// Result is a finished (or interrupted) run.
type Result struct {
	Metrics  Metrics         `json:"metrics"`
	Requests []RequestResult `json:"requests"`
	Backend  string          `json:"backend"`
	// EngineVersion is what the server says its version is (SGLang's /get_server_info,
	// vLLM's /version); "unknown" when it does not say.
	EngineVersion string `json:"engine_version"`
	// Records summarises the server's pass records; nil when there were none.
	RecordsFile string `json:"records_file,omitempty"`
	// Passes are the recording window's passes (each once); nil without records.
	Passes    []Pass      `json:"-"`
	Stats     *PassStats  `json:"-"`
	Files     RunnerPaths `json:"runner_files"`
	BenchJSON string      `json:"-"`
	Started   time.Time   `json:"started"`
	Finished  time.Time   `json:"finished"`
}

func (o *Options) log() *zap.Logger {
	if o.Log == nil {
		return zap.NewNop()
	}
	return o.Log
}

func logStr(k, v string) zap.Field { return zap.String(k, v) }
func logErr(err error) zap.Field   { return zap.Error(err) }

func (o *Options) check() error {
	var bad []string
	u, err := url.Parse(o.APIURL)
	if o.APIURL == "" || err != nil || u.Scheme == "" || u.Host == "" {
		bad = append(bad, fmt.Sprintf("api url %q is not an http(s) URL such as http://127.0.0.1:30000/v1/completions", o.APIURL))
	}
	if o.Model == "" {
		bad = append(bad, "model is empty; it must equal the server's model path (--model_name or the config's model_id)")
	}
	if o.BatchSize <= 0 {
		bad = append(bad, fmt.Sprintf("batch size %d: want ≥ 1", o.BatchSize))
	}
	if o.NumSamples <= 0 {
		bad = append(bad, fmt.Sprintf("num samples %d: want ≥ 1", o.NumSamples))
	}
	if o.InputTokens <= 0 || o.OutputTokens <= 0 {
		bad = append(bad, fmt.Sprintf("target tokens in=%d out=%d: want both ≥ 1", o.InputTokens, o.OutputTokens))
	}
	switch o.Schedule {
	case "", ScheduleClosedLoop, ScheduleWaves:
	default:
		bad = append(bad, fmt.Sprintf("schedule %q: want closed-loop or waves", o.Schedule))
	}
	switch o.PromptStyle {
	case "", PromptUpstream, PromptExactIDs:
	default:
		bad = append(bad, fmt.Sprintf("prompt style %q: want upstream or exact-ids", o.PromptStyle))
	}
	if o.AllowedBadRequests < 0 {
		bad = append(bad, "allowed bad requests must not be negative")
	}
	switch o.Backend {
	case "", "auto", "sglang", "vllm":
	default:
		bad = append(bad, fmt.Sprintf("backend %q: want sglang, vllm or auto", o.Backend))
	}
	if o.RequestRate < 0 || o.Warmup < 0 {
		bad = append(bad, "request rate and warmup must not be negative")
	}
	if o.Dataset == "" {
		bad = append(bad, "dataset is empty; want gsm8k, longbench_v2 or random")
	}
	if len(bad) > 0 {
		return fmt.Errorf("bench options: %s", strings.Join(bad, "; "))
	}
	return nil
}

// baseURL is scheme://host of the API URL, where the control endpoints live.
func baseURL(apiURL string) string {
	u, _ := url.Parse(apiURL)
	return u.Scheme + "://" + u.Host
}

func (o *Options) httpClient() *http.Client {
	if o.HTTPClient != nil {
		return o.HTTPClient
	}
	conns := o.BatchSize*2 + 4 // waves can hold 1.5× the batch
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil, // a benchmark measures the server, not a proxy in between
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // gzip would batch SSE chunks and skew ITL
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      32 << 10,
	}}
}

// Run benchmarks the server at o.APIURL. It returns the result with a nil error when at
// least one request succeeded; failed requests are counted in Metrics.Errors, not returned.
// No success gives the result and an error wrapping ErrNoSuccess. When ctx is cancelled it
// stops sending, lets in-flight requests finish for up to DrainTimeout, writes what was
// measured with Metrics.Partial set, and returns the result with an error wrapping ctx.Err().
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Schedule == "" {
		o.Schedule = ScheduleClosedLoop
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.BenchTimeout <= 0 {
		o.BenchTimeout = DefaultBenchTimeout
	}
	ctx, cancelDeadline := benchDeadline(ctx, o.BenchTimeout)
	defer cancelDeadline()
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 5 * time.Second
	}
	if o.Precision == "" {
		o.Precision = "bfloat16"
	}
	if o.PromptStyle == "" {
		o.PromptStyle = PromptExactIDs
	}
	if o.UseChatAPI && strings.Contains(o.APIURL, "/v1/completions") && !strings.Contains(o.APIURL, "/v1/chat/completions") {
		// The runner's rule: the chat API flag rewrites a completions URL.
		o.APIURL = strings.Replace(o.APIURL, "/v1/completions", "/v1/chat/completions", 1)
	}
	log := o.log()
	hc := o.httpClient()
	// Pre-opened and kept-alive connections would otherwise outlive the run and keep the
	// server's graceful shutdown waiting.
	defer hc.CloseIdleConnections()
	base := baseURL(o.APIURL)
	res := &Result{Backend: o.Backend}

	if res.Backend == "" || res.Backend == "auto" {
		b, err := detectBackend(ctx, hc, base)
		if err != nil {
			return nil, err
		}
		res.Backend = b
		log.Info("detected backend", zap.String("backend", b), zap.String("url", base))
	}

	res.EngineVersion = engineVersion(ctx, hc, base, res.Backend)
	tk := &tokenizer{hc: hc, base: base, model: o.Model, apiKey: o.APIKey}
	pr, err := buildPrompts(ctx, &o, tk, o.Warmup+o.NumSamples)
	if err != nil {
		return nil, err
	}
	// Request i's body is made when it is sent, so memory follows the requests in flight,
	// not num_samples (a 13k-token body is about 80 kB of JSON).
	promptLen := func(int) int { return o.InputTokens } // fitLength made every prompt exactly this long
	if o.PromptStyle == PromptUpstream {
		promptLen = func(i int) int { return pr.lengths[i] }
	}
	body := func(i int) []byte {
		switch {
		case o.PromptStyle == PromptUpstream:
			return upstreamBody(&o, pr.texts[i], pr.msgs[i])
		case pr.texts != nil:
			return requestBody(&o, pr.ids(i), pr.texts[i])
		default:
			return requestBody(&o, pr.ids(i), "")
		}
	}

	conns := o.BatchSize
	if o.Schedule == ScheduleWaves {
		conns += o.BatchSize / 2
	}
	prewarm(ctx, hc, base, conns)

	var chunks atomic.Int64
	st := &streamer{hc: hc, url: o.APIURL, apiKey: o.APIKey, chunks: &chunks, whole: o.PromptStyle == PromptUpstream,
		idle: o.IdleTimeout, maxTokens: o.OutputTokens}

	if o.Warmup > 0 {
		log.Info("warm-up", zap.Int("requests", o.Warmup))
		wu := make([]RequestResult, o.Warmup)
		for i := range wu {
			wu[i] = RequestResult{Index: i, InputTokens: promptLen(i), RequestedOutputTokens: o.OutputTokens}
		}
		wo := o
		wo.RequestRate = 0
		schedule(ctx, &wo, st, body, wu, nil)
		bad := 0
		for i := range wu {
			if !wu[i].Success {
				bad++
				if bad == 1 {
					log.Warn("warm-up request failed; the measured run goes on and will record its own failures",
						zap.String("reason", wu[i].ErrorKind), zap.String("error", wu[i].Error))
				}
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted during warm-up: %w", context.Cause(ctx))
		}
	}

	var rec *recorder
	recording := false
	recordsNote := ""
	var recordsErr error
	if !o.NoRecords {
		dir := o.SGLangRecorderDir
		if dir == "" {
			dir = o.RecordsDir
		}
		rec = &recorder{hc: hc, base: base, backend: res.Backend, model: o.Model, serverDir: dir, apiKey: o.APIKey}
		if err := rec.start(ctx); errors.Is(err, ErrRecordsUnavailable) {
			// The runner refuses to publish unmeasured timings when server and client
			// disagree on the record dir; so does this client, before sending anything.
			return nil, err
		} else if err != nil {
			recordsNote = "absent: could not start recording: " + err.Error()
			log.Warn("server pass recording unavailable; expert activation and server batch size will be reported as absent (is the server the MoE-CAP wrapper, moe_cap.systems.*?)", zap.Error(err))
		} else {
			recording = true
		}
	} else {
		recordsNote = "absent: recording disabled"
	}

	reqs := make([]RequestResult, o.NumSamples)
	for i := range reqs {
		reqs[i] = RequestResult{Index: i, InputTokens: promptLen(o.Warmup + i), RequestedOutputTokens: o.OutputTokens}
	}
	chunks.Store(0)
	prog := startProgress(&o, &chunks)
	if o.Markers != nil {
		fmt.Fprintf(o.Markers, "Sending %d requests to %s\n", o.NumSamples, o.APIURL)
	}
	if o.OnMeasureStart != nil {
		o.OnMeasureStart()
	}
	cpu0 := processCPU()
	res.Started = time.Now()
	sent := schedule(ctx, &o, st, func(i int) []byte { return body(o.Warmup + i) }, reqs, prog)
	res.Finished = time.Now()
	cpu1 := processCPU()
	if o.OnMeasureEnd != nil {
		o.OnMeasureEnd()
	}
	if o.Markers != nil {
		what := "batch"
		if res.Backend == "sglang" {
			what = "expert distribution"
		}
		fmt.Fprintf(o.Markers, "Stopped %s recording on server\n", what)
	}
	prog.stop()
	interrupted := ctx.Err() != nil

	// Records are fetched even after Ctrl-C: they are part of what was measured.
	ctl := context.WithoutCancel(ctx)
	if recording {
		if err := rec.stop(ctl); err != nil {
			log.Warn("stop recording failed", zap.Error(err))
		}
		passes, file, err := rec.dump(ctl)
		res.RecordsFile = file
		switch {
		case errors.Is(err, ErrRecordsUnavailable):
			recordsErr = err
			recordsNote = "absent: " + err.Error()
		case err != nil:
			recordsNote = "absent: dump failed: " + err.Error()
			log.Warn("could not collect the server's pass records", zap.Error(err))
		case len(passes) == 0:
			recordsNote = "absent: the server recorded no passes in the recording window"
		default:
			records.DecodeContexts(passes)
			st := StatsOf(passes, len(reqs[:sent]))
			res.Passes, res.Stats = passes, &st
			recordsNote = fmt.Sprintf("%d passes (%d prefill, %d decode) in the recording window, from %s", st.Passes, st.PrefillPasses, st.DecodePasses, file)
			if o.RecordsDir != "" {
				if err := os.MkdirAll(o.RecordsDir, 0o755); err != nil {
					return nil, fmt.Errorf("create records dir: %w", err)
				}
				if wf, err := WriteWindow(o.RecordsDir, passes); err != nil {
					log.Warn("could not write the recording window file", zap.Error(err))
				} else {
					recordsNote += "; window kept in " + wf
				}
			}
		}
	}

	res.Requests = reqs[:sent]
	res.Metrics = computeMetrics(res.Requests, &o, res.Finished.Sub(res.Started))
	res.Metrics.ClientCPUFraction = cpuFraction(cpu0, cpu1, res.Finished.Sub(res.Started))
	res.Metrics.Partial = interrupted
	res.Metrics.Records = recordsNote
	if s := res.Stats; s != nil {
		ApplyStats(&res.Metrics, s)
	}

	if o.OutputDir != "" {
		if err := writeOutputs(&o, res); err != nil {
			return res, err
		}
	}
	m := &res.Metrics
	log.Info("bench finished", zap.Int("completed", m.Completed), zap.Int("failed", m.Failed),
		zap.Float64("output_tok_s", m.OutputThroughput), zap.Any("mean_ttft_ms", m.MeanTTFTMs),
		zap.Any("mean_tpot_ms", m.MeanTPOTMs), zap.Bool("partial", m.Partial), zap.Any("errors", m.Errors))
	if interrupted {
		return res, fmt.Errorf("bench interrupted after %d of %d requests (results marked partial): %w", sent, o.NumSamples, context.Cause(ctx))
	}
	if recordsErr != nil {
		return res, recordsErr
	}
	if m.Completed == 0 {
		return res, fmt.Errorf("%w: all %d requests failed (%s%s); check the server log", ErrNoSuccess, m.Failed, describeErrors(m.Errors), firstFailure(res.Requests))
	}
	if len(m.InvalidReasons) > 0 {
		return res, fmt.Errorf("%w: %s (tolerated: %d bad requests; raise with --allow-bad-requests)", ErrInvalidResult, strings.Join(m.InvalidReasons, "; "), o.AllowedBadRequests)
	}
	return res, nil
}

// ApplyStats puts what the recording window says into m: MoE-CAP's TTFT/TPOT over the
// window (server_pass.window_*; for a native cell also the file figures, which moecapd
// computes from the same window), expert activation, server batch sizes, decode context.
// A runner cell keeps the runner's own file figures in server_pass.
func ApplyStats(m *Metrics, s *PassStats) {
	ms := func(p *float64) *float64 {
		if p == nil {
			return nil
		}
		v := *p * 1000
		return &v
	}
	win := fmt.Sprintf("recording window: %d passes", s.Passes)
	if sp := m.ServerPass; sp != nil { // a runner cell: its file's figures stay
		sp.WindowTTFTMs, sp.WindowTPOTMs = ms(s.TTFTS), ms(s.TPOTS)
		sp.Source += "; window_*: " + win
	} else {
		m.ServerPass = &ServerPass{
			TTFTMoECAPMs: ms(s.TTFTS), TPOTMoECAPMs: ms(s.TPOTS),
			MeanPrefillPassMs: ms(s.PrefillPassLatencyS), MeanDecodePassMs: ms(s.TPOTS),
			WindowTTFTMs: ms(s.TTFTS), WindowTPOTMs: ms(s.TPOTS),
			Source: win,
		}
	}
	m.AvgExpertActivationPrefill, m.AvgExpertActivationDecode = s.ActivationPrefill, s.ActivationDecode
	m.AvgPrefillBatchSize, m.AvgDecodeBatchSize = s.PrefillBatch, s.DecodeBatch
	m.AvgDecodeContextTokens = s.DecodeContextMean
}

// firstFailure is "; first: <kind>: <what the server said>" of the first failed request.
func firstFailure(reqs []RequestResult) string {
	for _, r := range reqs {
		if !r.Success && r.ErrorKind != "" {
			return "; first: " + r.ErrorKind + ": " + clip(r.Error, 300)
		}
	}
	return ""
}

func describeErrors(errs map[string]int) string {
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return errs[keys[i]] > errs[keys[j]] || errs[keys[i]] == errs[keys[j]] && keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d× %s", errs[k], k)
	}
	return strings.Join(parts, ", ")
}

// prewarm opens n keep-alive connections to the server before anything is timed, so the
// first wave's TTFT does not include n simultaneous TCP handshakes (at batch 128 that added
// ~10 ms to the mean TTFT on a 2-core client). Failures are ignored: the run reports them.
func prewarm(ctx context.Context, hc *http.Client, base string, n int) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
			if err != nil {
				return
			}
			if resp, err := hc.Do(req); err == nil {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}

// schedule sends body(i) into reqs[i], for every i of reqs, under o.Schedule and returns how
// many were sent. Sending stops when ctx is cancelled; requests already in flight get
// DrainTimeout more.
func schedule(ctx context.Context, o *Options, st *streamer, body func(i int) []byte, reqs []RequestResult, prog *progress) int {
	n := len(reqs)
	// In-flight requests must outlive ctx by the drain grace, so they hang off a context
	// that ctx's cancellation reaches only after DrainTimeout.
	reqBase, cancelReqs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelReqs()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(o.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelReqs()
		case <-reqBase.Done():
		}
	})
	defer stopDrain()

	var arrivals []time.Duration
	if o.RequestRate > 0 {
		// Poisson arrivals, as vLLM's `bench serve --request-rate` draws them.
		rng := rand.New(rand.NewPCG(uint64(o.Seed), 0x61727269))
		var t float64
		arrivals = make([]time.Duration, n)
		for i := range arrivals {
			arrivals[i] = time.Duration(t * float64(time.Second))
			t += rng.ExpFloat64() / o.RequestRate
		}
	}
	begin := time.Now()
	var wg sync.WaitGroup
	launch := func(i int, done func()) {
		wg.Add(1)
		if prog != nil {
			prog.inflight.Add(1)
		}
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeoutCause(reqBase, o.RequestTimeout,
				fail(KindRequestTimeout, "no complete response within %s (--request-timeout)", o.RequestTimeout))
			st.do(rctx, body(i), &reqs[i])
			cancel()
			reqs[i].StartS = reqs[i].start.Sub(begin).Seconds()
			if prog != nil {
				prog.inflight.Add(-1)
				if reqs[i].Success {
					prog.done.Add(1)
				} else {
					prog.failed.Add(1)
				}
			}
			done()
		}()
	}
	// waitArrival holds request i until its arrival time; false when ctx ended first.
	waitArrival := func(i int) bool {
		if arrivals == nil {
			return ctx.Err() == nil
		}
		d := time.Until(begin.Add(arrivals[i]))
		if d <= 0 {
			return ctx.Err() == nil
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}

	sent := 0
	switch o.Schedule {
	case ScheduleWaves:
	waves:
		for start := 0; start < n; start += o.BatchSize {
			end := min(start+o.BatchSize, n)
			finished := make(chan struct{}, end-start)
			for i := start; i < end; i++ {
				if !waitArrival(i) {
					break waves
				}
				launch(i, func() { finished <- struct{}{} })
				sent++
			}
			// The runner waits for half the wave, at least one (its batch-1 fix).
			for range max(1, (end-start)/2) {
				select {
				case <-finished:
				case <-ctx.Done():
					break waves
				}
			}
		}
	default:
		slots := make(chan struct{}, o.BatchSize)
	loop:
		for i := range n {
			if !waitArrival(i) {
				break
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				break loop
			}
			if ctx.Err() != nil { // a free slot and a cancel at once: do not send
				<-slots
				break
			}
			launch(i, func() { <-slots })
			sent++
		}
	}
	wg.Wait()
	return sent
}

// computeMetrics applies DESIGN.md's definitions (vLLM's) to the requests sent, and judges
// the result's validity: every failed request, usage that disagrees with the stream, missing
// usage and short output counts as a bad request; more than o.AllowedBadRequests of them make
// the result invalid (InvalidReasons says why).
func computeMetrics(reqs []RequestResult, o *Options, dur time.Duration) Metrics {
	m := Metrics{Source: "native", LatencyKind: "client", PromptStyle: o.PromptStyle}
	if o.PromptStyle == PromptUpstream {
		m.LatencyKind = "client_e2e" // non-streaming: only send → reply is seen
	}
	allowed := o.AllowedBadRequests
	m.AllowedBadRequests = &allowed
	var ttft, tpot, itl, e2el []float64
	bad := 0
	for i := range reqs {
		r := &reqs[i]
		r.TTFTMs, r.E2ELMs = ms(r.ttft), ms(r.e2el)
		r.ITLMs = make([]float64, len(r.itl))
		for j, d := range r.itl {
			r.ITLMs[j] = ms(d)
		}
		if !r.Success {
			m.Failed++
			bad++
			if m.Errors == nil {
				m.Errors = map[string]int{}
			}
			m.Errors[r.ErrorKind]++
			continue
		}
		m.Completed++
		m.TotalInputTokens += r.PromptTokens
		m.TotalOutputTokens += r.OutputTokens
		isBad := false
		if r.UsageMissing {
			m.UsageMissing++
			isBad = true
		}
		if r.UsageStreamMismatch {
			m.UsageStreamMismatches++
			isBad = true
		}
		if o.IgnoreEOS && o.OutputTokens > 0 && r.OutputTokens < o.OutputTokens {
			r.ShortOutput = true
			m.ShortOutputs++
			isBad = true
		}
		// The upstream style's prompt is templated text, longer than the target by design.
		inMismatch := o.PromptStyle != PromptUpstream && o.InputTokens > 0 && r.PromptTokens != o.InputTokens
		if inMismatch || (o.OutputTokens > 0 && r.OutputTokens != o.OutputTokens) {
			r.LengthMismatch = true
			m.LengthMismatches++
		}
		if isBad {
			bad++
		}
		e2el = append(e2el, r.E2ELMs)
		if o.PromptStyle == PromptUpstream {
			continue // no stream, no client TTFT/TPOT/ITL
		}
		ttft = append(ttft, r.TTFTMs)
		if r.OutputTokens > 1 {
			r.TPOTMs = (r.E2ELMs - r.TTFTMs) / float64(r.OutputTokens-1)
			tpot = append(tpot, r.TPOTMs)
		}
		itl = append(itl, r.ITLMs...)
	}
	m.BadRequests = bad
	if bad > allowed {
		if m.Failed > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d of %d requests failed (%s)", m.Failed, len(reqs), describeErrors(m.Errors)))
		}
		if m.UsageStreamMismatches > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests: the server's usage disagrees with the tokens it streamed", m.UsageStreamMismatches))
		}
		if m.UsageMissing > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests: no usage in the reply, token counts unverifiable", m.UsageMissing))
		}
		if m.ShortOutputs > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests generated fewer than the %d tokens asked for with ignore_eos", m.ShortOutputs, o.OutputTokens))
		}
	}
	m.DurationS = dur.Seconds()
	if m.DurationS > 0 && len(reqs) > 0 {
		// Requests in flight, as the client saw them: every request's send → end, over the
		// run (a time-weighted mean; failed requests count while they were out).
		var busy float64
		for i := range reqs {
			busy += reqs[i].e2el.Seconds()
		}
		v := busy / m.DurationS
		m.ClientInFlightMean = &v
	}
	if m.DurationS > 0 {
		m.RequestThroughput = float64(m.Completed) / m.DurationS
		m.OutputThroughput = float64(m.TotalOutputTokens) / m.DurationS
		m.TotalTokenThroughput = float64(m.TotalInputTokens+m.TotalOutputTokens) / m.DurationS
	}
	d := DistOf(ttft)
	m.MeanTTFTMs, m.MedianTTFTMs, m.P90TTFTMs, m.P99TTFTMs, m.StdTTFTMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(tpot)
	m.MeanTPOTMs, m.MedianTPOTMs, m.P90TPOTMs, m.P99TPOTMs, m.StdTPOTMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(itl)
	m.MeanITLMs, m.MedianITLMs, m.P90ITLMs, m.P99ITLMs, m.StdITLMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(e2el)
	m.MeanE2ELMs, m.MedianE2ELMs, m.P90E2ELMs, m.P99E2ELMs, m.StdE2ELMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	return m
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchFile is moecapd's own result file (<output_dir>/.moecapd/bench_<ds>_<ts>.json): the
// full metric set and every request.
type benchFile struct {
	SchemaVersion int             `json:"schema_version"`
	Client        string          `json:"client"`
	APIURL        string          `json:"api_url"`
	Model         string          `json:"model"`
	Backend       string          `json:"backend"`
	Dataset       string          `json:"dataset"`
	Schedule      string          `json:"schedule"`
	PromptStyle   string          `json:"prompt_style"`
	BatchSize     int             `json:"batch_size"`
	NumSamples    int             `json:"num_samples"`
	Warmup        int             `json:"warmup"`
	RequestRate   float64         `json:"request_rate"`
	Seed          int64           `json:"seed"`
	InputTokens   int             `json:"target_input_tokens"`
	OutputTokens  int             `json:"target_output_tokens"`
	IgnoreEOS     bool            `json:"ignore_eos"`
	Started       time.Time       `json:"started"`
	Finished      time.Time       `json:"finished"`
	Metrics       Metrics         `json:"metrics"`
	RecordsFile   string          `json:"records_file,omitempty"`
	RunnerFiles   RunnerPaths     `json:"runner_files"`
	Requests      []RequestResult `json:"requests"`
}

// BenchDir is where moecapd keeps its own result file inside an output dir: a hidden
// directory, so neither a glob over <org>/<model>/ nor upstream's recursive "**/*.json"
// upload glob (Python's glob skips dot directories) mistakes it for a runner result.
const BenchDir = ".moecapd"

// FindBenchFile is the newest moecapd bench file under an output dir (OutputDir/.moecapd/
// bench_<ds>_<ts>.json, or .json.zst once its cell has ended: read it with fsx.ReadFile; the
// timestamp sorts), or "" when there is none.
func FindBenchFile(outputDir string) string {
	dir := filepath.Join(outputDir, BenchDir)
	ents, _ := os.ReadDir(dir) // sorted by name
	for i := len(ents) - 1; i >= 0; i-- {
		if n := ents[i].Name(); !ents[i].IsDir() && strings.HasPrefix(n, "bench_") && strings.HasSuffix(fsx.Base(n), ".json") {
			return filepath.Join(dir, n)
		}
	}
	return ""
}

// ReadBenchRequests reads the per-request rows of a bench file (FindBenchFile): every
// request sent, failed ones included (Success false). It is the one reader of those rows.
func ReadBenchRequests(path string) ([]RequestResult, error) {
	b, err := fsx.ReadFile(path) // path or path.zst: compressed once its cell has ended
	if err != nil {
		return nil, err
	}
	var bf struct {
		Requests []RequestResult `json:"requests"`
	}
	if err := json.Unmarshal(b, &bf); err != nil {
		return nil, fmt.Errorf("bench file %s: %w", path, err)
	}
	return bf.Requests, nil
}

// writeOutputs writes the runner's four files into OutputDir/<org>/<model>/ and moecapd's
// bench file (every request, client latencies) into OutputDir/.moecapd/.
func writeOutputs(o *Options, res *Result) error {
	dir := ModelDir(o.OutputDir, o.Model)
	rf := runnerFiles(o, res)
	paths, err := WriteRunnerFiles(dir, o.Dataset, res.Started, rf)
	res.Files = paths
	if err != nil {
		return err
	}
	bdir := filepath.Join(o.OutputDir, BenchDir)
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", bdir, err)
	}
	res.BenchJSON = filepath.Join(bdir, "bench_"+o.Dataset+"_"+res.Started.Format(RunnerTimestampLayout)+".json")
	bf := benchFile{
		SchemaVersion: 1, Client: "moecapd", APIURL: o.APIURL, Model: o.Model, Backend: res.Backend,
		Dataset: o.Dataset, Schedule: o.Schedule, PromptStyle: o.PromptStyle, BatchSize: o.BatchSize, NumSamples: o.NumSamples,
		Warmup: o.Warmup, RequestRate: o.RequestRate, Seed: o.Seed, InputTokens: o.InputTokens,
		OutputTokens: o.OutputTokens, IgnoreEOS: o.IgnoreEOS, Started: res.Started, Finished: res.Finished,
		Metrics: res.Metrics, RecordsFile: res.RecordsFile, RunnerFiles: paths, Requests: res.Requests,
	}
	return writeJSON(res.BenchJSON, bf)
}

// runnerFiles fills the runner's four files from a native run with the runner's meanings:
// e2e_s is the wall time divided by the requests sent, request/s their count over the wall
// time, ttft MoE-CAP's per-request prefill sum from the recording window (else the mean
// client TTFT of the successes, else null), tpot the mean decode pass (else the client's
// (latency − ttft)/output per request), absent measurements null where the runner writes
// null and 0 where it writes 0.
func runnerFiles(o *Options, res *Result) *RunnerFiles {
	m := &res.Metrics
	f := &RunnerFiles{}
	n := len(res.Requests)
	wall := res.Finished.Sub(res.Started).Seconds()
	var inAll, inDone, outAll int
	var ttftSum, tpotSum float64
	var ttftN, tpotN int
	for _, r := range res.Requests {
		in := r.PromptTokens
		if in == 0 || !r.Success {
			in = r.InputTokens
		}
		row := RunnerRequest{
			Index: r.Index, InputTokens: r.InputTokens, InputTokenCount: in,
			RequestedOutputTokens: r.RequestedOutputTokens, Success: r.Success,
			LatencyS: PyNum(r.E2ELMs / 1000), TTFTS: PyNum(r.TTFTMs / 1000),
		}
		if o.PromptStyle == PromptUpstream && !o.UseChatAPI && r.Success {
			// The runner reads a non-streaming completion's body as one "chunk": its ttft_s is
			// when the body arrived.
			row.TTFTS = row.LatencyS
		}
		inAll += in
		if r.Success {
			row.OutputText = r.OutputText
			row.OutputTokenCount = r.OutputTokens
			inDone += in
			outAll += r.OutputTokens
			if row.TTFTS > 0 {
				ttftSum += float64(row.TTFTS)
				ttftN++
			}
			if r.OutputTokens > 0 && row.LatencyS >= row.TTFTS {
				tpotSum += float64(row.LatencyS-row.TTFTS) / float64(r.OutputTokens)
				tpotN++
			}
		} else {
			row.Error = truncate(r.ErrorKind+": "+r.Error, 500)
			row.LatencyS = 0 // the runner records no latency for a failed request
		}
		f.Requests = append(f.Requests, row)
	}
	perf := &f.Metrics.Performance
	perf.E2ES = PyFloat(wall / float64(max(n, 1)))
	if wall > 0 {
		perf.RequestsPerS = PyFloat(float64(n) / wall)
	}
	s := res.Stats
	if s == nil {
		s = &PassStats{}
	}
	switch {
	case s.TTFTS != nil:
		perf.TTFT = pyPtr(s.TTFTS)
	case ttftN > 0 && ttftSum > 0:
		v := ttftSum / float64(ttftN)
		perf.TTFT = pyPtr(&v)
	}
	perf.PrefillPassLatencyS = pyPtr(s.PrefillPassLatencyS)
	switch {
	case s.TPOTS != nil:
		perf.TPOT = PyNum(*s.TPOTS)
	case tpotN > 0:
		perf.TPOT = PyNum(tpotSum / float64(tpotN))
	}
	perf.PrefillForwardedTokens, perf.PrefillStepElapsedS = s.PrefillForwardedTokens, pyPtr(s.PrefillStepElapsedS)
	f.Metrics.ExpertActivation = RunnerExpertActivation{Prefill: PyNum(deref(s.ActivationPrefill)), Decode: PyNum(deref(s.ActivationDecode))}
	nn := float64(max(n, 1))
	f.Metrics.BatchTokenProfile = RunnerBatchTokenProfile{
		PrefillTokens: inAll, PrefillTokensPerRequest: PyFloat(float64(inAll) / nn), PrefillAvgBatchSize: PyNum(deref(s.PrefillBatch)),
		DecodeGeneratedTokens: outAll, DecodeGeneratedTokensPerRequest: PyFloat(float64(outAll) / nn), DecodeAvgBatchSize: PyNum(deref(s.DecodeBatch)),
		PrefillTokensAttempted: inAll, PrefillTokensCompleted: inDone,
	}
	served := 0
	for _, r := range res.Requests {
		if r.Success || r.TTFTMs > 0 {
			served++
		}
	}
	// Fixed-length mode scores every generation against an empty target: exact match 0.
	acc, total, attempted, completed := PyFloat(0), n, n, m.Completed
	f.Metrics.Quality = RunnerQuality{Acc: &acc, Total: &total, Attempted: &attempted, Served: &served, Completed: &completed}

	md := &f.Metadata
	md.Hardware.GPUType, md.Hardware.NumGPUs = "Unknown", 1
	if s.GPURawType != "" {
		md.Hardware.GPUType = s.GPURawType
	}
	if s.GPUNum != nil {
		md.Hardware.NumGPUs = int(*s.GPUNum)
	}
	md.ModelConfig.ModelName, md.ModelConfig.Precision = o.Model, o.Precision
	se := &md.SystemEnvironment
	se.InferenceEngine, se.InferenceEngineVersion = res.Backend, res.EngineVersion
	if se.InferenceEngineVersion == "" {
		se.InferenceEngineVersion = "unknown"
	}
	se.BatchSize = o.ServerBatchSize
	if se.BatchSize == nil && o.BatchSize < o.NumSamples {
		bs := o.BatchSize
		se.BatchSize = &bs
	}
	se.AvgBatchSizePrefill, se.AvgBatchSizeDecode = PyNum(deref(s.PrefillBatch)), PyNum(deref(s.DecodeBatch))
	f.Passes = detailedRows(res.Passes)
	return f
}

// detailedRows are detailed_results rows: one per pass with the runner's keys, latency under
// "ttft" for prefill passes and "tpot" otherwise, per_req_info, req_ids and scheduled_tokens
// copied verbatim when the record has them.
func detailedRows(passes []Pass) []RunnerPass {
	rows := make([]RunnerPass, 0, len(passes))
	zero := json.RawMessage("0")
	get := func(p *Pass, k string, def json.RawMessage) json.RawMessage {
		if v, ok := p.Raw[k]; ok {
			return v
		}
		return def
	}
	for i := range passes {
		p := &passes[i]
		mode := json.RawMessage(`"unknown"`)
		if v, ok := p.Raw["forward_mode"]; ok {
			mode = v
		}
		row := RunnerPass{Index: i, ForwardMode: mode, ExpertActivation: get(p, "expert_activation", zero),
			BatchSize: get(p, "batch_size", zero), SeqLensSum: get(p, "seq_lens_sum", zero)}
		lat := get(p, "latency", zero)
		if p.Mode == records.Prefill {
			row.TTFT = lat
		} else {
			row.TPOT = lat
		}
		if v, ok := p.Raw["per_req_info"]; ok && truthy(v) {
			row.PerReqInfo = v
		}
		if v, ok := p.Raw["req_ids"]; ok && truthy(v) {
			row.ReqIDs = v
		}
		if v, ok := p.Raw["scheduled_tokens"]; ok && string(v) != "null" {
			row.ScheduledTokens = v
		}
		rows = append(rows, row)
	}
	return rows
}

// truthy is Python's truth of a JSON value as the runner tests it (an empty list is false).
func truthy(v json.RawMessage) bool {
	switch string(bytes.TrimSpace(v)) {
	case "", "null", "[]", "{}", "false", "0", `""`:
		return false
	}
	return true
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
