package profile

import (
	"encoding/json"
	"math"
	"path/filepath"

	"github.com/moecapd/moecapd/pkg/records"
)

type acc struct {
	sum float64
	n   int
}

func (a *acc) add(v float64) { a.sum += v; a.n++ }
func (a *acc) mean() *float64 {
	if a.n == 0 {
		return nil
	}
	v := a.sum / float64(a.n)
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil // records of 1e308 summed past the float range: no mean, and no manifest could hold one
	}
	return &v
}

// Pass is one server forward pass record (pkg/records owns the model).
type Pass = records.Pass

// ParsePasses reads records; name says where they came from, for the error.
func ParsePasses(name string, raws []json.RawMessage) ([]Pass, error) {
	return records.ParseAll(name, raws)
}

// UpstreamTTFTS is MoE-CAP's TTFT in seconds: per request, the sum of the latencies of every
// prefill pass holding one of its chunks, from the first chunk to the one marked
// is_last_chunk; the mean over the requests whose last chunk was seen. Passes with
// seq_lens_sum ≤ 10 (probes) and prefill passes without per_req_info are left out. Nil when
// no request completed its prefill in passes.
func UpstreamTTFTS(passes []Pass) *float64 {
	var pre []*Pass
	for i := range passes {
		p := &passes[i]
		if p.Mode == records.Prefill && !p.Probe() && len(p.PerReqInfo) > 0 && p.Latency != nil {
			pre = append(pre, p)
		}
	}
	chunks := func(p *Pass) (keys []string, last []bool) {
		for _, c := range p.PerReqInfo {
			if c.Key != "" {
				keys, last = append(keys, c.Key), append(last, c.IsLastChunk)
			}
		}
		return keys, last
	}
	mean, n := records.PerRequestPrefill(pre, chunks, func(p *Pass) float64 { return *p.Latency }, false)
	if n == 0 || math.IsInf(mean, 0) || math.IsNaN(mean) {
		return nil
	}
	return &mean
}

// clientPrefillPasses is the prefill pass set every runner prefill aggregate reads: probes
// (seq_lens_sum ≤ 10) dropped; then, when the batch sizes add up to more than the client's
// requests, up to four leading single-request passes shorter than 1000 tokens are trimmed —
// but only if the trim makes the sum equal the request count exactly; otherwise nothing
// beyond the probe filter is dropped.
func clientPrefillPasses(passes []Pass, nRequests int) []Pass {
	var pre []Pass
	for _, p := range passes {
		if p.Mode == records.Prefill && !p.Probe() {
			pre = append(pre, p)
		}
	}
	if nRequests <= 0 {
		return pre
	}
	rows := func(ps []Pass) int {
		n := 0
		for i := range ps {
			if ps[i].BatchSize != nil {
				n += int(*ps[i].BatchSize)
			}
		}
		return n
	}
	const maxTrim = 4
	t := pre
	for len(t) > 0 && len(pre)-len(t) < maxTrim && rows(t) > nRequests &&
		t[0].BatchSize != nil && *t[0].BatchSize == 1 && val(t[0].SeqLensSum) < 1000 {
		t = t[1:]
	}
	if rows(t) == nRequests {
		return t
	}
	return pre
}

func val(p *float64) float64 { return records.Val(p) }

// PassStats are the figures MoE-CAP's runner derives from the pass records, with its
// selection rules, for nRequests client requests. Nil means "no pass gave a value".
type PassStats struct {
	Passes, PrefillPasses, DecodePasses int

	TTFTS               *float64 // UpstreamTTFTS
	PrefillPassLatencyS *float64 // mean latency over the client's prefill passes
	TPOTS               *float64 // mean latency over decode-like passes
	ActivationPrefill   *float64
	ActivationDecode    *float64
	PrefillBatch        *float64
	DecodeBatch         *float64
	// PrefillForwardedTokens and PrefillStepElapsedS sum scheduled_tokens and latency over the
	// client's prefill passes; nil unless every one of them carries the field.
	PrefillForwardedTokens *int
	PrefillStepElapsedS    *float64
	// DecodeContextMean is the mean batch context of the decode passes that have one.
	DecodeContextMean *float64
	GPURawType        string
	GPUNum            *float64
}

// StatsOf computes PassStats.
func StatsOf(passes []Pass, nRequests int) PassStats {
	s := PassStats{Passes: len(passes), TTFTS: UpstreamTTFTS(passes)}
	if len(passes) > 0 {
		s.GPURawType = passes[0].GPURawType
		s.GPUNum = passes[0].GPUNum
	}
	var act, bs, lat [2]acc
	var ctx acc
	for i := range passes {
		p := &passes[i]
		switch {
		case p.Mode == records.Prefill:
			s.PrefillPasses++
		case p.Mode.DecodeStep():
			s.DecodePasses++
			if p.ExpertActivation != nil && *p.ExpertActivation >= 0 {
				act[1].add(*p.ExpertActivation)
			}
			if p.Latency != nil && *p.Latency >= 0 {
				lat[1].add(*p.Latency)
			}
			if p.BatchSize != nil && *p.BatchSize >= 0 {
				bs[1].add(*p.BatchSize)
			}
			if p.ContextTokens != nil {
				ctx.add(*p.ContextTokens)
			}
		}
	}
	cp := clientPrefillPasses(passes, nRequests)
	fwd, el := 0, 0.0
	fwdOK, elOK := len(cp) > 0, len(cp) > 0
	for i := range cp {
		p := &cp[i]
		if p.ExpertActivation != nil && *p.ExpertActivation >= 0 {
			act[0].add(*p.ExpertActivation)
		}
		if p.Latency != nil && *p.Latency >= 0 {
			lat[0].add(*p.Latency)
		}
		if p.BatchSize != nil && *p.BatchSize >= 0 {
			bs[0].add(*p.BatchSize)
		}
		// A token count past any pass's (a float beyond int: its conversion is undefined)
		// is no count.
		if p.ScheduledTokens != nil && *p.ScheduledTokens >= 0 && *p.ScheduledTokens <= 1<<40 {
			fwd += int(*p.ScheduledTokens)
		} else {
			fwdOK = false
		}
		if p.Latency != nil {
			el += *p.Latency
		} else {
			elOK = false
		}
	}
	if fwdOK {
		s.PrefillForwardedTokens = &fwd
	}
	if elOK && !math.IsInf(el, 0) {
		s.PrefillStepElapsedS = &el
	}
	s.ActivationPrefill, s.ActivationDecode = act[0].mean(), act[1].mean()
	s.PrefillBatch, s.DecodeBatch = bs[0].mean(), bs[1].mean()
	s.PrefillPassLatencyS, s.TPOTS = lat[0].mean(), lat[1].mean()
	s.DecodeContextMean = ctx.mean()
	return s
}

// WindowFile is records.WindowFile: the recording window, each pass once.
const WindowFile = records.WindowFile

// WriteWindow writes passes to dir/WindowFile.
func WriteWindow(dir string, passes []Pass) (string, error) {
	b, err := records.WindowBytes(passes)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, WindowFile)
	return path, writeAtomic(path, b)
}
