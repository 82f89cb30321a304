package profile

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// firstFailure is "; first: <kind>: <what the server said>" of the first failed request.
func firstFailure(reqs []RequestResult) string {
	for _, r := range reqs {
		if !r.Success && r.ErrorKind != "" {
			return "; first: " + r.ErrorKind + ": " + clip(r.Error, 300)
		}
	}
	return ""
}

func describeErrors(errs map[string]int) string {
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return errs[keys[i]] > errs[keys[j]] || errs[keys[i]] == errs[keys[j]] && keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d× %s", errs[k], k)
	}
	return strings.Join(parts, ", ")
}

// computeMetrics applies DESIGN.md's definitions (vLLM's) to the requests sent, and judges
// the result's validity: every failed request, usage that disagrees with the stream, missing
// usage and short output counts as a bad request; more than o.AllowedBadRequests of them make
// the result invalid (InvalidReasons says why).
func computeMetrics(reqs []RequestResult, o *Options, dur time.Duration) Metrics {
	m := Metrics{Source: "native", LatencyKind: "client", PromptStyle: o.PromptStyle}
	if o.PromptStyle == PromptUpstream {
		m.LatencyKind = "client_e2e" // non-streaming: only send → reply is seen
	}
	allowed := o.AllowedBadRequests
	m.AllowedBadRequests = &allowed
	var ttft, tpot, itl, e2el []float64
	bad := 0
	for i := range reqs {
		r := &reqs[i]
		r.TTFTMs, r.E2ELMs = ms(r.ttft), ms(r.e2el)
		r.ITLMs = make([]float64, len(r.itl))
		for j, d := range r.itl {
			r.ITLMs[j] = ms(d)
		}
		if !r.Success {
			m.Failed++
			bad++
			if m.Errors == nil {
				m.Errors = map[string]int{}
			}
			m.Errors[r.ErrorKind]++
			continue
		}
		m.Completed++
		m.TotalInputTokens += r.PromptTokens
		m.TotalOutputTokens += r.OutputTokens
		isBad := false
		if r.UsageMissing {
			m.UsageMissing++
			isBad = true
		}
		if r.UsageStreamMismatch {
			m.UsageStreamMismatches++
			isBad = true
		}
		if o.IgnoreEOS && o.OutputTokens > 0 && r.OutputTokens < o.OutputTokens {
			r.ShortOutput = true
			m.ShortOutputs++
			isBad = true
		}
		// The upstream style's prompt is templated text, longer than the target by design.
		inMismatch := o.PromptStyle != PromptUpstream && o.InputTokens > 0 && r.PromptTokens != o.InputTokens
		if inMismatch || (o.OutputTokens > 0 && r.OutputTokens != o.OutputTokens) {
			r.LengthMismatch = true
			m.LengthMismatches++
		}
		if isBad {
			bad++
		}
		e2el = append(e2el, r.E2ELMs)
		if o.PromptStyle == PromptUpstream {
			continue // no stream, no client TTFT/TPOT/ITL
		}
		ttft = append(ttft, r.TTFTMs)
		if r.OutputTokens > 1 {
			r.TPOTMs = (r.E2ELMs - r.TTFTMs) / float64(r.OutputTokens-1)
			tpot = append(tpot, r.TPOTMs)
		}
		itl = append(itl, r.ITLMs...)
	}
	m.BadRequests = bad
	if bad > allowed {
		if m.Failed > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d of %d requests failed (%s)", m.Failed, len(reqs), describeErrors(m.Errors)))
		}
		if m.UsageStreamMismatches > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests: the server's usage disagrees with the tokens it streamed", m.UsageStreamMismatches))
		}
		if m.UsageMissing > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests: no usage in the reply, token counts unverifiable", m.UsageMissing))
		}
		if m.ShortOutputs > 0 {
			m.InvalidReasons = append(m.InvalidReasons, fmt.Sprintf("%d requests generated fewer than the %d tokens asked for with ignore_eos", m.ShortOutputs, o.OutputTokens))
		}
	}
	m.DurationS = dur.Seconds()
	if m.DurationS > 0 && len(reqs) > 0 {
		// Requests in flight, as the client saw them: every request's send → end, over the
		// run (a time-weighted mean; failed requests count while they were out).
		var busy float64
		for i := range reqs {
			busy += reqs[i].e2el.Seconds()
		}
		v := busy / m.DurationS
		m.ClientInFlightMean = &v
	}
	if m.DurationS > 0 {
		m.RequestThroughput = float64(m.Completed) / m.DurationS
		m.OutputThroughput = float64(m.TotalOutputTokens) / m.DurationS
		m.TotalTokenThroughput = float64(m.TotalInputTokens+m.TotalOutputTokens) / m.DurationS
	}
	if o.RequestRate > 0 {
		rate := o.RequestRate
		m.RequestRate = &rate
		if o.Burstiness > 0 && o.Burstiness != 1 {
			b := o.Burstiness
			m.Burstiness = &b
		}
	}
	if o.SLO != nil {
		m.Goodput = GoodputOf(reqs, *o.SLO, dur)
	}
	d := DistOf(ttft)
	m.MeanTTFTMs, m.MedianTTFTMs, m.P90TTFTMs, m.P99TTFTMs, m.StdTTFTMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(tpot)
	m.MeanTPOTMs, m.MedianTPOTMs, m.P90TPOTMs, m.P99TPOTMs, m.StdTPOTMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(itl)
	m.MeanITLMs, m.MedianITLMs, m.P90ITLMs, m.P99ITLMs, m.StdITLMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	d = DistOf(e2el)
	m.MeanE2ELMs, m.MedianE2ELMs, m.P90E2ELMs, m.P99E2ELMs, m.StdE2ELMs = d.Mean, d.Median, d.P90, d.P99, d.Std
	return m
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
