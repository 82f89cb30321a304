package profile

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// The timetables are seeded, so these statistics are fixed numbers, not noisy ones; the
// bounds are the sampling error of 20,000 gaps many times over.
func TestGammaPacerMeanAndShape(t *testing.T) {
	const n, rate = 20000, 50.0
	for _, tc := range []struct {
		shape  float64
		wantCV float64
	}{{0, 1}, {1, 1}, {0.25, 2}, {4, 0.5}, {1e6, 0.001}} {
		arr := GammaPacer{RequestsPerS: rate, Burstiness: tc.shape, Seed: 3}.Arrivals(n)
		if arr[0] != 0 || !slices.IsSorted(arr) {
			t.Fatalf("shape %g: timetable must start at 0 and never go back", tc.shape)
		}
		gaps := make([]float64, n-1)
		for i := range gaps {
			gaps[i] = (arr[i+1] - arr[i]).Seconds()
		}
		mean, std := MeanStd(gaps)
		if math.Abs(mean*rate-1) > 0.05 {
			t.Errorf("shape %g: mean gap %.5f s, want 1/%g", tc.shape, mean, rate)
		}
		if cv := std / mean; math.Abs(cv-tc.wantCV) > 0.1*tc.wantCV+0.002 {
			t.Errorf("shape %g: gaps' CV %.3f, want %.3f (1/√shape)", tc.shape, cv, tc.wantCV)
		}
	}
	// Shape 1 is Poisson: the same timetable as the default.
	if !slices.Equal(GammaPacer{RequestsPerS: 7, Seed: 9}.Arrivals(50), GammaPacer{RequestsPerS: 7, Burstiness: 1, Seed: 9}.Arrivals(50)) {
		t.Error("burstiness 1 and 0 draw different timetables")
	}
	if ClosedLoop.Arrivals(ClosedLoop{}, 10) != nil {
		t.Error("the closed loop has a timetable")
	}
}

func TestParseSLO(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SLO
		err  string
	}{
		{"ttft=500ms,tpot=50ms", SLO{TTFT: 500 * time.Millisecond, TPOT: 50 * time.Millisecond, Share: 0.9}, ""},
		{"tpot=20, share=0.95", SLO{TPOT: 20 * time.Millisecond, Share: 0.95}, ""},
		{"TTFT=1.5s", SLO{TTFT: 1500 * time.Millisecond, Share: 0.9}, ""},
		{"", SLO{}, "at least one bound"},
		{"share=0.9", SLO{}, "at least one bound"},
		{"ttft", SLO{}, "key=value"},
		{"ttft=fast", SLO{}, "neither a duration"},
		{"ttft=-5ms", SLO{}, "positive"},
		{"ttft=5ms,share=1.5", SLO{}, "(0, 1]"},
		{"e2el=5s", SLO{}, "unknown key"},
		{"ttft=1s,ttft=2s", SLO{}, "twice"},
	} {
		got, err := ParseSLO(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSLO(%q) error %v, want one saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSLO(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if back, err := ParseSLO(got.String()); err != nil || back != got {
			t.Errorf("%q does not read back: %+v %v", got.String(), back, err)
		}
	}
}

func TestGoodputOf(t *testing.T) {
	reqs := []RequestResult{
		{Success: true, TTFTMs: 100, TPOTMs: 10, OutputTokens: 10}, // good
		{Success: true, TTFTMs: 600, TPOTMs: 10, OutputTokens: 10}, // TTFT over
		{Success: true, TTFTMs: 100, TPOTMs: 60, OutputTokens: 10}, // TPOT over
		{Success: true, TTFTMs: 100, TPOTMs: 999, OutputTokens: 1}, // one token: no TPOT to judge
		{Success: false, TTFTMs: 1},                                // failed
	}
	g := GoodputOf(reqs, SLO{TTFT: 500 * time.Millisecond, TPOT: 50 * time.Millisecond, Share: 0.4}, 2*time.Second)
	if g.Good != 2 || g.Sent != 5 || g.Share != 0.4 || !g.Met || g.RequestsPerS == nil || *g.RequestsPerS != 1 {
		t.Errorf("goodput %+v: want 2 of 5 good (share 0.4, met at 0.4), 1 good req/s", g)
	}
	if *g.TTFTMs != 500 || *g.TPOTMs != 50 {
		t.Errorf("bounds %v/%v ms, want 500/50", *g.TTFTMs, *g.TPOTMs)
	}
	if g := GoodputOf(reqs, SLO{TTFT: time.Second, Share: 0.9}, 0); g.Good != 4 || g.Met || g.RequestsPerS != nil || g.TPOTMs != nil {
		t.Errorf("TTFT-only SLO: %+v, want 4 good, not met at 0.9, no rate without a duration", g)
	}
}

func TestFindMaxRate(t *testing.T) {
	for _, tc := range []struct {
		name          string
		start, thresh float64
		steps         int
	}{
		{"start below", 1, 37, 12},
		{"start above", 500, 37, 12},
		{"start at it", 37, 37, 12},
		{"few steps", 1, 37, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probes := 0
			got, steps, err := FindMaxRate(MaxRateSearch{Start: tc.start, Steps: tc.steps}, func(r float64) (bool, error) {
				probes++
				return r <= tc.thresh, nil
			})
			if err != nil || probes > tc.steps || len(steps) != probes {
				t.Fatalf("err %v, %d probes (bound %d), %d steps", err, probes, tc.steps, len(steps))
			}
			if got > tc.thresh {
				t.Fatalf("found %g, above the highest meeting rate %g", got, tc.thresh)
			}
			if tc.steps >= 12 && got < tc.thresh/1.05-1e-9 {
				t.Errorf("found %g after %d probes, want within 5%% below %g (steps %+v)", got, probes, tc.thresh, steps)
			}
			if got == 0 && tc.steps >= 4 {
				t.Errorf("found nothing in %d probes: %+v", probes, steps)
			}
		})
	}
	// A sweep that brackets the answer already (2 met, 100 missed) goes straight to the
	// bisection; its rates are not probed again, and the highest known met rate counts.
	var probed []float64
	got, _, _ := FindMaxRate(MaxRateSearch{Start: 1, Steps: 20, Known: []RateStep{{2, true}, {100, false}}}, func(r float64) (bool, error) {
		probed = append(probed, r)
		return r <= 37, nil
	})
	if len(probed) == 0 || math.Abs(probed[0]-math.Sqrt(200)) > 1e-9 || slices.Contains(probed, 2) || slices.Contains(probed, 100) || got > 37 || got < 37/1.05 {
		t.Errorf("known bracket [2, 100]: probed %v, found %g; want the first probe at √200 and an answer within 5%% below 37", probed, got)
	}
	if got, steps, _ := FindMaxRate(MaxRateSearch{Start: 1, Steps: 1, Known: []RateStep{{50, true}}}, func(float64) (bool, error) { return false, nil }); got != 50 || steps[0].Rate != 100 {
		t.Errorf("known met 50: found %g after %+v, want 50 kept and 100 probed", got, steps)
	}
	// No rate meets: 0 and every probe recorded; a probe's error ends the search.
	if got, steps, _ := FindMaxRate(MaxRateSearch{Start: 10, Steps: 3}, func(float64) (bool, error) { return false, nil }); got != 0 || len(steps) != 3 || steps[2].Rate != 2.5 {
		t.Errorf("nothing meets: %g %+v, want 0 after 10, 5, 2.5", got, steps)
	}
	if _, steps, err := FindMaxRate(MaxRateSearch{Start: 10}, func(r float64) (bool, error) {
		if r > 15 {
			return false, errTest
		}
		return true, nil
	}); err != errTest || len(steps) != 1 {
		t.Errorf("error: %v after %+v, want errTest after one step", err, steps)
	}
}

var errTest = errString("probe failed")

type errString string

func (e errString) Error() string { return string(e) }

// The open loop sends on its timetable whatever is in flight: at batch size 1 and 200
// req/s against 300 ms requests, the server sees far more than one at once.
func TestRunOpenLoopIsNotCappedByBatch(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", ttft: 300 * time.Millisecond, tpot: time.Millisecond})
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.NumSamples, o.BatchSize, o.RequestRate, o.OutputTokens = "vllm", true, 10, 1, 200, 2
	slo := SLO{TTFT: time.Hour, Share: 0.9}
	o.SLO = &slo
	res, err := Run(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	seen := f.maxInflight
	f.mu.Unlock()
	if seen < 2 {
		t.Errorf("server saw at most %d in flight: the open loop was held to the batch size", seen)
	}
	m := res.Metrics
	if m.RequestRate == nil || *m.RequestRate != 200 || m.Goodput == nil || m.Goodput.Good != 10 || !m.Goodput.Met {
		t.Errorf("rate %v goodput %+v: want 200 recorded, all 10 good under a one-hour TTFT bound", m.RequestRate, m.Goodput)
	}
	// A fresh server: the first one's handlers may still be returning.
	f2 := newFakeServer(t, &fakeServer{flavor: "plain", ttft: 50 * time.Millisecond, tpot: time.Millisecond})
	o.APIURL, o.MaxConcurrency = f2.url(), 1
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	f2.mu.Lock()
	defer f2.mu.Unlock()
	if f2.maxInflight != 1 {
		t.Errorf("max concurrency 1: server saw %d in flight", f2.maxInflight)
	}
}
