package capmath

import (
	"fmt"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// recordedPass is one recorded pass with the physical work it stands for (pkg/passcost).
type recordedPass struct {
	p      Pass
	gpus   int
	batch  float64 // decode: sequences; prefill: requests
	ctxSum float64 // decode: context positions over the batch
	tokens float64 // prefill: new tokens
	act    float64 // routed experts per MoE layer, as used
	chunks []passcost.Chunk
	ids    []string // prefill: the requests of the pass
	last   []bool   // prefill: whether the pass gave ids[i] its first token
	work   passcost.Work
}

// physicalPasses turns records into physical work. The context of a decode pass comes,
// best first, from the requests it served (req_ids, with each request's prompt_len from its
// prefill's per_req_info: a request's j-th decode attends to prompt + j positions), from
// seq_lens_sum when it holds the batch's context (SGLang), or from the cell's nominal
// lengths (vLLM's seq_lens_sum counts scheduled tokens, not context). Measured activation
// is used when the record has one (> 0), else uniform routing.
func physicalPasses(m config.Model, gpus int, passes []Pass, nominalCtx float64) (pre, dec []recordedPass, notes []string) {
	prompt := map[string]float64{}
	for _, p := range passes {
		for _, ri := range p.PerReqInfo {
			switch {
			case ri.PromptLen > 0:
				prompt[ri.ReqID] = ri.PromptLen
			case ri.IsLastChunk && ri.TotalLen > 0:
				prompt[ri.ReqID] = ri.TotalLen
			}
		}
	}
	steps := map[string]float64{}
	done := map[string]float64{} // prefill tokens of each request so far
	src := map[string]int{}
	uniform := 0
	for _, p := range passes {
		n := gpus
		if p.GPUs > 0 {
			n = p.GPUs
		}
		rp := recordedPass{p: p, gpus: n, batch: p.BatchSize, act: p.Activation}
		switch p.Mode {
		case "decode":
			if p.BatchSize <= 0 {
				src["decode pass without batch_size, left out"]++
				continue
			}
			known := len(p.ReqIDs) > 0 && float64(len(p.ReqIDs)) == p.BatchSize
			sum := 0.0
			for _, id := range p.ReqIDs {
				pl, ok := prompt[id]
				if !ok {
					known = false
				}
				steps[id]++
				sum += pl + steps[id]
			}
			switch {
			case known:
				rp.ctxSum = sum
				src["req_ids"]++
			case !(p.ScheduledTokens > 0 && p.SeqLensSum <= p.ScheduledTokens) && p.SeqLensSum > 0:
				rp.ctxSum = p.SeqLensSum
				src["seq_lens_sum"]++
			default:
				rp.ctxSum = p.BatchSize * nominalCtx
				src["nominal lengths"]++
			}
			if rp.act <= 0 {
				rp.act = passcost.TouchedExperts(m.Experts, m.TopK, p.BatchSize)
				uniform++
			}
			rp.work = passcost.Decode(m, n, rp.batch, rp.ctxSum, rp.act)
			dec = append(dec, rp)
		case "prefill":
			if p.SeqLensSum <= 10 {
				continue // warm-up and readiness probes, as MoE-CAP drops them
			}
			for _, ri := range p.PerReqInfo {
				// Tokens already in the request's KV cache: SGLang's total_len is the
				// running total (prefix cache hits included), vLLM's the prompt length,
				// so total_len − extend_len is the prefix on the last chunk and on any
				// chunk whose total_len is below the prompt; otherwise the chunks read so far.
				prefix := done[ri.ReqID]
				if t := ri.TotalLen - ri.ExtendLen; t >= 0 && (ri.IsLastChunk || ri.PromptLen == 0 || ri.TotalLen < ri.PromptLen) {
					prefix = t
				}
				done[ri.ReqID] = prefix + ri.ExtendLen
				rp.chunks = append(rp.chunks, passcost.Chunk{Extend: int(ri.ExtendLen), Prefix: int(prefix), Last: ri.IsLastChunk})
				rp.ids = append(rp.ids, ri.ReqID)
				rp.last = append(rp.last, ri.IsLastChunk)
				rp.tokens += ri.ExtendLen
			}
			if len(rp.chunks) == 0 {
				// No per-request split: batch_size whole prompts of equal length.
				b := max(int(p.BatchSize), 1)
				each := int(p.SeqLensSum) / b
				lens := make([]int, b)
				for i := range lens {
					lens[i] = each
				}
				rp.chunks = passcost.Prompts(lens...)
				rp.tokens = p.SeqLensSum
				src["prefill without per_req_info (equal prompts)"]++
			}
			if rp.act <= 0 {
				rp.act = passcost.TouchedExperts(m.Experts, m.TopK, rp.tokens)
				uniform++
			}
			rp.work = passcost.Prefill(m, n, rp.chunks, rp.act)
			pre = append(pre, rp)
		}
	}
	if len(src) > 0 {
		notes = append(notes, "physical work of the passes: decode context from "+countList(src))
	}
	if uniform > 0 {
		notes = append(notes, fmt.Sprintf("%d passes had no measured expert activation (vLLM without MOE_CAP_ENABLE_EXPERT_PATCHING): uniform routing assumed for their physical work", uniform))
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
		t += p.p.LatencyS
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
	return perRequestPrefill(pre, func(p recordedPass) float64 { return p.p.LatencyS })
}

// perRequestPrefill sums f over the prefill passes of each request up to its first token
// and averages over requests (passes without per-request info count once each).
func perRequestPrefill(pre []recordedPass, f func(recordedPass) float64) (float64, int) {
	acc := map[string]float64{}
	var done []float64
	var plain []float64
	for _, p := range pre {
		f := f(p)
		if len(p.ids) == 0 {
			plain = append(plain, f)
			continue
		}
		for i, id := range p.ids {
			acc[id] += f
			if p.last[i] {
				done = append(done, acc[id])
				delete(acc, id)
			}
		}
	}
	all := append(done, plain...)
	if len(all) == 0 {
		return 0, 0
	}
	s := 0.0
	for _, x := range all {
		s += x
	}
	return s / float64(len(all)), len(all)
}
