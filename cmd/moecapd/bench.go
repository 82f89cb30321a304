package main

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
it) and writes the runner's four files under <output_dir>/<org>/<model>/ with the runner's names,
keys, types and meanings (e2e_s is the wall time divided by the requests, as the runner writes
it), plus moecapd's own file with every request under <output_dir>/.moecapd/ (a hidden
directory: upstream's **/*.json globs do not see it).

--prompt-style upstream (the default) sends what the runner sends: the fixed-length dataset
text plus "Please continue writing:" after the runner's system prompt, through the served
model's chat template, non-streaming; the prompt length is what the server counted.
--prompt-style exact-ids sends token ids of exactly --target-input-tokens, streaming, and
measures client TTFT, TPOT and ITL. Either way each request asks for --target-output-tokens
with ignore_eos. Dataset text (gsm8k, longbench_v2) is tokenized by the server's /tokenize;
--datasets random uses seeded synthetic ids and needs no dataset at all.

--datasets and --metrics take space-separated lists, as the runner's do.

Note: --config-file here is the runner's benchmark YAML (as in the runner), not a moecapd
settings file; settings come from flags and MOECAP_* environment variables.

Exit codes: 0 ok; 1 the SGLang server's pass records are not where this client reads them
(server and client disagree on SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR; the runner exits 1
too); 2 usage or config error; 5 bench failed or result invalid (a request failed, usage
disagrees with the stream, short output: see --allow-bad-requests; server unreachable;
output not writable); 130 interrupted (what was measured is still written, marked partial).`,
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
	f.StringSlice("datasets", nil, "dataset names, space-separated: gsm8k, longbench_v2 or random (overrides dataset_names; several run one after another)")
	f.Bool("use-chat-api", false, "post to /v1/chat/completions (a /v1/completions URL is rewritten, as the runner does)")
	f.String("precision", "", "precision written to the metadata file: bfloat16 (default), float16, float32, int8 or int4")
	f.String("dataset-subset", "", "hub config of the dataset (gsm8k: main)")
	f.String("dataset-split", "", "hub split of the dataset (gsm8k: test)")
	f.StringSlice("metrics", nil, "space-separated; accepted for compatibility with the runner; fixed-length runs score no accuracy (quality.acc 0.0, as the runner writes)")
	f.Bool("profiling-only", false, "accepted for compatibility with the runner; records are still collected when the server has them")
	f.String("judge-api-url", "", "accepted for compatibility; the runner uses the judge only for arena-hard, which moecapd bench does not run")
	f.String("judge-model", "", "accepted for compatibility (see --judge-api-url)")
	f.String("judge-api-key", "", "accepted for compatibility (see --judge-api-url)")
	f.String("baseline-answers-path", "", "accepted for compatibility (see --judge-api-url)")
	f.String("prompt-style", profile.PromptUpstream, "upstream (the runner's chat-templated text, non-streaming) or exact-ids (exact token ids, streaming, client TTFT/TPOT/ITL)")
	f.Int("allow-bad-requests", 0, "requests that may fail or come back invalid (usage/stream mismatch, short output, no usage) before the result is invalid (exit 5); recorded in the files")
	// Our own.
	f.Int("warmup", 0, "unmeasured warm-up requests before the run (distinct prompts, no prefix-cache hits)")
	f.String("schedule", "", "closed-loop (exactly --server-batch-size in flight) or waves (the runner's send N, wait for half); default: waves with --prompt-style upstream, closed-loop with exact-ids")
	f.Float64("request-rate", 0, "mean request rate of Poisson arrivals per second (0: send as fast as the schedule allows)")
	f.Int64("seed", 0, "seed of random prompts and arrival times")
	f.String("records-dir", "", "where the recording window's passes are kept (default <output_dir>/.moecapd/records)")
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
		case errors.Is(err, profile.ErrRecordsUnavailable):
			return withCode(exitInternal, err)
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
	if schedule != "" && schedule != profile.ScheduleClosedLoop && schedule != profile.ScheduleWaves {
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
	var given *int // metadata's batch_size: null when the runner would send all at once
	if bs == 0 {
		bs = b.NumSamples // the runner sends everything at once without it
	} else {
		given = &bs
	}
	if len(v.GetStringSlice("metrics")) > 0 {
		log.Warn("--metrics is accepted for compatibility but moecapd bench computes no accuracy metrics")
	}
	switch p := b.Precision; p {
	case "", "bfloat16", "float16", "float32", "int8", "int4":
	default:
		return nil, usageErrorf("--precision %q: want bfloat16, float16, float32, int8 or int4 (the runner's choices)", p)
	}
	for _, ds := range b.DatasetNames {
		if strings.EqualFold(ds, "arena-hard") {
			return nil, usageErrorf("dataset arena-hard needs the runner's LLM judge (--judge-api-url, --baseline-answers-path), which moecapd bench does not implement; run moe_cap.runner.openai_api_profile for it")
		}
	}
	for _, k := range []string{"judge-api-url", "judge-model", "judge-api-key", "baseline-answers-path"} {
		if v.GetString(k) != "" {
			log.Warn("--" + k + " is accepted for compatibility and ignored: the runner uses the judge only for arena-hard")
		}
	}
	style := v.GetString("prompt-style")
	if style != profile.PromptUpstream && style != profile.PromptExactIDs {
		return nil, usageErrorf("--prompt-style %q: want upstream or exact-ids", style)
	}
	if schedule == "" {
		// A drop-in sends what the runner sends the way it sends it.
		schedule = profile.ScheduleClosedLoop
		if style == profile.PromptUpstream {
			schedule = profile.ScheduleWaves
		}
	}
	allowBad := v.GetInt("allow-bad-requests")
	if allowBad < 0 {
		return nil, usageErrorf("--allow-bad-requests %d: want ≥ 0", allowBad)
	}
	outDir := v.GetString("output_dir")
	recordsDir := v.GetString("records-dir")
	if recordsDir == "" {
		recordsDir = filepath.Join(outDir, profile.BenchDir, "records")
	}
	sgDir := v.GetString("sglang-recorder-dir")
	if sgDir == "" {
		sgDir = os.Getenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR")
	}
	if sgDir == "" {
		// The runner's and the wrapper's default: ~/expert_records.
		if home, err := os.UserHomeDir(); err == nil {
			sgDir = filepath.Join(home, "expert_records")
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
			Seed: v.GetInt64("seed"), UseChatAPI: v.GetBool("use-chat-api"), PromptStyle: style, AllowedBadRequests: allowBad, ServerBatchSize: given,
			Dataset: ds, DatasetFile: v.GetString("dataset-file"), DatasetSubset: b.DatasetSubset, DatasetSplit: b.DatasetSplit,
			DatasetCacheDir: v.GetString("dataset-cache-dir"), HubURL: v.GetString("hub-url"), Offline: v.GetBool("offline"),
			OutputDir: outDir, RecordsDir: recordsDir, SGLangRecorderDir: sgDir, NoRecords: v.GetBool("no-records"),
			RequestTimeout: v.GetDuration("request-timeout"), DrainTimeout: v.GetDuration("drain-timeout"),
			Progress: progress, Log: log, Precision: b.Precision, Markers: cmd.OutOrStdout(),
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

// runnerListFlags are the runner's argparse nargs flags: "+" needs one value, "*" none.
var runnerListFlags = map[string]bool{"--datasets": true, "--metrics": false}

// expandRunnerLists rewrites `bench --datasets a b --metrics x y` into repeated flags
// (`--datasets a --datasets b …`), which pflag understands, so bench takes the runner's
// space-separated lists. Other commands' argv is returned unchanged. A list ends at the next
// token that starts with "-" (as argparse ends it).
func expandRunnerLists(args []string) []string {
	// The subcommand is the first token that is neither a flag nor a flag's value.
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			return args
		}
		if strings.HasPrefix(a, "-") {
			if !strings.Contains(a, "=") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && args[i+1] != "bench" {
				i++ // its value
			}
			i++
			continue
		}
		break
	}
	if i == len(args) || args[i] != "bench" {
		return args
	}
	out := append([]string{}, args[:i+1]...)
	for j := i + 1; j < len(args); j++ {
		a := args[j]
		if a == "--" {
			return append(out, args[j:]...)
		}
		if _, ok := runnerListFlags[a]; !ok {
			out = append(out, a)
			continue
		}
		n := 0
		for j+1 < len(args) && !strings.HasPrefix(args[j+1], "-") {
			j++
			out = append(out, a+"="+args[j])
			n++
		}
		if n == 0 {
			if !runnerListFlags[a] {
				out = append(out, a+"=") // nargs "*": an empty list
			} else {
				out = append(out, a) // nargs "+": pflag reports the missing value
			}
		}
	}
	return out
}
