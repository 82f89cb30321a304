package cell

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/profile"
)

// RatesDir holds, per rate after the first of a rate sweep (--rates, --find-max-rate), the
// client's files and the recording window (rates/<k>/client, rates/<k>/records); the first
// rate uses the cell's own client/ and records/, as repeat 1 does.
const RatesDir = "rates"

// MaxRates bounds --rates and --max-rate-steps together: every rate is a full bench.
const MaxRates = 50

// Rate is the directory of the k-th rate run (k ≥ 2; 1 is the cell's own directory).
func (d Dir) Rate(k int) Dir {
	if k <= 1 {
		return d
	}
	return Dir{ID: d.ID, Path: filepath.Join(d.Path, RatesDir, strconv.Itoa(k))}
}

// RatePoint is one open-loop bench of a rate sweep: the rate asked for (physical requests
// per second), its metrics (with goodput under the cell's SLO, when one was given) and
// whether it met the SLO (absent without one). Search marks a probe of --find-max-rate.
type RatePoint struct {
	Index     int              `json:"index"`
	Rate      float64          `json:"rate"`
	Search    bool             `json:"search,omitempty"`
	StartedAt time.Time        `json:"started_at"`
	Metrics   *profile.Metrics `json:"metrics,omitempty"`
	MetSLO    *bool            `json:"met_slo,omitempty"`
}

// MaxRate is what --find-max-rate found: the highest rate tried whose goodput share met
// the SLO's (Rate absent when none did), the SLO, and every probe in order.
type MaxRate struct {
	Rate  *float64           `json:"rate,omitempty"`
	SLO   string             `json:"slo"`
	Steps []profile.RateStep `json:"steps"`
	// Bracketed is true when a met rate and a missed one enclose Rate: the answer lies
	// between Rate and the lowest missed rate. False: the steps ran out first.
	Bracketed bool   `json:"bracketed"`
	Note      string `json:"note,omitempty"`
}

// DefaultFindStart is --find-max-rate's first rate when neither --request-rate nor --rates
// gives one.
const DefaultFindStart = 1.0

// sweepsRates is whether the cell runs a rate sweep rather than one bench (or repeats).
func (c *Config) sweepsRates() bool { return len(c.Load.Rates) > 0 || c.Load.FindMaxRate }

// errSweepStopped ends --find-max-rate's search when a rate's bench failed the cell.
var errSweepStopped = errors.New("the bench failed")

// benchRates runs the rate sweep against the one server: every rate of Config.Load.Rates in
// order, then (--find-max-rate) FindMaxRate's probes, narrowed by what the listed rates
// showed, else starting from --request-rate, else DefaultFindStart. Each rate is a full bench
// (warm-up only before the first); the manifest keeps each, its metrics are the first
// rate's. A failed bench ends the sweep and the cell as failed.
func (r *runner) benchRates(ctx context.Context) {
	var first *profile.Metrics
	k := 0
	probe := func(rate float64, search bool) (bool, error) {
		k++
		r.m.Metrics = nil
		start := time.Now().UTC()
		r.bench(ctx, benchRun{index: k, files: r.p.Files.Rate(k), rate: rate, what: "rate"})
		if k == 1 {
			r.measureEnd()
			first = r.m.Metrics
		}
		pt := RatePoint{Index: k, Rate: rate, Search: search, StartedAt: start, Metrics: r.m.Metrics}
		met := false
		if m := r.m.Metrics; m != nil && m.Goodput != nil {
			met = m.Goodput.Met
			pt.MetSLO = &met
		}
		r.m.Rates = append(r.m.Rates, pt)
		r.log.Info("rate done", zap.Int("rate_index", k), zap.Float64("rate", rate), zap.Bool("ok", r.m.Failure == nil), zap.Boolp("met_slo", pt.MetSLO))
		_ = WriteManifest(r.p.Dir, r.m)
		if r.m.Failure != nil {
			return false, errSweepStopped
		}
		return met, nil
	}
	defer func() { r.m.Metrics = first }()
	var known []profile.RateStep
	for _, rate := range r.c.Load.Rates {
		met, err := probe(rate, false)
		if err != nil {
			return
		}
		known = append(known, profile.RateStep{Rate: rate, Met: met})
	}
	if !r.c.Load.FindMaxRate || r.c.Native.SLO == nil {
		return
	}
	start := r.c.Native.RequestRate
	if start <= 0 {
		start = DefaultFindStart
	}
	best, steps, err := profile.FindMaxRate(profile.MaxRateSearch{Start: start, Steps: r.c.Load.MaxRateSteps, Known: known},
		func(rate float64) (bool, error) { return probe(rate, true) })
	mr := &MaxRate{SLO: r.c.Native.SLO.String(), Steps: steps}
	if best > 0 {
		mr.Rate = &best
	}
	for _, s := range append(known, steps...) {
		if !s.Met && s.Rate > best && best > 0 {
			mr.Bracketed = true
		}
	}
	switch {
	case err != nil:
		mr.Note = "search ended by a failed bench"
	case best == 0:
		mr.Note = "no rate tried met the SLO"
	case !mr.Bracketed:
		mr.Note = "every rate tried met the SLO: the highest is a lower bound (raise --max-rate-steps or start higher with --request-rate)"
	}
	r.m.MaxRate = mr
	r.log.Info("highest rate meeting the SLO", zap.Float64p("rate", mr.Rate), zap.String("slo", mr.SLO), zap.Int("probes", len(steps)), zap.String("note", mr.Note))
}

// openLoop sets the native options' open-loop rate for one bench (rate > 0 replaces
// --request-rate) and puts rate and SLO on a time-scaled simulator's wall clock: its
// passes take scale × their physical time, so a physical rate R is R/scale on the wall and
// an SLO bound B is B×scale; the metrics are un-scaled back afterwards.
func (r *runner) openLoop(o *profile.Options, rate float64) {
	if rate > 0 {
		o.RequestRate = rate
	}
	scale := r.m.TimeScale()
	if scale <= 0 {
		return
	}
	o.RequestRate /= scale
	if o.SLO != nil {
		s := o.SLO.Scaled(scale)
		o.SLO = &s
	}
}
