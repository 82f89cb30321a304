package app

import (
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
)

// CellOptions is launch-and-bench's settings, merged once (flag > MOECAP_* > moecapd.yaml >
// default) and typed: the per-cell configuration is built from a value of it, once per
// cell. The matrix copies its own and sets the per-cell fields; nothing writes back into
// flags or viper, so nothing shared is written while goroutines read.
type CellOptions struct {
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
	AllowUnknownModel         bool   // --allow-unknown-model: run a model that cannot be described
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
	// The native client's limits (0: profile's defaults); BenchTimeout bounds the runner
	// client's bench too.
	RequestTimeout, IdleTimeout, BenchTimeout time.Duration
	// Repeats runs the measured bench this many times (0 or 1: once; native client only);
	// RepeatFreshServer restarts the server between repeats; UnstableCV flags a metric
	// whose CV over the repeats exceeds it (0: cell.DefaultUnstableCV).
	Repeats           int
	RepeatFreshServer bool
	UnstableCV        float64
	// Load is the native client's open loop, rate sweep and SLO; LoadKeys names where they
	// were given for errors (zero: launch-and-bench's flags; a matrix cell: its group's keys).
	Load     cell.Load
	LoadKeys cell.LoadKeys
	// Version is moecapd's, recorded in every manifest.
	Version string
}

// Check refuses settings out of their bounds (prices, --gpu-idle-mib).
func (o CellOptions) Check() error {
	for _, p := range []struct {
		key string
		v   *float64
		max float64
	}{{"--gpu-hour-usd", o.GPUHourUSD, config.MaxUSD}, {"--electricity-usd-per-kwh", o.ElectricityUSDPerKWh, config.MaxUSD}} {
		if p.v != nil {
			if err := config.CheckFloat("settings", p.key, *p.v, 0, p.max); err != nil {
				return exitcode.New(exitcode.Usage, err)
			}
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
		max time.Duration
	}{{"--request-timeout", o.RequestTimeout, 24 * time.Hour}, {"--idle-timeout", o.IdleTimeout, 24 * time.Hour}, {"--bench-timeout", o.BenchTimeout, 30 * 24 * time.Hour}} {
		if d.v != 0 {
			if err := config.CheckDuration("settings", d.key, d.v, time.Millisecond, d.max); err != nil {
				return exitcode.New(exitcode.Usage, err)
			}
		}
	}
	if err := config.CheckInt("settings", "--repeats", int64(o.Repeats), 0, cell.MaxRepeats, "measured benches of the cell; 0 or 1: once"); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if err := config.CheckFloat("settings", "--unstable-cv", o.UnstableCV, 0, 10); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if err := o.Load.Check(cell.LoadFlags); err != nil {
		return err
	}
	if err := config.CheckInt("settings", "--gpu-idle-mib", int64(o.GPUIdleMiB), 0, 1<<20, "MiB above a GPU's own baseline that still count as idle"); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	return nil
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
func cellConfig(o CellOptions, log *zap.Logger, extra []string, gb gpu.Backend) (*cell.Config, func(), error) {
	backend := o.Backend
	if backend == "" {
		return nil, nil, exitcode.Usagef("--backend is required: sglang, vllm or sim")
	}
	if o.Config == "" {
		return nil, nil, exitcode.Usagef("--config is required: a benchmark YAML such as configs/fixed_4k_1k_qwen1_5.yaml")
	}
	bench, err := config.LoadBench(o.Config)
	if err != nil {
		return nil, nil, exitcode.New(exitcode.Usage, err)
	}
	tables, err := loadTables(o.ConfigsDir, o.ModelConfig)
	// A label that cannot be a cell-id part is refused as such by the plan; a valid one near a
	// known family gets the did-you-mean.
	if err == nil && o.Hardware != "" && cell.ValidPart(o.Hardware) {
		if hint := config.HardwareHint(o.Hardware, tables.Families()); hint != "" {
			return nil, nil, exitcode.Usagef("--hardware %q: %s", o.Hardware, hint)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	client := clientFor(o.Client, backend)
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
			return nil, nil, exitcode.New(exitcode.Usage, err)
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
		MemSlackBytes: uint64(o.GPUIdleMiB) << 20, Version: o.Version, Log: log,
		GPUHourUSD: o.GPUHourUSD, ElectricityUSDPerKWh: o.ElectricityUSDPerKWh,
		AllowUnknownModel: o.AllowUnknownModel,
		Repeats:           o.Repeats, RepeatFreshServer: o.RepeatFreshServer, UnstableCV: o.UnstableCV,
	}
	if err := nativeSettings(c, o); err != nil {
		cleanup()
		return nil, nil, err
	}
	if err := o.Load.Apply(c, o.loadKeys()); err != nil {
		cleanup()
		return nil, nil, err
	}
	return c, cleanup, nil
}

// clientFor is the client a cell of backend runs: the --client given, else the MoE-CAP
// runner, but the native client for the sim.
func clientFor(client, backend string) string {
	if client != "" {
		return client
	}
	if backend == launcher.BackendSim {
		return cell.ClientNative
	}
	return cell.ClientMoECAP
}

// loadKeys names the load settings in errors: the matrix group's keys, else the flags.
func (o CellOptions) loadKeys() cell.LoadKeys {
	if o.LoadKeys.Source == "" {
		return cell.LoadFlags
	}
	return o.LoadKeys
}

// checkCellLoad refuses, before anything starts, a load that cell options o cannot send to
// a cell of backend with repeats (the client, the prompt style, repeats): Load.Apply's own
// checks on the settings the cell will run with.
func checkCellLoad(o CellOptions, backend string, repeats int, l cell.Load, k cell.LoadKeys) error {
	if !l.OpenLoop() && l.SLO == "" {
		return nil
	}
	c := &cell.Config{Client: clientFor(o.Client, backend), Repeats: repeats}
	c.Native.PromptStyle = o.PromptStyle
	if c.Native.PromptStyle == "" {
		c.Native.PromptStyle = profile.PromptExactIDs
	}
	return l.Apply(c, k)
}

// nativeSettings checks the client settings against each other and fills the native
// client's options (c.Native) from them.
func nativeSettings(c *cell.Config, o CellOptions) error {
	if c.Repeats > 1 && c.Client != cell.ClientNative {
		return exitcode.Usagef("--repeats %d needs the native client (--client native): the MoE-CAP runner's files of one run would be mixed with the next's", c.Repeats)
	}
	c.Native.Warmup = o.Warmup
	c.Native.RequestTimeout, c.Native.IdleTimeout, c.Native.BenchTimeout = o.RequestTimeout, o.IdleTimeout, o.BenchTimeout
	c.Native.Seed = o.Seed
	c.Native.Dataset = o.Dataset
	if c.Native.Dataset == "" && c.Backend == launcher.BackendSim && o.DatasetFile == "" {
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
		return exitcode.Usagef("--prompt-style %q: want exact-ids or upstream", ps)
	}
	if c.Native.AllowedBadRequests < 0 {
		return exitcode.Usagef("--allow-bad-requests %d: want ≥ 0", c.Native.AllowedBadRequests)
	}
	return nil
}

// loadTables reads the model and hardware tables and where models outside them are
// described from: --model-config, and the Hugging Face hub cache ($HF_HUB_CACHE,
// $HF_HOME/hub, ~/.cache/huggingface/hub; read offline).
func loadTables(configsDir, modelConfig string) (*config.Tables, error) {
	tables, err := config.LoadTables(configsDir)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	home, _ := os.UserHomeDir()
	tables.Sources = config.ModelSource{
		ConfigFile: modelConfig,
		HubCache:   config.HubCacheDir(os.Getenv("HF_HUB_CACHE"), os.Getenv("HF_HOME"), home),
	}
	if f := tables.Sources.ConfigFile; f != "" {
		if _, err := os.Stat(f); err != nil {
			return nil, exitcode.Usagef("--model-config %s: %v; pass the model's config.json", f, err)
		}
	}
	return tables, nil
}
