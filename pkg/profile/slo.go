package profile

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// DefaultGoodShare is the share of requests that must meet every SLO for a rate to count
// as meeting the SLO (--find-max-rate's criterion) when --slo does not say share=….
const DefaultGoodShare = 0.9

// SLO is a latency objective per request: a request is good when it succeeded and its TTFT
// and TPOT are each within their bound (a bound left at 0 is not checked; TPOT is not
// checked for a request with one output token, which has none). Share is the share of
// good requests a run needs to meet the SLO as a whole.
type SLO struct {
	TTFT  time.Duration `json:"-"`
	TPOT  time.Duration `json:"-"`
	Share float64       `json:"-"`
}

// ParseSLO reads "ttft=500ms,tpot=50ms[,share=0.9]": bounds as Go durations or plain
// milliseconds, share in (0, 1] (default DefaultGoodShare). At least one bound is needed.
func ParseSLO(s string) (SLO, error) {
	slo := SLO{Share: DefaultGoodShare}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		if !ok || v == "" {
			return SLO{}, fmt.Errorf("--slo %q: %q is not key=value; want e.g. ttft=500ms,tpot=50ms", s, part)
		}
		if seen[k] {
			return SLO{}, fmt.Errorf("--slo %q: %s given twice", s, k)
		}
		seen[k] = true
		switch k {
		case "ttft", "tpot":
			d, err := time.ParseDuration(v)
			if err != nil {
				f, ferr := strconv.ParseFloat(v, 64)
				if ferr != nil {
					return SLO{}, fmt.Errorf("--slo %q: %s=%s is neither a duration (500ms) nor milliseconds (500)", s, k, v)
				}
				d = time.Duration(f * float64(time.Millisecond))
			}
			if d <= 0 {
				return SLO{}, fmt.Errorf("--slo %q: %s must be positive", s, k)
			}
			if k == "ttft" {
				slo.TTFT = d
			} else {
				slo.TPOT = d
			}
		case "share":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1 || math.IsNaN(f) {
				return SLO{}, fmt.Errorf("--slo %q: share=%s: want a number in (0, 1], e.g. share=0.9", s, v)
			}
			slo.Share = f
		default:
			return SLO{}, fmt.Errorf("--slo %q: unknown key %q; want ttft, tpot and optionally share", s, k)
		}
	}
	if slo.TTFT == 0 && slo.TPOT == 0 {
		return SLO{}, fmt.Errorf("--slo %q: give at least one bound, e.g. ttft=500ms,tpot=50ms", s)
	}
	return slo, nil
}

// String is the SLO in ParseSLO's syntax.
func (s SLO) String() string {
	var parts []string
	if s.TTFT > 0 {
		parts = append(parts, "ttft="+s.TTFT.String())
	}
	if s.TPOT > 0 {
		parts = append(parts, "tpot="+s.TPOT.String())
	}
	return strings.Join(append(parts, "share="+strconv.FormatFloat(s.Share, 'g', -1, 64)), ",")
}

// Scaled is the SLO with its bounds multiplied by f (a time-scaled simulator's wall clock).
func (s SLO) Scaled(f float64) SLO {
	s.TTFT = time.Duration(float64(s.TTFT) * f)
	s.TPOT = time.Duration(float64(s.TPOT) * f)
	return s
}

// Goodput is how a run did against an SLO: Good of Sent requests met every bound (Share),
// RequestsPerS good requests per second of the run, Met whether Share reached the SLO's.
// The bounds are stored in milliseconds, as the latencies are.
type Goodput struct {
	TTFTMs       *float64 `json:"slo_ttft_ms,omitempty"`
	TPOTMs       *float64 `json:"slo_tpot_ms,omitempty"`
	MinShare     float64  `json:"slo_share"`
	Sent         int      `json:"sent"`
	Good         int      `json:"good"`
	Share        float64  `json:"share"`
	RequestsPerS *float64 `json:"requests_per_s,omitempty"`
	Met          bool     `json:"met"`
}

// GoodputOf judges each request of reqs against slo (latencies in ms as computeMetrics
// leaves them); dur is the run's wall time (0: no rate).
func GoodputOf(reqs []RequestResult, slo SLO, dur time.Duration) *Goodput {
	g := &Goodput{MinShare: slo.Share, Sent: len(reqs)}
	bound := func(d time.Duration) *float64 {
		if d <= 0 {
			return nil
		}
		v := ms(d)
		return &v
	}
	g.TTFTMs, g.TPOTMs = bound(slo.TTFT), bound(slo.TPOT)
	for i := range reqs {
		r := &reqs[i]
		if !r.Success {
			continue
		}
		if g.TTFTMs != nil && r.TTFTMs > *g.TTFTMs {
			continue
		}
		if g.TPOTMs != nil && r.OutputTokens > 1 && r.TPOTMs > *g.TPOTMs {
			continue
		}
		g.Good++
	}
	if g.Sent > 0 {
		g.Share = float64(g.Good) / float64(g.Sent)
	}
	if dur > 0 {
		v := float64(g.Good) / dur.Seconds()
		g.RequestsPerS = &v
	}
	// A share that equals the bound up to float rounding (9 of 10 against 0.9) meets it.
	g.Met = g.Sent > 0 && g.Share >= slo.Share-1e-9
	return g
}

// RateStep is one probe of FindMaxRate: the rate tried and whether it met the SLO.
type RateStep struct {
	Rate float64 `json:"rate"`
	Met  bool    `json:"met"`
}

// MaxRateSearch is FindMaxRate's plan: Start is the first rate tried, Steps bounds how many
// rates are tried in all, Resolution ends the bisection once hi/lo is within 1+Resolution.
// Known are rates already measured (a --rates sweep): they narrow the bracket before the
// first probe and are not tried again.
type MaxRateSearch struct {
	Start      float64
	Steps      int
	Resolution float64
	Known      []RateStep
}

// DefaultMaxRateSteps bounds --find-max-rate's probes when --max-rate-steps is not given.
const DefaultMaxRateSteps = 8

// FindMaxRate finds the highest rate at which probe meets the SLO, in at most s.Steps
// probes: from s.Start it doubles while the SLO is met (or halves while it is not) until
// a met rate and a missed one bracket the answer, then bisects between them (on a log
// scale: rates span decades). Known rates that bracket the answer already skip straight to
// the bisection. It returns the highest rate that met (0 when none did, Known included)
// and every probe in order. A probe's error ends the search and is returned with what was
// found so far.
func FindMaxRate(s MaxRateSearch, probe func(rate float64) (bool, error)) (float64, []RateStep, error) {
	if s.Steps <= 0 {
		s.Steps = DefaultMaxRateSteps
	}
	if s.Resolution <= 0 {
		s.Resolution = 0.05
	}
	var steps []RateStep
	var lo, hi float64 // highest met, lowest missed (0: none yet)
	note := func(r float64, met bool) {
		if met && r > lo {
			lo = r
		}
		if !met && (hi == 0 || r < hi) {
			hi = r
		}
	}
	for _, k := range s.Known {
		note(k.Rate, k.Met)
	}
	next := func(r float64) float64 {
		switch {
		case lo > 0 && hi > 0:
			return math.Sqrt(lo * hi)
		case hi == 0:
			return r * 2
		default:
			return r / 2
		}
	}
	r := s.Start
	switch {
	case lo > 0 && hi > 0:
		r = math.Sqrt(lo * hi)
	case lo > 0:
		r = lo * 2
	case hi > 0:
		r = hi / 2
	}
	for len(steps) < s.Steps {
		if lo > 0 && hi > 0 && hi/lo <= 1+s.Resolution {
			break
		}
		met, err := probe(r)
		if err != nil {
			return lo, steps, err
		}
		steps = append(steps, RateStep{Rate: r, Met: met})
		note(r, met)
		r = next(r)
	}
	return lo, steps, nil
}
