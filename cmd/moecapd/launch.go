package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/moecapd/moecapd/pkg/capmath"
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
	f.Int("allow-bad-requests", 0, "native client: requests that may fail or come back invalid (usage/stream mismatch, short output) before the cell is bad_result; recorded in the manifest")
	return cmd
}

// launchOpts is launch-and-bench's settings, merged once (flag > MOECAP_* > moecapd.yaml >
// default) and typed: the per-cell configuration is built from a value of it, once per
// cell. The matrix copies its own and sets the per-cell fields; nothing writes back into
// flags or viper, so nothing shared is written while goroutines read.
type launchOpts struct {
	Backend, Config           string
	BatchSize, TP, NumSamples int
	CondaRoot, Env            string
	Port                      int
	PortSet                   bool // --port given: 0 then means "pick a free one"
	Host, Results             string
	Grace                     time.Duration
	ReadyTimeout              time.Duration
	ReadyHardTimeout          time.Duration
	Client                    string
	DryRun                    bool
	Hardware                  string
	SimFlavor, SimHardware    string
	ConfigsDir                string
	ModelConfig               string // --model-config: the model's config.json
	RequireGPU                bool
	GPUWait, GPUInterval      time.Duration
	// GPUIdleMiB is how much memory a GPU may use above its own baseline and still count as
	// idle (before launch) or back to baseline (after teardown).
	GPUIdleMiB int
	// Prices are nil unless given: the hardware table's then.
	GPUHourUSD, ElectricityUSDPerKWh *float64
	Warmup                           int
	Seed                             int64
	Dataset, DatasetFile             string
	DatasetCacheDir                  string
	Offline                          bool
	PromptStyle                      string
	AllowBadRequests                 int
}

// readLaunchOpts reads launch-and-bench's flags (merged by settings) into launchOpts. The
// matrix's flag set lacks the per-cell flags; they read as zero and the matrix sets them.
func readLaunchOpts(fs *pflag.FlagSet) (launchOpts, error) {
	r := &flagReader{fs: fs}
	o := launchOpts{
		Backend: r.str("backend"), Config: r.str("config"), BatchSize: r.int("batch-size"), TP: r.int("tp"),
		NumSamples: r.int("num-samples"), CondaRoot: r.str("conda-root"), Env: r.str("env"),
		Port: r.int("port"), PortSet: r.changed("port"), Host: r.str("host"), Results: r.str("results"),
		Grace: r.dur("grace"), ReadyTimeout: r.dur("ready-timeout"), ReadyHardTimeout: r.dur("ready-hard-timeout"),
		Client: r.str("client"), DryRun: r.bool("dry-run"), Hardware: r.str("hardware"),
		SimFlavor: r.str("sim-flavor"), SimHardware: r.str("sim-hardware"), ConfigsDir: r.str("configs-dir"),
		ModelConfig: r.str("model-config"), RequireGPU: r.bool("require-gpu"), GPUWait: r.dur("gpu-wait"), GPUInterval: r.dur("gpu-interval"),
		GPUIdleMiB: r.int("gpu-idle-mib"),
		GPUHourUSD: r.optFloat("gpu-hour-usd"), ElectricityUSDPerKWh: r.optFloat("electricity-usd-per-kwh"),
		Warmup: r.int("warmup"), Seed: r.int64("seed"), Dataset: r.str("dataset"), DatasetFile: r.str("dataset-file"),
		DatasetCacheDir: r.str("dataset-cache-dir"), Offline: r.bool("offline"),
		PromptStyle: r.str("prompt-style"), AllowBadRequests: r.int("allow-bad-requests"),
	}
	if r.err != nil {
		return o, r.err
	}
	for _, p := range []struct {
		key string
		v   *float64
		max float64
	}{{"--gpu-hour-usd", o.GPUHourUSD, config.MaxUSD}, {"--electricity-usd-per-kwh", o.ElectricityUSDPerKWh, config.MaxUSD}} {
		if p.v != nil {
			if err := config.CheckFloat("settings", p.key, *p.v, 0, p.max); err != nil {
				return o, withCode(exitUsage, err)
			}
		}
	}
	if err := config.CheckInt("settings", "--gpu-idle-mib", int64(o.GPUIdleMiB), 0, 1<<20, "MiB above a GPU's own baseline that still count as idle"); err != nil {
		return o, withCode(exitUsage, err)
	}
	return o, nil
}

// warnExposed warns when host (an address to bind) is not loopback: what listens there (an
// inference server, the metrics endpoint) has no authentication.
func warnExposed(log *zap.Logger, what, host string) {
	if !exposed(host) {
		return
	}
	where := "binds a non-loopback address"
	switch strings.Trim(host, "[]") {
	case "", "0.0.0.0", "::":
		where = "binds all network interfaces"
	}
	log.Warn(what+" "+where+" and has no authentication: anyone who can reach this node can use it; bind 127.0.0.1 unless that is intended",
		zap.String("host", host))
}

// cellConfig builds one cell's pipeline config from typed settings; shared by
// launch-and-bench and the matrix. gb is an open GPU backend to use; nil opens one, which
// the returned cleanup closes.
func cellConfig(o launchOpts, log *zap.Logger, extra []string, gb gpu.Backend) (*cell.Config, func(), error) {
	backend := o.Backend
	if backend == "" {
		return nil, nil, usageErrorf("--backend is required: sglang, vllm or sim")
	}
	if o.Config == "" {
		return nil, nil, usageErrorf("--config is required: a benchmark YAML such as configs/fixed_4k_1k_qwen1_5.yaml")
	}
	bench, err := config.LoadBench(o.Config)
	if err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	tables, err := loadTables(o.ConfigsDir, o.ModelConfig)
	if err != nil {
		return nil, nil, err
	}
	client := o.Client
	if client == "" {
		client = cell.ClientMoECAP
		if backend == launcher.BackendSim {
			client = cell.ClientNative
		}
	}
	port := o.Port
	if !o.PortSet {
		port = launcher.DefaultPort(backend)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {}
	if gb == nil {
		if gb, err = gpu.Open(log, o.RequireGPU); err != nil {
			return nil, nil, withCode(exitUsage, err)
		}
		cleanup = func() { gb.Close() }
	}
	c := &cell.Config{
		Backend: backend, SimFlavor: o.SimFlavor, SimHW: o.SimHardware,
		Bench: bench, Tables: tables, BatchSize: o.BatchSize, TP: o.TP,
		NumSamples: o.NumSamples, Host: o.Host, Port: port,
		Results: o.Results, Grace: o.Grace,
		ReadyStall: o.ReadyTimeout, ReadyHard: o.ReadyHardTimeout,
		Client: client, ServerArgs: extra,
		Conda: launcher.CondaSearch{Flag: o.CondaRoot, CondaExe: os.Getenv("CONDA_EXE"),
			MambaRootPrefix: os.Getenv("MAMBA_ROOT_PREFIX"), Home: os.Getenv("HOME")},
		CondaEnv: o.Env, BaseEnv: os.Environ(), SelfExe: self,
		CUDAVisibleDevices: os.Getenv("CUDA_VISIBLE_DEVICES"), Hardware: o.Hardware,
		GPUs: gb, GPUWait: o.GPUWait, GPUInterval: o.GPUInterval,
		MemSlackBytes: uint64(o.GPUIdleMiB) << 20, Version: version, Log: log,
	}
	c.Native.Warmup = o.Warmup
	c.Native.Seed = o.Seed
	c.Native.Dataset = o.Dataset
	if c.Native.Dataset == "" && backend == launcher.BackendSim && o.DatasetFile == "" {
		// The sim's toy tokenizer gives dataset text no meaning; seeded ids need no network.
		c.Native.Dataset = "random"
	}
	c.Native.DatasetFile = o.DatasetFile
	c.Native.DatasetCacheDir = o.DatasetCacheDir
	c.Native.Offline = o.Offline
	// moecap helper (issue 9 / 11.3): prompt style and result tolerance of the native client.
	c.Native.PromptStyle, c.Native.AllowedBadRequests = o.PromptStyle, o.AllowBadRequests
	if c.Native.PromptStyle == "" { // the matrix's flag set has no --prompt-style
		c.Native.PromptStyle = profile.PromptExactIDs
	}
	if ps := c.Native.PromptStyle; ps != profile.PromptExactIDs && ps != profile.PromptUpstream {
		return nil, nil, usageErrorf("--prompt-style %q: want exact-ids or upstream", ps)
	}
	if c.Native.AllowedBadRequests < 0 {
		return nil, nil, usageErrorf("--allow-bad-requests %d: want ≥ 0", c.Native.AllowedBadRequests)
	}
	c.Derive = report.Hook(tables, &c.Prices, func(err error) {
		log.Warn("CAP numbers (S-MBU, S-MFU, floors) not derived; the report will try again from records/", zap.Error(err))
	})
	return c, cleanup, nil
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
	c, cleanup, err := cellConfig(o, log, extra, nil)
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
	setPrices(c, plan, o)
	warnExposed(log, "the inference server (--host)", o.Host)
	if o.DryRun {
		fmt.Print(plan.Describe())
		return nil
	}
	becomeSubreaper(log)
	ctx, stop := signalContext(log)
	defer stop()
	switch pm := v.GetString("progress"); {
	case pm != "auto" && pm != "tty" && pm != "log":
		return usageErrorf("--progress %q: want auto, tty or log", pm)
	case pm == "tty" || (pm == "auto" && term.IsTerminal(int(os.Stderr.Fd()))):
		// A live line on the terminal during the bench: requests done / total, tok/s, ETA.
		// Otherwise (a log file, nohup) a plain progress log line every 10 s.
		c.Native.Progress = os.Stderr
	}
	m, err := cell.Run(ctx, c, plan)
	if err != nil {
		if errors.Is(err, cell.ErrLocked) || config.IsConfigError(err) {
			// Another runner has this cell (launch-and-bench, a matrix, a Slurm task): its
			// directory was not touched.
			return withCode(exitUsage, err)
		}
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

func setPrices(c *cell.Config, p *cell.Plan, o launchOpts) {
	fam := c.SimHW
	if len(p.Devices) > 0 {
		fam = p.Devices[0].Family
	}
	if fam == "" {
		fam = "H100"
	}
	hw, _ := c.Tables.HardwareFamily(fam)
	c.Prices = capmath.Prices{GPUHourUSD: hw.GPUHourUSD, ElectricityUSDPerKWh: hw.ElectricityUSDPerKWh, Source: "hardware table"}
	if o.GPUHourUSD != nil {
		c.Prices.GPUHourUSD, c.Prices.Source = *o.GPUHourUSD, "flags"
	}
	if o.ElectricityUSDPerKWh != nil {
		c.Prices.ElectricityUSDPerKWh, c.Prices.Source = *o.ElectricityUSDPerKWh, "flags"
	}
}

func printCellSummary(w io.Writer, dir string, m *cell.Manifest) {
	fmt.Fprintf(w, "cell     %s\nstatus   %s\nresults  %s\n", m.Cell.ID, m.Status, dir)
	if m.Failure != nil {
		fmt.Fprintf(w, "failure  %s/%s: %s\n", m.Failure.Phase, m.Failure.Kind, m.Failure.Message)
	}
	t := m.Timings
	sec := func(s float64) string { return humanDuration(time.Duration(s * float64(time.Second))) }
	// Three significant digits: what a reader compares (16.2 ms, 463 ms, 0.0334 ms).
	f := func(p *float64) string {
		if p == nil {
			return profile.FormatMs(p, 0)
		}
		return strconv.FormatFloat(roundHuman(*p), 'f', -1, 64)
	}
	fmt.Fprintf(w, "timings  preflight %s  launch→ready %s  bench %s  teardown %s  total %s\n",
		sec(t.Preflight), sec(t.LaunchToReady), sec(t.Bench), sec(t.Teardown), sec(t.Total))
	if x := m.Metrics; x != nil {
		fmt.Fprintf(w, "requests %d completed, %d failed  (%s latencies)\n", x.Completed, x.Failed, x.LatencyKind)
		// moecap helper: how the prompts were built, and any doubt about the result.
		if x.PromptStyle != "" {
			fmt.Fprintf(w, "prompts  %s\n", x.PromptStyle)
		}
		if len(x.InvalidReasons) > 0 {
			fmt.Fprintf(w, "INVALID  %s\n", strings.Join(x.InvalidReasons, "; "))
		}
		if cc := x.ClockCheck; cc != nil && cc.Note != "" {
			fmt.Fprintf(w, "clock    %s\n", cc.Note)
		}
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
		fmt.Fprintf(w, "throughput  %s output tok/s  %s total tok/s  %s req/s over %s\n", f(&x.OutputThroughput), f(&x.TotalTokenThroughput), f(&x.RequestThroughput), sec(x.DurationS))
	}
	if tm := m.Telemetry; tm != nil {
		if !tm.Available {
			fmt.Fprintf(w, "telemetry unavailable: %s\n", tm.Reason)
		} else {
			fmt.Fprintf(w, "gpus     %d sampled, %d samples, %d missed", tm.GPUs, tm.Samples, tm.Missed)
			if tm.EnergyJ != nil {
				fmt.Fprintf(w, "; energy %.0f J", *tm.EnergyJ)
			}
			if tm.JPerOutputToken != nil {
				fmt.Fprintf(w, ", %s J/output token", f(tm.JPerOutputToken))
			}
			if tm.AvgPowerW != nil {
				fmt.Fprintf(w, ", avg power %.0f W", *tm.AvgPowerW)
			}
			if tm.PeakMemoryBytes != nil {
				fmt.Fprintf(w, ", peak memory %.1f GiB", float64(*tm.PeakMemoryBytes)/(1<<30))
			}
			fmt.Fprintln(w)
		}
	}
	printCAP(w, m)
}

// printCellSummary's CAP part: physical utilisations (an impossible one is an ERROR line
// with its likely cause, never a number), MoE-CAP's values under their own name, floors,
// the memory verdict and the cost, all from manifest extra.cap.
func printCAP(w io.Writer, m *cell.Manifest) {
	raw, ok := m.Extra[report.ExtraKey]
	if !ok {
		return
	}
	var d capmath.Derived
	if err := json.Unmarshal(raw, &d); err != nil {
		return
	}
	if d.Absent != "" {
		fmt.Fprintf(w, "CAP      absent: %s\n", d.Absent)
		return
	}
	pct := func(p *float64) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f%%", *p*100)
	}
	for _, ph := range []struct {
		name string
		u    *capmath.Util
	}{{"prefill", d.Prefill}, {"decode", d.Decode}} {
		if ph.u == nil {
			continue
		}
		fmt.Fprintf(w, "%-8s S-MBU %s  S-MFU %s (physical, %s-bound)  MoE-CAP: S-MBU %s  S-MFU %s\n",
			ph.name, pct(ph.u.SMBU), pct(ph.u.SMFU), ph.u.Bound, pct(ph.u.SMBUMoECAP), pct(ph.u.SMFUMoECAP))
	}
	for _, e := range d.Errors {
		fmt.Fprintf(w, "ERROR    %s = %.3g is impossible (physical limit %.2f): %s\n", e.Field, e.Value, e.Limit, e.Cause)
	}
	ms := func(p *float64) string { return profile.FormatMs(p, 2) }
	if sc := d.Inputs.SimTimeScale; sc != 0 {
		fmt.Fprintf(w, "note     the sim ran at --sim-time-scale %g: the client latencies above are wall time of a scaled run; pass records and CAP numbers are in model time\n", sc)
	}
	if d.FitVerdict == "under-batched" && d.Inputs.DecodeBatchMax != nil {
		fmt.Fprintf(w, "batch    under-batched: memory holds %d of %d requests at once; the server ran at most %.0f (mean %.1f)\n",
			d.MaxConcurrent, m.Cell.BatchSize, *d.Inputs.DecodeBatchMax, *d.Inputs.DecodeBatch)
	}
	if d.TPOTFloorMs != nil || d.TTFTFloorMs != nil {
		fmt.Fprintf(w, "floors   TPOT %s ms (× %s; decode passes × %s)  TTFT %s ms (× %s), from %s\n", ms(d.TPOTFloorMs), ratio(d.TPOTOverFloor),
			ratio(d.DecodePassOverFloor), ms(d.TTFTFloorMs), ratio(d.TTFTOverFloor), d.Inputs.FloorSource)
	} else if p := d.Prediction; p != nil && p.Batch > 0 {
		fmt.Fprintf(w, "predicted TPOT %.2f ms  TTFT %.2f ms at batch %d (the cell did not run: no floors)\n", p.TPOTMs, p.TTFTMs, p.Batch)
	}
	if d.FitVerdict != "" && d.FitVerdict != "fits" {
		fmt.Fprintf(w, "memory   %s\n", d.FeasibleReason)
	}
	if c := d.Cost; c != nil {
		switch {
		case c.PerMillionOutputTokensUSD != nil && c.EnergyJ != nil:
			fmt.Fprintf(w, "cost     $%.2f per million output tokens ($%.2f/GPU-hour, $%.2f/kWh, %s)\n", *c.PerMillionOutputTokensUSD, c.Prices.GPUHourUSD, c.Prices.ElectricityUSDPerKWh, c.Window)
		case c.RentalPerMillionOutputTokensUSD != nil:
			fmt.Fprintf(w, "cost     $%.2f per million output tokens, GPU rental only (no energy measured; $%.2f/GPU-hour, %s)\n", *c.RentalPerMillionOutputTokensUSD, c.Prices.GPUHourUSD, c.Window)
		}
	}
}

func ratio(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *p)
}

// loadTables reads the model and hardware tables and where models outside them are
// described from: --model-config, and the Hugging Face hub cache ($HF_HUB_CACHE,
// $HF_HOME/hub, ~/.cache/huggingface/hub; read offline).
func loadTables(configsDir, modelConfig string) (*config.Tables, error) {
	tables, err := config.LoadTables(configsDir)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	home, _ := os.UserHomeDir()
	tables.Sources = config.ModelSource{
		ConfigFile: modelConfig,
		HubCache:   config.HubCacheDir(os.Getenv("HF_HUB_CACHE"), os.Getenv("HF_HOME"), home),
	}
	if f := tables.Sources.ConfigFile; f != "" {
		if _, err := os.Stat(f); err != nil {
			return nil, usageErrorf("--model-config %s: %v; pass the model's config.json", f, err)
		}
	}
	return tables, nil
}
