package profile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/records"
)

// The MoE-CAP runner (moe_cap.runner.openai_api_profile) writes four files per dataset under
// <output_dir>/<org>/<model>/, all sharing one timestamp. The types below are those files'
// shapes; the reader (ReadMoECAPOutput) and the writer (WriteMoECAPFiles, used by the native
// client so tools that read MoE-CAP results read ours) share them, so the two cannot drift.

// RunnerTimestampLayout is the runner's `datetime.now().strftime("%Y%m%d_%H%M%S")`.
const RunnerTimestampLayout = "20060102_150405"

// PyFloat is a float the runner writes from a Python float: JSON with a decimal point even
// when whole (4.0, 0.0), so a reader sees the type the runner's files have.
type PyFloat float64

// MarshalJSON writes f as Python's json module writes a float.
func (f PyFloat) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(float64(f))
	if err != nil {
		return nil, err
	}
	if !bytes.ContainsAny(b, ".eE") {
		b = append(b, '.', '0')
	}
	return b, nil
}

// PyNum is a value the runner writes as the int 0 when there is nothing to average
// (`... else 0`, `x or 0`) and as a Python float otherwise.
type PyNum float64

// MarshalJSON writes 0 as the int 0 and anything else as PyFloat does.
func (f PyNum) MarshalJSON() ([]byte, error) {
	if f == 0 {
		return []byte("0"), nil
	}
	return PyFloat(f).MarshalJSON()
}

func pyPtr(p *float64) *PyFloat {
	if p == nil {
		return nil
	}
	v := PyFloat(*p)
	return &v
}

// RunnerRequest is one line of output_data_<ds>_<ts>.jsonl, keys in the runner's order.
type RunnerRequest struct {
	Index int `json:"index"`
	// InputTokens is the prompt length the client computed; OutputText the generated text
	// (the runner's historical field names: a count and a text).
	InputTokens           int    `json:"input_tokens"`
	OutputText            string `json:"output_tokens"`
	InputTokenCount       int    `json:"input_token_count"`
	OutputTokenCount      int    `json:"output_token_count"`
	RequestedOutputTokens int    `json:"requested_output_tokens"`
	Success               bool   `json:"success"`
	LatencyS              PyNum  `json:"latency_s"`
	TTFTS                 PyNum  `json:"ttft_s"`
	Error                 string `json:"error,omitempty"`
}

// RunnerPerformance is metrics.performance. Latencies in seconds; E2ES is the wall time
// DIVIDED BY the number of requests, RequestsPerS requests over the wall time. Nullable
// fields are written as null when absent, as the runner does.
type RunnerPerformance struct {
	E2ES                   PyFloat  `json:"e2e_s"`
	RequestsPerS           PyFloat  `json:"request/s"`
	TTFT                   *PyFloat `json:"ttft"`
	PrefillPassLatencyS    *PyFloat `json:"prefill_pass_latency_s"`
	TPOT                   PyNum    `json:"tpot"`
	PrefillForwardedTokens *int     `json:"prefill_forwarded_tokens"`
	PrefillStepElapsedS    *PyFloat `json:"prefill_step_elapsed_s"`
}

// RunnerExpertActivation is metrics.expert_activation. The runner writes 0 when the server
// left no records; readers must treat 0 as "absent" (an MoE pass activates ≥ 1 expert).
type RunnerExpertActivation struct {
	Prefill PyNum `json:"avg_expert_activation_prefill"`
	Decode  PyNum `json:"avg_expert_activation_decode"`
}

// RunnerBatchTokenProfile is metrics.batch_token_profile.
type RunnerBatchTokenProfile struct {
	PrefillTokens                   int     `json:"prefill_tokens"`
	PrefillTokensPerRequest         PyFloat `json:"prefill_tokens_per_request"`
	PrefillAvgBatchSize             PyNum   `json:"prefill_avg_batch_size"`
	DecodeGeneratedTokens           int     `json:"decode_generated_tokens"`
	DecodeGeneratedTokensPerRequest PyFloat `json:"decode_generated_tokens_per_request"`
	DecodeAvgBatchSize              PyNum   `json:"decode_avg_batch_size"`
	PrefillTokensAttempted          int     `json:"prefill_tokens_attempted"`
	PrefillTokensCompleted          int     `json:"prefill_tokens_completed"`
}

// RunnerQuality is metrics.quality: acc and total (fixed-length mode: 0.0 and N), then the
// request cohorts (completed ≤ served ≤ attempted). Completed is what a supervisor checks.
type RunnerQuality struct {
	Acc       *PyFloat `json:"acc,omitempty"`
	Total     *int     `json:"total,omitempty"`
	Attempted *int     `json:"attempted,omitempty"`
	Served    *int     `json:"served,omitempty"`
	Completed *int     `json:"completed,omitempty"`
}

// RunnerMetrics is metrics_<ds>_<ts>.json.
type RunnerMetrics struct {
	Performance       RunnerPerformance       `json:"performance"`
	ExpertActivation  RunnerExpertActivation  `json:"expert_activation"`
	BatchTokenProfile RunnerBatchTokenProfile `json:"batch_token_profile"`
	Quality           RunnerQuality           `json:"quality"`
	// Error was written by older runners when nothing succeeded; read, never written.
	Error string `json:"error,omitempty"`
}

// RunnerMetadata is metadata_<ds>_<ts>.json.
type RunnerMetadata struct {
	Hardware struct {
		GPUType string `json:"gpu_type"`
		NumGPUs int    `json:"num_gpus"`
	} `json:"hardware"`
	ModelConfig struct {
		ModelName string `json:"model_name"`
		Precision string `json:"precision"`
	} `json:"model_config"`
	SystemEnvironment struct {
		InferenceEngine        string `json:"inference_engine"`
		InferenceEngineVersion string `json:"inference_engine_version"`
		// BatchSize is --server-batch-size; null when everything was sent at once.
		BatchSize           *int  `json:"batch_size"`
		AvgBatchSizePrefill PyNum `json:"avg_batch_size_prefill"`
		AvgBatchSizeDecode  PyNum `json:"avg_batch_size_decode"`
	} `json:"system_environment"`
}

// RunnerPass is one line of detailed_results_<ds>_<ts>.jsonl: one server forward pass, its
// latency under "ttft" for prefill passes and "tpot" otherwise; the record's values verbatim.
type RunnerPass struct {
	Index            int             `json:"index"`
	ForwardMode      json.RawMessage `json:"forward_mode"`
	ExpertActivation json.RawMessage `json:"expert_activation"`
	BatchSize        json.RawMessage `json:"batch_size"`
	SeqLensSum       json.RawMessage `json:"seq_lens_sum"`
	TTFT             json.RawMessage `json:"ttft,omitempty"`
	TPOT             json.RawMessage `json:"tpot,omitempty"`
	PerReqInfo       json.RawMessage `json:"per_req_info,omitempty"`
	ReqIDs           json.RawMessage `json:"req_ids,omitempty"`
	ScheduledTokens  json.RawMessage `json:"scheduled_tokens,omitempty"`
}

// RunnerFiles is the runner's output for one dataset.
type RunnerFiles struct {
	Requests []RunnerRequest
	Metrics  RunnerMetrics
	Metadata RunnerMetadata
	Passes   []RunnerPass
}

// RunnerPaths are the four files of one dataset run.
type RunnerPaths struct {
	OutputData, Metrics, Metadata, Detailed string
}

// ModelDir is where the runner puts a model's files: <output_dir>/<org>/<model>, from the
// last two path elements of the model id (a bare name stays one element), as its
// get_model_simple_name does.
func ModelDir(outputDir, model string) string {
	parts := strings.Split(filepath.Clean(model), string(filepath.Separator))
	if len(parts) >= 2 {
		return filepath.Join(outputDir, parts[len(parts)-2], parts[len(parts)-1])
	}
	return filepath.Join(outputDir, model)
}

// WriteRunnerFiles writes the four files for dataset ds into dir (created if needed), each
// through a temp file and a rename so a reader never sees half a file.
func WriteRunnerFiles(dir, ds string, ts time.Time, f *RunnerFiles) (RunnerPaths, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return RunnerPaths{}, fmt.Errorf("create MoE-CAP output dir: %w", err)
	}
	stamp := ds + "_" + ts.Format(RunnerTimestampLayout)
	p := RunnerPaths{
		OutputData: filepath.Join(dir, "output_data_"+stamp+".jsonl"),
		Metrics:    filepath.Join(dir, "metrics_"+stamp+".json"),
		Metadata:   filepath.Join(dir, "metadata_"+stamp+".json"),
		Detailed:   filepath.Join(dir, "detailed_results_"+stamp+".jsonl"),
	}
	if err := writeJSONL(p.OutputData, f.Requests); err != nil {
		return p, err
	}
	if err := writeJSON(p.Metrics, f.Metrics); err != nil {
		return p, err
	}
	if err := writeJSON(p.Metadata, f.Metadata); err != nil {
		return p, err
	}
	if err := writeJSONL(p.Detailed, f.Passes); err != nil {
		return p, err
	}
	return p, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	return writeAtomic(path, append(b, '\n'))
}

func writeJSONL[T any](path string, rows []T) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i := range rows {
		if err := enc.Encode(&rows[i]); err != nil {
			return fmt.Errorf("encode %s row %d: %w", filepath.Base(path), i, err)
		}
	}
	return writeAtomic(path, buf.Bytes())
}

// writeAtomic writes through a synced temp file renamed into place: a reader never sees
// half a file, and a crash leaves the old one or the new one.
func writeAtomic(path string, data []byte) error {
	if err := renameio.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

var metricsName = regexp.MustCompile(`^metrics_(.+)_(\d{8}_\d{6})\.json$`)

// RunnerClock is moecapd's own clock of a runner run. RequestPhase is from the runner's
// "Sending N requests" line to its next line after the requests (stop recording), as
// client.log showed them (PhaseClock); Process is the runner process's whole life (Python
// start-up, tokenizer and dataset loading included). Zero means not measured.
type RunnerClock struct {
	RequestPhase time.Duration
	Process      time.Duration
}

// ClockCheck compares moecapd's clock of a runner run with what the runner's files imply.
type ClockCheck struct {
	// DurationSource names the clock metrics.duration_s and the throughputs use: the runner's
	// wall time when moecapd's clock confirms it, else moecapd's clock.
	DurationSource string `json:"duration_source"`
	// MoecapdRequestPhaseS and MoecapdProcessS are moecapd's clocks (RunnerClock).
	MoecapdRequestPhaseS *float64 `json:"moecapd_request_phase_s,omitempty"`
	MoecapdProcessS      *float64 `json:"moecapd_process_s,omitempty"`
	// RunnerE2ETimesNS is performance.e2e_s × requests, RunnerNOverRateS requests ÷
	// performance["request/s"]: the runner's wall time, two ways.
	RunnerE2ETimesNS *float64 `json:"runner_e2e_times_n_s,omitempty"`
	RunnerNOverRateS *float64 `json:"runner_n_over_rate_s,omitempty"`
	// MaxDisagreement is the largest relative difference between the duration used and the
	// runner's two figures; Agree is MaxDisagreement ≤ 2%.
	MaxDisagreement *float64 `json:"max_disagreement,omitempty"`
	Agree           bool     `json:"agree"`
	Note            string   `json:"note,omitempty"`

	durationS float64
}

// ClockTolerance is the relative disagreement between moecapd's clock and the runner's
// beyond which the manifest reports it.
const ClockTolerance = 0.02

// ReadMoECAPOutput reads and validates what the MoE-CAP runner wrote under outputDir (its
// --output_dir; the files sit two levels down, in <org>/<model>/). The runner exits 0 even
// when requests fail, so this is where a failed bench is caught: the metrics file must parse,
// quality.completed (when the runner wrote it) must equal wantSamples, output_data must hold
// wantSamples requests and every one must have succeeded. The newest metrics file wins when
// there are several. Durations and throughputs come from moecapd's clock (RunnerClock), not
// from the runner's e2e_s, which is the wall time divided by the requests; the two are
// compared in ClockCheck. The runner's ttft/tpot are server forward-pass latencies and go
// under server_pass; E2EL comes from the per-request latency_s, measured at the client.
func ReadMoECAPOutput(outputDir string, wantSamples int, clock RunnerClock) (*Metrics, error) {
	metricsPath, ds, stamp, err := findRunnerMetrics(outputDir)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(metricsPath)
	if err != nil {
		return nil, fmt.Errorf("read MoE-CAP metrics: %w", err)
	}
	// Python's json writes NaN/Infinity for a metric it could not compute: null (absent)
	// here, and in the copy the manifest keeps.
	raw = records.PythonJSON(raw)
	var rm runnerMetricsIn
	if err := json.Unmarshal(raw, &rm); err != nil {
		return nil, fmt.Errorf("%s: not a MoE-CAP metrics file (%v); the runner may have been cut off while writing it, see client.log", metricsPath, err)
	}
	if rm.Error != "" {
		return nil, fmt.Errorf("%s: the runner reported %q; see client.log for the requests' errors", metricsPath, rm.Error)
	}
	dataPath := filepath.Join(filepath.Dir(metricsPath), "output_data_"+ds+"_"+stamp+".jsonl")
	reqs, err := readRunnerRequests(dataPath)
	if err != nil {
		return nil, err
	}
	m := &Metrics{Source: "moe-cap", LatencyKind: "server_pass", PromptStyle: runnerPromptStyle(outputDir), MoECAP: json.RawMessage(raw)}
	var failed []runnerRequestIn
	var e2el []float64
	// Successful requests whose latency_s is absent (Python's NaN), negative or beyond any
	// run's length: left out of E2EL, and the result fails saying so.
	badLatency, firstBad := 0, runnerRequestIn{}
	for _, r := range reqs {
		if !r.Success {
			failed = append(failed, r)
			continue
		}
		m.Completed++
		m.TotalInputTokens += r.InputTokenCount
		m.TotalOutputTokens += r.OutputTokenCount
		if l := r.LatencyS; l != nil && *l >= 0 && *l <= maxRunnerLatencyS {
			e2el = append(e2el, *l*1000)
		} else if badLatency++; badLatency == 1 {
			firstBad = r
		}
	}
	m.Failed = len(failed)
	n := len(reqs)
	m.ClockCheck = checkClock(clock, rm.Performance.E2ES, rm.Performance.RequestsPerS, n)
	m.DurationS = m.ClockCheck.durationS
	if m.DurationS > 0 {
		m.RequestThroughput = float64(m.Completed) / m.DurationS
		m.OutputThroughput = float64(m.TotalOutputTokens) / m.DurationS
		m.TotalTokenThroughput = float64(m.TotalInputTokens+m.TotalOutputTokens) / m.DurationS
	}
	// The runner publishes only means of its server-side pass latencies: they go under
	// server_pass, never under the client-latency keys.
	m.ServerPass = &ServerPass{Source: "runner metrics file"}
	if rm.Performance.TTFT != nil {
		m.ServerPass.TTFTMoECAPMs = positive(*rm.Performance.TTFT * 1000)
	}
	if rm.Performance.PrefillPassLatencyS != nil {
		m.ServerPass.MeanPrefillPassMs = positive(*rm.Performance.PrefillPassLatencyS * 1000)
	}
	m.ServerPass.TPOTMoECAPMs = positive(rm.Performance.TPOT * 1000)
	m.ServerPass.MeanDecodePassMs = m.ServerPass.TPOTMoECAPMs
	e := DistOf(e2el)
	m.MeanE2ELMs, m.MedianE2ELMs, m.P90E2ELMs, m.P99E2ELMs, m.StdE2ELMs = e.Mean, e.Median, e.P90, e.P99, e.Std
	if ea := rm.ExpertActivation; ea != nil {
		m.AvgExpertActivationPrefill = positive(ea.Prefill)
		m.AvgExpertActivationDecode = positive(ea.Decode)
	}
	if bp := rm.BatchTokenProfile; bp != nil {
		m.AvgPrefillBatchSize = positive(bp.PrefillAvgBatchSize)
		m.AvgDecodeBatchSize = positive(bp.DecodeAvgBatchSize)
	}
	if m.AvgExpertActivationPrefill == nil && m.AvgExpertActivationDecode == nil && m.AvgDecodeBatchSize == nil {
		m.Records = "absent: the runner got no pass records from the server"
	} else {
		m.Records = "from the runner's metrics file"
	}
	// Checked last so the caller gets the numbers with the error (nothing completed is lost).
	if len(failed) > 0 {
		msg := strings.TrimSpace(failed[0].Error)
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = strings.TrimSpace(msg[i+1:]) // a Python traceback's last line names the exception
		}
		if msg == "" {
			msg = "(no error text)"
		}
		return m, fmt.Errorf("%s: %d of %d requests failed: first error (request %d): %s", dataPath, len(failed), n, failed[0].Index, msg)
	}
	if badLatency > 0 {
		v := "absent or NaN"
		if firstBad.LatencyS != nil {
			v = strconv.FormatFloat(*firstBad.LatencyS, 'g', -1, 64)
		}
		return m, fmt.Errorf("%s: %d successful requests have no usable latency_s (request %d: %s): E2EL leaves them out and the result is not trusted; see client.log", dataPath, badLatency, firstBad.Index, v)
	}
	if m.DurationS <= 0 {
		return m, fmt.Errorf("%s: the run's duration is unknown (%s): its throughputs cannot be computed and are not published; the runner wrote no e2e_s/request rate and client.log has no request-phase markers (is this the MoE-CAP runner moecapd launched?)", metricsPath, m.ClockCheck.DurationSource)
	}
	if q := rm.Quality; q != nil && q.Completed != nil && *q.Completed != wantSamples {
		return m, fmt.Errorf("%s: quality.completed is %d, want %d samples", metricsPath, *q.Completed, wantSamples)
	}
	if n != wantSamples {
		return m, fmt.Errorf("%s: %d requests recorded, want %d samples", dataPath, n, wantSamples)
	}
	return m, nil
}

// runnerPromptStyle is the runner's prompt style (upstream), unless the "runner" was
// moecapd bench, whose own file in <output_dir>/.moecapd/ names the style it used.
func runnerPromptStyle(outputDir string) string {
	if f := FindBenchFile(outputDir); f != "" {
		var bf struct {
			PromptStyle string `json:"prompt_style"`
		}
		if b, err := fsx.ReadFile(f); err == nil && json.Unmarshal(b, &bf) == nil && bf.PromptStyle != "" {
			return bf.PromptStyle
		}
	}
	return PromptUpstream
}

// checkClock builds the ClockCheck of a runner run of n requests and picks the duration.
// moecapd's clock runs from the runner's "Sending" line to its stop-recording line, so it
// holds the runner's request phase plus what the runner does between printing and its first
// request (its first torch.cuda.synchronize initialises CUDA: up to seconds on a GPU). The
// runner's own wall time (e2e_s × N) is the request phase itself; it is the duration when
// moecapd's clock confirms it (not longer than moecapd's window by more than 2% + 50 ms, and
// equal to N ÷ request/s). Otherwise moecapd's clock is the duration and the note says why.
func checkClock(c RunnerClock, e2e, rate float64, n int) *ClockCheck {
	cc := &ClockCheck{}
	f := func(v float64) *float64 { return &v }
	if c.RequestPhase > 0 {
		cc.MoecapdRequestPhaseS = f(c.RequestPhase.Seconds())
	}
	if c.Process > 0 {
		cc.MoecapdProcessS = f(c.Process.Seconds())
	}
	// A figure past the float range (e2e_s 1e308, request/s 1e-308) is no wall time.
	if v := e2e * float64(n); e2e > 0 && n > 0 && !math.IsInf(v, 0) {
		cc.RunnerE2ETimesNS = f(v)
	}
	if v := float64(n) / rate; rate > 0 && n > 0 && !math.IsInf(v, 0) {
		cc.RunnerNOverRateS = f(v)
	}
	rel := func(a, b float64) float64 {
		d := (a - b) / b
		if d < 0 {
			return -d
		}
		return d
	}
	runner := cc.RunnerE2ETimesNS
	if runner != nil && cc.RunnerNOverRateS != nil && rel(*cc.RunnerNOverRateS, *runner) > ClockTolerance {
		cc.Note = fmt.Sprintf("the runner's e2e_s × N (%.3f s) and N ÷ request/s (%.3f s) disagree; ", *runner, *cc.RunnerNOverRateS)
		runner = nil
	}
	switch {
	case cc.MoecapdRequestPhaseS == nil && runner == nil:
		cc.DurationSource = "none: no request-phase markers in client.log and no usable wall time in the runner's files"
		cc.Note += "the run's duration is unknown"
		return cc
	case cc.MoecapdRequestPhaseS == nil:
		cc.durationS = *runner
		cc.DurationSource = "runner e2e_s × requests (moecapd saw no request-phase markers in client.log)"
		cc.Note += "moecapd could not time the request phase itself; the whole runner process took " + fmtS(cc.MoecapdProcessS)
		return cc
	}
	mine := *cc.MoecapdRequestPhaseS
	if runner == nil {
		cc.durationS = mine
		cc.DurationSource = "moecapd clock of the runner's request phase (client.log markers)"
		return cc
	}
	worst := rel(*runner, mine)
	cc.MaxDisagreement = &worst
	cc.Agree = worst <= ClockTolerance
	// The slack covers how late moecapd sees each marker (its poll interval, the runner's
	// print): on a run of a few hundred milliseconds that alone is more than 2%.
	const markerSlackS = 0.05
	if *runner > mine*(1+ClockTolerance)+markerSlackS {
		cc.durationS = mine
		cc.DurationSource = "moecapd clock of the runner's request phase (client.log markers)"
		cc.Note += fmt.Sprintf("the runner's wall time e2e_s × N (%.3f s) exceeds moecapd's clock of its request phase (%.3f s) by %.1f%%: the runner's figure cannot be right; durations and throughputs use moecapd's", *runner, mine, worst*100)
		return cc
	}
	cc.durationS = *runner
	cc.DurationSource = "runner e2e_s × requests, confirmed by moecapd's clock of the request phase"
	if !cc.Agree {
		cc.Note += fmt.Sprintf("moecapd's clock (%.3f s, 'Sending' line to stop-recording line) is %.1f%% longer than the runner's wall time (%.3f s): it also holds what the runner does before its first request (CUDA initialisation on its first synchronize)", mine, worst*100, *runner)
	}
	return cc
}

func fmtS(p *float64) string {
	if p == nil {
		return "an unknown time"
	}
	return fmt.Sprintf("%.3f s", *p)
}

// runnerMetricsIn reads metrics files of every runner version leniently (null, absent).
type runnerMetricsIn struct {
	Performance struct {
		E2ES                float64  `json:"e2e_s"`
		RequestsPerS        float64  `json:"request/s"`
		TTFT                *float64 `json:"ttft"`
		PrefillPassLatencyS *float64 `json:"prefill_pass_latency_s"`
		TPOT                float64  `json:"tpot"`
	} `json:"performance"`
	ExpertActivation *struct {
		Prefill float64 `json:"avg_expert_activation_prefill"`
		Decode  float64 `json:"avg_expert_activation_decode"`
	} `json:"expert_activation"`
	BatchTokenProfile *struct {
		PrefillAvgBatchSize float64 `json:"prefill_avg_batch_size"`
		DecodeAvgBatchSize  float64 `json:"decode_avg_batch_size"`
	} `json:"batch_token_profile"`
	Quality *struct {
		Completed *int `json:"completed"`
	} `json:"quality"`
	Error string `json:"error"`
}

// runnerRequestIn is an output_data row as read (every runner version).
type runnerRequestIn struct {
	Index            int      `json:"index"`
	InputTokenCount  int      `json:"input_token_count"`
	OutputTokenCount int      `json:"output_token_count"`
	Success          bool     `json:"success"`
	LatencyS         *float64 `json:"latency_s"`
	Error            string   `json:"error"`
}

// maxRunnerLatencyS bounds a request's latency_s: no bench runs for a year.
const maxRunnerLatencyS = 365 * 24 * 3600

// positive maps the runner's "0 means no records" convention onto an absent value; a value
// past the float range (1e308 s × 1000) is no measurement either, and no manifest could
// hold it.
func positive(v float64) *float64 {
	if v > 0 && !math.IsInf(v, 1) {
		return &v
	}
	return nil
}

// RunnerResultFiles are the runner's files in outputDir that ReadMoECAPOutput reads (its
// metrics file and per-request output data); nil when it wrote none.
func RunnerResultFiles(outputDir string) []string {
	p, ds, stamp, err := findRunnerMetrics(outputDir)
	if err != nil {
		return nil
	}
	return []string{p, filepath.Join(filepath.Dir(p), "output_data_"+ds+"_"+stamp+".jsonl")}
}

func findRunnerMetrics(outputDir string) (path, ds, stamp string, err error) {
	type hit struct{ path, ds, stamp string }
	var hits []hit
	werr := filepath.WalkDir(outputDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, _ := filepath.Rel(outputDir, p)
			if rel != "." && strings.Count(rel, string(filepath.Separator)) >= 2 {
				return fs.SkipDir // <org>/<model> is as deep as the runner goes
			}
			return nil
		}
		if m := metricsName.FindStringSubmatch(d.Name()); m != nil {
			hits = append(hits, hit{p, m[1], m[2]})
		}
		return nil
	})
	if werr != nil {
		if errors.Is(werr, fs.ErrNotExist) {
			return "", "", "", fmt.Errorf("MoE-CAP output dir %s does not exist: the runner wrote nothing (see client.log)", outputDir)
		}
		return "", "", "", fmt.Errorf("read MoE-CAP output dir: %w", werr)
	}
	if len(hits) == 0 {
		return "", "", "", fmt.Errorf("%s: no metrics_<dataset>_<timestamp>.json under <org>/<model>/: the runner did not finish (see client.log)", outputDir)
	}
	sort.Slice(hits, func(i, j int) bool { return hits[i].stamp < hits[j].stamp })
	h := hits[len(hits)-1]
	return h.path, h.ds, h.stamp, nil
}

func readRunnerRequests(path string) ([]runnerRequestIn, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is missing: the runner wrote metrics but no per-request data", path)
		}
		return nil, fmt.Errorf("read MoE-CAP request data: %w", err)
	}
	defer f.Close()
	var out []runnerRequestIn
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var r runnerRequestIn
		if err := json.Unmarshal(records.PythonJSON(b), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: not a request record: %v", path, line, err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// RunnerArgs is the argv (after `python`) that runs the MoE-CAP runner the way the guide
// does, with extra flags appended verbatim.
func RunnerArgs(configFile, apiURL, backend string, batchSize int, outputDir string, extra ...string) []string {
	args := []string{
		"-m", "moe_cap.runner.openai_api_profile",
		"--config-file", configFile,
		"--api-url", apiURL,
		"--backend", backend,
		"--ignore-eos",
		"--server-batch-size", fmt.Sprint(batchSize),
		"--output_dir", outputDir,
	}
	return append(args, extra...)
}

// EngineVersionOf is the inference engine version the newest result under outputDir
// records (metadata_<ds>_<ts>.json's system_environment.inference_engine_version: what the
// server said, written by the runner and by the native client alike); "" when there is no
// such file or it says "unknown".
func EngineVersionOf(outputDir string) string {
	p, ds, stamp, err := findRunnerMetrics(outputDir)
	if err != nil {
		return ""
	}
	b, err := fsx.ReadFile(filepath.Join(filepath.Dir(p), "metadata_"+ds+"_"+stamp+".json"))
	if err != nil {
		return ""
	}
	var md RunnerMetadata
	if json.Unmarshal(records.PythonJSON(b), &md) != nil {
		return ""
	}
	// What the server said, through the runner: a version, not markup or a megabyte.
	if v := strings.TrimSpace(md.SystemEnvironment.InferenceEngineVersion); v != "unknown" && plausibleVersion(v) {
		return v
	}
	return ""
}
