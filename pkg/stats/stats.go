// Package stats is moecapd's interval arithmetic: the mean of repeated measurements with its
// Student-t confidence interval and coefficient of variation, the Welch interval of the
// difference of two means, and a percentile bootstrap of the relative change of two means.
// Every interval is absent (ok false, nil pointers) when the data cannot carry one; an
// absent interval is never drawn as a zero-width one.
package stats

import (
	"github.com/moecapd/moecapd/pkg/records"
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/stat/distuv"
)

// Estimate is the mean of N measurements. Std is the sample standard deviation (n−1); CV is
// Std/|Mean|; Lo and Hi bound the mean at the asked level (Student t, N−1 degrees of
// freedom). With one measurement Std, CV, Lo and Hi are nil; with a zero mean CV is nil.
type Estimate struct {
	N     int      `json:"n"`
	Mean  float64  `json:"mean"`
	Std   *float64 `json:"std,omitempty"`
	CV    *float64 `json:"cv,omitempty"`
	Lo    *float64 `json:"ci_lo,omitempty"`
	Hi    *float64 `json:"ci_hi,omitempty"`
	Level float64  `json:"level"`
}

// Mean estimates the mean of xs at level (e.g. 0.95). It panics on no data: the caller
// decides what an absent metric is.
func Mean(xs []float64, level float64) Estimate {
	if len(xs) == 0 {
		panic("stats.Mean of no data")
	}
	m, v := meanVar(xs)
	e := Estimate{N: len(xs), Mean: m, Level: level}
	if len(xs) < 2 {
		return e
	}
	sd := math.Sqrt(v)
	e.Std = &sd
	if m != 0 {
		cv := sd / math.Abs(m)
		e.CV = &cv
	}
	h := tQuantile(level, float64(len(xs)-1)) * sd / math.Sqrt(float64(len(xs)))
	lo, hi := m-h, m+h
	e.Lo, e.Hi = &lo, &hi
	return e
}

// meanVar is the mean and the sample variance (n−1; 0 for one value), two passes.
func meanVar(xs []float64) (mean, variance float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	if len(xs) < 2 {
		return mean, 0
	}
	for _, x := range xs {
		d := x - mean
		variance += d * d
	}
	return mean, variance / float64(len(xs)-1)
}

// tQuantile is the two-sided critical value of Student's t at level with df degrees of
// freedom.
func tQuantile(level, df float64) float64 {
	return distuv.StudentsT{Mu: 0, Sigma: 1, Nu: df}.Quantile(1 - (1-level)/2)
}

// WelchDiff is the interval of mean(b) − mean(a) at level by Welch's t (unequal variances,
// Welch–Satterthwaite degrees of freedom). ok is false when either side has fewer than two
// values. Two sides without spread give the zero-width interval at the difference.
func WelchDiff(a, b []float64, level float64) (diff, lo, hi float64, ok bool) {
	if len(a) < 2 || len(b) < 2 {
		return 0, 0, 0, false
	}
	ma, va := meanVar(a)
	mb, vb := meanVar(b)
	diff = mb - ma
	na, nb := float64(len(a)), float64(len(b))
	sa, sb := va/na, vb/nb
	se2 := sa + sb
	if se2 == 0 {
		return diff, diff, diff, true
	}
	df := se2 * se2 / (sa*sa/(na-1) + sb*sb/(nb-1))
	h := tQuantile(level, df) * math.Sqrt(se2)
	return diff, diff - h, diff + h, true
}

// BootstrapRelChange is the percentile-bootstrap interval, at level, of the relative change
// of the mean, 100·(mean(b)/mean(a) − 1) %, resampling each side with replacement reps
// times. The seed makes it reproducible: the same files give the same interval. ok is false
// when a side is empty or a resampled base mean is 0.
func BootstrapRelChange(a, b []float64, level float64, reps int, seed uint64) (lo, hi float64, ok bool) {
	if len(a) == 0 || len(b) == 0 || reps < 10 {
		return 0, 0, false
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ch := make([]float64, reps)
	for i := range ch {
		ma, mb := resampleMean(r, a), resampleMean(r, b)
		if ma == 0 {
			return 0, 0, false
		}
		ch[i] = 100 * (mb/ma - 1)
	}
	q := (1 - level) / 2
	return quantile(ch, q), quantile(ch, 1-q), true
}

func resampleMean(r *rand.Rand, xs []float64) float64 {
	var s float64
	for range xs {
		s += xs[r.IntN(len(xs))]
	}
	return s / float64(len(xs))
}

// quantile is the q-quantile of xs (sorts xs) by moecapd's one percentile definition,
// records.SortedPercentile (numpy's linear interpolation between ranks).
func quantile(xs []float64, q float64) float64 {
	slices.Sort(xs)
	return records.SortedPercentile(xs, q*100)
}
