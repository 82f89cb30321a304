package cell

import (
	"testing"

	"github.com/moecapd/moecapd/pkg/profile"
)

// TestManifestTimeScale: the scale comes from a sim server's argv (both flag spellings);
// real time, other backends and a bad value give 0. PhysicalMetrics un-scales an older
// manifest's wall numbers once, and leaves recorded physical ones as they are.
func TestManifestTimeScale(t *testing.T) {
	for _, tc := range []struct {
		backend string
		argv    []string
		want    float64
	}{
		{"sim", []string{"moecapd", "sim-server", "--sim-time-scale", "0.01"}, 0.01},
		{"sim", []string{"moecapd", "sim-server", "--sim-time-scale=0.5"}, 0.5},
		{"sim", []string{"moecapd", "sim-server", "--sim-time-scale", "1"}, 0},
		{"sim", []string{"moecapd", "sim-server", "--sim-time-scale", "x"}, 0},
		{"sim", []string{"moecapd", "sim-server"}, 0},
		{"sglang", []string{"python", "--sim-time-scale", "0.01"}, 0},
	} {
		m := &Manifest{Cell: Identity{Backend: tc.backend}, Server: Server{Argv: tc.argv}}
		if got := m.TimeScale(); got != tc.want {
			t.Errorf("%s %v: TimeScale %v, want %v", tc.backend, tc.argv, got, tc.want)
		}
	}
	old := &Manifest{Cell: Identity{Backend: "sim"}, Server: Server{Argv: []string{"--sim-time-scale", "0.01"}},
		Metrics: &profile.Metrics{DurationS: 1, OutputThroughput: 10000}}
	p := old.PhysicalMetrics()
	if p.DurationS != 100 || p.OutputThroughput != 100 || p.TimeScale != 0.01 {
		t.Errorf("older manifest un-scaled to %+v", p)
	}
	recorded := &Manifest{Cell: old.Cell, Server: old.Server, Metrics: p}
	if q := recorded.PhysicalMetrics(); q != p {
		t.Errorf("recorded physical metrics un-scaled again: %+v", q)
	}
	if (*Manifest)(nil).PhysicalMetrics() != nil {
		t.Error("nil manifest")
	}
}

// A hand-edited or corrupt argv's time scale that is no scale (Inf, NaN, negative, 0) reads
// as real time, never as a divisor that turns every latency into 0 or NaN.
func TestTimeScaleHostileArgv(t *testing.T) {
	for _, v := range []string{"Inf", "+Inf", "NaN", "-0.5", "0", "1e999", "x"} {
		m := &Manifest{Cell: Identity{Backend: "sim"}, Server: Server{Argv: []string{"moecapd", "sim-server", "--sim-time-scale", v}}}
		if s := m.TimeScale(); s != 0 {
			t.Errorf("--sim-time-scale %s: time scale %v, want 0 (real time)", v, s)
		}
	}
	m := &Manifest{Cell: Identity{Backend: "sim"}, Server: Server{Argv: []string{"--sim-time-scale=0.01"}}}
	if s := m.TimeScale(); s != 0.01 {
		t.Errorf("--sim-time-scale=0.01: %v", s)
	}
}
