// Package gpu is moecapd's view of the node's NVIDIA GPUs: discovery, the hardware label of
// cell ids, a telemetry sampler with an energy summary, per-process GPU memory and the
// preflight/teardown checks built on it. It is the only package that imports go-nvml.
//
// Without NVML (no driver, no GPU, CI) Open returns a null backend: every query says
// "unavailable" instead of failing, so a cell can still run and record that telemetry was
// not taken.
package gpu

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"
)

// ErrUnavailable is returned by queries of the null backend.
var ErrUnavailable = errors.New("GPU telemetry unavailable: NVML did not initialise")

// Device is one GPU as NVML enumerates it. Index is NVML's index (PCI bus order), the same
// numbering nvidia-smi shows.
type Device struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	MemoryTotal uint64 `json:"memory_total_bytes"`
	// Family is the short hardware name used in labels: H100, H200, A100, else the
	// sanitized NVML name.
	Family string `json:"family"`
}

// Process is a compute process holding memory on a GPU.
type Process struct {
	PID      int `json:"pid"`
	GPUIndex int `json:"gpu_index"`
	// UsedBytes is nil when the driver cannot tell (containers without the host PID
	// namespace, or insufficient permission).
	UsedBytes *uint64 `json:"used_bytes,omitempty"`
	// Cmdline is read from /proc; empty when the process is not visible from here.
	Cmdline string `json:"cmdline,omitempty"`
}

// Reading is one sample of one GPU. A nil field is a metric the device does not support (or
// failed to return this time); it is never reported as zero.
type Reading struct {
	Time     time.Time `json:"time"`
	Index    int       `json:"index"`
	UUID     string    `json:"uuid"`
	UtilGPU  *uint32   `json:"util_gpu_pct,omitempty"`
	UtilMem  *uint32   `json:"util_mem_pct,omitempty"`
	MemUsed  *uint64   `json:"mem_used_bytes,omitempty"` // MemoryInfo.Used: v2's where the driver has it
	MemTotal *uint64   `json:"mem_total_bytes,omitempty"`
	PowerMW  *uint32   `json:"power_mw,omitempty"`
	EnergyMJ *uint64   `json:"energy_mj,omitempty"`
	SMClock  *uint32   `json:"sm_clock_mhz,omitempty"`
	MemClock *uint32   `json:"mem_clock_mhz,omitempty"`
	TempC    *uint32   `json:"temperature_c,omitempty"`
	// ClockReasons is the bit mask of NVML's clock event (throttle) reasons.
	ClockReasons *uint64 `json:"clock_event_reasons,omitempty"`
	// Processes is nil when the process list is not supported, empty when there is none.
	// Cmdline is not filled here (the sampler does not need it every tick).
	Processes []Process `json:"processes,omitempty"`
	// MetricErrors counts metrics that failed with an error other than "not supported".
	MetricErrors int `json:"-"`
	// Err is set when the whole device could not be read (for example ERROR_GPU_IS_LOST).
	Err error `json:"-"`
}

// Backend is the node's GPUs as moecapd needs them. Methods are safe for concurrent use.
type Backend interface {
	// Available reports whether NVML initialised; false for the null backend.
	Available() bool
	// Reason says why the backend is unavailable ("" when it is available).
	Reason() string
	DriverVersion() string
	// Devices lists every GPU of the node.
	Devices() ([]Device, error)
	// Resolve maps a CUDA_VISIBLE_DEVICES value (indices, UUIDs or unique UUID prefixes,
	// comma separated) onto devices; "" means all.
	Resolve(cudaVisibleDevices string) ([]Device, error)
	// ComputeProcesses lists the compute processes on devs, with their command lines.
	ComputeProcesses(devs []Device) ([]Process, error)
	// MemoryUsed returns used memory in bytes by device index: NVML v2's used (without the
	// driver's reservation) where the driver has it, v1's otherwise.
	MemoryUsed(devs []Device) (map[int]uint64, error)
	// Memory returns the full memory readings (v1 and v2) by device index.
	Memory(devs []Device) (map[int]MemoryInfo, error)
	// Read samples every metric of devs once.
	Read(devs []Device) ([]Reading, error)
	// NewSampler returns a sampler over cfg.Devices; it does nothing until Start.
	NewSampler(cfg SamplerConfig) *Sampler
	Close()
}

// Open initialises NVML. When it cannot (no driver, no library, no GPU) it returns a null
// backend (its Reason says why; NoticeUnavailable tells the user, once, where GPUs would
// be sampled), unless require is set, in which case it returns an error that says what is
// missing and how to fix it. Open itself logs nothing: a dry run, a plan or a sim cell
// samples no GPU and has nothing to say about NVML.
func Open(log *zap.Logger, require bool) (Backend, error) {
	return OpenWith(nvml.New(), log, require)
}

// OpenWith is Open on a given NVML library (tests pass go-nvml's mocks).
func OpenWith(lib nvml.Interface, log *zap.Logger, require bool) (Backend, error) {
	if log == nil {
		log = zap.NewNop()
	}
	b, reason := openNVML(lib, log)
	if b != nil {
		return b, nil
	}
	if require {
		return nil, fmt.Errorf("GPUs required but %s; run on a node with an NVIDIA GPU and driver (check nvidia-smi), or drop --require-gpu to run without telemetry", reason)
	}
	return nullBackend{reason: reason}, nil
}

var noticeOnce sync.Once

// NoticeUnavailable logs, once per process and in one line, that b samples nothing and
// why; nothing when b is available. Call it where GPUs would be sampled (a cell on a real
// backend), not where they would not (dry runs, plans, the sim).
func NoticeUnavailable(log *zap.Logger, b Backend) {
	if log == nil || b == nil || b.Available() {
		return
	}
	noticeOnce.Do(func() {
		log.Warn("no GPU telemetry (no energy or GPU memory checks; --require-gpu makes this an error)", zap.String("reason", b.Reason()))
	})
}

// initReason turns an NVML init failure into a sentence with the likely cause.
func initReason(ret error) string {
	switch {
	case errors.Is(ret, nvml.ERROR_LIBRARY_NOT_FOUND):
		return "NVML (libnvidia-ml.so.1) was not found: no NVIDIA driver here, or a container started without GPU access (--gpus / NVIDIA container toolkit)"
	case errors.Is(ret, nvml.ERROR_DRIVER_NOT_LOADED):
		return "the NVIDIA kernel driver is not loaded (nvidia-smi says the same; load the module or reboot)"
	case errors.Is(ret, nvml.ERROR_LIB_RM_VERSION_MISMATCH):
		return "the NVML library and the kernel driver versions differ (a driver upgrade without reboot; reboot or reload the nvidia module)"
	case errors.Is(ret, nvml.ERROR_NO_PERMISSION):
		return "no permission to open the GPU devices (/dev/nvidia*)"
	default:
		return fmt.Sprintf("NVML failed to initialise: %v", ret)
	}
}

// nullBackend stands in when there is no NVML: everything is unavailable, nothing fails
// the cell by itself.
type nullBackend struct{ reason string }

func (n nullBackend) Available() bool       { return false }
func (n nullBackend) Reason() string        { return n.reason }
func (n nullBackend) DriverVersion() string { return "" }
func (n nullBackend) Devices() ([]Device, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) Resolve(string) ([]Device, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) ComputeProcesses([]Device) ([]Process, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) MemoryUsed([]Device) (map[int]uint64, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) Memory([]Device) (map[int]MemoryInfo, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) Read([]Device) ([]Reading, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, n.reason)
}
func (n nullBackend) NewSampler(cfg SamplerConfig) *Sampler { return newSampler(n, zap.NewNop(), cfg) }
func (n nullBackend) Close()                                {}
