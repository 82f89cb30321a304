package capmath

import (
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/passcost"
)

func TestAchievedLoad(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	fits := func(k int) Prediction { return Prediction{Fit: passcost.Fit{Verdict: passcost.Fits, Concurrent: k}} }
	under := func(k int) Prediction {
		return Prediction{Fit: passcost.Fit{Verdict: passcost.UnderBatched, Concurrent: k}}
	}
	for _, tc := range []struct {
		name          string
		c             Cell
		pr            Prediction
		achieved, max *float64
		short         bool
		causes        []string // each must start one of the causes, in order
	}{
		{"at load", Cell{BatchSize: 32, NumSamples: 100, ClientInFlightMean: f(31)}, fits(32), f(30), f(32), false, nil},
		{"no records: no verdict", Cell{BatchSize: 32, NumSamples: 100}, fits(32), nil, nil, false, nil},
		{"too few requests", Cell{BatchSize: 32, NumSamples: 8, ClientInFlightMean: f(7.5)}, fits(32), f(7.9), f(8), true,
			[]string{CauseTooFewRequests, CauseNotInFlight}},
		{"client cpu and not in flight", Cell{BatchSize: 128, NumSamples: 512, ClientInFlightMean: f(20), ClientCPUFraction: f(0.97)}, fits(128), f(12), f(40), true,
			[]string{CauseClientCPU, CauseNotInFlight}},
		{"kv-bound below K", Cell{BatchSize: 128, NumSamples: 512, ClientInFlightMean: f(128)}, under(40), f(20), f(30), true,
			[]string{CauseKVBound}},
		{"under-batched at K is not short", Cell{BatchSize: 128, NumSamples: 512, ClientInFlightMean: f(128)}, under(40), f(39), f(40), false, nil},
		{"server side", Cell{BatchSize: 64, NumSamples: 512, ClientInFlightMean: f(63)}, fits(64), f(20), f(64), true,
			[]string{CauseServerSide}},
		{"unknown", Cell{BatchSize: 64, NumSamples: 512}, fits(64), f(20), f(64), true, []string{CauseUnknown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := achievedLoad(tc.c, tc.pr, tc.achieved, tc.max)
			if l.Short != tc.short || len(l.Causes) != len(tc.causes) {
				t.Fatalf("short %v causes %q; want %v %q", l.Short, l.Causes, tc.short, tc.causes)
			}
			for i, c := range tc.causes {
				if !strings.HasPrefix(l.Causes[i], c) {
					t.Errorf("cause %d = %q, want %q…", i, l.Causes[i], c)
				}
			}
			if fl := l.Flag(); tc.short != (fl != "") || (tc.short && !strings.HasPrefix(fl, "batch: ")) {
				t.Errorf("flag %q", fl)
			}
			if tc.achieved != nil && (l.Ratio == nil || *l.Ratio != *tc.achieved/float64(l.Reachable)) {
				t.Errorf("ratio %v", l.Ratio)
			}
		})
	}
}
