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

// BenchmarkSampler measures what telemetry costs at 10 Hz. Each iteration starts a
// sampler, lets the first round pass, then measures the process's CPU time (getrusage) over
// 2 s of steady sampling, as a percentage of one core; the energy counter, read only every
// DefaultEnergyInterval, is timed separately and amortized over that interval. Reported:
// steady cpu%, amortized energy cpu%, their total, p99 tick jitter and missed ticks.
//
//   - mock8: 8 mock GPUs (NVML answered in-process: moecapd's own overhead);
//   - nvml: the node's real GPUs (up to 8), skipped without NVML;
//   - nvml-x8: on a node with fewer than 8 GPUs, its first GPU listed 8 times, which makes
//     the same NVML calls 8 GPUs would.
//
// Run: CGO_CFLAGS=-Wno-deprecated-declarations go test -run '^$' -bench Sampler -benchtime 5x ./pkg/gpu/
func BenchmarkSampler(b *testing.B) {
	b.Run("mock8", func(b *testing.B) {
		var gpus []*fakeGPU
		for i := range 8 {
			g := newFake(fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000000", i), "NVIDIA H100 80GB HBM3")
			g.powerMW, g.util, g.memUsed, g.sm, g.memClk, g.temp = 650_000, 97, 70<<30, 1980, 2619, 61
			g.procs = []nvml.ProcessInfo{{Pid: 1000 + uint32(i), UsedGpuMemory: 70 << 30}}
			gpus = append(gpus, g)
		}
		be := openMock(newMockLib(gpus...))
		devs, _ := be.Devices()
		benchSampler(b, be, devs)
	})
	be, err := Open(zap.NewNop(), true)
	if err != nil {
		b.Logf("nvml benchmarks skipped: %v", err)
		return
	}
	defer be.Close()
	devs, err := be.Devices()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("nvml", func(b *testing.B) { benchSampler(b, be, devs[:min(len(devs), 8)]) })
	if len(devs) < 8 {
		b.Run("nvml-x8", func(b *testing.B) {
			var same []Device
			for range 8 {
				same = append(same, devs[0])
			}
			benchSampler(b, be, same)
		})
	}
}

func benchSampler(b *testing.B, be Backend, devs []Device) {
	const interval = 100 * time.Millisecond
	const span = 2 * time.Second
	pids := []int{1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007}
	rd := be.(roundReader)
	var steady, energy, jitterP99, missed, perSec []float64
	for b.Loop() {
		s := be.NewSampler(SamplerConfig{Devices: devs, Interval: interval, CSV: io.Discard, PIDs: func() []int { return pids }})
		s.Start(b.Context())
		time.Sleep(interval * 3 / 2) // past the first round, which reads the energy counter
		u0, t0 := rusage(b), time.Now()
		samples0 := sampleCount(s)
		time.Sleep(span)
		u1, wall := rusage(b), time.Since(t0)
		samples1 := sampleCount(s)
		sum := s.Stop()
		steady = append(steady, float64(u1-u0)/float64(wall)*100)
		perSec = append(perSec, float64(samples1-samples0)/wall.Seconds())
		if sum.TickJitterP99MS != nil {
			jitterP99 = append(jitterP99, *sum.TickJitterP99MS)
		}
		missed = append(missed, float64(sum.Missed)/wall.Seconds())

		// The energy counter's cost: a round with it minus a round without, amortized
		// over the interval between reads.
		const k = 5
		e0 := rusage(b)
		for range k {
			rd.readRound(devs, readWhat{energy: true, processes: true})
		}
		e1 := rusage(b)
		for range k {
			rd.readRound(devs, readWhat{processes: true})
		}
		e2 := rusage(b)
		perRead := max(0, float64((e1-e0)-(e2-e1))/k)
		energy = append(energy, perRead/float64(DefaultEnergyInterval)*100)
	}
	med := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	total := med(steady) + med(energy)
	b.ReportMetric(med(steady), "steady-cpu%")
	b.ReportMetric(med(energy), "energy-cpu%")
	b.ReportMetric(total, "cpu%core")
	b.ReportMetric(med(jitterP99), "jitter-p99-ms")
	b.ReportMetric(med(missed), "missed/s")
	b.ReportMetric(0, "ns/op") // an iteration is a fixed span; its time says nothing
	b.Logf("\n| GPUs | rate | CPU, %% of one core (steady + energy counter every %s) | tick jitter p99 | missed ticks/s | rounds/s |\n|---|---|---|---|---|---|\n| %d (%s) | 10 Hz | %.3f%% (%.3f + %.3f) | %.3f ms | %.1f | %.1f |",
		DefaultEnergyInterval, len(devs), Label(devs), total, med(steady), med(energy), med(jitterP99), med(missed), med(perSec))
}

// sampleCount reads the sampler's round count while it runs.
func sampleCount(s *Sampler) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roundsSeen
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
	if nb.memV2 { // a library without the symbol would crash on the call
		calls = append(calls, struct {
			name string
			f    func() nvml.Return
		}{"memory_v2", func() nvml.Return { _, r := h.GetMemoryInfo_v2(); return r }})
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
