package capmath

import (
	"fmt"
	"github.com/moecapd/moecapd/pkg/records"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// recordedPass is one recorded pass with the physical work it stands for (pkg/passcost).
type recordedPass struct {
	p      pass
	gpus   int
	batch  float64 // decode: sequences decoded; prefill: requests
	ctxSum float64 // decode: context positions over the batch
	tokens float64 // prefill: new tokens
	act    float64 // routed experts per MoE layer, as used
	chunks []passcost.Chunk
	ids    []string // prefill: the requests of the pass
	last   []bool   // prefill: whether the pass gave ids[i] its first token
	work   passcost.Work
}

// physicalPasses turns records into physical work. Decode steps are records.Mode.DecodeStep
// passes ("decode" and "mixed"; a mixed step's prefill part is not counted, so its work is
// a lower bound); vLLM's idle "unknown" steps decoded nothing and are left out. The context
// of a decode step is its records.DecodeContexts context (SGLang's seq_lens_sum, else
// rebuilt from req_ids per request occupancy), else the cell's nominal lengths. Measured
// activation is used when the record has one (> 0), converted to per MoE layer when the
// engine averaged it over every layer (sglangAct), else uniform routing.
func physicalPasses(m config.Model, gpus int, passes []pass, nominalCtx float64, sglangAct bool) (pre, dec []recordedPass, notes []string) {
	done := map[string]float64{} // prefill tokens of each request so far
	src := map[string]int{}
	uniform, idle, mixed := 0, 0, 0
	actScale := 1.0
	if sglangAct && m.MoELayers() > 0 && m.MoELayers() < m.Layers {
		actScale = float64(m.Layers) / float64(m.MoELayers())
	}
	for _, p := range passes {
		n := gpus
		if p.gpus > 0 {
			n = p.gpus
		}
		rp := recordedPass{p: p, gpus: n, batch: p.batch, act: p.act * actScale}
		switch {
		case p.mode.DecodeStep():
			rp.batch = p.decBatch
			if rp.batch <= 0 {
				src["decode pass without batch_size, left out"]++
				continue
			}
			if p.mode == records.Mixed {
				mixed++
			}
			switch {
			case p.context != nil && *p.context > 0:
				rp.ctxSum = *p.context
				src["the records"]++
			default:
				rp.ctxSum = rp.batch * nominalCtx
				src["nominal lengths"]++
			}
			if rp.act <= 0 {
				rp.act = passcost.TouchedExperts(m.Experts, m.TopK, rp.batch)
				uniform++
			}
			rp.work = passcost.Decode(m, n, rp.batch, rp.ctxSum, rp.act)
			dec = append(dec, rp)
		case p.mode == records.Prefill:
			if p.probe() {
				continue // warm-up and readiness probes, as MoE-CAP drops them
			}
			for _, ri := range p.chunks {
				// Tokens already in the request's KV cache: SGLang's total_len is the
				// running total (prefix cache hits included), vLLM's the prompt length,
				// so total_len − extend_len is the prefix on the last chunk and on any
				// chunk whose total_len is below the prompt; otherwise the chunks read so far.
				prefix := done[ri.key]
				if t := ri.total - ri.extend; t >= 0 && (ri.last || ri.prompt == 0 || ri.total < ri.prompt) {
					prefix = t
				}
				done[ri.key] = prefix + ri.extend
				if ri.last {
					delete(done, ri.key) // a pool slot's next occupant starts from nothing
				}
				rp.chunks = append(rp.chunks, passcost.Chunk{Extend: int(ri.extend), Prefix: int(prefix), Last: ri.last})
				rp.ids = append(rp.ids, ri.key)
				rp.last = append(rp.last, ri.last)
				rp.tokens += ri.extend
			}
			if len(rp.chunks) == 0 {
				// No per-request split: batch_size whole prompts of equal length.
				b := max(int(p.batch), 1)
				each := int(p.seqLensSum) / b
				lens := make([]int, b)
				for i := range lens {
					lens[i] = each
				}
				rp.chunks = passcost.Prompts(lens...)
				rp.tokens = p.seqLensSum
				src["prefill without per_req_info (equal prompts)"]++
			}
			if rp.act <= 0 {
				rp.act = passcost.TouchedExperts(m.Experts, m.TopK, rp.tokens)
				uniform++
			}
			rp.work = passcost.Prefill(m, n, rp.chunks, rp.act)
			pre = append(pre, rp)
		default:
			idle++
		}
	}
	if len(src) > 0 {
		notes = append(notes, "physical work of the passes: decode context from "+countList(src))
	}
	if uniform > 0 {
		notes = append(notes, fmt.Sprintf("%d passes had no measured expert activation (vLLM without MOE_CAP_ENABLE_EXPERT_PATCHING): uniform routing assumed for their physical work", uniform))
	}
	if actScale != 1 {
		notes = append(notes, fmt.Sprintf("SGLang's expert_activation is averaged over all %d layers, dense ones included: the physical work uses it ×%d/%d, per MoE layer", m.Layers, m.Layers, m.MoELayers()))
	}
	if mixed > 0 {
		notes = append(notes, fmt.Sprintf("%d mixed steps (prefill and decode in one pass) counted as decode steps of their decoded sequences: their prefill work is not counted, so physical decode S-MBU/S-MFU are a lower bound", mixed))
	}
	if idle > 0 {
		notes = append(notes, fmt.Sprintf("%d idle steps (forward_mode %q: no request scheduled) are no decode step for the physical numbers and floors; the MoE-CAP numbers count them as decode, as upstream does", idle, "unknown"))
	}
	return pre, dec, notes
}

// physUtil is Σ work / Σ latency: the share of peak the passes used over the time they
// ran (time-weighted, so a long pass counts for its length).
func physUtil(m config.Model, hw config.Hardware, ps []recordedPass) (smbu, smfu float64, bound string) {
	var w passcost.Work
	var t float64
	for _, p := range ps {
		w = w.Add(p.work)
		t += p.p.latency
	}
	peaks := passcost.PeaksOf(m, hw)
	smbu, smfu = passcost.Util(w, peaks, t)
	bound = passcost.TimeOf(w, peaks).Bound
	return smbu, smfu, bound
}

// decodeFloorFromRecords is the TPOT floor of what ran: one decode step at the records'
// mean batch, mean context per sequence and mean activation.
func decodeFloorFromRecords(m config.Model, hw config.Hardware, dec []recordedPass) (passcost.Time, float64, float64, float64) {
	var b, ctx, act float64
	n := 1
	for _, p := range dec {
		b += p.batch
		ctx += p.ctxSum
		act += p.act
		n = p.gpus
	}
	k := float64(len(dec))
	meanB, meanCtx, meanAct := b/k, ctx/b, act/k
	return passcost.TimeOf(passcost.Decode(m, n, meanB, meanB*meanCtx, meanAct), passcost.PeaksOf(m, hw)), meanB, meanCtx, meanAct
}

// ttftFloorFromRecords is the TTFT floor of what ran, per request: the floors of the
// prefill passes it took part in, up to the one that gave its first token (a request waits
// for the whole wave it was prefilled with), averaged over requests. Passes without
// per-request info count once each.
func ttftFloorFromRecords(m config.Model, hw config.Hardware, pre []recordedPass) (float64, int) {
	peaks := passcost.PeaksOf(m, hw)
	return perRequestPrefill(pre, func(p recordedPass) float64 { return passcost.TimeOf(p.work, peaks).Seconds })
}

// ttftFromRecords is the server-side TTFT of what ran, the way MoE-CAP measures it: per
// request, the latencies of the prefill passes it took part in, averaged over requests.
func ttftFromRecords(pre []recordedPass) (float64, int) {
	return perRequestPrefill(pre, func(p recordedPass) float64 { return p.p.latency })
}

// perRequestPrefill is records.PerRequestPrefill over capmath's prefill passes: passes
// without per-request info count once each.
func perRequestPrefill(pre []recordedPass, f func(recordedPass) float64) (float64, int) {
	return records.PerRequestPrefill(pre, func(p recordedPass) ([]string, []bool) { return p.ids, p.last }, f, true)
}
