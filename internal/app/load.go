package app

import (
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/profile"
)

// MaxRequestRate bounds --request-rate and --rates (requests per second).
const MaxRequestRate = 1e6

// LoadOptions is the native client's load beyond the guide's closed loop (issue 21.4):
// an open loop at RequestRate (gamma arrivals of shape Burstiness, 1: Poisson), a sweep
// over Rates in one server lifetime, goodput under SLO ("ttft=…,tpot=…[,share=…]"), and
// FindMaxRate, the search of the highest rate meeting the SLO in at most MaxRateSteps
// benches. The zero value is the closed loop.
type LoadOptions struct {
	RequestRate    float64
	Burstiness     float64
	MaxConcurrency int
	Rates          []float64
	SLO            string
	FindMaxRate    bool
	MaxRateSteps   int
}

// openLoop is whether any open-loop load is asked for.
func (l LoadOptions) openLoop() bool {
	return l.RequestRate > 0 || len(l.Rates) > 0 || l.FindMaxRate
}

// check refuses load settings that cannot run, each error naming the fix (exit 2), before
// anything starts. The SLO is parsed here too: a typo fails now, not after the server
// loaded its weights.
func (l LoadOptions) check() error {
	if err := config.CheckFloat("settings", "--request-rate", l.RequestRate, 0, MaxRequestRate); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	for _, r := range l.Rates {
		if err := config.CheckFloat("settings", "--rates", r, 1e-6, MaxRequestRate); err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
	}
	if err := config.CheckFloat("settings", "--burstiness", l.Burstiness, 0, 1000); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if err := config.CheckInt("settings", "--max-concurrency", int64(l.MaxConcurrency), 0, 1<<20, "open-loop requests in flight; 0: no cap"); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if err := config.CheckInt("settings", "--max-rate-steps", int64(l.MaxRateSteps), 0, cell.MaxRates, "benches --find-max-rate may run; 0: the default"); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	if len(l.Rates)+l.MaxRateSteps > cell.MaxRates {
		return exitcode.Usagef("--rates lists %d rates and --max-rate-steps adds %d: at most %d benches in one cell; split the sweep", len(l.Rates), l.MaxRateSteps, cell.MaxRates)
	}
	if (l.Burstiness > 0 || l.MaxConcurrency > 0) && !l.openLoop() {
		return exitcode.Usagef("--burstiness and --max-concurrency shape the open loop: give --request-rate R, --rates or --find-max-rate too")
	}
	if l.SLO != "" {
		if _, err := profile.ParseSLO(l.SLO); err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
	}
	if l.FindMaxRate && l.SLO == "" {
		return exitcode.Usagef("--find-max-rate needs an SLO to meet: add --slo ttft=500ms,tpot=50ms (share=0.9 by default)")
	}
	return nil
}

// apply puts the load settings into a cell's config. The open loop and the SLO need the
// native client's streamed latencies; repeats of a sweep are not supported.
func (l LoadOptions) apply(c *cell.Config) error {
	if !l.openLoop() && l.SLO == "" {
		return nil
	}
	if c.Client != cell.ClientNative {
		return exitcode.Usagef("--request-rate, --rates, --slo and --find-max-rate need the native client (--client native); the MoE-CAP runner sends its own closed-loop waves")
	}
	if c.Native.PromptStyle == profile.PromptUpstream && l.SLO != "" {
		return exitcode.Usagef("--slo needs streamed TTFT and TPOT: use --prompt-style exact-ids (upstream's non-streaming replies have only E2E latency)")
	}
	if c.Repeats > 1 && (len(l.Rates) > 0 || l.FindMaxRate) {
		return exitcode.Usagef("--repeats with --rates or --find-max-rate is not supported: a sweep is one bench per rate; drop --repeats or run the rates as separate cells")
	}
	c.Native.RequestRate, c.Native.Burstiness, c.Native.MaxConcurrency = l.RequestRate, l.Burstiness, l.MaxConcurrency
	if l.SLO != "" {
		slo, err := profile.ParseSLO(l.SLO)
		if err != nil {
			return exitcode.New(exitcode.Usage, err)
		}
		c.Native.SLO = &slo
	}
	c.Rates, c.FindMaxRate, c.MaxRateSteps = append([]float64(nil), l.Rates...), l.FindMaxRate, l.MaxRateSteps
	return nil
}
