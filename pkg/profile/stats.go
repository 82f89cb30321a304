package profile

import (
	"github.com/moecapd/moecapd/pkg/records"
	"math"
	"slices"
)

// Summary is the distribution of one latency metric, in milliseconds.
type Summary struct {
	Mean   float64 `json:"mean"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Std    float64 `json:"std"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// Summarize computes mean, median, p90, p99, population std, min and max of xs. It does not
// modify xs. An empty input gives the zero Summary: vLLM reports 0 for a metric with no
// samples, and so do we, with N telling the reader there was nothing behind it.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mean, std := MeanStd(s)
	return Summary{
		Mean:   mean,
		Median: sortedPercentile(s, 50),
		P90:    sortedPercentile(s, 90),
		P99:    sortedPercentile(s, 99),
		Std:    std,
		Min:    s[0],
		Max:    s[len(s)-1],
		N:      len(s),
	}
}

// Percentile is records.Percentile, moecapd's one percentile definition (numpy's linear
// interpolation, as vLLM's bench computes p90/p99).
func Percentile(xs []float64, p float64) float64 { return records.Percentile(xs, p) }

func sortedPercentile(s []float64, p float64) float64 { return records.SortedPercentile(s, p) }

// MeanStd returns the mean and the population standard deviation (numpy.std with ddof=0,
// as vLLM reports it). Two passes, because the one-pass sum-of-squares formula loses all
// precision when the spread is tiny next to the mean (TPOTs of 10.001 ms ± 1 µs).
func MeanStd(xs []float64) (mean, std float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	mean = sum / float64(len(xs))
	var ss float64
	for _, x := range xs {
		d := x - mean
		ss += d * d
	}
	return mean, math.Sqrt(ss / float64(len(xs)))
}
