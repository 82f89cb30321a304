package gpu

import (
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
	b, err := Open(zaptest.NewLogger(t), true)
	if err != nil {
		t.Skipf("no NVML here: %v", err)
	}
	defer b.Close()
	devs, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
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
