// Package sim is the built-in simulated MoE inference server behind `moecapd sim-server`
// and `--backend sim`: an OpenAI-compatible HTTP server that answers like the MoE-CAP
// SGLang or vLLM wrapper, times its forward passes with a roofline of the model on the
// hardware, batches continuously, writes the wrappers' per-pass records, and can inject
// the failures a supervisor has to survive.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
)

// Flavors.
const (
	FlavorSGLang = "sglang"
	FlavorVLLM   = "vllm"
)

// Pass times of a model the sim cannot describe (when --sim-tpot/--sim-ttft are not given).
const (
	UndescribedTPOT = 10 * time.Millisecond
	UndescribedTTFT = 50 * time.Millisecond
)

// Faults that --sim-fault injects.
const (
	FaultExitOnStart   = "exit-on-start"
	FaultNeverReady    = "never-ready"
	FaultIgnoreSIGTERM = "ignore-sigterm"
	FaultOOMOnStart    = "oom-on-start"
	FaultCrashMidRun   = "crash-mid-run"
	// FaultHTTP500Some answers every 4th completion (of more than one token) with HTTP 500,
	// as an overloaded server does; FaultUsageLie makes every 4th one's usage claim ten times
	// the tokens streamed. Both exist for the native client's validity checks.
	FaultHTTP500Some = "http-500-some"
	FaultUsageLie    = "usage-lie"
	// Misbehaving servers for the native client's limits; each hits every completion of
	// more than one token (readiness's 1-token probe still passes): FaultStallMidStream
	// streams two chunks and then nothing, FaultNoHeaders never answers,
	// FaultIgnoreMaxTokens streams chunks without end, FaultEndlessLine streams one "data:"
	// line that never ends, FaultError200 answers HTTP 200 with a JSON error body.
	FaultStallMidStream  = "stall-mid-stream"
	FaultNoHeaders       = "no-headers"
	FaultIgnoreMaxTokens = "ignore-max-tokens"
	FaultEndlessLine     = "endless-line"
	FaultError200        = "error-200"
	// FaultNoTokenize serves no /tokenize and /detokenize (404), as a server built without
	// them: what the native client needs of the server is probed right after readiness.
	FaultNoTokenize = "no-tokenize"
	// FaultMetricsLie makes /metrics disagree with what was served, for the truth verdict's
	// triangulation: the generation-token counter counts every token twice and vLLM's
	// preemption counter counts one preemption per request admitted (the engine never
	// preempts).
	FaultMetricsLie = "metrics-lie"
)

// Faults lists the valid Config.Fault values.
var Faults = []string{FaultExitOnStart, FaultNeverReady, FaultIgnoreSIGTERM, FaultOOMOnStart, FaultCrashMidRun, FaultHTTP500Some, FaultUsageLie,
	FaultStallMidStream, FaultNoHeaders, FaultIgnoreMaxTokens, FaultEndlessLine, FaultError200, FaultNoTokenize, FaultMetricsLie}

// Config is everything the simulated server needs; cmd/moecapd fills it from flags and env.
type Config struct {
	Flavor      string // sglang | vllm
	ServedModel string // --model-path / --model, byte for byte: the id clients must send
	Model       config.Model
	// Undescribed, when set, says why Model has no architecture: the sim then serves it
	// with fixed pass times (UndescribedTPOT/TTFT unless --sim-tpot/--sim-ttft) and no
	// memory model, and nothing it records is physical.
	Undescribed string
	Hardware    config.Hardware
	TP          int
	MaxRunning  int // --max-running-requests / --max-num-seqs
	MaxModelLen int // 0: Model.MaxPositions
	Host        string
	Port        int
	RecordsDir  string // SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR
	// ExpertDistributionMetrics is vLLM's --enable-expert-distribution-metrics: the wrapper
	// then also logs every pass since start-up under <RecordsDir>/logs/expert_distribution/.
	ExpertDistributionMetrics bool
	// EnableMetrics is SGLang's --enable-metrics: /metrics answers (vLLM's always does).
	EnableMetrics bool
	Fault         string
	Workers       int
	// WorkerCommand is the argv that starts one worker process; cmd/moecapd passes its own
	// executable with the hidden worker flag.
	WorkerCommand []string
	Startup       time.Duration // loading time before listening (wall time, not scaled)
	TPOT          time.Duration // decode pass duration; 0 = roofline
	TTFT          time.Duration // prefill pass duration; 0 = roofline
	TimeScale     float64       // multiplies every pass's wall duration (records keep the model's); 0 means 1
	Out           io.Writer     // log lines; nil discards
}

func (c Config) withDefaults() (Config, error) {
	switch c.Flavor {
	case FlavorSGLang, FlavorVLLM:
	case "":
		return c, errors.New("sim: flavor not set; want sglang or vllm")
	default:
		return c, fmt.Errorf("sim: unknown flavor %q; want sglang or vllm", c.Flavor)
	}
	if c.ServedModel == "" {
		return c, errors.New("sim: no served model; pass the model path (--model-path for sglang, --model for vllm)")
	}
	if c.Undescribed != "" {
		if c.TPOT <= 0 {
			c.TPOT = UndescribedTPOT
		}
		if c.TTFT <= 0 {
			c.TTFT = UndescribedTTFT
		}
		if c.Model.Vocab <= 0 {
			c.Model.Vocab = 32000
		}
	} else if c.Model.Experts <= 0 || c.Model.TopK <= 0 || c.Model.Layers <= 0 {
		return c, fmt.Errorf("sim: model %q has no architecture numbers; load it from the model table", c.ServedModel)
	}
	if c.Hardware.HBMBandwidth <= 0 || c.Hardware.BF16FLOPs <= 0 {
		return c, errors.New("sim: hardware has no bandwidth or FLOPs; load it from the hardware table")
	}
	if c.Fault != "" && !slices.Contains(Faults, c.Fault) {
		return c, fmt.Errorf("sim: unknown fault %q; want one of %s", c.Fault, strings.Join(Faults, ", "))
	}
	if c.TP <= 0 {
		c.TP = 1
	}
	if c.MaxRunning <= 0 {
		c.MaxRunning = 256
	}
	if c.MaxModelLen <= 0 {
		c.MaxModelLen = c.Model.MaxPositions
	}
	if c.MaxModelLen <= 0 {
		c.MaxModelLen = 32768
	}
	if c.TimeScale < 0 || c.TPOT < 0 || c.TTFT < 0 || c.Startup < 0 {
		return c, errors.New("sim: time scale, TPOT, TTFT and startup must not be negative")
	}
	if c.TimeScale == 0 {
		c.TimeScale = 1
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c, nil
}

// Server is the HTTP side of the simulated server plus its scheduler. It is an
// http.Handler, so tests can put it behind httptest.NewServer.
type Server struct {
	cfg     Config
	tok     Tokenizer
	eng     *engine
	rec     *recorder
	ready   atomic.Bool
	seq     atomic.Uint64
	faultN  atomic.Uint64 // completions of more than one token, for the every-4th faults
	created int64

	cancel   context.CancelFunc
	stopping chan struct{}
	stopOnce sync.Once

	crashed   chan struct{}
	crashOnce sync.Once

	outMu sync.Mutex
}

// NewServer validates cfg and starts the scheduler. The server answers 503 on every
// endpoint until SetReady(true). Close stops it.
func NewServer(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		tok:      Tokenizer{Vocab: cfg.Model.Vocab},
		created:  time.Now().Unix(),
		stopping: make(chan struct{}),
		crashed:  make(chan struct{}),
	}
	s.rec = newRecorder(cfg.Flavor, cfg.RecordsDir, cfg.ServedModel, cfg.ExpertDistributionMetrics, cfg.TP, GPURawType(cfg.Hardware))
	s.eng = newEngine(cfg, s.rec)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.eng.run(ctx)
	return s, nil
}

// SetReady switches /health between 503 (loading) and 200.
func (s *Server) SetReady(ok bool) { s.ready.Store(ok) }

// Close stops the scheduler and ends every open stream. It is idempotent.
func (s *Server) Close() {
	s.stopOnce.Do(func() {
		close(s.stopping)
		s.cancel()
		s.rec.close()
	})
}

// Crashed is closed when the crash-mid-run fault fires.
func (s *Server) Crashed() <-chan struct{} { return s.crashed }

// Config is the configuration after defaults.
func (s *Server) Config() Config { return s.cfg }

func (s *Server) logf(format string, a ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	fmt.Fprintf(s.cfg.Out, format+"\n", a...)
}

// ServeHTTP routes like the real servers: sglang-only and vllm-only endpoints answer 404
// on the other flavor, which is how the MoE-CAP runner tells the backends apart.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if !s.ready.Load() {
		writeError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "server is loading the model; retry when /health answers 200")
		return
	}
	sg := s.cfg.Flavor == FlavorSGLang
	switch {
	case path == "/health" || path == "/health_generate" && sg:
		w.WriteHeader(http.StatusOK)
	case path == "/v1/models":
		s.handleModels(w, r)
	case path == "/get_model_info" && sg:
		s.handleModelInfo(w, r)
	case path == "/get_server_info" && sg:
		writeJSON(w, http.StatusOK, map[string]any{"version": "0.5.8 (moecapd sim)", "model_path": s.cfg.ServedModel, "tp_size": s.cfg.TP})
	case path == "/version" && !sg:
		writeJSON(w, http.StatusOK, map[string]any{"version": "0.11.0 (moecapd sim)"})
	case path == "/metrics" && (!sg || s.cfg.EnableMetrics):
		s.handleMetrics(w, r)
	case (path == "/tokenize" || path == "/detokenize") && s.cfg.Fault == FaultNoTokenize:
		writeError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("%s %s: not served (--sim-fault %s)", r.Method, path, FaultNoTokenize))
	case path == "/tokenize":
		s.handleTokenize(w, r)
	case path == "/detokenize":
		s.handleDetokenize(w, r)
	case path == "/v1/completions":
		s.handleCompletions(w, r)
	case path == "/v1/chat/completions":
		s.handleChat(w, r)
	case sg && (path == "/start_expert_distribution_record" || path == "/stop_expert_distribution_record" || path == "/dump_expert_distribution_record"):
		s.handleSGLangRecord(w, r)
	case !sg && (path == "/start_batch_recording" || path == "/stop_batch_recording" || path == "/dump_batch_recording" || path == "/clear_batch_recording"):
		if !requireMethod(w, r, http.MethodPost) {
			return
		}
		s.handleVLLMRecord(w, r)
	case !sg && path == "/batch_recording_status":
		n, on := s.rec.count()
		writeJSON(w, http.StatusOK, map[string]any{"is_recording": on, "total_records": n})
	default:
		writeError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("%s %s: no such endpoint on the simulated %s server", r.Method, path, s.cfg.Flavor))
	}
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	owner := s.cfg.Flavor
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id":            s.cfg.ServedModel,
			"object":        "model",
			"created":       s.created,
			"owned_by":      owner,
			"root":          s.cfg.ServedModel,
			"parent":        nil,
			"max_model_len": s.cfg.MaxModelLen,
		}},
	})
}

func (s *Server) handleModelInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"model_path":     s.cfg.ServedModel,
		"tokenizer_path": s.cfg.ServedModel,
		"is_generation":  true,
	})
}

func (s *Server) handleSGLangRecord(w http.ResponseWriter, r *http.Request) {
	// SGLang registers these for GET and POST and answers with plain text.
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use POST")
		return
	}
	switch r.URL.Path {
	case "/start_expert_distribution_record":
		s.rec.start()
		io.WriteString(w, "Start recording the expert distribution.\n")
	case "/stop_expert_distribution_record":
		s.rec.stop()
		io.WriteString(w, "Stop recording the expert distribution.\n")
	case "/dump_expert_distribution_record":
		if s.cfg.RecordsDir == "" {
			writeError(w, http.StatusInternalServerError, "InternalServerError",
				"no records directory: set SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR for the server")
			return
		}
		recs, _ := s.rec.snapshot()
		path := SGLangRecordPath(s.cfg.RecordsDir, s.cfg.ServedModel)
		if err := writeJSONL(path, recs); err != nil {
			writeError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
			return
		}
		s.logf("Write expert distribution jsonl to %s (%d records)", path, len(recs))
		io.WriteString(w, "Dump expert distribution record.\n")
	}
}

func (s *Server) handleVLLMRecord(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/start_batch_recording":
		s.rec.start()
		writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": "Started recording batch statistics"})
	case "/stop_batch_recording":
		n := s.rec.stop()
		writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": "Stopped recording batch statistics", "total_records": n})
	case "/dump_batch_recording":
		// The wrapper appends each pass to vllm_batch_records.jsonl in the recorder dir as it
		// happens (recorder.add); the dump returns the same records.
		recs, _ := s.rec.snapshot()
		if recs == nil {
			recs = []map[string]any{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "success", "records": recs, "total_records": len(recs)})
	case "/clear_batch_recording":
		n := s.rec.clear()
		writeJSON(w, http.StatusOK, map[string]any{"status": "success", "message": fmt.Sprintf("Cleared %d records", n)})
	}
}

// crash fires the crash-mid-run fault once.
func (s *Server) crash() {
	s.crashOnce.Do(func() {
		s.logf("%s", cudaCrashText)
		close(s.crashed)
	})
}

const cudaCrashText = `[rank0]: Traceback (most recent call last):
[rank0]:   File "/opt/conda/envs/sim/lib/python3.10/site-packages/torch/cuda/__init__.py", line 1046, in synchronize
[rank0]:     return torch._C._cuda_synchronize()
[rank0]: torch.AcceleratorError: CUDA error: an illegal memory access was encountered
[rank0]: CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
[rank0]: For debugging consider passing CUDA_LAUNCH_BLOCKING=1
[rank0]: Compile with ` + "`TORCH_USE_CUDA_DSA`" + ` to enable device-side assertions.`
