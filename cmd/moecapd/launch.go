package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/report"
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

Exit codes: 0 ok, 1 internal error, 2 usage or config error, 3 server failed to launch or
become ready, 4 infeasible (out of GPU memory), 5 bench failed or result invalid, 6 teardown
left something behind, 130 interrupted.`,
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
	f.String("hardware", "", "hardware label for the cell id (default from NVML, e.g. 1xH100)")
	f.String("sim-flavor", "sglang", "sim backend: which wrapper's API to imitate (sglang or vllm)")
	f.String("sim-hardware", "H100", "sim backend: hardware family to simulate (H100, H200, A100)")
	f.String("configs-dir", "configs", "directory of models.yaml and hardware.yaml (built-in copies when absent)")
	f.Bool("require-gpu", false, "fail (exit 2) when NVML is unavailable instead of running without telemetry")
	f.Duration("gpu-wait", 0, "how long to wait for busy GPUs to become idle before failing")
	f.Duration("gpu-interval", 100*time.Millisecond, "GPU telemetry sampling interval")
	f.Float64("gpu-hour-usd", 0, "price of one GPU-hour for the cost figures (default from configs/hardware.yaml)")
	f.Float64("electricity-usd-per-kwh", 0, "electricity price for the cost figures (default from configs/hardware.yaml)")
	f.Int("warmup", 0, "native client: warm-up requests before measuring")
	f.Int64("seed", 0, "native client: seed of synthetic prompts")
	f.String("dataset", "", "native client: prompt source: gsm8k, longbench_v2 or random (default: the config's dataset; random for --backend sim)")
	f.String("dataset-file", "", "native client: local JSONL of prompt texts instead of fetching the dataset from the hub")
	f.String("dataset-cache-dir", defaultCacheDir(), "native client: cache of dataset rows fetched from the hub")
	f.Bool("offline", false, "native client: never fetch dataset rows from the network")
	return cmd
}

// cellFromFlags builds a cell config from the flags; shared by launch-and-bench and matrix.
// gb is an open GPU backend to use; nil opens one, which the returned cleanup closes.
func cellFromFlags(v *viper.Viper, log *zap.Logger, extra []string, gb gpu.Backend) (*cell.Config, func(), error) {
	backend := v.GetString("backend")
	if backend == "" {
		return nil, nil, usageErrorf("--backend is required: sglang, vllm or sim")
	}
	if v.GetString("config") == "" {
		return nil, nil, usageErrorf("--config is required: a benchmark YAML such as configs/fixed_4k_1k_qwen1_5.yaml")
	}
	bench, err := config.LoadBench(v.GetString("config"))
	if err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	tables, err := config.LoadTables(v.GetString("configs-dir"))
	if err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	client := v.GetString("client")
	if client == "" {
		client = cell.ClientMoECAP
		if backend == launcher.BackendSim {
			client = cell.ClientNative
		}
	}
	port := v.GetInt("port")
	if !v.IsSet("port") {
		port = launcher.DefaultPort(backend)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {}
	if gb == nil {
		if gb, err = gpu.Open(log, v.GetBool("require-gpu")); err != nil {
			return nil, nil, withCode(exitUsage, err)
		}
		cleanup = func() { gb.Close() }
	}
	c := &cell.Config{
		Backend: backend, SimFlavor: v.GetString("sim-flavor"), SimHW: v.GetString("sim-hardware"),
		Bench: bench, Tables: tables, BatchSize: v.GetInt("batch-size"), TP: v.GetInt("tp"),
		NumSamples: v.GetInt("num-samples"), Host: v.GetString("host"), Port: port,
		Results: v.GetString("results"), Grace: v.GetDuration("grace"),
		ReadyStall: v.GetDuration("ready-timeout"), ReadyHard: v.GetDuration("ready-hard-timeout"),
		Client: client, ServerArgs: extra,
		Conda: launcher.CondaSearch{Flag: v.GetString("conda-root"), CondaExe: os.Getenv("CONDA_EXE"),
			MambaRootPrefix: os.Getenv("MAMBA_ROOT_PREFIX"), Home: os.Getenv("HOME")},
		CondaEnv: v.GetString("env"), BaseEnv: os.Environ(), SelfExe: self,
		CUDAVisibleDevices: os.Getenv("CUDA_VISIBLE_DEVICES"), Hardware: v.GetString("hardware"),
		GPUs: gb, GPUWait: v.GetDuration("gpu-wait"), GPUInterval: v.GetDuration("gpu-interval"),
		MemSlackBytes: 512 << 20, Version: version, Log: log,
	}
	c.Native.Warmup = v.GetInt("warmup")
	c.Native.Seed = v.GetInt64("seed")
	c.Native.Dataset = v.GetString("dataset")
	if c.Native.Dataset == "" && backend == launcher.BackendSim && v.GetString("dataset-file") == "" {
		// The sim's toy tokenizer gives dataset text no meaning; seeded ids need no network.
		c.Native.Dataset = "random"
	}
	c.Native.DatasetFile = v.GetString("dataset-file")
	c.Native.DatasetCacheDir = v.GetString("dataset-cache-dir")
	c.Native.Offline = v.GetBool("offline")
	c.Derive = report.Hook(tables, func(err error) {
		log.Warn("CAP numbers (S-MBU, S-MFU, floors) not derived; the report will try again from records/", zap.Error(err))
	})
	return c, cleanup, nil
}

func runLaunch(cmd *cobra.Command, args []string) error {
	v, err := settings(cmd)
	if err != nil {
		return err
	}
	log, err := newLogger(v)
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
	c, cleanup, err := cellFromFlags(v, log, extra, nil)
	if err != nil {
		return err
	}
	defer cleanup()
	plan, err := cell.MakePlan(c)
	if err != nil {
		if config.IsConfigError(err) {
			return withCode(exitUsage, err)
		}
		return err
	}
	setPrices(c, plan, v)
	if v.GetBool("dry-run") {
		fmt.Print(plan.Describe())
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	m, err := cell.Run(ctx, c, plan)
	if err != nil {
		return withCode(exitInternal, err)
	}
	printCellSummary(os.Stdout, plan.Dir, m)
	if code := cell.ExitCode(m); code != 0 {
		msg := string(m.Status)
		if m.Failure != nil {
			msg = fmt.Sprintf("%s in %s (%s): %s", m.Status, m.Failure.Phase, m.Failure.Kind, m.Failure.Message)
		}
		return withCode(code, fmt.Errorf("cell %s %s", m.Cell.ID, msg))
	}
	return nil
}

func setPrices(c *cell.Config, p *cell.Plan, v *viper.Viper) {
	fam := c.SimHW
	if len(p.Devices) > 0 {
		fam = p.Devices[0].Family
	}
	if fam == "" {
		fam = "H100"
	}
	hw, _ := c.Tables.HardwareFamily(fam)
	c.Prices = gpu.Prices{GPUHourUSD: hw.GPUHourUSD, ElectricityUSDPerKWh: hw.ElectricityUSDPerKWh}
	if v.IsSet("gpu-hour-usd") {
		c.Prices.GPUHourUSD = v.GetFloat64("gpu-hour-usd")
	}
	if v.IsSet("electricity-usd-per-kwh") {
		c.Prices.ElectricityUSDPerKWh = v.GetFloat64("electricity-usd-per-kwh")
	}
}

func printCellSummary(w io.Writer, dir string, m *cell.Manifest) {
	fmt.Fprintf(w, "cell     %s\nstatus   %s\nresults  %s\n", m.Cell.ID, m.Status, dir)
	if m.Failure != nil {
		fmt.Fprintf(w, "failure  %s/%s: %s\n", m.Failure.Phase, m.Failure.Kind, m.Failure.Message)
	}
	t := m.Timings
	fmt.Fprintf(w, "timings  preflight %.2fs  launch→ready %.2fs  bench %.2fs  teardown %.2fs  total %.2fs\n",
		t.Preflight, t.LaunchToReady, t.Bench, t.Teardown, t.Total)
	if x := m.Metrics; x != nil {
		fmt.Fprintf(w, "requests %d completed, %d failed  (%s latencies)\n", x.Completed, x.Failed, x.LatencyKind)
		f := func(p *float64) string { return profile.FormatMs(p, 2) }
		if sp := x.ServerPass; sp != nil {
			// Server forward-pass times (GPU time, no queueing), under their own names.
			fmt.Fprintf(w, "server passes  TTFT (MoE-CAP) %s ms  TPOT (MoE-CAP) %s ms\n", f(sp.TTFTMoECAPMs), f(sp.TPOTMoECAPMs))
		}
		if x.MeanTTFTMs != nil || x.MeanTPOTMs != nil {
			fmt.Fprintf(w, "TTFT ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanTTFTMs), f(x.MedianTTFTMs), f(x.P90TTFTMs), f(x.P99TTFTMs))
			fmt.Fprintf(w, "TPOT ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanTPOTMs), f(x.MedianTPOTMs), f(x.P90TPOTMs), f(x.P99TPOTMs))
			fmt.Fprintf(w, "ITL ms   mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanITLMs), f(x.MedianITLMs), f(x.P90ITLMs), f(x.P99ITLMs))
		}
		fmt.Fprintf(w, "E2EL ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanE2ELMs), f(x.MedianE2ELMs), f(x.P90E2ELMs), f(x.P99E2ELMs))
		fmt.Fprintf(w, "throughput  %.1f output tok/s  %.1f total tok/s  %.3f req/s over %.2fs\n", x.OutputThroughput, x.TotalTokenThroughput, x.RequestThroughput, x.DurationS)
	}
	if tm := m.Telemetry; tm != nil {
		if !tm.Available {
			fmt.Fprintf(w, "telemetry unavailable: %s\n", tm.Reason)
		} else {
			fmt.Fprintf(w, "gpus     %d sampled, %d samples, %d missed", tm.GPUs, tm.Samples, tm.Missed)
			if tm.EnergyJ != nil {
				fmt.Fprintf(w, "; energy %.1f J", *tm.EnergyJ)
			}
			if tm.JPerOutputToken != nil {
				fmt.Fprintf(w, ", %.4f J/output token", *tm.JPerOutputToken)
			}
			if tm.AvgPowerW != nil {
				fmt.Fprintf(w, ", avg power %.0f W", *tm.AvgPowerW)
			}
			if tm.PeakMemoryBytes != nil {
				fmt.Fprintf(w, ", peak memory %.1f GiB", float64(*tm.PeakMemoryBytes)/(1<<30))
			}
			fmt.Fprintln(w)
		}
		if c := tm.Cost; c != nil && c.CostPerMillionOutputTokensUSD != nil {
			fmt.Fprintf(w, "cost     $%.2f per million output tokens ($%.2f/GPU-hour, $%.2f/kWh)\n", *c.CostPerMillionOutputTokensUSD, c.GPUHourUSD, c.ElectricityUSDPerKWh)
		} else if c != nil {
			fmt.Fprintf(w, "cost     $%.4f GPU rental for the bench (no energy measured)\n", c.GPUUSD)
		}
	}
}
