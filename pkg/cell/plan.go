package cell

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
)

// Client kinds.
const (
	ClientMoECAP = "moe-cap"
	ClientNative = "native"
)

// Config is one cell's run, as plain values (cmd/moecapd fills it from flags).
type Config struct {
	Backend   string // sglang, vllm or sim
	SimFlavor string // sim: sglang (default) or vllm
	SimHW     string // sim: hardware family imitated (default H100)
	Bench     *config.Bench
	Tables    *config.Tables
	BatchSize int
	TP        int
	// NumSamples overrides the bench file's num_samples when > 0.
	NumSamples int
	Host       string
	Port       int // 0 picks a free port
	Results    string
	Grace      time.Duration
	ReadyStall time.Duration
	ReadyHard  time.Duration
	Client     string // moe-cap or native
	ServerArgs []string
	Conda      launcher.CondaSearch
	CondaEnv   string
	BaseEnv    []string // the environment the server and client inherit
	SelfExe    string   // moecapd binary (sim server)
	// CUDAVisibleDevices is the caller's CUDA_VISIBLE_DEVICES: the pool the cell's GPUs are
	// chosen from.
	CUDAVisibleDevices string
	Hardware           string      // label override (--hardware)
	GPUs               gpu.Backend // nil: no telemetry
	GPUWait            time.Duration
	GPUInterval        time.Duration
	MemSlackBytes      uint64 // teardown: memory within this of the baseline counts as clean
	// GPUHourUSD and ElectricityUSDPerKWh are prices given by the user (--gpu-hour-usd,
	// --electricity-usd-per-kwh); nil: the hardware table's for the cell's GPU family.
	// MakePlan resolves them into Plan.Prices.
	GPUHourUSD, ElectricityUSDPerKWh *float64
	Version                          string
	Log                              *zap.Logger
	// Native tunes the built-in client (warm-up, seed, timeouts…); the pipeline fills the
	// fields that come from the cell.
	Native profile.Options
	// Extra are the caller's notes for manifest "extra" (the matrix's, a Slurm task's),
	// written with the manifest from its first write on: the pipeline is the cell's one
	// manifest writer. Optional.
	Extra map[string]json.RawMessage
	// OnPhase is told of each phase as it starts (progress displays); optional.
	OnPhase func(id string, p Phase)
	// seams: the server, client, telemetry and GPU implementations the run drives (zero:
	// the real ones; pipeline_test.go sets fakes).
	seams seams
	// AllowUnknownModel (--allow-unknown-model) lets a model moecapd cannot describe run;
	// without it such a model is refused before anything starts. The manifest records it
	// and the cell has no CAP numbers.
	AllowUnknownModel bool
	// Repeats is how many times the measured bench runs (0 or 1: once); RepeatFreshServer
	// restarts the server between repeats (else they share the warm server, and repeats
	// after the first send no warm-up). UnstableCV flags a repeated metric whose coefficient
	// of variation exceeds it (0: DefaultUnstableCV).
	Repeats           int
	RepeatFreshServer bool
	UnstableCV        float64
	// Load is the open loop, rate sweep and SLO as given (Load.Apply sets it and the native
	// client's options from it): its Rates run one open-loop bench per rate, physical
	// requests/s, in one server lifetime; FindMaxRate then searches the highest rate meeting
	// the SLO (Native.SLO) in at most MaxRateSteps benches (0: profile.DefaultMaxRateSteps).
	// An open loop names its cell: Load.IDPart is the id's sixth part.
	Load Load
}

// Plan is what a cell will run: computed without starting anything (also --dry-run).
type Plan struct {
	ID string
	// Dir is Files.Path (kept: most callers want only the directory).
	Dir string
	// Layout is the results root; Files the cell's directory in it.
	Layout   *Layout
	Files    Dir
	Identity Identity
	Model    config.Model
	// Prices are the cost inputs the cell runs with, resolved once here (Config.prices).
	Prices       capmath.Prices
	Devices      []gpu.Device
	Spec         launcher.ServerSpec
	ServerArgv   []string // the server's own argv (python -m … or moecapd sim-server …)
	LaunchArgv   []string // what is exec'd: the activation wrapper around ServerArgv, or ServerArgv
	EnvAdded     map[string]string
	CondaRoot    string
	CondaErr     error // why no conda root was found; CondaRoot is then the first candidate
	CondaEnv     string
	ClientArgv   []string // moe-cap runner argv (inside the env), empty for native
	ClientLaunch []string
	APIURL       string
	BaseURL      string
	// Load is the cell's load (Config.Load), for the dry run.
	Load Load
}

// BenchFile is the cell's copy of its benchmark YAML.
const BenchFile = "benchmark.yaml"

// prices resolves the cost inputs: the hardware table's for the cell's GPU family (the
// GPUs it was given, else the simulated family, else H100), each overridden by a price
// the user gave.
func (c *Config) prices(devs []gpu.Device) capmath.Prices {
	fam := c.SimHW
	if len(devs) > 0 {
		fam = devs[0].Family
	}
	if fam == "" {
		fam = "H100"
	}
	var pr capmath.Prices
	if c.Tables != nil {
		hw, _ := c.Tables.HardwareFamily(fam)
		pr = capmath.Prices{GPUHourUSD: hw.GPUHourUSD, ElectricityUSDPerKWh: hw.ElectricityUSDPerKWh, Source: "hardware table"}
	}
	if c.GPUHourUSD != nil {
		pr.GPUHourUSD, pr.Source = *c.GPUHourUSD, "flags"
	}
	if c.ElectricityUSDPerKWh != nil {
		pr.ElectricityUSDPerKWh, pr.Source = *c.ElectricityUSDPerKWh, "flags"
	}
	return pr
}

// ID formats a cell id: <model>.<hardware>.<task>.bs<N>.<backend>.
func ID(model, hardware, task string, bs int, backend string) string {
	return fmt.Sprintf("%s.%s.%s.bs%d.%s", model, hardware, task, bs, backend)
}

// undescribedPrefix starts the Source of a model run under --allow-unknown-model.
const undescribedPrefix = "not described: "

// Validate checks the parts of a config that do not depend on the machine.
func (c *Config) Validate() (config.Model, error) {
	// A flag's error names the flag, not the benchmark file.
	cfgErr := func(key, msg string) error { return &config.Error{Key: key, Msg: msg} }
	switch c.Backend {
	case launcher.BackendSGLang, launcher.BackendVLLM, launcher.BackendSim:
	case "":
		return config.Model{}, cfgErr("--backend", "required: pass --backend sglang, vllm or sim")
	default:
		return config.Model{}, cfgErr("--backend", fmt.Sprintf("got %q, expected sglang, vllm or sim%s", c.Backend,
			config.MeanHint(c.Backend, []string{launcher.BackendSGLang, launcher.BackendVLLM, launcher.BackendSim})))
	}
	switch {
	case c.BatchSize == 0:
		// Unset or 0: either way the user has to pass one.
		return config.Model{}, cfgErr("--batch-size", "required: pass --batch-size N, a positive number of concurrent requests (the guide uses 1, 32, 64, 128)")
	case c.BatchSize < 0:
		return config.Model{}, cfgErr("--batch-size", fmt.Sprintf("got %d, expected a positive number of concurrent requests (the guide uses 1, 32, 64, 128)", c.BatchSize))
	}
	if c.TP <= 0 {
		return config.Model{}, cfgErr("--tp", fmt.Sprintf("got %d, expected a positive GPU count (1 or 8 in the guide)", c.TP))
	}
	if err := c.checkBounds(); err != nil {
		return config.Model{}, err
	}
	if c.Client != ClientMoECAP && c.Client != ClientNative {
		return config.Model{}, cfgErr("--client", fmt.Sprintf("got %q, expected moe-cap or native%s", c.Client, config.MeanHint(c.Client, []string{ClientMoECAP, ClientNative})))
	}
	if c.Bench == nil {
		return config.Model{}, cfgErr("--config", "missing; pass a benchmark YAML such as configs/fixed_4k_1k_qwen1_5.yaml")
	}
	// The model's description (config.json: --model-config, a local model directory, the
	// Hugging Face cache, or the built-in table). A model moecapd cannot describe (a typo, a
	// model outside the table) is refused with a did-you-mean, unless the user opts in with
	// --allow-unknown-model: it then runs (the sim times it with fixed pass times) and its
	// CAP numbers are absent with the reason.
	m, derr := c.Tables.Describe(c.Bench.ModelID)
	if derr != nil && !c.AllowUnknownModel {
		file := "command line"
		if c.Bench.Path != "" {
			file = c.Bench.Path
		}
		return config.Model{}, &config.Error{File: file, Key: "model_id", Msg: derr.Error() + "." + c.Tables.DidYouMean(c.Bench.ModelID) +
			" To run it anyway without CAP numbers (no S-MBU, S-MFU, floors or memory verdict), pass --allow-unknown-model."}
	}
	if derr != nil {
		m = config.Model{Key: config.ModelKey(c.Bench.ModelID), HFID: c.Bench.ModelID, ExpertPatching: true,
			Source: undescribedPrefix + derr.Error()}
	} else if m.Heads%c.TP != 0 {
		return config.Model{}, cfgErr("--tp", fmt.Sprintf("TP %d does not divide the %d attention heads of %s; use a divisor such as 1, 2, 4 or 8", c.TP, m.Heads, m.Key))
	}
	if c.Port < 0 || c.Port > 65535 {
		return config.Model{}, cfgErr("--port", fmt.Sprintf("got %d, expected 0 (pick a free one) to 65535", c.Port))
	}
	if c.Backend == launcher.BackendSim {
		if _, ok := c.Tables.HardwareFamily(c.simHW()); !ok {
			return config.Model{}, cfgErr("--sim-hardware", fmt.Sprintf("unknown hardware %q; expected H100, H200 or A100%s", c.SimHW, config.MeanHint(c.SimHW, []string{"H100", "H200", "A100"})))
		}
	}
	return m, nil
}

// checkBounds holds every number of the config to the limits of config's strict.go, so
// nothing out of range reaches a server, an allocation or an overflow.
func (c *Config) checkBounds() error {
	const src = "settings"
	type ib struct {
		key      string
		v        int
		min, max int64
		what     string
	}
	for _, b := range []ib{
		{"--batch-size", c.BatchSize, 1, config.MaxBatchSize, "concurrent requests"},
		{"--tp", c.TP, 1, config.MaxTP, "GPUs per server"},
		{"--num-samples", c.NumSamples, 0, config.MaxNumSamples, "requests; 0 keeps the config's"},
		{"--port", c.Port, 0, config.MaxPort, "0 picks a free port"},
		{"--warmup", c.Native.Warmup, 0, config.MaxWarmup, "warm-up requests"},
	} {
		if err := config.CheckInt(src, b.key, int64(b.v), b.min, b.max, b.what); err != nil {
			return err
		}
	}
	type db struct {
		key      string
		v        time.Duration
		min, max time.Duration
	}
	for _, b := range []db{
		{"--grace", c.Grace, 0, time.Hour},
		{"--ready-timeout", c.ReadyStall, 100 * time.Millisecond, 24 * time.Hour},
		{"--ready-hard-timeout", c.ReadyHard, 100 * time.Millisecond, 72 * time.Hour},
		{"--gpu-wait", c.GPUWait, 0, 24 * time.Hour},
		{"--gpu-interval", c.GPUInterval, 10 * time.Millisecond, time.Minute},
	} {
		if err := config.CheckDuration(src, b.key, b.v, b.min, b.max); err != nil {
			return err
		}
	}
	if c.Bench == nil {
		return nil
	}
	file := c.Bench.Path
	if c.NumSamples > 0 {
		file = "--num-samples with " + c.Bench.Path
	}
	return config.CheckWorkload(file, c.numSamples(), c.Native.Warmup, c.Bench.TargetInputTokens, c.Bench.TargetOutputTokens)
}

func (c *Config) simHW() string {
	if c.SimHW == "" {
		return "H100"
	}
	return c.SimHW
}

func (c *Config) numSamples() int {
	if c.NumSamples > 0 {
		return c.NumSamples
	}
	return c.Bench.NumSamples
}

// MakePlan resolves everything a cell needs without starting anything: GPUs, hardware
// label, cell id and directory, port, conda env, argv and environment of server and client.
func MakePlan(c *Config) (*Plan, error) {
	m, err := c.Validate()
	if err != nil {
		return nil, err
	}
	p := &Plan{Model: m, Load: c.Load}
	devs, visible, err := c.pickGPUs()
	if err != nil {
		return nil, err
	}
	p.Devices = devs
	p.Prices = c.prices(devs)
	hw := c.Hardware
	if hw == "" {
		switch {
		case len(devs) > 0:
			hw = gpu.Label(devs)
		case c.Backend == launcher.BackendSim:
			hw = fmt.Sprintf("%dx%s", c.TP, c.simHW())
		default:
			hw = fmt.Sprintf("%dxGPU", c.TP)
		}
	}
	task := c.Bench.Task()
	if p.ID, err = MakeID(m.Key, hw, task, c.BatchSize, c.Backend, c.Load); err != nil {
		key := "cell id"
		var pe *PartError
		if errors.As(err, &pe) && pe.What == "hardware label" {
			key = "--hardware"
		}
		return nil, &config.Error{File: "cell id", Key: key, Msg: err.Error()}
	}
	if p.Layout, err = OpenLayout(c.Results); err != nil {
		return nil, err
	}
	if p.Files, err = p.Layout.Cell(p.ID); err != nil {
		return nil, err
	}
	p.Dir = p.Files.Path
	port := c.Port
	if port == 0 {
		if port, err = launcher.FreePort(c.Host); err != nil {
			return nil, fmt.Errorf("pick a free port on %s: %w", c.Host, err)
		}
	}
	p.Spec = launcher.ServerSpec{
		Backend: c.Backend, Flavor: c.SimFlavor, Model: c.Bench.ModelID, Host: c.Host, Port: port,
		TP: c.TP, BatchSize: c.BatchSize, Extra: c.ServerArgs,
		RecordsDir:         p.Files.Records(),
		ExpertPatching:     m.ExpertPatching,
		CUDAVisibleDevices: visible,
		SimExe:             c.SelfExe,
	}
	if c.Backend == launcher.BackendSim {
		p.Spec.SimHardware = c.simHW()
		// The sim describes its model the same way; a --model-config travels with it.
		if f := c.Tables.Sources.ConfigFile; f != "" {
			abs, err := filepath.Abs(f)
			if err != nil {
				return nil, fmt.Errorf("--model-config %s: %w", f, err)
			}
			p.Spec.Extra = append([]string{"--model-config", abs}, p.Spec.Extra...)
		}
	}
	if p.ServerArgv, err = launcher.ServerArgv(p.Spec); err != nil {
		return nil, err
	}
	p.EnvAdded = launcher.ServerEnv(p.Spec)
	p.LaunchArgv = p.ServerArgv
	clientHost := c.Host
	if clientHost == "0.0.0.0" || clientHost == "::" || clientHost == "" {
		clientHost = "127.0.0.1"
	}
	p.BaseURL = "http://" + joinHostPort(clientHost, port)
	p.APIURL = p.BaseURL + "/v1/completions"
	// The conda env runs the server, and the MoE-CAP runner when it is the client; the sim
	// server itself needs none, but the upstream runner against the sim does.
	if c.Backend != launcher.BackendSim || c.Client == ClientMoECAP {
		p.CondaEnv = c.CondaEnv
		if p.CondaEnv == "" {
			p.CondaEnv = c.Backend
			if c.Backend == launcher.BackendSim {
				p.CondaEnv = p.Spec.APIFlavor()
			}
		}
		// The root may be missing; dry-run still shows the argv with the root it would use.
		root, rerr := launcher.ResolveCondaRoot(c.Conda)
		if rerr != nil {
			root, p.CondaErr = c.Conda.Candidates()[0], rerr
		}
		p.CondaRoot = root
		if c.Backend != launcher.BackendSim {
			p.LaunchArgv = launcher.ActivationArgv(root, p.CondaEnv, p.ServerArgv)
		}
	}
	if c.Client == ClientMoECAP {
		// The runner reads the cell's own copy of the benchmark file: the original may be
		// built into moecapd or edited before the cell ends.
		p.ClientArgv = append([]string{"python"}, profile.RunnerArgs(p.Files.Bench(), p.APIURL, p.Spec.APIFlavor(), c.BatchSize, p.Files.Client())...)
		if c.NumSamples > 0 {
			p.ClientArgv = append(p.ClientArgv, "--num-samples", strconv.Itoa(c.NumSamples))
		}
		p.ClientLaunch = launcher.ActivationArgv(p.CondaRoot, p.CondaEnv, p.ClientArgv)
	}
	p.Identity = Identity{
		ID: p.ID, Model: m.Key, ModelID: c.Bench.ModelID, Hardware: hw,
		GPUCount: c.TP, GPUIndices: []int{}, Task: task, Dataset: c.Bench.Dataset(),
		InputTokens: c.Bench.TargetInputTokens, OutputTokens: c.Bench.TargetOutputTokens,
		NumSamples: c.numSamples(), BatchSize: c.BatchSize, Backend: c.Backend, TP: c.TP,
		ConfigFile: c.Bench.Path, Load: c.Load.IDPart(),
	}
	if reason, ok := strings.CutPrefix(m.Source, undescribedPrefix); ok {
		p.Identity.AllowUnknownModel, p.Identity.ModelUndescribed = true, reason
	}
	for _, d := range devs {
		p.Identity.GPUIndices = append(p.Identity.GPUIndices, d.Index)
		p.Identity.GPUName = d.Name
	}
	return p, nil
}

// pickGPUs chooses TP GPUs from the caller's visible set when NVML is there, and returns the
// CUDA_VISIBLE_DEVICES value to give the server.
func (c *Config) pickGPUs() ([]gpu.Device, string, error) {
	if c.GPUs == nil || !c.GPUs.Available() {
		return nil, c.CUDAVisibleDevices, nil
	}
	devs, err := c.GPUs.Resolve(c.CUDAVisibleDevices)
	if err != nil {
		return nil, "", &config.Error{File: "environment", Key: "CUDA_VISIBLE_DEVICES", Msg: err.Error()}
	}
	if c.Backend == launcher.BackendSim {
		// The sim uses no GPU; it gets none, and telemetry watches none.
		return nil, "", nil
	}
	if len(devs) < c.TP {
		return nil, "", &config.Error{File: "command line", Key: "--tp",
			Msg: fmt.Sprintf("TP %d needs %d GPUs but only %d are visible (CUDA_VISIBLE_DEVICES=%q); lower --tp or free GPUs", c.TP, c.TP, len(devs), c.CUDAVisibleDevices)}
	}
	devs = devs[:c.TP]
	ids := make([]string, len(devs))
	for i, d := range devs {
		ids[i] = strconv.Itoa(d.Index)
	}
	return devs, strings.Join(ids, ","), nil
}

func joinHostPort(h string, p int) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]:" + strconv.Itoa(p)
	}
	return h + ":" + strconv.Itoa(p)
}

// Describe renders a plan for --dry-run: the exact argv of server and client, one argument
// per line (quoted as Go strings so spaces and quotes are visible), and the added environment.
func (p *Plan) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cell:    %s\nresults: %s\n", p.ID, p.Dir)
	if p.Load.OpenLoop() || p.Load.SLO != "" {
		fmt.Fprintf(&b, "load:    %s\n", p.Load.Describe())
	}
	if p.CondaRoot != "" {
		fmt.Fprintf(&b, "conda:   root %s, env %s\n", p.CondaRoot, p.CondaEnv)
	}
	b.WriteString("server argv:\n")
	for _, a := range p.LaunchArgv {
		fmt.Fprintf(&b, "  %s\n", strconv.Quote(a))
	}
	b.WriteString("server env added:\n")
	for _, kv := range launcher.MergeEnv(nil, p.EnvAdded) {
		fmt.Fprintf(&b, "  %s\n", kv)
	}
	if len(p.ClientLaunch) > 0 {
		b.WriteString("client argv (MoE-CAP runner):\n")
		for _, a := range p.ClientLaunch {
			fmt.Fprintf(&b, "  %s\n", strconv.Quote(a))
		}
		b.WriteString("client env added: same as server\n")
	} else {
		fmt.Fprintf(&b, "client:  native (in-process) → %s\n", p.APIURL)
	}
	return b.String()
}
