package profile

import (
	"math"
	"testing"
)

func TestUnscaled(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	wall := &Metrics{Source: "native", DurationS: 2, RequestThroughput: 50, OutputThroughput: 8000, TotalTokenThroughput: 10000,
		MeanTPOTMs: f(0.01), P99TPOTMs: f(0.02), MedianITLMs: f(0.005), MeanTTFTMs: f(0.5), StdE2ELMs: f(1),
		ServerPass: &ServerPass{TPOTMoECAPMs: f(1.0)}}
	for _, tc := range []struct {
		name  string
		scale float64
		same  bool // the input comes back as it is
	}{{"real time", 1, true}, {"no scale", 0, true}, {"negative", -1, true}, {"x0.01", 0.01, false}, {"x0.5", 0.5, false}} {
		t.Run(tc.name, func(t *testing.T) {
			u := wall.Unscaled(tc.scale)
			if tc.same {
				if u != wall {
					t.Fatalf("scale %v changed the metrics", tc.scale)
				}
				return
			}
			close := func(what string, got, want float64) {
				if math.Abs(got-want) > 1e-9*math.Abs(want) {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			s := tc.scale
			close("duration_s", u.DurationS, 2/s)
			close("request_throughput", u.RequestThroughput, 50*s)
			close("output_throughput", u.OutputThroughput, 8000*s)
			close("total_token_throughput", u.TotalTokenThroughput, 10000*s)
			close("mean_tpot_ms", *u.MeanTPOTMs, 0.01/s)
			close("p99_tpot_ms", *u.P99TPOTMs, 0.02/s)
			close("median_itl_ms", *u.MedianITLMs, 0.005/s)
			close("mean_ttft_ms", *u.MeanTTFTMs, 0.5/s)
			close("std_e2el_ms", *u.StdE2ELMs, 1/s)
			if u.MedianTPOTMs != nil || u.MeanITLMs != nil {
				t.Errorf("an absent latency became present")
			}
			if *u.ServerPass.TPOTMoECAPMs != 1.0 || u.TimeScale != s {
				t.Errorf("server pass %v (want 1, model time), time_scale %v", *u.ServerPass.TPOTMoECAPMs, u.TimeScale)
			}
			// The wall numbers are not touched, and un-scaling twice changes nothing.
			if wall.DurationS != 2 || *wall.MeanTPOTMs != 0.01 || wall.TimeScale != 0 {
				t.Errorf("Unscaled modified its input: %+v", wall)
			}
			if again := u.Unscaled(s); again != u {
				t.Errorf("un-scaled twice")
			}
		})
	}
	if (*Metrics)(nil).Unscaled(0.01) != nil {
		t.Error("nil metrics")
	}
	if ScaleLabel(0.01) != "sim, time ×0.01" || ScaleLabel(1) != "" || ScaleLabel(0) != "" {
		t.Errorf("ScaleLabel: %q %q", ScaleLabel(0.01), ScaleLabel(1))
	}
}
