package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/sim"
)

func init() { register(newSimServerCmd) }

func newSimServerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "sim-server --flavor sglang|vllm [server flags]",
		Short: "Simulated MoE inference server that answers like the MoE-CAP SGLang/vLLM wrappers",
		Long: `sim-server behaves like "python -m moe_cap.systems.sglang" or "... .vllm" without a GPU:
the same flags, endpoints, readiness lines and per-pass records, with forward passes timed
by a roofline of the model on the chosen hardware (decode bound by HBM bandwidth, prefill
by FLOPs) and continuous batching up to the batch size. Flags the wrappers accept and the
simulator does not need (--trust-remote-code, --mem-fraction-static 0.8, ...) are accepted
and logged as ignored. The simulated model never emits EOS: every completion is exactly
max_tokens long.

The records directory comes from SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, as for the real
wrappers.`,
		// The wrappers' flag sets are open-ended, so parsing is ours: known flags are
		// applied, unknown ones logged and skipped (cobra's whitelist would drop them
		// silently, and the log line is what tells a user their flag did nothing).
		DisableFlagParsing: true,
		RunE:               runSimServer,
	}
	f := c.Flags()
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-")) // vLLM accepts both
	})
	f.String("flavor", "", "which wrapper to imitate: sglang or vllm (required)")
	f.String("host", "127.0.0.1", "address to listen on")
	f.Int("port", 0, "port to listen on (default 30000 for sglang, 8000 for vllm; 0 given explicitly picks a free port)")
	f.String("model-path", "", "sglang: model to serve; clients must send this string as \"model\"")
	f.String("expert-distribution-recorder-mode", "stat", "sglang: expert recorder mode (accepted; records are always per pass)")
	f.Int("tp-size", 1, "sglang: tensor-parallel size")
	f.Bool("enable-metrics", false, "sglang: serve Prometheus metrics on /metrics (vLLM always does)")
	f.Int("max-running-requests", 0, "sglang: most requests decoding at once (default 256)")
	f.Int("context-length", 0, "sglang: context length (default: the model's max positions)")
	f.Int("chunked-prefill-size", 0, "sglang: accepted; prefill is not chunked in the simulator")
	f.String("model", "", "vllm: model to serve; clients must send this string as \"model\"")
	f.Int("tensor-parallel-size", 1, "vllm: tensor-parallel size (also -tp)")
	f.Bool("enable-expert-distribution-metrics", false, "vllm: also log every pass since start-up under <recorder dir>/logs/expert_distribution/, as the wrapper does (batch records are kept between /start_batch_recording and /stop_batch_recording either way)")
	f.Int("max-num-batched-tokens", 0, "vllm: accepted; prefill is not chunked in the simulator")
	f.Int("max-num-seqs", 0, "vllm: most requests decoding at once (default 256)")
	f.Int("max-model-len", 0, "vllm: context length (default: the model's max positions)")
	f.String("sim-hardware", "H100", "GPU to simulate: H100, H200 or A100 (a family of hardware.yaml)")
	f.String("sim-model", "", "model table key (default: looked up from the model path)")
	f.String("sim-configs", "", "directory with models.yaml and hardware.yaml (default: the built-in tables)")
	f.String("kv-cache-dtype", "auto", "KV cache element type: auto (bf16) or fp8 (one byte per element)")
	f.String("model-config", "", "the served model's config.json (default: the model path's config.json, the Hugging Face cache, then the built-in table)")
	f.String("sim-fault", "", "inject a fault: "+strings.Join(sim.Faults, ", "))
	f.Int("sim-workers", 0, "start N worker processes in the server's process group, as vLLM/SGLang do")
	f.Duration("sim-startup", 0, "time spent \"loading weights\" before listening, with progress lines")
	f.Duration("sim-tpot", 0, "fixed decode pass duration (default: roofline)")
	f.Duration("sim-ttft", 0, "fixed prefill pass duration (default: roofline)")
	f.Float64("sim-time-scale", 1, "multiply how long every pass waits (0.05 runs 20x faster than the hardware); the records keep the model's real pass latencies")
	f.Bool("sim-worker", false, "run as a worker process (internal)")
	f.Int("sim-worker-rank", 0, "worker rank (internal)")
	f.MarkHidden("sim-worker")
	f.MarkHidden("sim-worker-rank")
	f.BoolP("help", "h", false, "help for sim-server")
	return c
}

func runSimServer(cmd *cobra.Command, args []string) error {
	out := cmd.OutOrStdout()
	fs := cmd.Flags()
	known, ignored := sim.SplitServerArgs(func(name string, short bool) (bool, bool) {
		f := fs.Lookup(name)
		if short {
			f = fs.ShorthandLookup(name)
		}
		return f != nil, f != nil && f.Value.Type() == "bool"
	}, args)
	parseErr := fs.Parse(known)
	if w, _ := fs.GetBool("sim-worker"); w && parseErr == nil {
		rank, _ := fs.GetInt("sim-worker-rank")
		switch os.Getenv(sim.DaemonEnv) {
		case "1":
			return sim.DaemonizeWorker(rank)
		case "2":
			// Only SIGKILL ends it, and only a supervisor that tracks more than parent PIDs
			// and process groups finds it.
			signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			fmt.Fprintf(out, "sim: daemonized worker rank=%d pid=%d\n", rank, os.Getpid())
		}
		sim.RunWorker(out, rank)
		return nil
	}
	// --help prints only the help: no server starts, so nothing is announced.
	if h, _ := fs.GetBool("help"); h && parseErr == nil {
		return cmd.Help()
	}
	// Announced before any flag error, so a launcher test sees what a bad argv looked like.
	if err := sim.AnnounceStart(out); err != nil {
		return err
	}
	if parseErr != nil {
		return usageErrorf("sim-server: %v (see moecapd sim-server --help)", parseErr)
	}
	for _, a := range ignored {
		fmt.Fprintf(out, "sim: ignoring server flag %q (not simulated)\n", a)
	}
	cfg, err := sim.ConfigFromFlags(readSimFlags(fs))
	if err != nil {
		return err
	}
	cfg.Out = out

	ctx := cmd.Context()
	if cfg.Fault == sim.FaultIgnoreSIGTERM {
		// Only SIGKILL may end this one: that is what the supervisor's escalation is for.
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	} else {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
	}
	err = sim.Run(ctx, cfg)
	var fe *sim.FaultError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe), errors.Is(err, sim.ErrAddrInUse):
		return exitcode.New(exitcode.Internal, err) // status 1, like the Python server dying
	default:
		return err
	}
}

// readSimFlags reads sim-server's parsed flags into sim.ServerFlags.
func readSimFlags(fs *pflag.FlagSet) sim.ServerFlags {
	str := func(n string) string { v, _ := fs.GetString(n); return v }
	num := func(n string) int { v, _ := fs.GetInt(n); return v }
	dur := func(n string) time.Duration { v, _ := fs.GetDuration(n); return v }
	var given []string
	fs.Visit(func(f *pflag.Flag) { given = append(given, f.Name) })
	scale, _ := fs.GetFloat64("sim-time-scale")
	edm, _ := fs.GetBool("enable-expert-distribution-metrics")
	em, _ := fs.GetBool("enable-metrics")
	return sim.ServerFlags{Flavor: str("flavor"), Host: str("host"), Port: num("port"), PortSet: fs.Changed("port"), Given: given,
		ModelPath: str("model-path"), TPSize: num("tp-size"), MaxRunningRequests: num("max-running-requests"), ContextLength: num("context-length"),
		Model: str("model"), TensorParallelSize: num("tensor-parallel-size"), MaxNumSeqs: num("max-num-seqs"), MaxModelLen: num("max-model-len"),
		ExpertDistributionMetrics: edm, EnableMetrics: em, SimHardware: str("sim-hardware"), SimModel: str("sim-model"), SimConfigs: str("sim-configs"),
		KVCacheDtype: str("kv-cache-dtype"), ModelConfig: str("model-config"), Fault: str("sim-fault"), Workers: num("sim-workers"),
		Startup: dur("sim-startup"), TPOT: dur("sim-tpot"), TTFT: dur("sim-ttft"), TimeScale: scale}
}
