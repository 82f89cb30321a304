package profile

import (
	"fmt"
	"math/rand/v2"
	"time"

	"gonum.org/v1/gonum/stat/distuv"
)

// Pacer decides when each request of a run is sent; the sender (schedule) only keeps to
// it. A new load shape is a new Pacer, not a new branch in the sender.
type Pacer interface {
	// Arrivals is the send time of each of n requests, as an offset from the run's start,
	// in order; nil means no timetable: the closed loop sends whenever a slot frees.
	Arrivals(n int) []time.Duration
	// Rate is the mean requests per second asked for; 0 for the closed loop.
	Rate() float64
}

// ClosedLoop is the guide's load: no timetable, the number in flight is the schedule's.
type ClosedLoop struct{}

// Arrivals is nil: the closed loop has no timetable.
func (ClosedLoop) Arrivals(int) []time.Duration { return nil }

// Rate is 0: the closed loop asks for no rate.
func (ClosedLoop) Rate() float64 { return 0 }

// GammaPacer is an open-loop load: the gaps between requests are gamma-distributed with
// mean 1/RequestsPerS and shape Burstiness, as vLLM's `bench serve --burstiness` draws
// them. Shape 1 (or 0, the default) is a Poisson process; below 1 the arrivals come in
// bursts, above 1 more evenly (the gaps' coefficient of variation is 1/√shape). Seed
// fixes the timetable.
type GammaPacer struct {
	RequestsPerS float64
	Burstiness   float64
	Seed         int64
}

// Arrivals draws the timetable: request 0 at 0, each next one a gap later.
func (p GammaPacer) Arrivals(n int) []time.Duration {
	src := rand.NewPCG(uint64(p.Seed), 0x61727269)
	var gap func() float64
	if p.Burstiness == 0 || p.Burstiness == 1 {
		gap = distuv.Exponential{Rate: p.RequestsPerS, Src: src}.Rand
	} else {
		gap = distuv.Gamma{Alpha: p.Burstiness, Beta: p.Burstiness * p.RequestsPerS, Src: src}.Rand
	}
	out := make([]time.Duration, n)
	var t float64
	for i := range out {
		out[i] = time.Duration(t * float64(time.Second))
		t += gap()
	}
	return out
}

// Rate is the mean rate asked for.
func (p GammaPacer) Rate() float64 { return p.RequestsPerS }

func (p GammaPacer) String() string {
	if p.Burstiness == 0 || p.Burstiness == 1 {
		return fmt.Sprintf("Poisson %g req/s", p.RequestsPerS)
	}
	return fmt.Sprintf("gamma %g req/s, shape %g", p.RequestsPerS, p.Burstiness)
}

// pacer is the run's Pacer: a GammaPacer at RequestRate when one is set, else the closed
// loop.
func (o *Options) pacer() Pacer {
	if o.RequestRate > 0 {
		return GammaPacer{RequestsPerS: o.RequestRate, Burstiness: o.Burstiness, Seed: o.Seed}
	}
	return ClosedLoop{}
}
