package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// addLoadFlags adds the native client's open-loop flags (cell.Load) to
// launch-and-bench and bench. bench has its own --request-rate already.
func addLoadFlags(f *pflag.FlagSet) {
	if f.Lookup("request-rate") == nil {
		f.Float64("request-rate", 0, "native client: open loop: mean requests/s of Poisson (or gamma, --burstiness) arrivals, not held to the batch size (the server queues what it cannot run); 0: the closed loop")
	}
	f.Float64("burstiness", 0, "native client: shape of the open loop's gamma-distributed gaps: 1 (default) is Poisson, below 1 burstier, above 1 more even")
	f.Int("max-concurrency", 0, "native client: cap on the open loop's requests in flight (0: none)")
	f.Float64Slice("rates", nil, "native client: rate sweep in one server lifetime: one open-loop bench of num_samples requests per rate (comma-separated requests/s, e.g. 1,2,4,8); each rate's files under rates/<k>/ (the first in the cell's own client/), every rate in the manifest")
	f.String("slo", "", "native client: judge every request against ttft=…,tpot=… (durations such as 500ms, or milliseconds); goodput is the share of requests meeting every bound and good requests/s; share=0.9 (default) is the share a rate needs to meet the SLO")
	f.Bool("find-max-rate", false, "native client: search the highest rate whose goodput share meets --slo: from --request-rate (else the best of --rates, else 1 req/s) double or halve until bracketed, then bisect; at most --max-rate-steps benches")
	f.Int("max-rate-steps", profile.DefaultMaxRateSteps, "with --find-max-rate: most benches the search runs")
}

func readLoadFlags(r *settings.Reader) cell.Load {
	return cell.Load{
		RequestRate: r.Float("request-rate"), Burstiness: r.Float("burstiness"), MaxConcurrency: r.Int("max-concurrency"),
		Rates: r.Floats("rates"), SLO: r.Str("slo"), FindMaxRate: r.Bool("find-max-rate"), MaxRateSteps: r.Int("max-rate-steps"),
	}
}
