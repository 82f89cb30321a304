package cell

import (
	"testing"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
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
