package cell

import (
	"path/filepath"
	"strconv"

	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/stats"
)

// RepeatsDir holds, per repeat after the first, the client's files and the recording window
// (repeats/<k>/client, repeats/<k>/records); the first repeat uses the cell's own client/
// and records/, so a repeated cell reads like a single run plus its repeats.
const RepeatsDir = "repeats"

// Repeat is the directory of repeat k (k ≥ 2; 1 is the cell's own directory).
func (d Dir) Repeat(k int) Dir {
	if k <= 1 {
		return d
	}
	return Dir{ID: d.ID, Path: filepath.Join(d.Path, RepeatsDir, strconv.Itoa(k))}
}

// DefaultUnstableCV is the coefficient of variation above which a repeated metric is
// flagged unstable when the caller does not set one.
const DefaultUnstableCV = 0.05

// RepeatLevel is the confidence level of the repeats' intervals.
const RepeatLevel = 0.95

// MaxRepeats bounds --repeats.
const MaxRepeats = 100

// RepeatMetricKeys are the metrics summarised over repeats, in display order.
var RepeatMetricKeys = []string{"ttft_ms", "tpot_ms", "e2el_ms", "output_throughput", "j_per_output_token"}

// RepeatValue is one repeat's value of a metric of RepeatMetricKeys (nil when absent):
// the client's mean TTFT, TPOT and E2E latency (ms), output tokens/s, J per output token.
func RepeatValue(key string, r Repeat) *float64 {
	m := r.Metrics
	if m == nil {
		return nil
	}
	switch key {
	case "ttft_ms":
		return m.MeanTTFTMs
	case "tpot_ms":
		return m.MeanTPOTMs
	case "e2el_ms":
		return m.MeanE2ELMs
	case "output_throughput":
		if m.DurationS <= 0 {
			return nil
		}
		v := m.OutputThroughput
		return &v
	case "j_per_output_token":
		return r.JPerOutputToken
	}
	return nil
}

// RepeatStats is what a cell's repeats say together: per metric the mean with its Student-t
// interval at Level and the coefficient of variation. Unstable lists the metrics whose CV
// exceeds UnstableCV: their spread between repeats is too large for one number to stand
// for the cell.
type RepeatStats struct {
	Level      float64                   `json:"level"`
	UnstableCV float64                   `json:"unstable_cv"`
	Metrics    map[string]stats.Estimate `json:"metrics"`
	Unstable   []string                  `json:"unstable,omitempty"`
}

// SummarizeRepeats summarises the repeats; nil with fewer than two. A metric with fewer
// than two values (J/token without telemetry) is left out.
func SummarizeRepeats(reps []Repeat, level, unstableCV float64) *RepeatStats {
	if len(reps) < 2 {
		return nil
	}
	if unstableCV <= 0 {
		unstableCV = DefaultUnstableCV
	}
	rs := &RepeatStats{Level: level, UnstableCV: unstableCV, Metrics: map[string]stats.Estimate{}}
	for _, k := range RepeatMetricKeys {
		var xs []float64
		for _, r := range reps {
			if v := RepeatValue(k, r); v != nil {
				xs = append(xs, *v)
			}
		}
		if len(xs) < 2 {
			continue
		}
		e := stats.Mean(xs, level)
		rs.Metrics[k] = e
		if e.CV != nil && *e.CV > unstableCV {
			rs.Unstable = append(rs.Unstable, k)
		}
	}
	return rs
}

// RepeatMetrics is the metrics of repeat k (1-based), nil when there is no such repeat.
func (m *Manifest) RepeatMetrics(k int) *profile.Metrics {
	for _, r := range m.Repeats {
		if r.Index == k {
			return r.Metrics
		}
	}
	return nil
}
