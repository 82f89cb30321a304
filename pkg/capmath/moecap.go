package capmath

import (
	"github.com/moecapd/moecapd/pkg/records"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// This file computes S-MBU and S-MFU the way upstream MoE-CAP does (moe_cap/utils,
// continuous_batching_utils and basic_utils at e9e0d88), so results compare with published
// MoE-CAP tables. Its conventions are not physics and its values may exceed 1 (see
// docs/DESIGN.md "MoE-CAP-compatible utilisation"):
//
//   - one routed expert per token in the FLOP term, not k;
//   - the attention term of a pass uses seq_lens_sum, the whole batch's context, for every
//     token (an over-count of about the batch size);
//   - the formula family is chosen by the model's name: "Qwen3" → qwen3, "Qwen" → qwen
//     (shared expert in every layer), "DeepSeek" → deepseek (two shared experts, whatever the
//     config says), anything else → default (no shared experts, no dense layers);
//   - KV bytes at the weights' precision (1 byte for an fp8 checkpoint);
//   - no LM head;
//   - prefill per request when records carry per_req_info (each request charged the whole
//     latency of every pass it took part in), else per pass.
//
// Values are plain averages over passes (decode) or requests (prefill), as upstream's.

type moecapFamily int

const (
	famDefault moecapFamily = iota
	famQwen
	famQwen3
	famDeepSeek
)

// moecapModel holds upstream's per-model sizes (parameter counts, not TB as upstream
// writes them: the 1e12 factors cancel).
type moecapModel struct {
	fam               moecapFamily
	layers            float64
	attn, expert      float64
	shared            float64 // qwen: the shared expert; deepseek: 2 × expert
	denseFFN          float64 // deepseek, qwen3
	moeLayers, dense  float64
	kvElems           float64 // KV elements per token
	bytes             float64 // upstream's "precision" (bytes per weight, also for KV)
	scoreK, scoreV    float64 // attention score per context token: QK and AV parts
	peakBW, peakFLOPs float64
}

func newMoECAPModel(m config.Model, hw config.Hardware) moecapModel {
	name := m.HFID
	mm := moecapModel{layers: float64(m.Layers), bytes: m.WeightBytes, peakBW: hw.HBMBandwidth, peakFLOPs: hw.BF16FLOPs}
	if m.Precision == "mxfp4" {
		mm.bytes = 0.5 // upstream: 4-bit precisions are half a byte for every weight and the KV
	}
	switch {
	case strings.Contains(name, "Qwen3"):
		mm.fam = famQwen3
	case strings.Contains(name, "Qwen"):
		mm.fam = famQwen
	case strings.Contains(name, "DeepSeek"):
		mm.fam = famDeepSeek
	}
	// Upstream's peak: its table's value for the served precision, halved.
	if hw.MoECAPBF16FLOPs > 0 {
		mm.peakFLOPs = hw.MoECAPBF16FLOPs
	}
	if m.Precision == "mxfp4" && hw.MoECAPFP4FLOPs > 0 {
		mm.peakFLOPs = hw.MoECAPFP4FLOPs
	}
	if m.Precision == "fp8" {
		switch {
		case hw.MoECAPFP8FLOPs > 0:
			mm.peakFLOPs = hw.MoECAPFP8FLOPs
		case hw.FP8FLOPs > 0:
			mm.peakFLOPs = hw.FP8FLOPs
		}
	}
	d, h, hd, kv := float64(m.DModel), float64(m.Heads), float64(m.HeadDim), float64(m.KVHeads)
	l := float64(m.Layers)
	// The DeepSeek sizes apply when the name says DeepSeek and the config has MLA fields.
	mla := mm.fam == famDeepSeek && m.MLA()
	if mla {
		mm.attn = passcost.AttnParams(m) // the same low-rank count
		mm.kvElems = l * float64(m.KVLoraRank+m.QKRopeHeadDim)
		mm.scoreK = l * h * float64(m.QKNopeHeadDim+m.QKRopeHeadDim)
		mm.scoreV = l * h * float64(m.VHeadDim)
	} else {
		mm.attn = d*(h*hd+kv*hd*2) + h*hd*d
		mm.kvElems = 2 * l * hd * kv
		mm.scoreK = l * h * hd
		mm.scoreV = l * h * hd
	}
	mm.expert = float64(m.ExpertFFN) * 3 * d
	switch mm.fam {
	case famQwen:
		if m.SharedFFN > 0 {
			mm.shared = float64(m.SharedFFN) * 3 * d
		}
	case famQwen3:
		mm.moeLayers, mm.dense = float64(m.MoELayers()), float64(m.DenseLayers)
		mm.denseFFN = float64(m.DenseFFN) * 3 * d
	case famDeepSeek:
		if m.MLA() { // upstream's DeepSeek expert config needs its config fields
			mm.shared = float64(m.ExpertFFN) * 3 * d * 2
			mm.denseFFN = float64(m.DenseFFN) * 3 * d
			mm.dense = float64(m.DenseLayers)
			mm.moeLayers = l - mm.dense
		}
	}
	return mm
}

// weights is upstream's S-MBU weight term with act experts, and flopWeights its S-MFU one
// (one expert).
func (mm moecapModel) weights(act float64) float64 {
	switch mm.fam {
	case famQwen:
		return mm.layers * (act*mm.expert + mm.shared + mm.attn)
	case famQwen3:
		return mm.moeLayers*act*mm.expert + mm.dense*mm.denseFFN + mm.layers*mm.attn
	case famDeepSeek:
		return mm.layers*mm.attn + mm.moeLayers*(act*mm.expert+mm.shared) + mm.dense*mm.denseFFN
	}
	return mm.layers * (act*mm.expert + mm.attn)
}

func (mm moecapModel) flopWeights() float64 { return mm.weights(1) }

// score is upstream's attention score for ctx tokens of context and one output token.
func (mm moecapModel) score(ctx float64) float64 {
	// DeepSeek: ctx·L·H·(nope+rope) + ctx·L·H·v; otherwise ctx·L·H·hd·2 (the same sum).
	return ctx*mm.scoreK + ctx*mm.scoreV
}

// util is one upstream S-MBU/S-MFU pair: a pass (or a request) of latency t over ctx
// tokens (the KV and score term), act experts, tokensPerS throughput, on n GPUs.
func (mm moecapModel) util(t, ctx, act, tokensPerS float64, n int) (smbu, smfu float64) {
	g := float64(max(n, 1))
	smbu = (mm.weights(act) + ctx*mm.kvElems) * mm.bytes / t / (g * mm.peakBW)
	smfu = (mm.flopWeights() + mm.score(ctx)) * 2 * tokensPerS / (g * mm.peakFLOPs)
	return smbu, smfu
}

// MoECAPUtil is upstream's S-MBU/S-MFU for prefill and decode, with which prefill path it
// took ("per_request" or "per_pass"). ok is false for a mode without passes.
type MoECAPUtil struct {
	PrefillSMBU, PrefillSMFU float64
	DecodeSMBU, DecodeSMFU   float64
	HasPrefill, HasDecode    bool
	PrefillPath              string
}

// MoECAP computes upstream's numbers from passes (usablePasses: records without
// expert_activation are already left out, as upstream leaves them out). Upstream's mode
// rule is records.Mode.UpstreamDecode: every pass that is not a prefill ("decode", "mixed",
// vLLM's idle "unknown") is a decode step at its batch_size and seq_lens_sum.
func moeCAP(m config.Model, hw config.Hardware, gpus int, passes []pass) MoECAPUtil {
	mm := newMoECAPModel(m, hw)
	var out MoECAPUtil
	var pMBU, pMFU, dMBU, dMFU []float64
	ngpu := func(p *pass) int {
		if p.gpus > 0 {
			return p.gpus
		}
		return gpus
	}
	perReq := false
	for i := range passes {
		if passes[i].mode == records.Prefill && len(passes[i].chunks) > 0 {
			perReq = true
			break
		}
	}
	type acc struct {
		latency, extend, total, act float64
		gpus                        int
		done                        bool
	}
	reqs := map[string]*acc{}
	var order []string
	for i := range passes {
		p := &passes[i]
		if p.probe() {
			continue // warm-up and readiness probes
		}
		if p.mode.UpstreamDecode() {
			b, c := mm.util(p.latency, p.seqLensSum, p.act, p.batch/p.latency, ngpu(p))
			dMBU, dMFU = append(dMBU, b), append(dMFU, c)
			continue
		}
		if !perReq || len(p.chunks) == 0 {
			b, c := mm.util(p.latency, p.seqLensSum, p.act, p.seqLensSum/p.latency, ngpu(p))
			pMBU, pMFU = append(pMBU, b), append(pMFU, c)
			continue
		}
		for _, ri := range p.chunks {
			a := reqs[ri.key]
			if a == nil {
				a = &acc{}
				reqs[ri.key] = a
				order = append(order, ri.key)
			}
			a.latency += p.latency
			a.extend += ri.extend
			if ri.hasTotal {
				a.total = ri.total
			}
			a.act, a.gpus = p.act, ngpu(p)
			if ri.last {
				a.done = true
			}
		}
	}
	for _, id := range order {
		a := reqs[id]
		if !a.done || a.latency <= 0 {
			continue
		}
		tok := a.total
		if tok <= 0 {
			tok = a.extend
		}
		b, c := mm.util(a.latency, tok, a.act, tok/a.latency, a.gpus)
		pMBU, pMFU = append(pMBU, b), append(pMFU, c)
	}
	avg := func(xs []float64) float64 {
		s := 0.0
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs))
	}
	if len(pMBU) > 0 {
		out.HasPrefill, out.PrefillSMBU, out.PrefillSMFU = true, avg(pMBU), avg(pMFU)
		out.PrefillPath = "per_pass"
		if perReq {
			out.PrefillPath = "per_request"
		}
	}
	if len(dMBU) > 0 {
		out.HasDecode, out.DecodeSMBU, out.DecodeSMFU = true, avg(dMBU), avg(dMFU)
	}
	return out
}
