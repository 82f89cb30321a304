package profile

import (
	"math"
	"testing"
)

func TestPercentileMatchesNumpyLinear(t *testing.T) {
	// Expected values computed with numpy.percentile(xs, p) (method="linear").
	xs := []float64{15, 20, 35, 40, 50}
	tests := []struct {
		p    float64
		want float64
	}{
		{0, 15}, {100, 50}, {50, 35}, {25, 20}, {40, 29}, {90, 46}, {99, 49.6}, {10, 17},
	}
	for _, tt := range tests {
		if got := Percentile(xs, tt.p); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Percentile(%v, %v) = %v, want %v", xs, tt.p, got, tt.want)
		}
	}
}

func TestPercentileEdgeCases(t *testing.T) {
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("Percentile(nil) = %v, want NaN", got)
	}
	if got := Percentile([]float64{7}, 99); got != 7 {
		t.Errorf("Percentile([7], 99) = %v, want 7", got)
	}
	// Unsorted input, and the input is left as it was.
	xs := []float64{3, 1, 2, 4}
	if got := Percentile(xs, 50); got != 2.5 {
		t.Errorf("median of 1..4 = %v, want 2.5", got)
	}
	if xs[0] != 3 || xs[1] != 1 {
		t.Errorf("Percentile modified its input: %v", xs)
	}
	// Out-of-range p is clamped rather than indexing past the end.
	if got := Percentile(xs, 150); got != 4 {
		t.Errorf("Percentile(p=150) = %v, want 4", got)
	}
}

func TestSummarize(t *testing.T) {
	// numpy: mean 5.5, std 2.8722813232690143, median 5.5, p90 9.1, p99 9.91.
	xs := []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	s := Summarize(xs)
	want := Summary{Mean: 5.5, Median: 5.5, P90: 9.1, P99: 9.91, Std: 2.8722813232690143, Min: 1, Max: 10, N: 10}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"mean", s.Mean, want.Mean}, {"median", s.Median, want.Median}, {"p90", s.P90, want.P90},
		{"p99", s.P99, want.P99}, {"std", s.Std, want.Std}, {"min", s.Min, want.Min}, {"max", s.Max, want.Max},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if s.N != 10 {
		t.Errorf("N = %d, want 10", s.N)
	}
	if z := Summarize(nil); z != (Summary{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", z)
	}
}

func TestMeanStdKeepsPrecisionOnTinySpread(t *testing.T) {
	xs := []float64{1e9 + 1, 1e9 + 2, 1e9 + 3}
	_, std := MeanStd(xs)
	want := math.Sqrt(2.0 / 3.0)
	if math.Abs(std-want) > 1e-6 {
		t.Errorf("std = %v, want %v", std, want)
	}
}
