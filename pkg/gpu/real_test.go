package gpu

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// TestRealNVML runs on a machine with NVIDIA GPUs and is skipped elsewhere. It samples the
// node's GPUs for a few seconds and checks what the mocks cannot: the real library answers,
// each GPU gets rows, and where the GPU has an energy counter, counter and integrated power
// agree. MOECAPD_GPU_TEST_SECONDS sets the length (default 3).
func TestRealNVML(t *testing.T) {
	b, devs := openReal(t)
	t.Logf("driver %s, %s: %+v", b.DriverVersion(), Label(devs), devs)
	secs := 3.0
	if v, err := time.ParseDuration(os.Getenv("MOECAPD_GPU_TEST_SECONDS") + "s"); err == nil {
		secs = v.Seconds()
	}
	var csv strings.Builder
	s := b.NewSampler(SamplerConfig{Devices: devs, CSV: &csv, PIDs: func() []int { return []int{os.Getpid()} }})
	s.Start(t.Context())
	time.Sleep(300 * time.Millisecond)
	s.MarkBenchStart()
	time.Sleep(time.Duration(secs * float64(time.Second)))
	s.MarkBenchEnd()
	sum := s.Stop()
	t.Logf("summary: %+v", sum)
	lines := strings.Split(strings.TrimSpace(csv.String()), "\n")
	t.Logf("telemetry.csv (%d rows), first rows:\n%s", len(lines)-1, strings.Join(lines[:min(len(lines), 1+2*len(devs))], "\n"))
	if want := sum.Samples * len(devs); len(lines)-1 != want {
		t.Errorf("CSV rows = %d, want samples × GPUs = %d", len(lines)-1, want)
	}
	for _, d := range devs {
		if !strings.Contains(csv.String(), ","+d.UUID+",") {
			t.Errorf("no telemetry row for GPU %d %s", d.Index, d.UUID)
		}
	}
	if sum.Missed > 0 {
		t.Logf("missed ticks: %d", sum.Missed)
	}
	if sum.EnergyJ != nil && sum.EnergyIntegratedJ != nil {
		if *sum.EnergyJ <= 0 {
			t.Errorf("energy_j = %v, want > 0 on a powered GPU", *sum.EnergyJ)
		}
		ratio := *sum.EnergyJ / (*sum.AvgPowerW * *sum.BenchWindowS)
		t.Logf("energy counter %.2f J, integrated %.2f J, disagreement %.2f%%", *sum.EnergyJ, *sum.EnergyIntegratedJ, *sum.EnergyDisagreementPct)
		if math.Abs(ratio-1) > 0.10 {
			t.Errorf("energy counter / (avg power × time) = %.3f, want within 10%%", ratio)
		}
	}
}

// TestRealMemoryReadings, on a machine with NVIDIA GPUs, logs both NVML memory readings of
// every GPU (compare with nvidia-smi --query-gpu=memory.used,memory.reserved) and checks
// what the mocks assume: where v2 exists, v1's used is v2's used plus the reservation
// (within 64 MiB: the two calls are not simultaneous), and a GPU with no compute process
// passes the preflight's idle check at the default 512 MiB.
func TestRealMemoryReadings(t *testing.T) {
	b, devs := openReal(t)
	mem, err := b.Memory(devs)
	if err != nil {
		t.Fatal(err)
	}
	procs, err := b.ComputeProcesses(devs)
	if err != nil {
		t.Fatal(err)
	}
	const MiB = 1 << 20
	for _, d := range devs {
		m := mem[d.Index]
		line := fmt.Sprintf("GPU %d %s: api %s, used %d MiB", d.Index, d.Name, m.API, m.Used/MiB)
		if m.Reserved != nil {
			line += fmt.Sprintf(", reserved %d MiB", *m.Reserved/MiB)
		}
		if m.V1Used != nil {
			line += fmt.Sprintf(", v1 used %d MiB", *m.V1Used/MiB)
		}
		t.Log(line)
		if m.API == MemAPIv2 && m.V1Used != nil && m.Reserved != nil {
			if diff := int64(*m.V1Used) - int64(m.Used+*m.Reserved); diff > 64*MiB || diff < -64*MiB {
				t.Errorf("GPU %d: v1 used %d MiB ≠ v2 used %d + reserved %d MiB", d.Index, *m.V1Used/MiB, m.Used/MiB, *m.Reserved/MiB)
			}
		}
		busy := false
		for _, p := range procs {
			busy = busy || p.GPUIndex == d.Index
		}
		if !busy {
			if err := WaitIdle(t.Context(), b, []Device{d}, 512*MiB, 0, nil); err != nil {
				t.Errorf("GPU %d has no compute process but is refused as busy: %v", d.Index, err)
			}
		}
	}
}

// openReal opens the node's NVML (skipping the test where there is none) and lists its GPUs;
// the backend is closed when the test ends.
func openReal(t *testing.T) (Backend, []Device) {
	t.Helper()
	b, err := Open(zaptest.NewLogger(t), true)
	if err != nil {
		t.Skipf("no NVML here: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	devs, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	return b, devs
}
