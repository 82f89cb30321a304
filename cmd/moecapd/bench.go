package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/moecapd/moecapd/internal/app"
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
	f.Float64("request-rate", 0, "open loop: mean requests/s of Poisson (or gamma, --burstiness) arrivals, not held to --server-batch-size (the server queues what it cannot run); 0: send as fast as the schedule allows")
	addLoadFlags(f)
	f.Int64("seed", 0, "seed of random prompts and arrival times")
	f.String("records-dir", "", "where the recording window's passes are kept (default <output_dir>/.moecapd/records)")
	f.String("sglang-recorder-dir", "", "the SGLang server's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, where its dump lands (default: that variable here, else ./expert_records, as the runner assumes)")
	f.Bool("no-records", false, "do not start/stop/dump the server's records")
	f.String("dataset-file", "", "local JSONL file of prompt texts ({\"text\": …} or the dataset's own fields per line)")
	f.String("dataset-cache-dir", defaultCacheDir(), "cache of dataset rows fetched from the hub")
	f.String("hub-url", profile.DefaultHubURL, "Hugging Face dataset viewer URL for dataset rows")
	f.Bool("offline", false, "never fetch dataset rows from the network")
	f.Duration("request-timeout", profile.DefaultRequestTimeout, "per-request limit, send to last byte")
	f.Duration("idle-timeout", profile.DefaultIdleTimeout, "fail a request when the server sends no byte (headers included) for this long")
	f.Duration("bench-timeout", profile.DefaultBenchTimeout, "limit of each dataset's whole run: past it the run fails (exit 5), what was measured kept (partial)")
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
func benchSettings(cmd *cobra.Command) (*viper.Viper, error) { return settings.Bind(cmd) }

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
	req := app.BenchRequest{
		ConfigFile: v.GetString("config-file"), APIURL: v.GetString("api-url"), Backend: v.GetString("backend"),
		IgnoreEOS: v.GetBool("ignore-eos"), NoIgnoreEOS: v.GetBool("no-ignore-eos"), ServerBatchSize: v.GetInt("server-batch-size"),
		OutputDir: v.GetString("output_dir"), NumSamples: v.GetInt("num-samples"),
		TargetInputTokens: v.GetInt("target-input-tokens"), TargetOutputTokens: v.GetInt("target-output-tokens"),
		FixedLengthMode: v.GetBool("fixed-length-mode"), Datasets: v.GetStringSlice("datasets"), Metrics: v.GetStringSlice("metrics"),
		UseChatAPI: v.GetBool("use-chat-api"), Precision: v.GetString("precision"),
		DatasetSubset: v.GetString("dataset-subset"), DatasetSplit: v.GetString("dataset-split"),
		JudgeAPIURL: v.GetString("judge-api-url"), JudgeModel: v.GetString("judge-model"), JudgeAPIKey: v.GetString("judge-api-key"),
		BaselineAnswersPath: v.GetString("baseline-answers-path"), PromptStyle: v.GetString("prompt-style"),
		AllowBadRequests: v.GetInt("allow-bad-requests"), Warmup: v.GetInt("warmup"), Schedule: v.GetString("schedule"),
		Seed: v.GetInt64("seed"), Load: readLoadFlags(settings.NewReader(cmd.Flags())),
		RecordsDir: v.GetString("records-dir"), SGLangRecorderDir: v.GetString("sglang-recorder-dir"), NoRecords: v.GetBool("no-records"),
		DatasetFile: v.GetString("dataset-file"), DatasetCacheDir: v.GetString("dataset-cache-dir"), HubURL: v.GetString("hub-url"),
		Offline: v.GetBool("offline"), RequestTimeout: v.GetDuration("request-timeout"), DrainTimeout: v.GetDuration("drain-timeout"),
		IdleTimeout: v.GetDuration("idle-timeout"), BenchTimeout: v.GetDuration("bench-timeout"),
		Log: log, Out: cmd.OutOrStdout(),
	}
	if cmd.Flags().Changed("model_name") || v.IsSet("model_name") && v.GetString("model_name") != "" {
		name := v.GetString("model_name")
		req.ModelName = &name
	}
	return app.Bench(cmd.Context(), req)
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
