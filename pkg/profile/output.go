package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/records"
)

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
	Burstiness    float64         `json:"burstiness,omitempty"`
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
		Warmup: o.Warmup, RequestRate: o.RequestRate, Burstiness: o.Burstiness, Seed: o.Seed, InputTokens: o.InputTokens,
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
