package launcher

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Backends moecapd can launch.
const (
	BackendSGLang = "sglang"
	BackendVLLM   = "vllm"
	BackendSim    = "sim"
)

// DefaultPort is the guide's port for each backend.
func DefaultPort(backend string) int {
	if backend == BackendVLLM {
		return 8000
	}
	return 30000
}

// ServerSpec is what a cell asks of its server.
type ServerSpec struct {
	Backend   string // sglang, vllm or sim
	Flavor    string // for sim: which wrapper it imitates (sglang or vllm)
	Model     string // served model id or path, byte for byte
	Host      string
	Port      int
	TP        int
	BatchSize int
	// Extra flags passed through after `--`, appended verbatim.
	Extra []string
	// RecordsDir receives expert/batch records (SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR).
	RecordsDir string
	// ExpertPatching turns on MOE_CAP_ENABLE_EXPERT_PATCHING for vllm (off for Mixtral).
	ExpertPatching bool
	// CUDAVisibleDevices is the GPUs assigned to the cell; empty leaves the variable alone.
	CUDAVisibleDevices string
	// SimExe is the moecapd binary that serves `sim-server` (sim backend only).
	SimExe string
	// SimHardware is the hardware family the sim imitates (sim backend only).
	SimHardware string
}

// Flavor is the wrapper API the server speaks (sim imitates one of the two).
func (s ServerSpec) APIFlavor() string {
	if s.Backend == BackendSim {
		if s.Flavor == "" {
			return BackendSGLang
		}
		return s.Flavor
	}
	return s.Backend
}

// ServerArgv is the server's argv. For sglang and vllm it starts with "python" and runs
// inside the activated conda env; for sim it is the moecapd binary itself.
func ServerArgv(s ServerSpec) ([]string, error) {
	port := strconv.Itoa(s.Port)
	tp := strconv.Itoa(s.TP)
	bs := strconv.Itoa(s.BatchSize)
	var argv []string
	flavorArgs := func(flavor string) []string {
		if flavor == BackendVLLM {
			return []string{"--model", s.Model, "--port", port, "--host", s.Host,
				"--tensor-parallel-size", tp, "--enable-expert-distribution-metrics",
				"--max-num-batched-tokens", "131072", "--max-num-seqs", bs}
		}
		return []string{"--model-path", s.Model, "--port", port, "--host", s.Host,
			"--expert-distribution-recorder-mode", "stat", "--tp-size", tp,
			"--max-running-requests", bs, "--enable-metrics"}
	}
	switch s.Backend {
	case BackendSGLang:
		argv = append([]string{"python", "-m", "moe_cap.systems.sglang"}, flavorArgs(BackendSGLang)...)
	case BackendVLLM:
		argv = append([]string{"python", "-m", "moe_cap.systems.vllm"}, flavorArgs(BackendVLLM)...)
	case BackendSim:
		if s.SimExe == "" {
			return nil, fmt.Errorf("sim backend needs the moecapd binary path")
		}
		argv = []string{s.SimExe, "sim-server", "--flavor", s.APIFlavor()}
		if s.SimHardware != "" {
			argv = append(argv, "--sim-hardware", s.SimHardware)
		}
		argv = append(argv, flavorArgs(s.APIFlavor())...)
	default:
		return nil, fmt.Errorf("unknown backend %q; want sglang, vllm or sim", s.Backend)
	}
	return append(argv, s.Extra...), nil
}

// ServerEnv is the environment added to the inherited one, for server and client alike.
func ServerEnv(s ServerSpec) map[string]string {
	env := map[string]string{}
	if s.RecordsDir != "" {
		env["SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR"] = s.RecordsDir
	}
	if s.APIFlavor() == BackendVLLM && s.ExpertPatching {
		env["MOE_CAP_ENABLE_EXPERT_PATCHING"] = "1"
	}
	if s.CUDAVisibleDevices != "" {
		env["CUDA_VISIBLE_DEVICES"] = s.CUDAVisibleDevices
		// The indices come from NVML, which numbers GPUs in PCI bus order; CUDA's default
		// order (fastest first) can differ on a node with mixed GPUs.
		env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
	}
	return env
}

// MergeEnv overlays added on base (KEY=VALUE lists), added winning, in a stable order.
func MergeEnv(base []string, added map[string]string) []string {
	out := make([]string, 0, len(base)+len(added))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := added[k]; ok {
			continue
		}
		out = append(out, kv)
	}
	keys := make([]string, 0, len(added))
	for k := range added {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+added[k])
	}
	return out
}
