package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Memory API names: which NVML call a MemoryInfo.Used came from.
const (
	MemAPIv2 = "v2" // nvmlDeviceGetMemoryInfo_v2: used excludes the driver's reservation
	MemAPIv1 = "v1" // nvmlDeviceGetMemoryInfo: on R510+ drivers used includes the reservation
)

// MemoryInfo is one GPU's memory as the driver reports it.
//
// Since R510 the v1 call counts the memory the driver reserves for itself as "used": an idle
// H200 shows 615 MiB used through v1, while v2 shows used 0 and reserved 615 MiB (what
// nvidia-smi prints). Used is therefore v2's where the driver has it, v1's otherwise, and
// the idle and teardown checks compare it against the GPU's own baseline.
type MemoryInfo struct {
	// API says which call Used comes from: "v2" or "v1".
	API   string `json:"api"`
	Total uint64 `json:"total_bytes"`
	// Used is memory in use by processes (v2: without the driver's reservation).
	Used uint64 `json:"used_bytes"`
	// Reserved is the driver's own reservation (v2 only; absent on v1).
	Reserved *uint64 `json:"reserved_bytes,omitempty"`
	// V1Used and V2Used are both raw readings, for comparison with nvidia-smi; a reading the
	// driver does not offer is absent.
	V1Used *uint64 `json:"v1_used_bytes,omitempty"`
	V2Used *uint64 `json:"v2_used_bytes,omitempty"`
}

// memV2Unavailable reports whether a v2 return means "this driver/GPU cannot answer v2"
// (fall back to v1) rather than a real failure.
func memV2Unavailable(ret nvml.Return) bool {
	return errors.Is(ret, nvml.ERROR_NOT_SUPPORTED) || errors.Is(ret, nvml.ERROR_FUNCTION_NOT_FOUND) ||
		errors.Is(ret, nvml.ERROR_ARGUMENT_VERSION_MISMATCH)
}

// memoryOf reads h's memory: v2 when the library has the symbol and the GPU answers it, v1
// otherwise. both also reads v1 when v2 answered (for `moecapd gpus`). The returned Return
// is the failure of the call Used came from.
func (b *nvmlBackend) memoryOf(h nvml.Device, both bool) (MemoryInfo, nvml.Return) {
	if b.memV2 {
		m2, ret := h.GetMemoryInfo_v2()
		if errors.Is(ret, nvml.SUCCESS) {
			used, res := m2.Used, m2.Reserved
			mi := MemoryInfo{API: MemAPIv2, Total: m2.Total, Used: used, Reserved: &res, V2Used: &used}
			if both {
				if m1, ret := h.GetMemoryInfo(); errors.Is(ret, nvml.SUCCESS) {
					u1 := m1.Used
					mi.V1Used = &u1
				}
			}
			return mi, ret
		}
		if !memV2Unavailable(ret) {
			return MemoryInfo{}, ret
		}
	}
	m1, ret := h.GetMemoryInfo()
	if !errors.Is(ret, nvml.SUCCESS) {
		return MemoryInfo{}, ret
	}
	u1 := m1.Used
	return MemoryInfo{API: MemAPIv1, Total: m1.Total, Used: u1, V1Used: &u1}, ret
}

func (b *nvmlBackend) Memory(devs []Device) (map[int]MemoryInfo, error) {
	out := make(map[int]MemoryInfo, len(devs))
	for _, d := range devs {
		h, err := b.handle(d)
		if err != nil {
			return nil, err
		}
		mi, ret := b.memoryOf(h, true)
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: memory info: %w", d.Index, ret)
		}
		out[d.Index] = mi
	}
	return out, nil
}

func (b *nvmlBackend) MemoryUsed(devs []Device) (map[int]uint64, error) {
	out := make(map[int]uint64, len(devs))
	for _, d := range devs {
		h, err := b.handle(d)
		if err != nil {
			return nil, err
		}
		mi, ret := b.memoryOf(h, false)
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: memory info: %w", d.Index, ret)
		}
		out[d.Index] = mi.Used
	}
	return out, nil
}
