package gpu

import (
	"errors"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"go.uber.org/zap"
)

// fakeGPU is the mutable state behind one mock device; tests change it between rounds.
type fakeGPU struct {
	mu       sync.Mutex
	uuid     string
	name     string
	memTotal uint64
	memUsed  uint64 // v2's used: without the driver's reservation
	// memReserved is the driver's reservation: v2 reports it apart, v1 counts it as used
	// (R510+ drivers).
	memReserved uint64
	util        uint32
	utilMem     uint32
	powerMW     uint32
	energyMJ    uint64
	sm          uint32
	memClk      uint32
	temp        uint32
	reasons     uint64
	procs       []nvml.ProcessInfo
	// unsupported metrics answer ERROR_NOT_SUPPORTED: "util", "power", "energy", "clocks",
	// "temp", "reasons", "procs", "memv2", "events" (XID event registration).
	unsupported map[string]bool
	lost        bool
}

func newFake(uuid, name string) *fakeGPU {
	return &fakeGPU{uuid: uuid, name: name, memTotal: 80 << 30, unsupported: map[string]bool{}}
}

func (f *fakeGPU) set(fn func(f *fakeGPU)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// ret is the answer to a metric call: lost beats unsupported beats success.
func (f *fakeGPU) ret(metric string) nvml.Return {
	switch {
	case f.lost:
		return nvml.ERROR_GPU_IS_LOST
	case f.unsupported[metric]:
		return nvml.ERROR_NOT_SUPPORTED
	}
	return nvml.SUCCESS
}

func (f *fakeGPU) device() *mock.Device {
	return &mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { f.mu.Lock(); defer f.mu.Unlock(); return f.uuid, nvml.SUCCESS },
		GetNameFunc: func() (string, nvml.Return) { f.mu.Lock(); defer f.mu.Unlock(); return f.name, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			used := f.memUsed + f.memReserved
			return nvml.Memory{Total: f.memTotal, Used: used, Free: f.memTotal - used}, f.ret("")
		},
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return nvml.Memory_v2{Version: nvml.STRUCT_VERSION(nvml.Memory_v2{}, 2), Total: f.memTotal, Used: f.memUsed,
				Reserved: f.memReserved, Free: f.memTotal - f.memUsed - f.memReserved}, f.ret("memv2")
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return nvml.Utilization{Gpu: f.util, Memory: f.utilMem}, f.ret("util")
		},
		GetPowerUsageFunc: func() (uint32, nvml.Return) { f.mu.Lock(); defer f.mu.Unlock(); return f.powerMW, f.ret("power") },
		GetTotalEnergyConsumptionFunc: func() (uint64, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.energyMJ, f.ret("energy")
		},
		GetClockInfoFunc: func(c nvml.ClockType) (uint32, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if c == nvml.CLOCK_SM {
				return f.sm, f.ret("clocks")
			}
			return f.memClk, f.ret("clocks")
		},
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.temp, f.ret("temp")
		},
		GetCurrentClocksEventReasonsFunc: func() (uint64, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.reasons, f.ret("reasons")
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return { f.mu.Lock(); defer f.mu.Unlock(); return f.ret("events") },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]nvml.ProcessInfo(nil), f.procs...), f.ret("procs")
		},
	}
}

// newMockLib is an NVML library whose devices are gpus, in index order.
func newMockLib(gpus ...*fakeGPU) *mock.Interface {
	devs := make([]*mock.Device, len(gpus))
	for i, g := range gpus {
		devs[i] = g.device()
	}
	return &mock.Interface{
		InitFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:               func() nvml.Return { return nvml.SUCCESS },
		DeviceGetCountFunc:         func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "570.86.15", nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
		DeviceGetHandleByUUIDFunc: func(u string) (nvml.Device, nvml.Return) {
			for i, g := range gpus {
				if g.uuid == u {
					return devs[i], nvml.SUCCESS
				}
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
		ExtensionsFunc: func() nvml.ExtendedInterface {
			return &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
		},
		// No event sets unless a test gives them (xidEvents).
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED },
	}
}

// xidEvents makes lib's event sets deliver what is sent on the returned channel; a wait
// with nothing queued times out after its timeout, as NVML's does.
func xidEvents(lib *mock.Interface) chan nvml.EventData {
	ch := make(chan nvml.EventData, 16)
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				select {
				case ev := <-ch: // a queued event first, as NVML's
					return ev, nvml.SUCCESS
				default:
				}
				select {
				case ev := <-ch:
					return ev, nvml.SUCCESS
				case <-time.After(time.Duration(ms) * time.Millisecond):
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	return ch
}

// fakeClock is a manual clock shared by the backend's readings and the sampler's marks.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).Add(d)
}

// openMock opens the backend on a mock library and checks it is the NVML one.
func openMock(lib nvml.Interface) *nvmlBackend {
	b, err := OpenWith(lib, zap.NewNop(), true)
	if err != nil {
		panic(err)
	}
	nb, ok := b.(*nvmlBackend)
	if !ok {
		panic(errors.New("mock library did not give the NVML backend"))
	}
	return nb
}
