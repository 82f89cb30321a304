package profile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
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
	UseChatAPI   bool    // stream /v1/chat/completions with text (needs the server's /detokenize)

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

	RequestTimeout time.Duration // per request, send to last byte; default 1 h
	DrainTimeout   time.Duration // after ctx is cancelled, how long in-flight requests may finish; default 5 s

	// Progress, when set, gets a progress line redrawn in place (meant for a terminal).
	// Otherwise a log line is written every ProgressInterval (default 10 s).
	Progress         io.Writer
	ProgressInterval time.Duration
	Log              *zap.Logger
	HTTPClient       *http.Client // default: a client sized for BatchSize connections
	Precision        string       // written to the metadata file; default bfloat16
}

// Result is a finished (or interrupted) run.
type Result struct {
	Metrics  Metrics         `json:"metrics"`
	Requests []RequestResult `json:"requests"`
	Backend  string          `json:"backend"`
	// Records summarises the server's pass records; nil when there were none.
	Records     *RecordSummary `json:"-"`
	RecordsFile string         `json:"records_file,omitempty"`
	Files       RunnerPaths    `json:"runner_files"`
	BenchJSON   string         `json:"-"`
	Started     time.Time      `json:"started"`
	Finished    time.Time      `json:"finished"`
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
		o.RequestTimeout = time.Hour
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 5 * time.Second
	}
	if o.Precision == "" {
		o.Precision = "bfloat16"
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

	tk := &tokenizer{hc: hc, base: base, model: o.Model, apiKey: o.APIKey}
	pr, err := buildPrompts(ctx, &o, tk, o.Warmup+o.NumSamples)
	if err != nil {
		return nil, err
	}
	bodies := make([][]byte, len(pr.ids))
	for i, ids := range pr.ids {
		text := ""
		if pr.texts != nil {
			text = pr.texts[i]
		}
		bodies[i] = requestBody(&o, ids, text)
	}

	conns := o.BatchSize
	if o.Schedule == ScheduleWaves {
		conns += o.BatchSize / 2
	}
	prewarm(ctx, hc, base, conns)

	var chunks atomic.Int64
	st := &streamer{hc: hc, url: o.APIURL, apiKey: o.APIKey, chunks: &chunks}

	if o.Warmup > 0 {
		log.Info("warm-up", zap.Int("requests", o.Warmup))
		wu := make([]RequestResult, o.Warmup)
		for i := range wu {
			wu[i] = RequestResult{Index: i, InputTokens: len(pr.ids[i]), RequestedOutputTokens: o.OutputTokens}
		}
		wo := o
		wo.RequestRate = 0
		schedule(ctx, &wo, st, bodies[:o.Warmup], wu, nil)
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
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("interrupted during warm-up: %w", err)
		}
	}

	var rec *recorder
	recording := false
	recordsNote := ""
	if !o.NoRecords {
		dir := o.SGLangRecorderDir
		if dir == "" {
			dir = o.RecordsDir
		}
		rec = &recorder{hc: hc, base: base, backend: res.Backend, model: o.Model, serverDir: dir, recordsDir: o.RecordsDir, apiKey: o.APIKey}
		if err := rec.start(ctx); err != nil {
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
		reqs[i] = RequestResult{Index: i, InputTokens: len(pr.ids[o.Warmup+i]), RequestedOutputTokens: o.OutputTokens}
	}
	chunks.Store(0)
	prog := startProgress(&o, &chunks)
	res.Started = time.Now()
	sent := schedule(ctx, &o, st, bodies[o.Warmup:], reqs, prog)
	res.Finished = time.Now()
	prog.stop()
	interrupted := ctx.Err() != nil

	// Records are fetched even after Ctrl-C: they are part of what was measured.
	ctl := context.WithoutCancel(ctx)
	if recording {
		if err := rec.stop(ctl); err != nil {
			log.Warn("stop recording failed", zap.Error(err))
		}
		recs, file, err := rec.dump(ctl)
		res.RecordsFile = file
		switch {
		case err != nil:
			recordsNote = "absent: dump failed: " + err.Error()
			log.Warn("could not collect the server's pass records", zap.Error(err))
		case len(recs) == 0:
			recordsNote = "absent: the server returned no pass records"
		default:
			sum := SummarizeRecords(recs)
			sum.raw = recs
			res.Records = &sum
			recordsNote = fmt.Sprintf("%d passes (%d prefill, %d decode) in %s", sum.Passes, sum.PrefillPasses, sum.DecodePasses, file)
		}
	}

	res.Requests = reqs[:sent]
	res.Metrics = computeMetrics(res.Requests, o.InputTokens, o.OutputTokens, res.Finished.Sub(res.Started))
	res.Metrics.Partial = interrupted
	res.Metrics.Records = recordsNote
	if s := res.Records; s != nil {
		res.Metrics.AvgExpertActivationPrefill = s.AvgExpertActivationPrefill
		res.Metrics.AvgExpertActivationDecode = s.AvgExpertActivationDecode
		res.Metrics.AvgPrefillBatchSize = s.AvgPrefillBatchSize
		res.Metrics.AvgDecodeBatchSize = s.AvgDecodeBatchSize
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
		return res, fmt.Errorf("bench interrupted after %d of %d requests (results marked partial): %w", sent, o.NumSamples, ctx.Err())
	}
	if m.Completed == 0 {
		return res, fmt.Errorf("%w: all %d requests failed (%s); check the server log", ErrNoSuccess, m.Failed, describeErrors(m.Errors))
	}
	return res, nil
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

// schedule sends bodies[i] into reqs[i] under o.Schedule and returns how many were sent.
// Sending stops when ctx is cancelled; requests already in flight get DrainTimeout more.
func schedule(ctx context.Context, o *Options, st *streamer, bodies [][]byte, reqs []RequestResult, prog *progress) int {
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
		arrivals = make([]time.Duration, len(bodies))
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
			rctx, cancel := context.WithTimeout(reqBase, o.RequestTimeout)
			st.do(rctx, bodies[i], &reqs[i])
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
		for start := 0; start < len(bodies); start += o.BatchSize {
			end := min(start+o.BatchSize, len(bodies))
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
		for i := range bodies {
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

// computeMetrics applies DESIGN.md's definitions (vLLM's) to the requests sent.
func computeMetrics(reqs []RequestResult, targetIn, targetOut int, dur time.Duration) Metrics {
	m := Metrics{Source: "native", LatencyKind: "client"}
	var ttft, tpot, itl, e2el []float64
	for i := range reqs {
		r := &reqs[i]
		r.TTFTMs, r.E2ELMs = ms(r.ttft), ms(r.e2el)
		r.ITLMs = make([]float64, len(r.itl))
		for j, d := range r.itl {
			r.ITLMs[j] = ms(d)
		}
		if !r.Success {
			m.Failed++
			if m.Errors == nil {
				m.Errors = map[string]int{}
			}
			m.Errors[r.ErrorKind]++
			continue
		}
		m.Completed++
		m.TotalInputTokens += r.PromptTokens
		m.TotalOutputTokens += r.OutputTokens
		if r.UsageMissing {
			m.UsageMissing++
		}
		if (targetIn > 0 && r.PromptTokens != targetIn) || (targetOut > 0 && r.OutputTokens != targetOut) {
			r.LengthMismatch = true
			m.LengthMismatches++
		}
		ttft = append(ttft, r.TTFTMs)
		e2el = append(e2el, r.E2ELMs)
		if r.OutputTokens > 1 {
			r.TPOTMs = (r.E2ELMs - r.TTFTMs) / float64(r.OutputTokens-1)
			tpot = append(tpot, r.TPOTMs)
		}
		itl = append(itl, r.ITLMs...)
	}
	m.DurationS = dur.Seconds()
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

// benchFile is bench.json: the full metric set and every request.
type benchFile struct {
	SchemaVersion int             `json:"schema_version"`
	Client        string          `json:"client"`
	APIURL        string          `json:"api_url"`
	Model         string          `json:"model"`
	Backend       string          `json:"backend"`
	Dataset       string          `json:"dataset"`
	Schedule      string          `json:"schedule"`
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

// writeOutputs writes the runner's four files and bench.json into OutputDir/<org>/<model>/.
func writeOutputs(o *Options, res *Result) error {
	dir := ModelDir(o.OutputDir, o.Model)
	rf := runnerFiles(o, res)
	paths, err := WriteRunnerFiles(dir, o.Dataset, res.Started, rf)
	res.Files = paths
	if err != nil {
		return err
	}
	res.BenchJSON = filepath.Join(dir, "bench.json")
	bf := benchFile{
		SchemaVersion: 1, Client: "moecapd", APIURL: o.APIURL, Model: o.Model, Backend: res.Backend,
		Dataset: o.Dataset, Schedule: o.Schedule, BatchSize: o.BatchSize, NumSamples: o.NumSamples,
		Warmup: o.Warmup, RequestRate: o.RequestRate, Seed: o.Seed, InputTokens: o.InputTokens,
		OutputTokens: o.OutputTokens, IgnoreEOS: o.IgnoreEOS, Started: res.Started, Finished: res.Finished,
		Metrics: res.Metrics, RecordsFile: res.RecordsFile, RunnerFiles: paths, Requests: res.Requests,
	}
	return writeJSON(res.BenchJSON, bf)
}

// runnerFiles fills the runner's four files from a native run. Where the runner publishes
// server pass latencies (performance.ttft/tpot) we do too when the server recorded passes;
// without records we publish the client's stream latencies and say so in ttft_source.
func runnerFiles(o *Options, res *Result) *RunnerFiles {
	m := &res.Metrics
	f := &RunnerFiles{}
	for _, r := range res.Requests {
		in := r.PromptTokens
		if in == 0 {
			in = r.InputTokens
		}
		row := RunnerRequest{
			Index: r.Index, InputTokens: r.InputTokens, InputTokenCount: in,
			RequestedOutputTokens: r.RequestedOutputTokens, Success: r.Success,
			LatencyS: r.E2ELMs / 1000, TTFTS: r.TTFTMs / 1000,
		}
		if r.Success {
			row.OutputTokenCount = r.OutputTokens
		} else {
			row.Error = truncate(r.ErrorKind+": "+r.Error, 500)
		}
		f.Requests = append(f.Requests, row)
	}
	perf := &f.Metrics.Performance
	perf.E2ES = m.DurationS
	perf.RequestsPerS = m.RequestThroughput
	perf.TTFT, perf.TPOT, perf.TTFTSource = deref(m.MeanTTFTMs)/1000, deref(m.MeanTPOTMs)/1000, "client_stream"
	var bp RunnerBatchTokenProfile
	n := max(len(res.Requests), 1)
	bp.PrefillTokens = m.TotalInputTokens
	bp.PrefillTokensPerRequest = float64(m.TotalInputTokens) / float64(n)
	bp.DecodeGeneratedTokens = m.TotalOutputTokens
	bp.DecodeGeneratedTokensPerRequest = float64(m.TotalOutputTokens) / float64(n)
	if s := res.Records; s != nil {
		if s.MeanPrefillLatencyS != nil {
			perf.TTFT, perf.TTFTSource = *s.MeanPrefillLatencyS, "server_pass"
			perf.PrefillPassLatencyS = s.MeanPrefillLatencyS
		}
		if s.MeanDecodeLatencyS != nil {
			perf.TPOT = *s.MeanDecodeLatencyS
		}
		f.Metrics.ExpertActivation = &RunnerExpertActivation{Prefill: deref(s.AvgExpertActivationPrefill), Decode: deref(s.AvgExpertActivationDecode)}
		bp.PrefillAvgBatchSize, bp.DecodeAvgBatchSize = deref(s.AvgPrefillBatchSize), deref(s.AvgDecodeBatchSize)
		for i, p := range s.raw {
			rp := RunnerPass{Index: i, ForwardMode: p.ForwardMode, BatchSize: p.BatchSize, SeqLensSum: p.SeqLensSum}
			if rp.ForwardMode == "" {
				rp.ForwardMode = "unknown"
			}
			if p.ExpertActivation != nil {
				rp.ExpertActivation = *p.ExpertActivation
			}
			lat := 0.0
			if p.Latency != nil {
				lat = *p.Latency
			}
			if p.isPrefill() {
				rp.TTFT = &lat
			} else {
				rp.TPOT = &lat
			}
			f.Passes = append(f.Passes, rp)
		}
	} else {
		// The runner writes zeros here without records; so do we, and readers of our
		// files (ReadMoECAPOutput) map zeros back to "absent".
		f.Metrics.ExpertActivation = &RunnerExpertActivation{}
	}
	f.Metrics.BatchTokenProfile = &bp
	attempted, served, completed, failed := o.NumSamples, len(res.Requests), m.Completed, m.Failed
	f.Metrics.Quality = &RunnerQuality{Attempted: &attempted, Served: &served, Completed: &completed, Failed: &failed}
	if m.Completed == 0 {
		f.Metrics.Error = "No successful requests"
	}

	md := &f.Metadata
	md.Hardware.GPUType, md.Hardware.NumGPUs = "Unknown", 1
	if s := res.Records; s != nil {
		if s.GPURawType != "" {
			md.Hardware.GPUType = s.GPURawType
		}
		if s.GPUNum > 0 {
			md.Hardware.NumGPUs = s.GPUNum
		}
	}
	md.ModelConfig.ModelName, md.ModelConfig.Precision = o.Model, o.Precision
	se := &md.SystemEnvironment
	se.InferenceEngine, se.InferenceEngineVersion, se.BatchSize = res.Backend, "unknown", o.BatchSize
	se.AvgBatchSizePrefill, se.AvgBatchSizeDecode = bp.PrefillAvgBatchSize, bp.DecodeAvgBatchSize
	se.Client = "moecapd"
	if f.Passes == nil {
		f.Passes = []RunnerPass{}
	}
	return f
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
