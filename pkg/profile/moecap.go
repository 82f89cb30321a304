package profile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/google/renameio/v2"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// The MoE-CAP runner (moe_cap.runner.openai_api_profile) writes four files per dataset under
// <output_dir>/<org>/<model>/, all sharing one timestamp. The types below are those files'
// shapes; the reader (ReadMoECAPOutput) and the writer (WriteMoECAPFiles, used by the native
// client so tools that read MoE-CAP results read ours) share them, so the two cannot drift.

// RunnerTimestampLayout is the runner's `datetime.now().strftime("%Y%m%d_%H%M%S")`.
const RunnerTimestampLayout = "20060102_150405"

// RunnerRequest is one line of output_data_<ds>_<ts>.jsonl.
type RunnerRequest struct {
	Index int `json:"index"`
	// InputTokens and OutputText are the runner's historical fields: a count and the text.
	InputTokens           int     `json:"input_tokens"`
	OutputText            string  `json:"output_tokens"`
	InputTokenCount       int     `json:"input_token_count"`
	OutputTokenCount      int     `json:"output_token_count"`
	RequestedOutputTokens int     `json:"requested_output_tokens"`
	Success               bool    `json:"success"`
	LatencyS              float64 `json:"latency_s"`
	TTFTS                 float64 `json:"ttft_s"`
	Error                 string  `json:"error,omitempty"`
}

// RunnerPerformance is metrics.performance. Latencies in seconds.
type RunnerPerformance struct {
	E2ES                   float64  `json:"e2e_s"`
	RequestsPerS           float64  `json:"request/s"`
	TTFT                   float64  `json:"ttft"`
	TTFTSource             string   `json:"ttft_source,omitempty"`
	PrefillPassLatencyS    *float64 `json:"prefill_pass_latency_s,omitempty"`
	TPOT                   float64  `json:"tpot"`
	PrefillForwardedTokens *int     `json:"prefill_forwarded_tokens,omitempty"`
	PrefillStepElapsedS    *float64 `json:"prefill_step_elapsed_s,omitempty"`
}

// RunnerExpertActivation is metrics.expert_activation. The runner writes 0 when the server
// left no records; readers must treat 0 as "absent" (an MoE pass activates ≥ 1 expert).
type RunnerExpertActivation struct {
	Prefill float64 `json:"avg_expert_activation_prefill"`
	Decode  float64 `json:"avg_expert_activation_decode"`
}

// RunnerBatchTokenProfile is metrics.batch_token_profile.
type RunnerBatchTokenProfile struct {
	PrefillTokens                   int     `json:"prefill_tokens"`
	PrefillTokensPerRequest         float64 `json:"prefill_tokens_per_request"`
	PrefillAvgBatchSize             float64 `json:"prefill_avg_batch_size"`
	DecodeGeneratedTokens           int     `json:"decode_generated_tokens"`
	DecodeGeneratedTokensPerRequest float64 `json:"decode_generated_tokens_per_request"`
	DecodeAvgBatchSize              float64 `json:"decode_avg_batch_size"`
}

// RunnerQuality is metrics.quality. Completed is what a supervisor checks.
type RunnerQuality struct {
	Attempted *int     `json:"attempted,omitempty"`
	Served    *int     `json:"served,omitempty"`
	Completed *int     `json:"completed,omitempty"`
	Failed    *int     `json:"failed,omitempty"`
	Acc       *float64 `json:"acc,omitempty"`
	Total     *int     `json:"total,omitempty"`
}

// RunnerMetrics is metrics_<ds>_<ts>.json.
type RunnerMetrics struct {
	Performance       RunnerPerformance        `json:"performance"`
	ExpertActivation  *RunnerExpertActivation  `json:"expert_activation,omitempty"`
	BatchTokenProfile *RunnerBatchTokenProfile `json:"batch_token_profile,omitempty"`
	Quality           *RunnerQuality           `json:"quality,omitempty"`
	// Error is set by the runner when nothing succeeded ("No successful requests").
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
		InferenceEngine        string  `json:"inference_engine"`
		InferenceEngineVersion string  `json:"inference_engine_version"`
		BatchSize              int     `json:"batch_size"`
		AvgBatchSizePrefill    float64 `json:"avg_batch_size_prefill"`
		AvgBatchSizeDecode     float64 `json:"avg_batch_size_decode"`
		// Client names the program that wrote the files ("moecapd"); the runner leaves it out.
		Client string `json:"client,omitempty"`
	} `json:"system_environment"`
}

// RunnerPass is one line of detailed_results_<ds>_<ts>.jsonl: one server forward pass, with
// its latency under "ttft" for prefill passes and "tpot" otherwise.
type RunnerPass struct {
	Index            int      `json:"index"`
	ForwardMode      string   `json:"forward_mode"`
	ExpertActivation float64  `json:"expert_activation"`
	BatchSize        int      `json:"batch_size"`
	SeqLensSum       int      `json:"seq_lens_sum"`
	TTFT             *float64 `json:"ttft,omitempty"`
	TPOT             *float64 `json:"tpot,omitempty"`
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

// ReadMoECAPOutput reads and validates what the MoE-CAP runner wrote under outputDir (its
// --output_dir; the files sit two levels down, in <org>/<model>/). The runner exits 0 even
// when requests fail, so this is where a failed bench is caught: the metrics file must exist,
// quality.completed (when the runner wrote it) must equal wantSamples, output_data must hold
// wantSamples requests and every one must have succeeded. The newest metrics file wins when
// there are several. Its TTFT/TPOT are server forward-pass latencies (LatencyKind
// "server_pass"); E2EL comes from the per-request latency_s, which the runner measures at the
// client.
func ReadMoECAPOutput(outputDir string, wantSamples int) (*Metrics, error) {
	metricsPath, ds, stamp, err := findRunnerMetrics(outputDir)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(metricsPath)
	if err != nil {
		return nil, fmt.Errorf("read MoE-CAP metrics: %w", err)
	}
	var rm RunnerMetrics
	if err := json.Unmarshal(raw, &rm); err != nil {
		return nil, fmt.Errorf("%s: not a MoE-CAP metrics file: %v", metricsPath, err)
	}
	if rm.Error != "" {
		return nil, fmt.Errorf("%s: the runner reported %q; see client.log for the requests' errors", metricsPath, rm.Error)
	}
	dataPath := filepath.Join(filepath.Dir(metricsPath), "output_data_"+ds+"_"+stamp+".jsonl")
	reqs, err := readRunnerRequests(dataPath)
	if err != nil {
		return nil, err
	}
	var failed []RunnerRequest
	for _, r := range reqs {
		if !r.Success {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		msg := strings.TrimSpace(failed[0].Error)
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = strings.TrimSpace(msg[i+1:]) // a Python traceback's last line names the exception
		}
		if msg == "" {
			msg = "(no error text)"
		}
		return nil, fmt.Errorf("%s: %d of %d requests failed: first error (request %d): %s", dataPath, len(failed), len(reqs), failed[0].Index, msg)
	}
	if rm.Quality != nil && rm.Quality.Completed != nil && *rm.Quality.Completed != wantSamples {
		return nil, fmt.Errorf("%s: quality.completed is %d, want %d samples", metricsPath, *rm.Quality.Completed, wantSamples)
	}
	if len(reqs) != wantSamples {
		return nil, fmt.Errorf("%s: %d requests recorded, want %d samples", dataPath, len(reqs), wantSamples)
	}

	m := &Metrics{Source: "moe-cap", LatencyKind: "server_pass", MoECAP: json.RawMessage(raw)}
	var e2el []float64
	for _, r := range reqs {
		m.Completed++
		m.TotalInputTokens += r.InputTokenCount
		m.TotalOutputTokens += r.OutputTokenCount
		e2el = append(e2el, r.LatencyS*1000)
	}
	m.DurationS = rm.Performance.E2ES
	if m.DurationS > 0 {
		m.RequestThroughput = float64(m.Completed) / m.DurationS
		m.OutputThroughput = float64(m.TotalOutputTokens) / m.DurationS
		m.TotalTokenThroughput = float64(m.TotalInputTokens+m.TotalOutputTokens) / m.DurationS
	}
	// The runner publishes only means of its server-side pass latencies: they go under
	// server_pass, never under the client-latency keys.
	m.ServerPass = &ServerPass{TTFTMoECAPMs: positive(rm.Performance.TTFT * 1000), TPOTMoECAPMs: positive(rm.Performance.TPOT * 1000)}
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
	return m, nil
}

// positive maps the runner's "0 means no records" convention onto an absent value.
func positive(v float64) *float64 {
	if v > 0 {
		return &v
	}
	return nil
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

func readRunnerRequests(path string) ([]RunnerRequest, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is missing: the runner wrote metrics but no per-request data", path)
		}
		return nil, fmt.Errorf("read MoE-CAP request data: %w", err)
	}
	defer f.Close()
	var out []RunnerRequest
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var r RunnerRequest
		if err := json.Unmarshal(b, &r); err != nil {
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
