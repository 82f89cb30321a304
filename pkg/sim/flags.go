package sim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// ServerFlags are sim-server's flags, parsed: the MoE-CAP wrappers' own (sglang's and
// vllm's) and the simulator's. Given names the flags the argv set (the flavor check).
type ServerFlags struct {
	Flavor, Host                                string
	Port                                        int
	PortSet                                     bool
	Given                                       []string
	ModelPath                                   string // sglang
	TPSize, MaxRunningRequests, ContextLength   int    // sglang
	Model                                       string // vllm
	TensorParallelSize, MaxNumSeqs, MaxModelLen int    // vllm
	ExpertDistributionMetrics                   bool   // vllm
	EnableMetrics                               bool   // sglang: serve /metrics
	SimHardware, SimModel, SimConfigs           string
	KVCacheDtype, ModelConfig, Fault            string
	Workers                                     int
	Startup, TPOT, TTFT                         time.Duration
	TimeScale                                   float64
}

// envVars are echoed at start so tests can prove the server saw the activated env.
var envVars = []string{"CONDA_PREFIX", "CUDA_VISIBLE_DEVICES", "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", "MOE_CAP_ENABLE_EXPERT_PATCHING"}

// FlagFlavor names the flags that belong to one wrapper only; a flag of the other flavor
// is a launcher bug worth stopping for.
var FlagFlavor = map[string]string{
	"model-path":                         FlavorSGLang,
	"expert-distribution-recorder-mode":  FlavorSGLang,
	"tp-size":                            FlavorSGLang,
	"max-running-requests":               FlavorSGLang,
	"context-length":                     FlavorSGLang,
	"chunked-prefill-size":               FlavorSGLang,
	"model":                              FlavorVLLM,
	"tensor-parallel-size":               FlavorVLLM,
	"enable-expert-distribution-metrics": FlavorVLLM,
	"max-num-batched-tokens":             FlavorVLLM,
	"max-num-seqs":                       FlavorVLLM,
	"max-model-len":                      FlavorVLLM,
}

// ConfigFromFlags turns sim-server's parsed flags and the environment into a Config; a
// bad value is a usage error (exit 2) naming the flag.
func ConfigFromFlags(f ServerFlags) (Config, error) {
	var cfg Config
	cfg.Flavor = f.Flavor
	if cfg.Flavor != FlavorSGLang && cfg.Flavor != FlavorVLLM {
		return cfg, exitcode.Usagef("sim-server: --flavor %q: want sglang or vllm", cfg.Flavor)
	}
	var bad []string
	for _, name := range f.Given {
		if fl, ok := FlagFlavor[name]; ok && fl != cfg.Flavor {
			bad = append(bad, "--"+name)
		}
	}
	if len(bad) > 0 {
		return cfg, exitcode.Usagef("sim-server: %s belongs to the %s wrapper, not %s; fix the argv or --flavor",
			strings.Join(bad, ", "), otherFlavor(cfg.Flavor), cfg.Flavor)
	}
	cfg.Host = f.Host
	cfg.Port = f.Port
	if !f.PortSet {
		cfg.Port = 30000
		if cfg.Flavor == FlavorVLLM {
			cfg.Port = 8000
		}
	}
	if cfg.Flavor == FlavorSGLang {
		cfg.ServedModel, cfg.TP, cfg.MaxRunning, cfg.MaxModelLen = f.ModelPath, f.TPSize, f.MaxRunningRequests, f.ContextLength
		if cfg.ServedModel == "" {
			return cfg, exitcode.Usagef("sim-server: --model-path is required for --flavor sglang")
		}
	} else {
		cfg.ServedModel, cfg.TP, cfg.MaxRunning, cfg.MaxModelLen = f.Model, f.TensorParallelSize, f.MaxNumSeqs, f.MaxModelLen
		if cfg.ServedModel == "" {
			return cfg, exitcode.Usagef("sim-server: --model is required for --flavor vllm")
		}
	}
	if cfg.TP < 1 || cfg.MaxRunning < 0 || cfg.MaxModelLen < 0 {
		return cfg, exitcode.Usagef("sim-server: tensor-parallel size must be at least 1 and batch size and context length not negative")
	}

	tables, err := config.LoadTables(f.SimConfigs)
	if err != nil {
		return cfg, exitcode.Usagef("sim-server: model tables: %v", err)
	}
	home, _ := os.UserHomeDir()
	tables.Sources = config.ModelSource{ConfigFile: f.ModelConfig,
		HubCache: config.HubCacheDir(os.Getenv("HF_HUB_CACHE"), os.Getenv("HF_HOME"), home)}
	if key := f.SimModel; key != "" {
		m, ok := tables.Models[key]
		if !ok {
			return cfg, exitcode.Usagef("sim-server: --sim-model %q is not in the model table; keys: %s", key, strings.Join(tables.ModelKeys(), ", "))
		}
		cfg.Model = m
	} else {
		m, err := tables.Describe(cfg.ServedModel)
		if err != nil {
			// A model nobody can describe still runs, with fixed pass times and no memory
			// model; its CAP numbers are absent (the cell's derivation says why).
			cfg.Undescribed = err.Error() + "; or pass --sim-model with one of: " + strings.Join(tables.ModelKeys(), ", ")
			m = config.Model{Key: config.ModelKey(cfg.ServedModel), HFID: cfg.ServedModel}
		}
		cfg.Model = m
	}
	if b, ok := config.KVCacheBytes([]string{"--kv-cache-dtype", f.KVCacheDtype}); ok {
		cfg.Model.KVElemBytes = b
	}
	fam := strings.ToUpper(f.SimHardware)
	hw, ok := tables.HardwareFamily(fam)
	if !ok {
		var keys []string
		for k := range tables.Hardware {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return cfg, exitcode.Usagef("sim-server: --sim-hardware %q is not in the hardware table; want one of: %s", f.SimHardware, strings.Join(keys, ", "))
	}
	cfg.Hardware = hw

	cfg.Fault = f.Fault
	if cfg.Fault != "" && !slices.Contains(Faults, cfg.Fault) {
		return cfg, exitcode.Usagef("sim-server: --sim-fault %q: want one of %s", cfg.Fault, strings.Join(Faults, ", "))
	}
	cfg.Workers = f.Workers
	if cfg.Workers > 0 {
		exe, err := os.Executable()
		if err != nil {
			return cfg, fmt.Errorf("sim-server: cannot find own executable to start workers: %w", err)
		}
		cfg.WorkerCommand = []string{exe, "sim-server", "--sim-worker"}
	}
	cfg.Startup = f.Startup
	cfg.TPOT = f.TPOT
	cfg.TTFT = f.TTFT
	cfg.TimeScale = f.TimeScale
	if cfg.TimeScale <= 0 || cfg.TPOT < 0 || cfg.TTFT < 0 || cfg.Startup < 0 {
		return cfg, exitcode.Usagef("sim-server: --sim-time-scale must be positive and --sim-tpot, --sim-ttft, --sim-startup not negative")
	}
	// Upper bounds (issue 11, item 7): the sim's argv is user input too (extra server flags
	// after --); nothing out of range may fork without limit, overflow or wait for years.
	for _, b := range []struct {
		what     string
		v, limit int
	}{{"tensor-parallel size", cfg.TP, config.MaxTP}, {"batch size", cfg.MaxRunning, config.MaxBatchSize},
		{"context length", cfg.MaxModelLen, 16 * config.MaxTokens}, {"--sim-workers", cfg.Workers, 64}} {
		if b.v > b.limit {
			return cfg, exitcode.Usagef("sim-server: %s %d: expected at most %d", b.what, b.v, b.limit)
		}
	}
	if !(cfg.TimeScale <= 1000) || cfg.TPOT > time.Minute || cfg.TTFT > time.Hour || cfg.Startup > time.Hour {
		return cfg, exitcode.Usagef("sim-server: --sim-time-scale at most 1000, --sim-tpot at most 1m, --sim-ttft and --sim-startup at most 1h")
	}

	// Same defaults as the wrappers when the variable is unset: ~/expert_records for
	// sglang, the system temp dir for vllm.
	cfg.ExpertDistributionMetrics = f.ExpertDistributionMetrics
	cfg.EnableMetrics = f.EnableMetrics
	cfg.RecordsDir = os.Getenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR")
	if cfg.RecordsDir == "" {
		if cfg.Flavor == FlavorSGLang {
			if home, err := os.UserHomeDir(); err == nil {
				cfg.RecordsDir = filepath.Join(home, "expert_records")
			}
		} else {
			cfg.RecordsDir = os.TempDir()
		}
	}
	return cfg, nil
}

func otherFlavor(f string) string {
	if f == FlavorSGLang {
		return FlavorVLLM
	}
	return FlavorSGLang
}

// announceStart prints "sim: started {argv, env, pid}" and, when MOECAPD_SIM_ARGV_FILE is
// set, writes the same JSON there: the proof, for launcher tests, of what the server was
// really started with. Unset variables are null, set-but-empty ones "".
func AnnounceStart(out interface{ Write([]byte) (int, error) }) error {
	env := map[string]*string{}
	for _, k := range envVars {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = &v
		} else {
			env[k] = nil
		}
	}
	b, err := json.Marshal(map[string]any{"argv": os.Args, "env": env, "pid": os.Getpid()})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sim: started %s\n", b)
	if path := os.Getenv("MOECAPD_SIM_ARGV_FILE"); path != "" {
		tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
		if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("sim-server: MOECAPD_SIM_ARGV_FILE: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("sim-server: MOECAPD_SIM_ARGV_FILE: %w", err)
		}
	}
	return nil
}
