package cell

import (
	"context"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
)

// repeatTelemetry is a sampler whose repeat windows measured the energies given per repeat
// (nil: that repeat's energy was not measured); it records the marks it got.
type repeatTelemetry struct {
	mu     sync.Mutex
	energy map[int]*float64
	marks  []string
}

func (f *repeatTelemetry) mark(s string) {
	f.mu.Lock()
	f.marks = append(f.marks, s)
	f.mu.Unlock()
}
func (f *repeatTelemetry) MarkBenchStart()       { f.mark("bench+") }
func (f *repeatTelemetry) MarkBenchEnd()         { f.mark("bench-") }
func (f *repeatTelemetry) MarkRepeatStart(k int) { f.mark("start" + string(rune('0'+k))) }
func (f *repeatTelemetry) MarkRepeatEnd(k int)   { f.mark("end" + string(rune('0'+k))) }
func (f *repeatTelemetry) Stop() gpu.Summary {
	s := gpu.Summary{Available: true, GPUs: 1, EnergyJ: f.energy[1]}
	for k := 1; k <= 3; k++ {
		s.Repeats = append(s.Repeats, gpu.RepeatEnergy{Repeat: k, EnergyJ: f.energy[k]})
	}
	return s
}

type repeatGPUs struct {
	pipeGPUs
	tel *repeatTelemetry
}

func (g *repeatGPUs) Sample([]gpu.Device, time.Duration, func() []int, io.Writer) Telemetry {
	return g.tel
}

// runRepeated runs a 3-repeat cell through fakes: the client marks each repeat's measured
// window as the native client's hooks do and returns 1000 output tokens a repeat.
func runRepeated(t *testing.T, tel *repeatTelemetry) *Manifest {
	t.Helper()
	root := t.TempDir()
	id := ID("qwen1_5", "1xH100", "32-8", 4, "sim")
	client := func(r *runner) BenchClient {
		return fakeClient(func(_ context.Context, k int) (*profile.Metrics, error) {
			start, end := r.repeatHooks(k)
			start()
			m := okMetrics()
			m.TotalOutputTokens = 1000
			end()
			return m, nil
		})
	}
	c := &Config{Backend: launcher.BackendSim, Client: ClientMoECAP, Bench: &config.Bench{Raw: []byte("model_id: m\n")}, BatchSize: 4, NumSamples: 4, Grace: time.Second, Repeats: 3}
	c.seams = seams{servers: &fakeServers{srv: newFakeServer(), portClosed: true}, gpus: &repeatGPUs{tel: tel}, client: client,
		scrape: func(string, time.Duration, io.Writer) MetricsScraper { return noScrape{} }, reapWait: time.Nanosecond}
	p := &Plan{ID: id, Dir: filepath.Join(root, id), Identity: Identity{ID: id, GPUCount: 1},
		Devices: []gpu.Device{{Index: 0, UUID: "GPU-0"}},
		Spec:    launcher.ServerSpec{Host: "127.0.0.1", Port: 1}, BaseURL: "http://127.0.0.1:1"}
	m, err := Run(t.Context(), c, p)
	if err != nil || m == nil || m.Status != StatusOK {
		t.Fatalf("Run: %v (manifest %+v)", err, m)
	}
	return m
}

// TestRepeatEnergyPerRepeat: each repeat's J/token is its own window's energy over its own
// output tokens, so repeat_stats carries J/token's mean, interval and CV.
func TestRepeatEnergyPerRepeat(t *testing.T) {
	e := func(v float64) *float64 { return &v }
	tel := &repeatTelemetry{energy: map[int]*float64{1: e(500), 2: e(600), 3: e(700)}}
	m := runRepeated(t, tel)
	for _, want := range []string{"bench+", "start1", "bench-", "end1", "start2", "end2", "start3", "end3"} {
		if !slices.Contains(tel.marks, want) {
			t.Errorf("marks %v lack %s", tel.marks, want)
		}
	}
	if len(m.Repeats) != 3 {
		t.Fatalf("%d repeats in the manifest, want 3", len(m.Repeats))
	}
	for i, want := range []float64{0.5, 0.6, 0.7} {
		got := m.Repeats[i].JPerOutputToken
		if got == nil || *got < want-1e-9 || *got > want+1e-9 {
			t.Errorf("repeat %d J/token = %v, want %g", i+1, got, want)
		}
	}
	est, ok := m.RepeatStats.Metrics["j_per_output_token"]
	if m.RepeatStats == nil || !ok {
		t.Fatalf("repeat_stats lacks j_per_output_token: %+v", m.RepeatStats)
	}
	// Mean 0.6, sd 0.1, CV 1/6; 95% t interval with 2 degrees of freedom: ±4.303·0.1/√3.
	if est.Mean < 0.6-1e-9 || est.Mean > 0.6+1e-9 {
		t.Errorf("J/token mean = %g, want 0.6", est.Mean)
	}
	if est.CV == nil || *est.CV < 1.0/6-1e-6 || *est.CV > 1.0/6+1e-6 {
		t.Errorf("J/token CV = %v, want 1/6", est.CV)
	}
	if est.Lo == nil || est.Hi == nil || *est.Hi-*est.Lo < 2*0.2484 || *est.Hi-*est.Lo > 2*0.2485 {
		t.Errorf("J/token interval [%v, %v], want 0.6 ± 0.2484", est.Lo, est.Hi)
	}
	if !slices.Contains(m.RepeatStats.Unstable, "j_per_output_token") {
		t.Errorf("CV 1/6 over the 5%% threshold not flagged: unstable %v", m.RepeatStats.Unstable)
	}
}

// TestRepeatEnergyAbsent: without a measured energy, no repeat has J/token and
// repeat_stats leaves it out (absent, not 0).
func TestRepeatEnergyAbsent(t *testing.T) {
	m := runRepeated(t, &repeatTelemetry{energy: map[int]*float64{}})
	for _, r := range m.Repeats {
		if r.JPerOutputToken != nil {
			t.Errorf("repeat %d J/token = %g without energy, want absent", r.Index, *r.JPerOutputToken)
		}
	}
	if m.RepeatStats == nil {
		t.Fatal("no repeat_stats for 3 repeats")
	}
	if _, ok := m.RepeatStats.Metrics["j_per_output_token"]; ok {
		t.Error("repeat_stats has j_per_output_token without energy")
	}
}
