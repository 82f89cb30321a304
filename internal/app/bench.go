package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/profile"
)

// BenchRequest is moecapd bench: the MoE-CAP runner's flags (same names, same meaning) and
// moecapd's own, typed. ModelName is nil unless given.
type BenchRequest struct {
	ConfigFile, APIURL, Backend            string
	IgnoreEOS, NoIgnoreEOS                 bool
	ServerBatchSize                        int
	OutputDir                              string
	NumSamples                             int
	TargetInputTokens, TargetOutputTokens  int
	FixedLengthMode                        bool
	ModelName                              *string
	Datasets, Metrics                      []string
	UseChatAPI                             bool
	Precision, DatasetSubset, DatasetSplit string
	JudgeAPIURL, JudgeModel, JudgeAPIKey   string
	BaselineAnswersPath                    string
	PromptStyle                            string
	AllowBadRequests, Warmup               int
	Schedule                               string
	// Load is the open loop, rate sweep and SLO (--request-rate, --rates, --slo, …).
	Load                                 cell.Load
	Seed                                 int64
	RecordsDir, SGLangRecorderDir        string
	NoRecords                            bool
	DatasetFile, DatasetCacheDir, HubURL string
	Offline                              bool
	RequestTimeout, DrainTimeout         time.Duration
	IdleTimeout, BenchTimeout            time.Duration
	Log                                  *zap.Logger
	Out                                  io.Writer // markers, the summary of each run
}

// Bench runs the profiling client against a running server, once per dataset, and writes
// each run's summary.
func Bench(ctx context.Context, req BenchRequest) error {
	runs, err := benchOptions(req, req.Log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, InterruptSignals...)
	defer stop()
	for _, o := range runs {
		if err := benchLoad(ctx, req, o); err != nil {
			return err
		}
	}
	return nil
}

// benchOnce runs one bench and prints its summary; the error carries its exit code.
func benchOnce(ctx context.Context, w io.Writer, o profile.Options) (*profile.Result, error) {
	res, err := profile.Run(ctx, o)
	if res != nil {
		printBenchSummary(w, &o, res)
	}
	switch {
	case err == nil:
		return res, nil
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return res, exitcode.New(exitcode.Interrupted, err)
	case errors.Is(err, profile.ErrRecordsUnavailable):
		return res, exitcode.New(exitcode.Internal, err)
	case errors.Is(err, profile.ErrServerLacks):
		// The prompt style or the server is the user's to change: a usage problem.
		return res, exitcode.New(exitcode.Usage, err)
	default:
		return res, exitcode.New(exitcode.Bench, err)
	}
}

// benchOptions resolves the runner's semantics (config file, then flags) into one
// profile.Options per dataset.
func benchOptions(v BenchRequest, log *zap.Logger) ([]profile.Options, error) {
	b, err := benchWorkload(v)
	if err != nil {
		return nil, err
	}
	if err := checkBenchRequest(v, b, log); err != nil {
		return nil, err
	}
	// The runner's rule: ignore_eos follows fixed-length mode unless a flag says otherwise.
	// This client only measures fixed-length runs, so the default is on.
	ignoreEOS := !v.NoIgnoreEOS
	schedule, style := v.Schedule, v.PromptStyle
	if schedule == "" && v.Load.OpenLoop() {
		schedule = profile.ScheduleClosedLoop // the timetable sender; waves would hold arrivals back
	}
	var slo *profile.SLO
	if v.Load.SLO != "" {
		s, _ := profile.ParseSLO(v.Load.SLO) // checkBenchRequest parsed it
		slo = &s
	}
	if schedule == "" {
		// A drop-in sends what the runner sends the way it sends it.
		schedule = profile.ScheduleClosedLoop
		if style == profile.PromptUpstream {
			schedule = profile.ScheduleWaves
		}
	}
	bs := v.ServerBatchSize
	var given *int // metadata's batch_size: null when the runner would send all at once
	if bs == 0 {
		bs = b.NumSamples // the runner sends everything at once without it
	} else {
		given = &bs
	}
	recordsDir, sgDir := benchRecordDirs(v)
	var progress io.Writer
	if term.IsTerminal(int(os.Stderr.Fd())) {
		progress = os.Stderr
	}
	var runs []profile.Options
	for _, ds := range b.DatasetNames {
		runs = append(runs, profile.Options{
			APIURL: v.APIURL, Model: b.ModelID, Backend: v.Backend, APIKey: os.Getenv("OPENAI_API_KEY"),
			BatchSize: bs, NumSamples: b.NumSamples, InputTokens: b.TargetInputTokens, OutputTokens: b.TargetOutputTokens,
			IgnoreEOS: ignoreEOS, Schedule: schedule, Warmup: v.Warmup, RequestRate: v.Load.RequestRate,
			Burstiness: v.Load.Burstiness, MaxConcurrency: v.Load.MaxConcurrency, SLO: slo,
			Seed: v.Seed, UseChatAPI: v.UseChatAPI, PromptStyle: style, AllowedBadRequests: v.AllowBadRequests, ServerBatchSize: given,
			Dataset: ds, DatasetFile: v.DatasetFile, DatasetSubset: b.DatasetSubset, DatasetSplit: b.DatasetSplit,
			DatasetCacheDir: v.DatasetCacheDir, HubURL: v.HubURL, Offline: v.Offline,
			OutputDir: v.OutputDir, RecordsDir: recordsDir, SGLangRecorderDir: sgDir, NoRecords: v.NoRecords,
			RequestTimeout: v.RequestTimeout, DrainTimeout: v.DrainTimeout,
			IdleTimeout: v.IdleTimeout, BenchTimeout: v.BenchTimeout,
			Progress: progress, Log: log, Precision: b.Precision, Markers: v.Out,
		})
	}
	return runs, nil
}

// benchWorkload is the benchmark file (--config-file) with the flags that override it.
func benchWorkload(v BenchRequest) (config.Bench, error) {
	var b config.Bench
	if file := v.ConfigFile; file != "" {
		lb, err := config.LoadBench(file)
		if err != nil {
			return b, exitcode.New(exitcode.Usage, err)
		}
		b = *lb
	}
	if v.ModelName != nil {
		b.ModelID = *v.ModelName
	}
	if ds := v.Datasets; len(ds) > 0 {
		b.DatasetNames = ds
	}
	if n := v.NumSamples; n != 0 {
		b.NumSamples = n
	}
	if n := v.TargetInputTokens; n != 0 {
		b.TargetInputTokens = n
	}
	if n := v.TargetOutputTokens; n != 0 {
		b.TargetOutputTokens = n
	}
	if v.FixedLengthMode {
		b.FixedLengthMode = true
	}
	if s := v.DatasetSubset; s != "" {
		b.DatasetSubset = s
	}
	if s := v.DatasetSplit; s != "" {
		b.DatasetSplit = s
	}
	if s := v.Precision; s != "" {
		b.Precision = s
	}
	return b, nil
}

// checkBenchRequest refuses what moecapd bench cannot run (usage errors, exit 2) and warns
// of the runner's flags it accepts and ignores.
func checkBenchRequest(v BenchRequest, b config.Bench, log *zap.Logger) error {
	switch {
	case v.APIURL == "":
		return exitcode.Usagef("--api-url is required, e.g. http://127.0.0.1:30000/v1/completions")
	case b.ModelID == "":
		return exitcode.Usagef("no model: pass --model_name or a --config-file with model_id (it must equal the server's model path)")
	case len(b.DatasetNames) == 0:
		return exitcode.Usagef("no dataset: pass --datasets gsm8k|longbench_v2|random or a --config-file with dataset_names")
	case b.TargetInputTokens <= 0 || b.TargetOutputTokens <= 0:
		return exitcode.Usagef("moecapd bench runs fixed-length benchmarks only: pass --target-input-tokens and --target-output-tokens (or a config with target_input_tokens/target_output_tokens)")
	case b.NumSamples <= 0:
		return exitcode.Usagef("--num-samples (or num_samples in the config) must be ≥ 1")
	}
	// Upper bounds (issue 11, item 7; pkg/config/strict.go): refused before any request,
	// so no number a user gives makes the client allocate or wait without limit.
	for _, err := range []error{
		config.CheckWorkload("bench", b.NumSamples, v.Warmup, b.TargetInputTokens, b.TargetOutputTokens),
		config.CheckInt("bench", "--server-batch-size", int64(v.ServerBatchSize), 0, config.MaxBatchSize, "concurrent requests; 0: all at once"),
		config.CheckDuration("bench", "--request-timeout", v.RequestTimeout, time.Millisecond, 24*time.Hour),
		config.CheckDuration("bench", "--drain-timeout", v.DrainTimeout, 0, time.Hour),
		config.CheckDuration("bench", "--idle-timeout", v.IdleTimeout, time.Millisecond, 24*time.Hour),
		config.CheckDuration("bench", "--bench-timeout", v.BenchTimeout, time.Millisecond, 30*24*time.Hour),
	} {
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
	}
	if v.IgnoreEOS && v.NoIgnoreEOS {
		return exitcode.Usagef("--ignore-eos and --no-ignore-eos contradict each other; pass one")
	}
	if s := v.Schedule; s != "" && s != profile.ScheduleClosedLoop && s != profile.ScheduleWaves {
		return exitcode.Usagef("--schedule %q: want closed-loop or waves", s)
	}
	if be := v.Backend; be != "auto" && be != "sglang" && be != "vllm" {
		return exitcode.Usagef("--backend %q: want sglang, vllm or auto", be)
	}
	if bs := v.ServerBatchSize; bs < 0 {
		return exitcode.Usagef("--server-batch-size %d: want ≥ 1 (or 0 for all at once)", bs)
	}
	if len(v.Metrics) > 0 {
		log.Warn("--metrics is accepted for compatibility but moecapd bench computes no accuracy metrics")
	}
	switch p := b.Precision; p {
	case "", "bfloat16", "float16", "float32", "int8", "int4":
	default:
		return exitcode.Usagef("--precision %q: want bfloat16, float16, float32, int8 or int4 (the runner's choices)", p)
	}
	for _, ds := range b.DatasetNames {
		if strings.EqualFold(ds, "arena-hard") {
			return exitcode.Usagef("dataset arena-hard needs the runner's LLM judge (--judge-api-url, --baseline-answers-path), which moecapd bench does not implement; run moe_cap.runner.openai_api_profile for it")
		}
	}
	for k, val := range map[string]string{"judge-api-url": v.JudgeAPIURL, "judge-model": v.JudgeModel, "judge-api-key": v.JudgeAPIKey, "baseline-answers-path": v.BaselineAnswersPath} {
		if val != "" {
			log.Warn("--" + k + " is accepted for compatibility and ignored: the runner uses the judge only for arena-hard")
		}
	}
	if style := v.PromptStyle; style != profile.PromptUpstream && style != profile.PromptExactIDs {
		return exitcode.Usagef("--prompt-style %q: want upstream or exact-ids", style)
	}
	if err := v.Load.Check(cell.LoadFlags); err != nil {
		return err
	}
	if v.Load.SLO != "" && v.PromptStyle == profile.PromptUpstream {
		return exitcode.Usagef("--slo needs streamed TTFT and TPOT: add --prompt-style exact-ids (upstream's non-streaming replies have only E2E latency)")
	}
	if v.AllowBadRequests < 0 {
		return exitcode.Usagef("--allow-bad-requests %d: want ≥ 0", v.AllowBadRequests)
	}
	return nil
}

// benchRecordDirs is where the pass records go (--records-dir; default under the output
// directory) and where SGLang's expert recorder writes (the flag, its environment
// variable, else the runner's ~/expert_records).
func benchRecordDirs(v BenchRequest) (recordsDir, sgDir string) {
	recordsDir = v.RecordsDir
	if recordsDir == "" {
		recordsDir = filepath.Join(v.OutputDir, profile.BenchDir, "records")
	}
	sgDir = v.SGLangRecorderDir
	if sgDir == "" {
		sgDir = os.Getenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR")
	}
	if sgDir == "" {
		if home, err := os.UserHomeDir(); err == nil {
			sgDir = filepath.Join(home, "expert_records")
		}
	}
	return recordsDir, sgDir
}

// printBenchSummary prints the headline numbers the way `vllm bench serve` does.
func printBenchSummary(w io.Writer, o *profile.Options, res *profile.Result) {
	m := &res.Metrics
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	title := "Serving benchmark result"
	if m.Partial {
		title += " (PARTIAL: interrupted)"
	}
	fmt.Fprintf(tw, "=== %s: %s, %s, batch %d, %s ===\n", title, o.Model, o.Dataset, o.BatchSize, res.Backend)
	row := func(k string, format string, a ...any) {
		fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...)
	}
	row("Successful requests:", "%d", m.Completed)
	row("Failed requests:", "%d", m.Failed)
	for k, n := range m.Errors {
		row("  "+k+":", "%d", n)
	}
	if m.LengthMismatches > 0 {
		row("Length mismatches:", "%d (usage differs from the targets; see the bench file)", m.LengthMismatches)
	}
	row("Prompt style:", "%s", m.PromptStyle)
	if len(m.InvalidReasons) > 0 {
		row("RESULT INVALID:", "%s", strings.Join(m.InvalidReasons, "; "))
	}
	row("Benchmark duration (s):", "%.2f", m.DurationS)
	row("Total input tokens:", "%d", m.TotalInputTokens)
	row("Total generated tokens:", "%d", m.TotalOutputTokens)
	row("Request throughput (req/s):", "%.2f", m.RequestThroughput)
	row("Output token throughput (tok/s):", "%.2f", m.OutputThroughput)
	row("Total token throughput (tok/s):", "%.2f", m.TotalTokenThroughput)
	for _, l := range []struct {
		name                     string
		mean, med, p90, p99, std *float64
	}{
		{"TTFT", m.MeanTTFTMs, m.MedianTTFTMs, m.P90TTFTMs, m.P99TTFTMs, m.StdTTFTMs},
		{"TPOT", m.MeanTPOTMs, m.MedianTPOTMs, m.P90TPOTMs, m.P99TPOTMs, m.StdTPOTMs},
		{"ITL", m.MeanITLMs, m.MedianITLMs, m.P90ITLMs, m.P99ITLMs, m.StdITLMs},
		{"E2EL", m.MeanE2ELMs, m.MedianE2ELMs, m.P90E2ELMs, m.P99E2ELMs, m.StdE2ELMs},
	} {
		f := func(p *float64) string { return profile.FormatMs(p, 2) }
		row(l.name+" (ms) mean/median/p90/p99/std:", "%s / %s / %s / %s / %s", f(l.mean), f(l.med), f(l.p90), f(l.p99), f(l.std))
	}
	opt := func(p *float64) string {
		if p == nil {
			return "absent"
		}
		return fmt.Sprintf("%.3f", *p)
	}
	row("Expert activation prefill/decode:", "%s / %s", opt(m.AvgExpertActivationPrefill), opt(m.AvgExpertActivationDecode))
	row("Server decode batch size:", "%s", opt(m.AvgDecodeBatchSize))
	if sp := m.ServerPass; sp != nil {
		row("Server TTFT/TPOT, MoE-CAP definition (ms):", "%s / %s", profile.FormatMs(sp.TTFTMoECAPMs, 2), profile.FormatMs(sp.TPOTMoECAPMs, 2))
	}
	row("Records:", "%s", m.Records)
	if res.Files.Metrics != "" {
		row("Results:", "%s", filepath.Dir(res.Files.Metrics))
	}
	if res.BenchJSON != "" {
		row("moecapd file:", "%s", res.BenchJSON)
	}
	tw.Flush()
}
