package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/profile"
)

func init() { register(newBenchCmd) }

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench --api-url URL [--config-file BENCH.yaml] [runner flags]",
		Short: "Benchmark a running server with the native streaming client (a drop-in for the MoE-CAP runner)",
		Long: `Runs the profiling client alone against a server that is already up. It takes the MoE-CAP
runner's flags with the same meaning (so moe_cap.runner.openai_api_profile can be swapped for
it) and writes the runner's four files under <output_dir>/<org>/<model>/, plus bench.json with
client-side latencies (TTFT, TPOT, ITL, E2EL: mean, median, p90, p99, std) and every request.

Prompts go out as token ids of exactly --target-input-tokens; each request asks for exactly
--target-output-tokens with ignore_eos. Dataset text (gsm8k, longbench_v2) is tokenized by the
server's /tokenize; --datasets random uses seeded synthetic ids and needs no dataset at all.

Note: --config-file here is the runner's benchmark YAML (as in the runner), not a moecapd
settings file; settings come from flags and MOECAP_* environment variables.

Exit codes: 0 ok, 2 usage or config error, 5 bench failed (no request succeeded, server
unreachable, output not writable), 130 interrupted (what was measured is still written,
marked partial).`,
		Example: `  moecapd bench --config-file configs/fixed_4k_1k_qwen1_5.yaml --api-url http://127.0.0.1:30000/v1/completions --server-batch-size 32
  moecapd bench --model_name Qwen/Qwen1.5-MoE-A2.7B-Chat --datasets random --target-input-tokens 4000 \
      --target-output-tokens 1000 --num-samples 100 --api-url http://127.0.0.1:8000/v1/completions --backend vllm`,
		Args: cobra.NoArgs,
		RunE: runBench,
	}
	f := cmd.Flags()
	// The runner's flags.
	f.String("config-file", "", "benchmark YAML in the runner's format (dataset_names, model_id, target_*_tokens, num_samples); flags override it")
	f.String("api-url", "", "completions URL of the server, e.g. http://127.0.0.1:30000/v1/completions (required)")
	f.String("backend", "auto", "sglang, vllm or auto (GET /get_model_info with model_path means sglang, else vllm)")
	f.Bool("ignore-eos", false, "force ignore_eos (default: on in fixed-length mode)")
	f.Bool("no-ignore-eos", false, "turn ignore_eos off even in fixed-length mode")
	f.Int("server-batch-size", 0, "requests in flight (closed loop) or per wave; 0 sends all samples at once, as the runner does")
	f.String("output_dir", "./output", "where <org>/<model>/ with the result files goes")
	f.Int("num-samples", 0, "measured requests (overrides num_samples)")
	f.Int("target-input-tokens", 0, "exact prompt length in tokens (overrides target_input_tokens)")
	f.Int("target-output-tokens", 0, "exact output length in tokens (overrides target_output_tokens)")
	f.Bool("fixed-length-mode", false, "fixed-length benchmarking (the only mode this client runs; implies ignore_eos)")
	f.String("model_name", "", "model id; must equal the server's model path (overrides model_id)")
	f.StringSlice("datasets", nil, "dataset names: gsm8k, longbench_v2 or random (overrides dataset_names; several run one after another)")
	f.Bool("use-chat-api", false, "stream /v1/chat/completions with text prompts (needs the server's /detokenize)")
	f.String("precision", "", "precision written to the metadata file (default bfloat16)")
	f.String("dataset-subset", "", "hub config of the dataset (gsm8k: main)")
	f.String("dataset-split", "", "hub split of the dataset (gsm8k: test)")
	f.StringSlice("metrics", nil, "accepted for compatibility with the runner; accuracy metrics are not computed")
	f.Bool("profiling-only", false, "accepted for compatibility with the runner; records are still collected when the server has them")
	// Our own.
	f.Int("warmup", 0, "unmeasured warm-up requests before the run (distinct prompts, no prefix-cache hits)")
	f.String("schedule", profile.ScheduleClosedLoop, "closed-loop (exactly --server-batch-size in flight) or waves (the runner's send N, wait for half)")
	f.Float64("request-rate", 0, "mean request rate of Poisson arrivals per second (0: send as fast as the schedule allows)")
	f.Int64("seed", 0, "seed of random prompts and arrival times")
	f.String("records-dir", "", "where the server's pass records are stored (default <output_dir>/records)")
	f.String("sglang-recorder-dir", "", "the SGLang server's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, where its dump lands (default: that variable here, else ./expert_records, as the runner assumes)")
	f.Bool("no-records", false, "do not start/stop/dump the server's records")
	f.String("dataset-file", "", "local JSONL file of prompt texts ({\"text\": …} or the dataset's own fields per line)")
	f.String("dataset-cache-dir", defaultCacheDir(), "cache of dataset rows fetched from the hub")
	f.String("hub-url", profile.DefaultHubURL, "Hugging Face dataset viewer URL for dataset rows")
	f.Bool("offline", false, "never fetch dataset rows from the network")
	f.Duration("request-timeout", time.Hour, "per-request limit, send to last byte")
	f.Duration("drain-timeout", 5*time.Second, "after Ctrl-C, how long in-flight requests may finish")
	return cmd
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "moecapd", "datasets")
	}
	return ""
}

// benchSettings binds flags and MOECAP_* env. It reads no moecapd.yaml: --config-file is
// the runner's benchmark file here, and reading it as settings would reject its keys.
func benchSettings(cmd *cobra.Command) (*viper.Viper, error) { return bindFlags(cmd) }

func runBench(cmd *cobra.Command, _ []string) error {
	v, err := benchSettings(cmd)
	if err != nil {
		return err
	}
	log, err := newLogger(v)
	if err != nil {
		return err
	}
	defer log.Sync()
	runs, err := benchOptions(cmd, v, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), interruptSignals...)
	defer stop()
	for _, o := range runs {
		res, err := profile.Run(ctx, o)
		if res != nil {
			printBenchSummary(cmd.OutOrStdout(), &o, res)
		}
		switch {
		case err == nil:
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			return withCode(exitInterrupted, err)
		default:
			return withCode(exitBench, err)
		}
	}
	return nil
}

// benchOptions resolves the runner's semantics (config file, then flags) into one
// profile.Options per dataset.
func benchOptions(cmd *cobra.Command, v *viper.Viper, log *zap.Logger) ([]profile.Options, error) {
	var b config.Bench
	if file := v.GetString("config-file"); file != "" {
		lb, err := config.LoadBench(file)
		if err != nil {
			return nil, withCode(exitUsage, err)
		}
		b = *lb
	}
	changed := func(name string) bool { return cmd.Flags().Changed(name) || v.IsSet(name) && v.GetString(name) != "" }
	if changed("model_name") {
		b.ModelID = v.GetString("model_name")
	}
	if ds := v.GetStringSlice("datasets"); len(ds) > 0 {
		b.DatasetNames = ds
	}
	if n := v.GetInt("num-samples"); n != 0 {
		b.NumSamples = n
	}
	if n := v.GetInt("target-input-tokens"); n != 0 {
		b.TargetInputTokens = n
	}
	if n := v.GetInt("target-output-tokens"); n != 0 {
		b.TargetOutputTokens = n
	}
	if v.GetBool("fixed-length-mode") {
		b.FixedLengthMode = true
	}
	if s := v.GetString("dataset-subset"); s != "" {
		b.DatasetSubset = s
	}
	if s := v.GetString("dataset-split"); s != "" {
		b.DatasetSplit = s
	}
	if s := v.GetString("precision"); s != "" {
		b.Precision = s
	}

	apiURL := v.GetString("api-url")
	switch {
	case apiURL == "":
		return nil, usageErrorf("--api-url is required, e.g. http://127.0.0.1:30000/v1/completions")
	case b.ModelID == "":
		return nil, usageErrorf("no model: pass --model_name or a --config-file with model_id (it must equal the server's model path)")
	case len(b.DatasetNames) == 0:
		return nil, usageErrorf("no dataset: pass --datasets gsm8k|longbench_v2|random or a --config-file with dataset_names")
	case b.TargetInputTokens <= 0 || b.TargetOutputTokens <= 0:
		return nil, usageErrorf("moecapd bench runs fixed-length benchmarks only: pass --target-input-tokens and --target-output-tokens (or a config with target_input_tokens/target_output_tokens)")
	case b.NumSamples <= 0:
		return nil, usageErrorf("--num-samples (or num_samples in the config) must be ≥ 1")
	}
	// Upper bounds (issue 11, item 7; pkg/config/strict.go): refused before any request,
	// so no number a user gives makes the client allocate or wait without limit.
	for _, err := range []error{
		config.CheckWorkload("bench", b.NumSamples, v.GetInt("warmup"), b.TargetInputTokens, b.TargetOutputTokens),
		config.CheckInt("bench", "--server-batch-size", int64(v.GetInt("server-batch-size")), 0, config.MaxBatchSize, "concurrent requests; 0: all at once"),
		config.CheckDuration("bench", "--request-timeout", v.GetDuration("request-timeout"), time.Millisecond, 24*time.Hour),
		config.CheckDuration("bench", "--drain-timeout", v.GetDuration("drain-timeout"), 0, time.Hour),
	} {
		if err != nil {
			return nil, withCode(exitUsage, err)
		}
	}
	if v.GetBool("ignore-eos") && v.GetBool("no-ignore-eos") {
		return nil, usageErrorf("--ignore-eos and --no-ignore-eos contradict each other; pass one")
	}
	// The runner's rule: ignore_eos follows fixed-length mode unless a flag says otherwise.
	// This client only measures fixed-length runs, so the default is on.
	ignoreEOS := true
	if v.GetBool("no-ignore-eos") {
		ignoreEOS = false
	}
	schedule := v.GetString("schedule")
	if schedule != profile.ScheduleClosedLoop && schedule != profile.ScheduleWaves {
		return nil, usageErrorf("--schedule %q: want closed-loop or waves", schedule)
	}
	backend := v.GetString("backend")
	if backend != "auto" && backend != "sglang" && backend != "vllm" {
		return nil, usageErrorf("--backend %q: want sglang, vllm or auto", backend)
	}
	bs := v.GetInt("server-batch-size")
	if bs < 0 {
		return nil, usageErrorf("--server-batch-size %d: want ≥ 1 (or 0 for all at once)", bs)
	}
	if bs == 0 {
		bs = b.NumSamples // the runner sends everything at once without it
	}
	if len(v.GetStringSlice("metrics")) > 0 {
		log.Warn("--metrics is accepted for compatibility but moecapd bench computes no accuracy metrics")
	}
	outDir := v.GetString("output_dir")
	recordsDir := v.GetString("records-dir")
	if recordsDir == "" {
		recordsDir = filepath.Join(outDir, "records")
	}
	sgDir := v.GetString("sglang-recorder-dir")
	if sgDir == "" {
		sgDir = os.Getenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR")
	}
	if sgDir == "" {
		if wd, err := os.Getwd(); err == nil {
			sgDir = filepath.Join(wd, "expert_records")
		}
	}
	var progress io.Writer
	if term.IsTerminal(int(os.Stderr.Fd())) {
		progress = os.Stderr
	}
	var runs []profile.Options
	for _, ds := range b.DatasetNames {
		runs = append(runs, profile.Options{
			APIURL: apiURL, Model: b.ModelID, Backend: backend, APIKey: os.Getenv("OPENAI_API_KEY"),
			BatchSize: bs, NumSamples: b.NumSamples, InputTokens: b.TargetInputTokens, OutputTokens: b.TargetOutputTokens,
			IgnoreEOS: ignoreEOS, Schedule: schedule, Warmup: v.GetInt("warmup"), RequestRate: v.GetFloat64("request-rate"),
			Seed: v.GetInt64("seed"), UseChatAPI: v.GetBool("use-chat-api"),
			Dataset: ds, DatasetFile: v.GetString("dataset-file"), DatasetSubset: b.DatasetSubset, DatasetSplit: b.DatasetSplit,
			DatasetCacheDir: v.GetString("dataset-cache-dir"), HubURL: v.GetString("hub-url"), Offline: v.GetBool("offline"),
			OutputDir: outDir, RecordsDir: recordsDir, SGLangRecorderDir: sgDir, NoRecords: v.GetBool("no-records"),
			RequestTimeout: v.GetDuration("request-timeout"), DrainTimeout: v.GetDuration("drain-timeout"),
			Progress: progress, Log: log, Precision: b.Precision,
		})
	}
	return runs, nil
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
		row("Length mismatches:", "%d (usage differs from the targets; see bench.json)", m.LengthMismatches)
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
	row("Records:", "%s", m.Records)
	if res.BenchJSON != "" {
		row("Results:", "%s", filepath.Dir(res.BenchJSON))
	}
	tw.Flush()
}
