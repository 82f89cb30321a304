package gpu

import (
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/gpu")

// rig is a mock node driven round by round on a manual clock, so the summary can be
// checked against numbers worked out by hand.
type rig struct {
	gpus []*fakeGPU
	b    *nvmlBackend
	clk  *fakeClock
	s    *Sampler
	csv  *strings.Builder
}

func newRig(t *testing.T, pids []int, gpus ...*fakeGPU) *rig {
	t.Helper()
	r := &rig{gpus: gpus, b: openMock(newMockLib(gpus...)), clk: &fakeClock{}, csv: &strings.Builder{}}
	r.clk.Set(0)
	r.b.now = r.clk.Now
	devs, err := r.b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	cfg := SamplerConfig{Devices: devs, Interval: time.Second, CSV: r.csv}
	if pids != nil {
		cfg.PIDs = func() []int { return pids }
	}
	r.s = r.b.NewSampler(cfg)
	r.s.now = r.clk.Now
	r.s.writeLine([]byte(CSVHeader + "\n"))
	return r
}

// at takes one round at time d after the rig's epoch.
func (r *rig) at(d time.Duration) {
	r.clk.Set(d)
	r.s.round(true)
}

func near(t *testing.T, what string, got *float64, want float64) {
	t.Helper()
	if got == nil {
		t.Errorf("%s absent, want %.6g", what, want)
		return
	}
	if math.Abs(*got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %.9g, want %.9g", what, *got, want)
	}
}

// TestSummaryMath checks every summary figure against a scenario worked out by hand:
// two GPUs sampled at t = 0…4 s, bench window [1.5 s, 3.5 s] falling between samples.
//
// GPU0 power 100,100,200,200,100 W; its counter grows by the trapezoid of that power,
// 100,150,200,150 J per second. In the window the counter (linear within an interval) gives
// 0.5·150 + 200 + 0.5·150 = 350 J; integrated power gives (150+200)/2·0.5 + 200 +
// (200+150)/2·0.5 = 375 J.
// GPU1 power 200 W flat but its counter grows 210 J/s: 420 J by counter, 400 J by power.
// Totals 770 J and 775 J, disagreement 5/770 = 0.649…%, average power 775/2 = 387.5 W,
// peak of the per-round sums inside the window (t=2,3) 400 W.
// Utilization in the window: GPU0 30,40, GPU1 80,90 → mean 60, p95 88.5 (linear: rank 0.95·3 = 2.85, 80 + 0.85·10).
// Memory peaks inside the window: GPU0 5 GiB (9 GiB at t=4 is outside), GPU1 6 GiB.
// Server PIDs {100,101}: GPU0 pid 100 holds 3 GiB (pid 200 is not ours), GPU1 pid 101 2 GiB.
func TestSummaryMath(t *testing.T) {
	g0, g1 := newFake("GPU-0000", "NVIDIA H100 80GB HBM3"), newFake("GPU-1111", "NVIDIA H100 80GB HBM3")
	r := newRig(t, []int{100, 101}, g0, g1)
	const GiB = 1 << 30
	pow0 := []uint32{100, 100, 200, 200, 100}
	e0 := []uint64{1_000_000, 1_100_000, 1_250_000, 1_450_000, 1_600_000}
	util0 := []uint32{10, 20, 30, 40, 50}
	util1 := []uint32{60, 70, 80, 90, 100}
	mem0 := []uint64{1 * GiB, 2 * GiB, 5 * GiB, 3 * GiB, 9 * GiB}
	mem1 := []uint64{4 * GiB, 4 * GiB, 4 * GiB, 6 * GiB, 4 * GiB}
	reasons0 := []uint64{0, 0, 0, nvml.ClocksEventReasonSwPowerCap, nvml.ClocksThrottleReasonHwSlowdown}
	g0.procs = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 3 * GiB}, {Pid: 200, UsedGpuMemory: 1 * GiB}}
	g1.procs = []nvml.ProcessInfo{{Pid: 101, UsedGpuMemory: 2 * GiB}}
	for _, g := range []*fakeGPU{g0, g1} {
		g.sm, g.memClk, g.temp, g.utilMem = 1980, 2619, 55, 12
	}
	for k := range 5 {
		g0.set(func(f *fakeGPU) {
			f.powerMW, f.energyMJ, f.util, f.memUsed, f.reasons = pow0[k]*1000, e0[k], util0[k], mem0[k], reasons0[k]
		})
		g1.set(func(f *fakeGPU) {
			f.powerMW, f.energyMJ, f.util, f.memUsed = 200_000, 5_000_000+uint64(k)*210_000, util1[k], mem1[k]
		})
		if k == 2 {
			r.clk.Set(1500 * time.Millisecond)
			r.s.MarkBenchStart()
		}
		if k == 4 {
			r.clk.Set(3500 * time.Millisecond)
			r.s.MarkBenchEnd()
		}
		r.at(time.Duration(k) * time.Second)
	}
	sum := r.s.Stop()

	if !sum.Available || sum.GPUs != 2 || sum.Samples != 5 || sum.Window != "bench" || sum.ReadErrors != 0 {
		t.Errorf("summary header = %+v, want available, 2 GPUs, 5 samples, bench window, no errors", sum)
	}
	near(t, "bench_window_s", sum.BenchWindowS, 2)
	near(t, "energy_j", sum.EnergyJ, 770)
	near(t, "energy_integrated_j", sum.EnergyIntegratedJ, 775)
	near(t, "energy_disagreement_pct", sum.EnergyDisagreementPct, 5.0/770*100)
	near(t, "avg_power_w", sum.AvgPowerW, 387.5)
	near(t, "peak_power_w", sum.PeakPowerW, 400)
	near(t, "mean_util_pct", sum.MeanUtilPct, 60)
	near(t, "p95_util_pct", sum.P95UtilPct, 88.5)
	if sum.PeakMemoryBytes == nil || *sum.PeakMemoryBytes != 6*GiB {
		t.Errorf("peak_memory_bytes = %v, want %d", sum.PeakMemoryBytes, 6*GiB)
	}
	if sum.ServerPeakMemoryBytes == nil || *sum.ServerPeakMemoryBytes != 3*GiB {
		t.Errorf("server_peak_memory_bytes = %v, want %d", sum.ServerPeakMemoryBytes, 3*GiB)
	}
	if got := strings.Join(sum.ThrottleReasonsSeen, ","); got != "sw_power_cap" {
		t.Errorf("throttle_reasons_seen = %q, want sw_power_cap (hw_slowdown was after the window)", got)
	}
	if len(sum.PerGPU) != 2 {
		t.Fatalf("per_gpu has %d entries, want 2", len(sum.PerGPU))
	}
	p0, p1 := sum.PerGPU[0], sum.PerGPU[1]
	near(t, "per_gpu[0].energy_j", p0.EnergyJ, 350)
	near(t, "per_gpu[0].energy_integrated_j", p0.EnergyIntegratedJ, 375)
	near(t, "per_gpu[0].avg_power_w", p0.AvgPowerW, 187.5)
	near(t, "per_gpu[0].peak_power_w", p0.PeakPowerW, 200)
	near(t, "per_gpu[0].mean_util_pct", p0.MeanUtilPct, 35)
	near(t, "per_gpu[1].energy_j", p1.EnergyJ, 420)
	near(t, "per_gpu[1].avg_power_w", p1.AvgPowerW, 200)
	if p0.UUID != "GPU-0000" || *p0.PeakMemoryBytes != 5*GiB || *p1.ServerPeakMemoryBytes != 2*GiB {
		t.Errorf("per_gpu = %+v / %+v, want GPU-0000 peak 5 GiB, GPU1 server peak 2 GiB", p0, p1)
	}

	// Energy per token (the cost is priced by capmath.ComputeCost, not here).
	sum.Finish(1000)
	near(t, "j_per_output_token", sum.JPerOutputToken, 0.77)
	near(t, "output_tokens_per_j", sum.OutputTokensPerJ, 1000.0/770)
	if sum.EnergySource != "counter" {
		t.Fatalf("energy_source = %q, want counter", sum.EnergySource)
	}

	// The JSON is snake_case and carries the figures.
	js, err := json.Marshal(sum)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"energy_j":770`, `"bench_window_s":2`, `"throttle_reasons_seen":["sw_power_cap"]`, `"per_gpu":[{"index":0,"uuid":"GPU-0000"`} {
		if !strings.Contains(string(js), k) {
			t.Errorf("summary JSON lacks %s:\n%s", k, js)
		}
	}

	// The CSV matches the golden file (regenerate with go test ./pkg/gpu -run TestSummaryMath -update).
	golden := filepath.Join("..", "..", "testdata", "gpu", "telemetry.golden.csv")
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(r.csv.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if r.csv.String() != string(want) {
		t.Errorf("telemetry CSV differs from %s:\ngot:\n%s\nwant:\n%s", golden, r.csv.String(), want)
	}
}

func TestNotSupportedIsAbsentNotZero(t *testing.T) {
	g := newFake("GPU-old", "Tesla P4")
	for _, m := range []string{"util", "power", "energy", "reasons", "procs"} {
		g.unsupported[m] = true
	}
	g.set(func(f *fakeGPU) { f.memUsed, f.sm, f.memClk, f.temp = 1<<30, 1500, 3000, 40 })
	r := newRig(t, []int{1}, g)
	r.at(0)
	r.at(time.Second)
	r.at(2 * time.Second)
	sum := r.s.Stop()

	lines := strings.Split(strings.TrimSpace(r.csv.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("CSV has %d lines, want header + 3 rows:\n%s", len(lines), r.csv.String())
	}
	want := "2025-01-02T03:04:05.000Z,0,GPU-old,,,1073741824,,,1500,3000,40,,"
	if lines[1] != want {
		t.Errorf("row = %q\nwant  %q (unsupported metrics empty, not 0)", lines[1], want)
	}
	if sum.EnergyJ != nil || sum.EnergyIntegratedJ != nil || sum.AvgPowerW != nil || sum.PeakPowerW != nil ||
		sum.MeanUtilPct != nil || sum.P95UtilPct != nil || sum.ServerPeakMemoryBytes != nil || sum.ThrottleReasonsSeen != nil {
		t.Errorf("summary reports unsupported metrics: %+v", sum)
	}
	if sum.ReadErrors != 0 {
		t.Errorf("read_errors = %d, want 0: not supported is not an error", sum.ReadErrors)
	}
	js, _ := json.Marshal(sum)
	for _, k := range []string{"energy_j", "avg_power_w", "mean_util_pct", "throttle_reasons_seen", "server_peak_memory_bytes"} {
		if strings.Contains(string(js), `"`+k+`"`) {
			t.Errorf("summary JSON has %q for an unsupported metric: %s", k, js)
		}
	}
	if !strings.Contains(string(js), `"peak_memory_bytes":1073741824`) || !strings.Contains(string(js), `"window":"sampling"`) {
		t.Errorf("summary JSON lacks the supported memory peak or the window: %s", js)
	}
	sum.Finish(100)
	if e, src := sum.Energy(); sum.JPerOutputToken != nil || e != nil || src != "" {
		t.Errorf("Finish without energy: j/token %v, energy %v (%q); want none", sum.JPerOutputToken, e, src)
	}
}

// A counter that goes backwards (driver reload, GPU reset) must not add a negative or
// 2^64-sized delta; that interval is estimated from power instead.
func TestEnergyCounterReset(t *testing.T) {
	g := newFake("GPU-r", "NVIDIA H100 80GB HBM3")
	r := newRig(t, nil, g)
	for k, e := range []uint64{1_000_000, 1_100_000, 5_000, 105_000} {
		g.set(func(f *fakeGPU) { f.energyMJ, f.powerMW = e, 100_000 })
		r.at(time.Duration(k) * time.Second)
	}
	sum := r.s.Stop()
	near(t, "energy_j", sum.EnergyJ, 300) // 100 + 100 (estimated: 100 W × 1 s) + 100
	near(t, "energy_integrated_j", sum.EnergyIntegratedJ, 300)
	if sum.EnergyCounterResets != 1 {
		t.Errorf("energy_counter_resets = %d, want 1", sum.EnergyCounterResets)
	}
	near(t, "bench_window_s", sum.BenchWindowS, 3)
}

// A GPU that falls off the bus is counted once, not read again, and the others go on.
func TestDeviceLostMidRun(t *testing.T) {
	g0, g1 := newFake("GPU-0", "NVIDIA H200"), newFake("GPU-1", "NVIDIA H200")
	lib := newMockLib(g0, g1)
	r := &rig{b: openMock(lib), clk: &fakeClock{}, csv: &strings.Builder{}}
	r.clk.Set(0)
	r.b.now = r.clk.Now
	devs, _ := r.b.Devices()
	r.s = r.b.NewSampler(SamplerConfig{Devices: devs, Interval: time.Second, CSV: r.csv})
	r.s.now = r.clk.Now
	h1, _ := lib.DeviceGetHandleByIndex(1)
	m1 := h1.(interface {
		GetMemoryInfoCalls() []struct{}
		GetMemoryInfo_v2Calls() []struct{}
	})

	for k := range 6 {
		if k == 2 {
			g1.set(func(f *fakeGPU) { f.lost = true })
		}
		g0.set(func(f *fakeGPU) { f.energyMJ, f.powerMW = uint64(k)*50_000, 50_000 })
		g1.set(func(f *fakeGPU) { f.energyMJ, f.powerMW = uint64(k)*70_000, 70_000 })
		r.at(time.Duration(k) * time.Second)
	}
	sum := r.s.Stop()
	if len(sum.LostGPUs) != 1 || sum.LostGPUs[0] != 1 || sum.ReadErrors != 1 {
		t.Errorf("lost_gpus = %v, read_errors = %d; want [1] and 1", sum.LostGPUs, sum.ReadErrors)
	}
	// Rounds 0,1 read it (v2; Devices read its total once more through v1); round 2 finds it
	// lost; never again.
	if n := len(m1.GetMemoryInfoCalls()) + len(m1.GetMemoryInfo_v2Calls()); n != 4 {
		t.Errorf("lost GPU read %d times, want 4 (discovery, two rounds, the failing one)", n)
	}
	rows0, rows1 := strings.Count(r.csv.String(), ",GPU-0,"), strings.Count(r.csv.String(), ",GPU-1,")
	if rows0 != 6 || rows1 != 2 {
		t.Errorf("rows: GPU0 %d, GPU1 %d; want 6 and 2", rows0, rows1)
	}
	near(t, "per_gpu[0].energy_j", sum.PerGPU[0].EnergyJ, 250)
	near(t, "per_gpu[1].energy_j", sum.PerGPU[1].EnergyJ, 70)
	if !sum.PerGPU[1].Lost || sum.Samples != 6 {
		t.Errorf("per_gpu[1].lost = %v, samples = %d; want true and 6", sum.PerGPU[1].Lost, sum.Samples)
	}
}

// The real goroutine: rounds happen on their own, marks return at once, rows match rounds.
func TestSamplerRunsOnItsOwn(t *testing.T) {
	g0, g1 := newFake("GPU-a", "NVIDIA H100 80GB HBM3"), newFake("GPU-b", "NVIDIA H100 80GB HBM3")
	g0.powerMW, g1.powerMW = 300_000, 300_000
	b := openMock(newMockLib(g0, g1))
	devs, _ := b.Devices()
	var csv strings.Builder
	s := b.NewSampler(SamplerConfig{Devices: devs, Interval: 5 * time.Millisecond, CSV: &csv, PIDs: func() []int { return nil }})
	s.Start(t.Context())
	s.Start(t.Context()) // a second Start is harmless
	time.Sleep(30 * time.Millisecond)
	s.MarkBenchStart()
	for i := range 10 {
		g0.set(func(f *fakeGPU) { f.energyMJ += 1_500; f.util = uint32(i * 10) })
		g1.set(func(f *fakeGPU) { f.energyMJ += 1_500 })
		time.Sleep(5 * time.Millisecond)
	}
	s.MarkBenchEnd()
	time.Sleep(20 * time.Millisecond)
	sum := s.Stop()
	again := s.Stop()
	if !reflect.DeepEqual(sum, again) {
		t.Errorf("second Stop gave a different summary")
	}
	if sum.Samples < 5 || sum.Window != "bench" || sum.BenchWindowS == nil || *sum.BenchWindowS <= 0 {
		t.Fatalf("summary = %+v, want several samples over a bench window", sum)
	}
	rows := strings.Count(csv.String(), "\n") - 1
	if rows != 2*sum.Samples {
		t.Errorf("CSV has %d rows, want %d (2 GPUs × %d samples)", rows, 2*sum.Samples, sum.Samples)
	}
	if !strings.HasPrefix(csv.String(), CSVHeader+"\n") {
		t.Errorf("CSV does not start with the header")
	}
	if sum.EnergyJ == nil || *sum.EnergyJ <= 0 || *sum.EnergyJ > 30 {
		t.Errorf("energy_j = %v, want in (0, 30] (20 steps of 1.5 J, some outside the window)", sum.EnergyJ)
	}
	if sum.ServerPeakMemoryBytes == nil || *sum.ServerPeakMemoryBytes != 0 {
		t.Errorf("server_peak_memory_bytes = %v, want 0 (PID source given, no process)", sum.ServerPeakMemoryBytes)
	}
	if sum.TickJitterP99MS == nil {
		t.Errorf("tick_jitter_p99_ms absent")
	}
}

// The energy counter is costly to read, so between the window's edges it is read only every
// EnergyInterval; the marks force a read, so the window's delta stays exact, and the rows
// in between leave the cell empty. A counter reset between two reads is bridged by the
// power integrated over that stretch.
func TestEnergyReadAtEdgesOnly(t *testing.T) {
	g := newFake("GPU-e", "NVIDIA H100 80GB HBM3")
	r := newRig(t, nil, g)
	r.s.cfg.EnergyInterval = time.Hour
	step := func(k int, e uint64) {
		g.set(func(f *fakeGPU) { f.energyMJ, f.powerMW = e, 100_000 })
		r.clk.Set(time.Duration(k) * time.Second)
		r.s.round(k == 0)
	}
	step(0, 1_000_000) // first round: read
	step(1, 1_100_000) // skipped
	r.clk.Set(1500 * time.Millisecond)
	r.s.MarkBenchStart()
	step(2, 1_200_000) // read: the mark asked for it
	step(3, 1_300_000) // skipped
	step(4, 50_000)    // skipped: the counter reset here goes unseen until the next read
	r.clk.Set(4500 * time.Millisecond)
	r.s.MarkBenchEnd()
	step(5, 150_000) // read: reset detected, 2..5 bridged by 3 s × 100 W = 300 J
	step(6, 250_000) // skipped
	sum := r.s.Stop()

	rows := strings.Split(strings.TrimSpace(r.csv.String()), "\n")[1:]
	var withE []int
	for k, row := range rows {
		if strings.Split(row, ",")[7] != "" {
			withE = append(withE, k)
		}
	}
	if !reflect.DeepEqual(withE, []int{0, 2, 5}) {
		t.Errorf("rounds with an energy reading = %v, want [0 2 5]", withE)
	}
	if sum.EnergyCounterResets != 1 {
		t.Errorf("energy_counter_resets = %d, want 1", sum.EnergyCounterResets)
	}
	// Window [1.5, 4.5] s. Counter segments: 0→2 s (200 J) overlaps 0.5 of its 2 s → 50 J;
	// 2→5 s (reset, bridged: 300 J) overlaps 2.5 of its 3 s → 250 J. Power: 100 W × 3 s.
	near(t, "energy_j", sum.EnergyJ, 50+300*2.5/3)
	near(t, "energy_integrated_j", sum.EnergyIntegratedJ, 300)
}

// TestRepeatWindows: each repeat of a repeated bench gets the energy of its own window.
// One GPU at 100 W; its counter grows 100, 100, 300, 300, 100 J over seconds 0…5. Repeat 1
// [0.5 s, 2 s]: counter 0.5·100 + 100 = 150 J, power 150 J. Repeat 2 [2 s, 4 s]: counter
// 600 J, power 200 J. Repeat 3 is opened at 4.5 s and never closed: it runs to the last
// sample, [4.5 s, 5 s], counter 50 J.
func TestRepeatWindows(t *testing.T) {
	g := newFake("GPU-r", "NVIDIA H100 80GB HBM3")
	r := newRig(t, nil, g)
	counter := []uint64{0, 100_000, 200_000, 500_000, 800_000, 900_000}
	for k := range 6 {
		g.set(func(f *fakeGPU) { f.energyMJ, f.powerMW = 1_000_000+counter[k], 100_000 })
		switch k {
		case 1:
			r.clk.Set(500 * time.Millisecond)
			r.s.MarkBenchStart()
			r.s.MarkRepeatStart(1)
		case 2:
			r.clk.Set(2 * time.Second)
			r.s.MarkBenchEnd()
			r.s.MarkRepeatEnd(1)
			r.s.MarkRepeatStart(2)
		case 4:
			r.clk.Set(4 * time.Second)
			r.s.MarkRepeatEnd(2)
			r.s.MarkRepeatEnd(2) // only the first end counts
		case 5:
			r.clk.Set(4500 * time.Millisecond)
			r.s.MarkRepeatStart(3)
		}
		r.at(time.Duration(k) * time.Second)
	}
	sum := r.s.Stop()
	if len(sum.Repeats) != 3 {
		t.Fatalf("repeats = %+v, want 3 windows", sum.Repeats)
	}
	r1, r2, r3 := sum.Repeats[0], sum.Repeats[1], sum.Repeats[2]
	if r1.Repeat != 1 || r2.Repeat != 2 || r3.Repeat != 3 {
		t.Errorf("repeat numbers %d,%d,%d, want 1,2,3", r1.Repeat, r2.Repeat, r3.Repeat)
	}
	near(t, "repeat 1 energy_j", r1.EnergyJ, 150)
	near(t, "repeat 1 energy_integrated_j", r1.EnergyIntegratedJ, 150)
	near(t, "repeat 1 window_s", r1.WindowS, 1.5)
	near(t, "bench energy_j (repeat 1's window)", sum.EnergyJ, 150)
	near(t, "repeat 2 energy_j", r2.EnergyJ, 600)
	near(t, "repeat 2 energy_integrated_j", r2.EnergyIntegratedJ, 200)
	near(t, "repeat 2 window_s", r2.WindowS, 2)
	near(t, "repeat 3 energy_j", r3.EnergyJ, 50)
	// J/token by Summary.Finish's rule: the counter first.
	near(t, "repeat 2 J/token", r2.JPerOutputToken(600), 1)
	if r2.JPerOutputToken(0) != nil {
		t.Error("J/token with no output token is present, want absent")
	}
	if (RepeatEnergy{Repeat: 4}).JPerOutputToken(600) != nil {
		t.Error("J/token without a measured energy is present, want absent")
	}
}
