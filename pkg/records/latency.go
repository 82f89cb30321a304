package records

// The two facts every consumer of a cell's latencies shares, each computed here once:
// which TPOT/TTFT is the cell's measured one (PickLatency) and MoE-CAP's per-request TTFT
// over prefill passes (PerRequestPrefill).

// Clock names of a picked latency.
const (
	ClockClient     = "client"      // the bench client's mean per-request latency
	ClockServerPass = "server_pass" // the server's forward passes, by MoE-CAP's definition
)

// PickLatency is the one rule for a cell's measured TPOT or TTFT: the client's mean when
// the client measured one, else the server's pass latency (MoE-CAP's runner measures no
// client latency). It returns the value and its clock, ClockClient or ClockServerPass;
// nil and "" when neither exists. profile.Metrics.Headline and capmath's over-floor
// ratios both pick through it.
func PickLatency(client, server *float64) (*float64, string) {
	if client != nil {
		return client, ClockClient
	}
	if server != nil {
		return server, ClockServerPass
	}
	return nil, ""
}

// PerRequestPrefill is MoE-CAP's per-request TTFT rule: per request, the sum of value(p)
// over the prefill passes p holding one of its chunks, from its first chunk to the one
// marked is_last_chunk, then the mean over the requests whose last chunk was seen.
// chunks gives a pass's request keys and, for each, whether it is the request's last
// chunk. A pass with no keys counts once on its own when plain is true (a pass without
// per-request info: its requests' prefill is the pass), and not at all otherwise. The
// mean is taken over the requests in completion order, then the plain passes in theirs;
// n is how many values it averages (0: none, and the mean 0).
func PerRequestPrefill[P any](passes []P, chunks func(P) ([]string, []bool), value func(P) float64, plain bool) (mean float64, n int) {
	open := map[string]float64{}
	var done, whole []float64
	for _, p := range passes {
		keys, last := chunks(p)
		v := value(p)
		if len(keys) == 0 {
			if plain {
				whole = append(whole, v)
			}
			continue
		}
		for i, k := range keys {
			open[k] += v
			if last[i] {
				done = append(done, open[k])
				delete(open, k)
			}
		}
	}
	all := append(done, whole...)
	if len(all) == 0 {
		return 0, 0
	}
	s := 0.0
	for _, x := range all {
		s += x
	}
	return s / float64(len(all)), len(all)
}
