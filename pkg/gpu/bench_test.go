package gpu

import (
	"fmt"
	"io"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"
)

// BenchmarkSampler measures what telemetry costs: each iteration samples for one second at
// 10 Hz and reports the process's CPU time as a percentage of one core, the p99 tick jitter
// and missed ticks. "mock8" uses 8 mock GPUs (every NVML call answered in-process, so it
// measures moecapd's own overhead); "nvml" uses the node's real GPUs and is skipped without
// them. Run:
//
//	CGO_CFLAGS=-Wno-deprecated-declarations go test -run '^$' -bench Sampler -benchtime 5x ./pkg/gpu/
func BenchmarkSampler(b *testing.B) {
	b.Run("mock8", func(b *testing.B) {
		var gpus []*fakeGPU
		for i := range 8 {
			g := newFake(fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i), "NVIDIA H100 80GB HBM3")
			g.powerMW, g.util, g.memUsed, g.sm, g.memClk, g.temp = 650_000, 97, 70<<30, 1980, 2619, 61
			g.procs = []nvml.ProcessInfo{{Pid: 1000 + uint32(i), UsedGpuMemory: 70 << 30}}
			gpus = append(gpus, g)
		}
		benchSampler(b, openMock(newMockLib(gpus...)))
	})
	b.Run("nvml", func(b *testing.B) {
		be, err := Open(zap.NewNop(), true)
		if err != nil {
			b.Skip(err)
		}
		defer be.Close()
		benchSampler(b, be)
	})
}

func benchSampler(b *testing.B, be Backend) {
	devs, err := be.Devices()
	if err != nil {
		b.Fatal(err)
	}
	if len(devs) > 8 {
		devs = devs[:8]
	}
	const interval = 100 * time.Millisecond
	pids := []int{1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007}
	var cpuPct, jitterP99, missed, samples []float64
	for b.Loop() {
		s := be.NewSampler(SamplerConfig{Devices: devs, Interval: interval, CSV: io.Discard, PIDs: func() []int { return pids }})
		u0, t0 := rusage(b), time.Now()
		s.Start(b.Context())
		time.Sleep(time.Second)
		sum := s.Stop()
		u1, wall := rusage(b), time.Since(t0)
		cpuPct = append(cpuPct, float64(u1-u0)/float64(wall)*100)
		if sum.TickJitterP99MS != nil {
			jitterP99 = append(jitterP99, *sum.TickJitterP99MS)
		}
		missed = append(missed, float64(sum.Missed))
		samples = append(samples, float64(sum.Samples))
	}
	med := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	b.ReportMetric(med(cpuPct), "cpu%core")
	b.ReportMetric(med(jitterP99), "jitter-p99-ms")
	b.ReportMetric(med(missed), "missed/s")
	b.ReportMetric(0, "ns/op") // the iteration is a fixed second; its time says nothing
	b.Logf("\n| GPUs | rate | CPU (%% of one core) | tick jitter p99 | missed ticks/s | samples/s |\n|---|---|---|---|---|---|\n| %d × %s | 10 Hz | %.3f%% | %.3f ms | %.0f | %.0f |",
		len(devs), Label(devs), med(cpuPct), med(jitterP99), med(missed), med(samples))
}

// rusage is the CPU time (user + system) this process has used.
func rusage(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkNVMLCalls times each NVML call the sampler makes, on real GPUs (skipped without
// them), with the CPU time each costs: what to read less often when sampling is too dear.
func BenchmarkNVMLCalls(b *testing.B) {
	be, err := Open(zap.NewNop(), true)
	if err != nil {
		b.Skip(err)
	}
	defer be.Close()
	nb := be.(*nvmlBackend)
	devs, err := nb.Devices()
	if err != nil {
		b.Fatal(err)
	}
	h, err := nb.handle(devs[0])
	if err != nil {
		b.Fatal(err)
	}
	calls := []struct {
		name string
		f    func() nvml.Return
	}{
		{"memory", func() nvml.Return { _, r := h.GetMemoryInfo(); return r }},
		{"utilization", func() nvml.Return { _, r := h.GetUtilizationRates(); return r }},
		{"power", func() nvml.Return { _, r := h.GetPowerUsage(); return r }},
		{"energy", func() nvml.Return { _, r := h.GetTotalEnergyConsumption(); return r }},
		{"sm_clock", func() nvml.Return { _, r := h.GetClockInfo(nvml.CLOCK_SM); return r }},
		{"mem_clock", func() nvml.Return { _, r := h.GetClockInfo(nvml.CLOCK_MEM); return r }},
		{"temperature", func() nvml.Return { _, r := h.GetTemperature(nvml.TEMPERATURE_GPU); return r }},
		{"clock_reasons", func() nvml.Return { _, r := h.GetCurrentClocksEventReasons(); return r }},
		{"processes", func() nvml.Return { _, r := h.GetComputeRunningProcesses(); return r }},
	}
	for _, c := range calls {
		b.Run(c.name, func(b *testing.B) {
			u0 := rusage(b)
			n := 0
			for b.Loop() {
				_ = c.f()
				n++
			}
			b.ReportMetric(float64(rusage(b)-u0)/float64(n)/1e3, "cpu-us/op")
		})
	}
}
