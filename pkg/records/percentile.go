package records

import (
	"math"
	"slices"
)

// Percentile is moecapd's one percentile definition: the p-th percentile (0 ≤ p ≤ 100) of
// xs by linear interpolation between the two nearest ranks, the value at fractional rank
// p/100·(n−1) of the sorted data. This is numpy.percentile's default ("linear") method,
// which vLLM's `bench serve` uses, so p90/p99 equal theirs on the same samples. NaN for
// empty input. xs is not modified.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return SortedPercentile(s, p)
}

// SortedPercentile is Percentile of already sorted data (no copy).
func SortedPercentile(s []float64, p float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	p = min(max(p, 0), 100)
	rank := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(rank))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	frac := rank - float64(lo)
	return s[lo] + (s[lo+1]-s[lo])*frac
}
