package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/profile"
)

func init() { register(newLaunchCmd) }

func newLaunchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "launch-and-bench [flags] [-- extra server flags]",
		Short: "Run one matrix cell end to end: launch the server, wait until ready, benchmark, tear down, record",
		Long: `Runs one cell of the MoE-CAP matrix unattended: activates the backend's conda env, spawns
python -m moe_cap.systems.sglang|vllm with the guide's flags (or the built-in simulated server
with --backend sim), waits until it really serves, runs the profiling client, samples the GPUs,
tears the server down, proves nothing is left, and writes results/<cell-id>/.

One runner per cell: the cell is locked while it runs (the lock matrix run and Slurm tasks
take too); a second runner of it is refused at once, naming the holder.

Exit codes: 0 ok, 1 internal error, 2 usage or config error (also: the cell is held by
another runner), 3 server failed to launch or become ready, 4 infeasible (out of GPU memory), 5 bench failed or result invalid, 6 teardown
left something behind, 130 interrupted (SIGINT, SIGTERM or SIGHUP; the server is torn down first).`,
		Example: `  moecapd launch-and-bench --backend sim --config configs/fixed_4k_1k_qwen1_5.yaml --batch-size 32
  moecapd launch-and-bench --backend sglang --config configs/fixed_4k_1k_qwen1_5.yaml --batch-size 1
  moecapd launch-and-bench --backend vllm --config configs/fixed_13k_1k_dsv2_lite.yaml --batch-size 64 --tp 8
  moecapd launch-and-bench --backend sglang --config configs/fixed_4k_1k_qwen1_5.yaml --batch-size 1 -- --mem-fraction-static 0.8`,
		RunE: runLaunch,
	}
	f := cmd.Flags()
	f.String("backend", "", "sglang, vllm or sim (required)")
	f.String("config", "", "benchmark YAML in the MoE-CAP runner's format, e.g. configs/fixed_4k_1k_qwen1_5.yaml (required)")
	f.Int("batch-size", 0, "concurrent requests: --max-running-requests (sglang) / --max-num-seqs (vllm) and the client's in-flight count (required)")
	f.Int("tp", 1, "tensor parallelism: GPUs the server uses")
	f.Int("num-samples", 0, "override num_samples of the config (0: keep it)")
	f.String("conda-root", "", "conda installation (default: $CONDA_EXE's root, $MAMBA_ROOT_PREFIX, ~/miniforge3, ~/miniconda3, ~/anaconda3, /opt/conda)")
	f.String("env", "", "conda env name or absolute prefix (default: the backend's name)")
	f.Int("port", 0, "server port (default 30000 for sglang/sim, 8000 for vllm; 0 with --port=0 picks a free one)")
	f.String("host", "127.0.0.1", "address the server binds (0.0.0.0 exposes an unauthenticated server to the network)")
	f.String("results", "results", "results root; the cell writes <results>/<cell-id>/")
	f.Duration("grace", 30*time.Second, "how long the server may take to exit after SIGTERM before SIGKILL")
	f.Duration("ready-timeout", 20*time.Minute, "how long the server may stay silent and not ready before it is declared stuck (each log line pushes it back)")
	f.Duration("ready-hard-timeout", 2*time.Hour, "absolute cap on start-up time")
	f.String("client", "", "moe-cap (the MoE-CAP runner in the conda env; default for sglang/vllm) or native (built-in Go client; default for sim)")
	f.Bool("dry-run", false, "print the exact argv and added environment of server and client, start nothing")
	f.String("progress", "auto", "bench progress: tty (a live line: requests done / total, tok/s, ETA), log (a log line every 10 s), auto (tty when stderr is a terminal)")
	f.String("hardware", "", "hardware label for the cell id (default from NVML, e.g. 1xH100)")
	f.String("sim-flavor", "sglang", "sim backend: which wrapper's API to imitate (sglang or vllm)")
	f.String("sim-hardware", "H100", "sim backend: hardware family to simulate (H100, H200, A100)")
	f.String("configs-dir", "configs", "directory of models.yaml and hardware.yaml (built-in copies when absent)")
	f.String("model-config", "", "the model's config.json, for a model neither in a local model directory, the Hugging Face cache nor the built-in table")
	f.Bool("allow-unknown-model", false, "run a model moecapd cannot describe (not in a local model directory, the Hugging Face cache, --model-config nor the built-in table) instead of refusing it (exit 2); recorded in the manifest, and the cell has no CAP numbers")
	f.Bool("require-gpu", false, "fail (exit 2) when NVML is unavailable instead of running without telemetry")
	f.Duration("gpu-wait", 0, "how long to wait for busy GPUs to become idle before failing")
	f.Int("gpu-idle-mib", 512, "MiB a GPU may use above its own baseline and still count as idle: before launch over the driver's reservation (NVML v2 leaves it out; v1-only drivers count it), after teardown over the pre-launch reading")
	f.Duration("gpu-interval", 100*time.Millisecond, "GPU telemetry sampling interval")
	f.Float64("gpu-hour-usd", 0, "price of one GPU-hour for the cost figures (default from configs/hardware.yaml)")
	f.Float64("electricity-usd-per-kwh", 0, "electricity price for the cost figures (default from configs/hardware.yaml)")
	f.Int("warmup", 0, "native client: warm-up requests before measuring")
	f.Int64("seed", 0, "native client: seed of synthetic prompts")
	f.String("dataset", "", "native client: prompt source: gsm8k, longbench_v2 or random (default: the config's dataset; random for --backend sim)")
	f.String("dataset-file", "", "native client: local JSONL of prompt texts instead of fetching the dataset from the hub")
	f.String("dataset-cache-dir", defaultCacheDir(), "native client: cache of dataset rows fetched from the hub")
	f.Bool("offline", false, "native client: never fetch dataset rows from the network")
	// moecap helper (issue 9 / 11.3): the native client's prompt style and result tolerance.
	f.String("prompt-style", profile.PromptExactIDs, "native client: exact-ids (exact token ids, streaming: client TTFT/TPOT/ITL) or upstream (the MoE-CAP runner's chat-templated text, non-streaming)")
	f.Duration("request-timeout", profile.DefaultRequestTimeout, "native client: per-request limit, send to last byte")
	f.Duration("idle-timeout", profile.DefaultIdleTimeout, "native client: fail a request when the server sends no byte (headers included) for this long")
	f.Duration("bench-timeout", profile.DefaultBenchTimeout, "the whole bench of a cell (warm-up and measured requests; either client): past it the cell fails (exit 5), what was measured kept")
	f.Int("allow-bad-requests", 0, "native client: requests that may fail or come back invalid (usage/stream mismatch, short output) before the cell is bad_result; recorded in the manifest")
	f.Int("repeats", 1, "native client: run the measured bench this many times against the same warm server; the manifest keeps every repeat and their mean, 95% interval and CV")
	f.Bool("repeat-fresh-server", false, "with --repeats: restart the server between repeats")
	addLoadFlags(f)
	f.Float64("unstable-cv", 0, "with --repeats: flag the cell unstable when a metric's coefficient of variation over the repeats exceeds this (default 0.05)")
	return cmd
}

// readLaunchOpts reads launch-and-bench's flags (merged by settings) into app.CellOptions.
// The matrix's flag set lacks the per-cell flags; they read as zero and the matrix sets them.
func readLaunchOpts(fs *pflag.FlagSet) (app.CellOptions, error) {
	r := settings.NewReader(fs)
	o := app.CellOptions{Version: version,
		Backend: r.Str("backend"), Config: r.Str("config"), BatchSize: r.Int("batch-size"), TP: r.Int("tp"),
		NumSamples: r.Int("num-samples"), CondaRoot: r.Str("conda-root"), Env: r.Str("env"),
		Port: r.Int("port"), PortSet: r.Changed("port"), Host: r.Str("host"), Results: r.Str("results"),
		Grace: r.Dur("grace"), ReadyTimeout: r.Dur("ready-timeout"), ReadyHardTimeout: r.Dur("ready-hard-timeout"),
		Client: r.Str("client"), DryRun: r.Bool("dry-run"), Hardware: r.Str("hardware"),
		SimFlavor: r.Str("sim-flavor"), SimHardware: r.Str("sim-hardware"), ConfigsDir: r.Str("configs-dir"),
		ModelConfig: r.Str("model-config"), AllowUnknownModel: r.Bool("allow-unknown-model"), RequireGPU: r.Bool("require-gpu"), GPUWait: r.Dur("gpu-wait"), GPUInterval: r.Dur("gpu-interval"),
		GPUIdleMiB: r.Int("gpu-idle-mib"),
		GPUHourUSD: r.OptFloat("gpu-hour-usd"), ElectricityUSDPerKWh: r.OptFloat("electricity-usd-per-kwh"),
		Warmup: r.Int("warmup"), Seed: r.Int64("seed"), Dataset: r.Str("dataset"), DatasetFile: r.Str("dataset-file"),
		DatasetCacheDir: r.Str("dataset-cache-dir"), Offline: r.Bool("offline"),
		PromptStyle: r.Str("prompt-style"), AllowBadRequests: r.Int("allow-bad-requests"),
		RequestTimeout: r.Dur("request-timeout"), IdleTimeout: r.Dur("idle-timeout"), BenchTimeout: r.Dur("bench-timeout"),
		Repeats: r.Int("repeats"), RepeatFreshServer: r.Bool("repeat-fresh-server"),
	}
	o.Load = readLoadFlags(r)
	if cv := r.OptFloat("unstable-cv"); cv != nil {
		o.UnstableCV = *cv
	}
	if r.Err() != nil {
		return o, r.Err()
	}
	return o, o.Check()
}

func runLaunch(cmd *cobra.Command, args []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer log.Sync()
	extra := args
	if n := cmd.ArgsLenAtDash(); n > 0 {
		return usageErrorf("unexpected arguments %q before --; extra server flags go after --", args[:n])
	} else if n < 0 && len(args) > 0 {
		return usageErrorf("unexpected arguments %q; extra server flags go after --", args)
	}
	o, err := readLaunchOpts(cmd.Flags())
	if err != nil {
		return err
	}
	return app.Launch(app.LaunchRequest{Cell: o, Extra: extra, Progress: v.GetString("progress"), Log: log, Out: os.Stdout})
}
