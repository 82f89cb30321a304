package cell

import (
	"slices"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

func TestTruthOf(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	base := func() (*Manifest, capmath.Derived) {
		m := &Manifest{Status: StatusOK, Metrics: &profile.Metrics{LatencyKind: "client", Completed: 4, TotalOutputTokens: 64,
			MeanTPOTMs: f(2), ClientCPUFraction: f(0.1)}}
		d := capmath.Derived{Decode: &capmath.Util{SMBU: f(0.9), SMFU: f(0.1)}, TPOTOverFloor: f(1.1)}
		d.Inputs.DecodePasses, d.Inputs.DecodeBatch, d.Inputs.FloorSource, d.Inputs.DecodeLatencyS = 15, f(4), "records", f(0.0019)
		return m, d
	}
	for _, tc := range []struct {
		name   string
		edit   func(m *Manifest, d *capmath.Derived)
		want   string
		failed string // the check that fails
	}{
		{"clean", func(*Manifest, *capmath.Derived) {}, TruthClean, ""},
		{"over physics", func(_ *Manifest, d *capmath.Derived) { d.Decode.SMBU = f(1.5) }, TruthFlagged, "decode.s_mbu"},
		{"below floor", func(_ *Manifest, d *capmath.Derived) { d.TPOTOverFloor = f(0.6) }, TruthFlagged, "tpot_over_floor"},
		{"tokens disagree", func(m *Manifest, _ *capmath.Derived) { m.Metrics.TotalOutputTokens = 100 }, TruthFlagged, "output_tokens_records_vs_client"},
		{"client faster than passes", func(m *Manifest, _ *capmath.Derived) { m.Metrics.MeanTPOTMs = f(1) }, TruthFlagged, "client_tpot_vs_decode_pass"},
		{"short load flag", func(_ *Manifest, d *capmath.Derived) { d.Flags = []string{"batch: short"} }, TruthFlagged, ""},
		{"client cpu", func(m *Manifest, _ *capmath.Derived) { m.Metrics.ClientCPUFraction = f(0.95) }, TruthContaminated, "client_cpu_fraction"},
		{"thermal", func(m *Manifest, _ *capmath.Derived) {
			m.Telemetry = &gpu.Summary{Available: true, ThrottleReasonsSeen: []string{"sw_power_cap", "hw_thermal_slowdown"}}
		}, TruthContaminated, "gpu_slowdown_events"},
		{"energy disagrees", func(m *Manifest, _ *capmath.Derived) {
			m.Telemetry = &gpu.Summary{Available: true, EnergyDisagreementPct: f(12)}
		}, TruthFlagged, "energy_counter_vs_integrated_power_pct"},
		{"gpu checked clean", func(m *Manifest, _ *capmath.Derived) {
			m.Telemetry = &gpu.Summary{Available: true, ForeignProcesses: []gpu.ForeignProcess{}, XIDErrors: []gpu.XIDEvent{}}
		}, TruthClean, ""},
		{"foreign process", func(m *Manifest, _ *capmath.Derived) {
			m.Telemetry = &gpu.Summary{Available: true, ForeignProcesses: []gpu.ForeignProcess{{PID: 4242, GPUIndex: 1, Rounds: 3, Cmdline: "python train.py"}}, XIDErrors: []gpu.XIDEvent{}}
		}, TruthContaminated, "foreign_gpu_processes"},
		{"xid", func(m *Manifest, _ *capmath.Derived) {
			m.Telemetry = &gpu.Summary{Available: true, ForeignProcesses: []gpu.ForeignProcess{}, XIDErrors: []gpu.XIDEvent{{GPUIndex: 0, XID: 79}}}
		}, TruthContaminated, "xid_errors"},
		{"server counts the client's tokens", func(m *Manifest, _ *capmath.Derived) {
			m.ServerMetrics = &servermetrics.Summary{Window: servermetrics.WindowMeasured, GenerationTokens: f(64), Preemptions: f(0)}
		}, TruthClean, ""},
		{"server counts more tokens", func(m *Manifest, _ *capmath.Derived) {
			m.ServerMetrics = &servermetrics.Summary{Window: servermetrics.WindowMeasured, GenerationTokens: f(128)}
		}, TruthFlagged, "output_tokens_server_metrics_vs_client"},
		{"server preempted", func(m *Manifest, _ *capmath.Derived) {
			m.ServerMetrics = &servermetrics.Summary{Window: servermetrics.WindowMeasured, GenerationTokens: f(64), Preemptions: f(3), Preempted: true}
		}, TruthFlagged, "server_preemptions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, d := base()
			tc.edit(m, &d)
			tr := TruthOf(m, d)
			if tr.Verdict != tc.want {
				t.Fatalf("verdict %s, want %s: %+v", tr.Verdict, tc.want, tr.Checks)
			}
			for _, c := range tr.Checks {
				if (c.Name == tc.failed) == c.Pass {
					t.Errorf("check %s pass %v (value %v, bound %s)", c.Name, c.Pass, c.Value, c.Bound)
				}
			}
			m.SetTruth(tr)
			if back, ok := m.Truth(); !ok || back.Verdict != tc.want || len(back.Checks) != len(tr.Checks) {
				t.Errorf("stored verdict %+v", back)
			}
		})
	}
	if TruthOf(&Manifest{Status: StatusFailed}, capmath.Derived{}) != nil {
		t.Error("a failed cell got a verdict")
	}
}

// TestTruthAbsentIsNotClean: a check the cell's data cannot support (no NVML, a process list
// that never showed the server, no /metrics, a window that is not the measured requests')
// is no check at all but a not-checked line with the reason.
func TestTruthAbsentIsNotClean(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name string
		edit func(m *Manifest)
		want []string // substrings of not_checked
		none []string // checks that must be absent
	}{
		{"no NVML", func(m *Manifest) {
			m.Telemetry = &gpu.Summary{Available: false, Reason: "simulated backend: no GPU to measure"}
		},
			[]string{"other processes on the cell's GPUs during the window: no GPU telemetry (simulated backend", "XID errors during the window: no GPU telemetry (simulated backend"},
			[]string{"foreign_gpu_processes", "xid_errors"}},
		{"other pid namespace", func(m *Manifest) {
			m.Telemetry = &gpu.Summary{Available: true, ProcessCheck: "NVML's process lists never showed the server's processes", XIDCheck: "GPU 0 does not report XID events"}
		}, []string{"never showed the server's processes", "does not report XID events"}, []string{"foreign_gpu_processes", "xid_errors"}},
		{"no /metrics", func(m *Manifest) {}, []string{"output tokens against the server's /metrics: the server exported no /metrics", "preemptions: the server exported no /metrics"},
			[]string{"output_tokens_server_metrics_vs_client", "server_preemptions"}},
		{"bench-phase window", func(m *Manifest) {
			m.ServerMetrics = &servermetrics.Summary{Window: servermetrics.WindowBench, GenerationTokens: f(64)}
		},
			[]string{"not the measured requests'", "preemptions: the server's /metrics has no preemption counter"}, []string{"output_tokens_server_metrics_vs_client"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manifest{Status: StatusOK, Metrics: &profile.Metrics{LatencyKind: "client", Completed: 4, TotalOutputTokens: 64}}
			tc.edit(m)
			tr := TruthOf(m, capmath.Derived{})
			nc := strings.Join(tr.NotChecked, "\n")
			for _, w := range tc.want {
				if !strings.Contains(nc, w) {
					t.Errorf("not_checked lacks %q:\n%s", w, nc)
				}
			}
			for _, c := range tr.Checks {
				if slices.Contains(tc.none, c.Name) {
					t.Errorf("check %s present (%+v) where its data is missing", c.Name, c)
				}
			}
		})
	}
	if TruthOf(&Manifest{Status: StatusFailed}, capmath.Derived{}) != nil {
		t.Error("a failed cell got a verdict")
	}
}
