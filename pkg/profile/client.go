package profile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/moecapd/moecapd/pkg/records"

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
	RequestRate  float64 // mean requests/s of an open-loop load (GammaPacer); 0: the closed loop
	Burstiness   float64 // shape of the open loop's gamma-distributed gaps; 0 or 1: Poisson
	// MaxConcurrency caps the open loop's requests in flight; 0: no cap (the server queues).
	// The closed loop's is BatchSize.
	MaxConcurrency int
	// SLO, when set, judges every request (Metrics.Goodput); needs streamed latencies
	// (PromptExactIDs).
	SLO        *SLO
	Seed       int64 // fixes random prompts and arrival times
	UseChatAPI bool  // post to /v1/chat/completions (messages) instead of /v1/completions
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
	// Probed says the caller already probed the server for what these options need (Probe,
	// the cell pipeline's step right after readiness); otherwise Run probes first.
	Probed bool
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
	if o.RequestRate < 0 || o.Warmup < 0 || o.Burstiness < 0 || o.MaxConcurrency < 0 {
		bad = append(bad, "request rate, burstiness, max concurrency and warmup must not be negative")
	}
	if o.SLO != nil && o.PromptStyle == PromptUpstream {
		bad = append(bad, "an SLO needs streamed TTFT and TPOT: use prompt style exact-ids (upstream's non-streaming replies have only E2E latency)")
	}
	if o.Dataset == "" {
		bad = append(bad, "dataset is empty; want gsm8k, longbench_v2 or random")
	}
	if len(bad) > 0 {
		return fmt.Errorf("bench options: %s", strings.Join(bad, "; "))
	}
	return nil
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
	if !o.Probed {
		// What the prompts need of the server (/tokenize, /detokenize) is asked first, so a
		// server without it is named as such, not met halfway through building prompts.
		if err := Probe(ctx, o); err != nil {
			return nil, err
		}
	}
	tk := &tokenizer{hc: hc, base: base, model: o.Model, apiKey: o.APIKey, timeout: o.requestTimeout()}
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
