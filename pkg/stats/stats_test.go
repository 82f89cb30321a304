package stats

import (
	"math"
	"testing"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestMean(t *testing.T) {
	// Textbook values: t(0.975, 4) = 2.776445; sample sd of the five = sqrt(0.037).
	xs := []float64{10.1, 9.8, 10.3, 10.0, 9.9}
	e := Mean(xs, 0.95)
	sd := math.Sqrt(0.037)
	h := 2.776445 * sd / math.Sqrt(5)
	if e.N != 5 || !near(e.Mean, 10.02, 1e-12) || e.Std == nil || !near(*e.Std, sd, 1e-12) {
		t.Fatalf("mean/sd: %+v", e)
	}
	if !near(*e.Lo, 10.02-h, 1e-5) || !near(*e.Hi, 10.02+h, 1e-5) {
		t.Errorf("interval [%v, %v], want 10.02 ± %v", *e.Lo, *e.Hi, h)
	}
	if !near(*e.CV, sd/10.02, 1e-12) {
		t.Errorf("cv %v", *e.CV)
	}
	one := Mean([]float64{3}, 0.95)
	if one.Mean != 3 || one.Lo != nil || one.Hi != nil || one.Std != nil || one.CV != nil {
		t.Errorf("one value must have no interval: %+v", one)
	}
	zero := Mean([]float64{-1, 1}, 0.95)
	if zero.CV != nil {
		t.Errorf("zero mean must have no CV: %+v", zero)
	}
}

func TestWelchDiff(t *testing.T) {
	a := []float64{10.1, 9.8, 10.3, 10.0, 9.9}
	b := []float64{11.0, 11.4, 10.8, 11.2}
	diff, lo, hi, ok := WelchDiff(a, b, 0.95)
	if !ok || !near(diff, 1.08, 1e-12) {
		t.Fatalf("diff %v ok %v", diff, ok)
	}
	// Welch–Satterthwaite df = 5.45 here: the critical value lies between t(0.975, 6) =
	// 2.447 and t(0.975, 5) = 2.571.
	se := math.Sqrt(0.037/5 + 0.2/3/4)
	if c := (hi - diff) / se; c < 2.447 || c > 2.571 || !near(diff-lo, hi-diff, 1e-12) {
		t.Errorf("critical value %v, interval [%v, %v]", c, lo, hi)
	}
	if _, _, _, ok := WelchDiff(a, []float64{1}, 0.95); ok {
		t.Error("one value on a side must give no interval")
	}
	if d, lo, hi, ok := WelchDiff([]float64{2, 2}, []float64{3, 3, 3}, 0.95); !ok || d != 1 || lo != 1 || hi != 1 {
		t.Errorf("no spread: %v [%v, %v] %v", d, lo, hi, ok)
	}
}

func TestBootstrapRelChange(t *testing.T) {
	var a, same, up []float64
	for i := range 400 {
		x := 10 + float64(i%7)*0.3
		a = append(a, x)
		same = append(same, 10+float64((i+3)%7)*0.3)
		up = append(up, 1.1*x)
	}
	for _, tc := range []struct {
		name         string
		b            []float64
		wantIn, wout float64 // wantIn inside the interval, wout outside
	}{
		{"same distribution", same, 0, 10},
		{"10% higher", up, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi, ok := BootstrapRelChange(a, tc.b, 0.95, 2000, 1)
			if !ok || lo > tc.wantIn || hi < tc.wantIn || (lo <= tc.wout && tc.wout <= hi) {
				t.Errorf("interval [%v, %v] ok %v: want %v inside, %v outside", lo, hi, ok, tc.wantIn, tc.wout)
			}
			lo2, hi2, _ := BootstrapRelChange(a, tc.b, 0.95, 2000, 1)
			if lo2 != lo || hi2 != hi {
				t.Error("same seed, different interval")
			}
		})
	}
	if _, _, ok := BootstrapRelChange(nil, a, 0.95, 100, 1); ok {
		t.Error("empty side must give no interval")
	}
}
