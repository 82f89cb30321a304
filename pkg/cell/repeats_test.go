package cell

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/moecapd/moecapd/pkg/profile"
)

func TestSummarizeRepeats(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	rep := func(i int, tpot, tput float64, jpt *float64) Repeat {
		return Repeat{Index: i, JPerOutputToken: jpt, Metrics: &profile.Metrics{MeanTPOTMs: f(tpot), MeanTTFTMs: f(5), DurationS: 1, OutputThroughput: tput}}
	}
	if SummarizeRepeats([]Repeat{rep(1, 10, 100, nil)}, 0.95, 0) != nil {
		t.Error("one repeat summarised")
	}
	rs := SummarizeRepeats([]Repeat{rep(1, 10, 100, f(2)), rep(2, 12, 101, nil), rep(3, 11, 99, nil)}, 0.95, 0)
	if rs == nil || rs.UnstableCV != DefaultUnstableCV {
		t.Fatalf("%+v", rs)
	}
	if e := rs.Metrics["tpot_ms"]; e.N != 3 || e.Mean != 11 || e.CV == nil || *e.CV < 0.09 || *e.CV > 0.091 {
		t.Errorf("tpot %+v", e)
	}
	if _, ok := rs.Metrics["j_per_output_token"]; ok {
		t.Error("one J/token value summarised")
	}
	if _, ok := rs.Metrics["e2el_ms"]; ok {
		t.Error("an absent metric summarised")
	}
	// TPOT spreads 9%, throughput 1%, TTFT not at all.
	if !slices.Equal(rs.Unstable, []string{"tpot_ms"}) {
		t.Errorf("unstable %v", rs.Unstable)
	}
	d := Dir{ID: "x", Path: "/r/x"}
	if d.Repeat(1) != d || d.Repeat(2).Client() != filepath.Join("/r/x", RepeatsDir, "2", ClientDir) {
		t.Errorf("repeat dirs %v %v", d.Repeat(1), d.Repeat(2))
	}
}
