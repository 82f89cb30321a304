package gpu

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"
)

// nvmlBackend is the Backend on a live (or mocked) NVML library.
type nvmlBackend struct {
	lib    nvml.Interface
	log    *zap.Logger
	driver string
	// eventReasons is false on drivers older than R535, which lack
	// nvmlDeviceGetCurrentClocksEventReasons; calling a missing symbol would crash the
	// process, so the older, equivalent throttle-reasons call is used instead.
	eventReasons bool
	// memV2 is whether the library has nvmlDeviceGetMemoryInfo_v2 (R510+); calling a missing
	// symbol would crash, so without it memory is read through v1 only.
	memV2 bool
	// procRoot is /proc; tests point it at a fixture tree.
	procRoot string
	now      func() time.Time

	mu      sync.Mutex
	handles map[string]nvml.Device // by UUID, so a caller's Device always reaches its GPU
}

// openNVML returns the backend, or nil and the reason NVML cannot be used.
func openNVML(lib nvml.Interface, log *zap.Logger) (*nvmlBackend, string) {
	if ret := lib.Init(); !errors.Is(ret, nvml.SUCCESS) {
		return nil, initReason(ret)
	}
	n, ret := lib.DeviceGetCount()
	if !errors.Is(ret, nvml.SUCCESS) {
		_ = lib.Shutdown()
		return nil, fmt.Sprintf("NVML initialised but cannot count GPUs: %v", ret)
	}
	if n == 0 {
		_ = lib.Shutdown()
		return nil, "NVML initialised but sees no GPU"
	}
	b := &nvmlBackend{lib: lib, log: log, procRoot: "/proc", now: time.Now, handles: map[string]nvml.Device{}}
	if v, ret := lib.SystemGetDriverVersion(); errors.Is(ret, nvml.SUCCESS) {
		b.driver = v
	}
	b.eventReasons = lib.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil
	b.memV2 = lib.Extensions().LookupSymbol("nvmlDeviceGetMemoryInfo_v2") == nil
	return b, ""
}

func (b *nvmlBackend) Available() bool       { return true }
func (b *nvmlBackend) Reason() string        { return "" }
func (b *nvmlBackend) DriverVersion() string { return b.driver }
func (b *nvmlBackend) Close()                { _ = b.lib.Shutdown() }

func (b *nvmlBackend) NewSampler(cfg SamplerConfig) *Sampler { return newSampler(b, b.log, cfg) }

func (b *nvmlBackend) Devices() ([]Device, error) {
	n, ret := b.lib.DeviceGetCount()
	if !errors.Is(ret, nvml.SUCCESS) {
		return nil, fmt.Errorf("count GPUs: %w", ret)
	}
	devs := make([]Device, 0, n)
	for i := range n {
		h, ret := b.lib.DeviceGetHandleByIndex(i)
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: get handle: %w", i, ret)
		}
		uuid, ret := h.GetUUID()
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: get UUID: %w", i, ret)
		}
		name, ret := h.GetName()
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: get name: %w", i, ret)
		}
		d := Device{Index: i, UUID: uuid, Name: name, Family: Family(name)}
		if mem, ret := h.GetMemoryInfo(); errors.Is(ret, nvml.SUCCESS) {
			d.MemoryTotal = mem.Total
		}
		b.mu.Lock()
		b.handles[uuid] = h
		b.mu.Unlock()
		devs = append(devs, d)
	}
	return devs, nil
}

func (b *nvmlBackend) Resolve(cudaVisibleDevices string) ([]Device, error) {
	all, err := b.Devices()
	if err != nil {
		return nil, err
	}
	return resolveVisible(all, cudaVisibleDevices)
}

// handle finds the NVML handle of d, by UUID when known (robust to renumbering), else by
// index.
func (b *nvmlBackend) handle(d Device) (nvml.Device, error) {
	b.mu.Lock()
	h, ok := b.handles[d.UUID]
	b.mu.Unlock()
	if ok {
		return h, nil
	}
	var ret nvml.Return
	if d.UUID != "" {
		h, ret = b.lib.DeviceGetHandleByUUID(d.UUID)
	} else {
		h, ret = b.lib.DeviceGetHandleByIndex(d.Index)
	}
	if !errors.Is(ret, nvml.SUCCESS) {
		return nil, fmt.Errorf("GPU %d (%s): get handle: %w", d.Index, d.UUID, ret)
	}
	if d.UUID != "" {
		b.mu.Lock()
		b.handles[d.UUID] = h
		b.mu.Unlock()
	}
	return h, nil
}

func (b *nvmlBackend) ComputeProcesses(devs []Device) ([]Process, error) {
	var out []Process
	for _, d := range devs {
		h, err := b.handle(d)
		if err != nil {
			return nil, err
		}
		infos, ret := h.GetComputeRunningProcesses()
		if errors.Is(ret, nvml.ERROR_NOT_SUPPORTED) {
			continue
		}
		if !errors.Is(ret, nvml.SUCCESS) {
			return nil, fmt.Errorf("GPU %d: list compute processes: %w", d.Index, ret)
		}
		for _, p := range processes(d.Index, infos) {
			p.Cmdline = readCmdline(b.procRoot, p.PID)
			out = append(out, p)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].GPUIndex != out[j].GPUIndex {
			return out[i].GPUIndex < out[j].GPUIndex
		}
		return out[i].PID < out[j].PID
	})
	return out, nil
}

// processes converts NVML's process list. NVML reports "unknown" memory as
// NVML_VALUE_NOT_AVAILABLE (all bits set), which must not be summed as bytes.
func processes(idx int, infos []nvml.ProcessInfo) []Process {
	out := make([]Process, 0, len(infos))
	for _, in := range infos {
		p := Process{PID: int(in.Pid), GPUIndex: idx}
		if in.UsedGpuMemory != math.MaxUint64 {
			v := in.UsedGpuMemory
			p.UsedBytes = &v
		}
		out = append(out, p)
	}
	return out
}

// Read samples every metric of devs. A device that fails as a whole gets Reading.Err and the
// others are still read: one lost GPU must not blind the sampler to the rest.
func (b *nvmlBackend) Read(devs []Device) ([]Reading, error) {
	return b.readRound(devs, readAll), nil
}

// readWhat says which of the costly metrics a round reads.
type readWhat struct {
	energy    bool
	processes bool
}

var readAll = readWhat{energy: true, processes: true}

// readRound is Read for the sampler, which skips what it does not need this round.
func (b *nvmlBackend) readRound(devs []Device, what readWhat) []Reading {
	out := make([]Reading, len(devs))
	for i, d := range devs {
		out[i] = b.readOne(d, what)
	}
	return out
}

func (b *nvmlBackend) readOne(d Device, what readWhat) Reading {
	r := Reading{Time: b.now(), Index: d.Index, UUID: d.UUID}
	h, err := b.handle(d)
	if err != nil {
		r.Err = err
		return r
	}
	var lost error
	// ok decides what a return means: success → keep, not supported → absent, GPU lost →
	// the whole device fails, anything else → absent this time and counted.
	ok := func(what string, ret nvml.Return) bool {
		switch {
		case errors.Is(ret, nvml.SUCCESS):
			return true
		case errors.Is(ret, nvml.ERROR_NOT_SUPPORTED):
			return false
		case errors.Is(ret, nvml.ERROR_GPU_IS_LOST):
			if lost == nil {
				lost = fmt.Errorf("GPU %d (%s): %s: %w", d.Index, d.UUID, what, ret)
			}
			return false
		default:
			r.MetricErrors++
			return false
		}
	}
	// The same reading the idle and teardown checks use (v2's used where the driver has it).
	if mem, ret := b.memoryOf(h, false); ok("memory info", ret) {
		r.MemUsed, r.MemTotal = &mem.Used, &mem.Total
	}
	if lost != nil {
		// A lost GPU answers every call with the same error, slowly; don't ask again.
		r.Err = lost
		return r
	}
	if u, ret := h.GetUtilizationRates(); ok("utilization", ret) {
		r.UtilGPU, r.UtilMem = &u.Gpu, &u.Memory
	}
	if p, ret := h.GetPowerUsage(); ok("power", ret) {
		r.PowerMW = &p
	}
	if what.energy {
		if e, ret := h.GetTotalEnergyConsumption(); ok("energy", ret) {
			r.EnergyMJ = &e
		}
	}
	if c, ret := h.GetClockInfo(nvml.CLOCK_SM); ok("SM clock", ret) {
		r.SMClock = &c
	}
	if c, ret := h.GetClockInfo(nvml.CLOCK_MEM); ok("memory clock", ret) {
		r.MemClock = &c
	}
	if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ok("temperature", ret) {
		r.TempC = &t
	}
	var reasons uint64
	var ret nvml.Return
	if b.eventReasons {
		reasons, ret = h.GetCurrentClocksEventReasons()
	} else {
		reasons, ret = h.GetCurrentClocksThrottleReasons()
	}
	if ok("clock event reasons", ret) {
		r.ClockReasons = &reasons
	}
	if what.processes {
		if infos, ret := h.GetComputeRunningProcesses(); ok("compute processes", ret) {
			r.Processes = processes(d.Index, infos)
		}
	}
	if lost != nil {
		r = Reading{Time: r.Time, Index: d.Index, UUID: d.UUID, Err: lost}
	}
	return r
}
