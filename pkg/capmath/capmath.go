// Package capmath is the arithmetic of MoE-CAP's sparse utilisation metrics (S-MBU, S-MFU),
// the physical floor of a cell (the fastest TPOT and TTFT the hardware allows) and the memory
// feasibility check. It is pure: numbers in, numbers out, no I/O except ReadRecords.
//
// Units throughout: bytes, FLOPs, seconds, bytes/s and FLOP/s. Parameter counts are plain
// counts (not bytes); multiply by Model.BytesPerParam for bytes.
package capmath

import (
	"fmt"
	"math"

	"github.com/moecapd/moecapd/pkg/config"
)

// AttnParams is the weight count of one attention block. For ordinary (GQA/MHA) models it is
// MoE-CAP's d·(H·d_head + 2·KV·d_head) + H·d_head·d. For MLA models (DeepSeek) that formula
// would count full-rank K/V projections the model does not have (2.5× too many for R1), so
// the low-rank factors are counted instead, as MoE-CAP's DeepSeek path does:
//
//	q:  d·q_lora + q_lora·H·(nope+rope)     (or d·H·(nope+rope) without q compression)
//	kv: d·(kv_lora+rope) + kv_lora·H·(nope+v)
//	o:  H·v·d
//
// The tables carry head_dim as the no-rope query/key dim and the value dim (128 for both
// DeepSeek models), so nope = v = head_dim.
func AttnParams(m config.Model) float64 {
	if !m.MLA() {
		return m.AttnParams()
	}
	d, h := float64(m.DModel), float64(m.Heads)
	nope, rope, v := float64(m.HeadDim), float64(m.QKRopeHeadDim), float64(m.HeadDim)
	kvl, ql := float64(m.KVLoraRank), float64(m.QLoraRank)
	var q float64
	if ql > 0 {
		q = d*ql + ql*h*(nope+rope)
	} else {
		q = d * h * (nope + rope)
	}
	kv := d*(kvl+rope) + kvl*h*(nope+v)
	o := h * v * d
	return q + kv + o
}

// SharedParams is the weight count of the always-active shared experts of one MoE layer.
func SharedParams(m config.Model) float64 { return 3 * float64(m.SharedFFN) * float64(m.DModel) }

// DenseFFNParams is the weight count of the FFN of one dense (non-MoE) layer.
func DenseFFNParams(m config.Model) float64 { return 3 * float64(m.DenseFFN) * float64(m.DModel) }

// ActiveParams is the weight count a forward pass must read when act routed experts are
// active per MoE layer: every layer's attention, every MoE layer's shared experts and act
// routed experts, every dense layer's FFN. This is the weight term of MoE-CAP's S-MBU
// numerator (its DeepSeek and Qwen variants; the generic one has no shared or dense term
// because those models have none).
func ActiveParams(m config.Model, act float64) float64 {
	moe := float64(m.MoELayers())
	return float64(m.Layers)*AttnParams(m) +
		moe*(act*m.ExpertParams()+SharedParams(m)) +
		float64(m.DenseLayers)*DenseFFNParams(m)
}

// TotalWeightBytes is the size of the full checkpoint in memory: every expert of every
// layer, attention, router, embeddings and LM head, at the model's precision.
func TotalWeightBytes(m config.Model) float64 {
	d := float64(m.DModel)
	p := float64(m.Layers)*AttnParams(m) + float64(m.DenseLayers)*DenseFFNParams(m)
	p += float64(m.MoELayers()) * (float64(m.Experts)*m.ExpertParams() + SharedParams(m) + float64(m.Experts)*d)
	p += 2 * float64(m.Vocab) * d
	return p * m.BytesPerParam()
}

// AttentionScore is MoE-CAP's attention-score term: the multiply-accumulates of QKᵀ and
// AV for one new token against ctx cached tokens, summed over layers (MoE-CAP's
// _calculate_attention_score with output_len = 1):
//
//	GQA/MHA: ctx · L·H·d_head · 2
//	MLA:     ctx · L·H·(nope+rope) + ctx · L·H·v
func AttentionScore(m config.Model, ctx float64) float64 {
	l, h := float64(m.Layers), float64(m.Heads)
	if m.MLA() {
		return ctx*l*h*(float64(m.HeadDim)+float64(m.QKRopeHeadDim)) + ctx*l*h*float64(m.HeadDim)
	}
	return ctx * l * h * float64(m.HeadDim) * 2
}

// ExpectedTouchedExperts is how many of E experts a batch of tokens routed top-k touches
// in one MoE layer, in expectation, when routing is uniform and independent per token:
// each expert is missed by one token with probability 1−k/E, by all of them with
// (1−k/E)^tokens, so E·(1−(1−k/E)^tokens) are touched. One token touches exactly k; a large
// batch touches nearly all E.
func ExpectedTouchedExperts(experts, topK int, tokens float64) float64 {
	if experts <= 0 || topK <= 0 || tokens <= 0 {
		return 0
	}
	e, k := float64(experts), float64(topK)
	return e * (1 - math.Pow(1-k/e, tokens))
}

// Pass is one server forward pass as MoE-CAP's wrappers record it.
type Pass struct {
	Mode       string  // "prefill" or "decode"
	BatchSize  float64 // sequences in the pass
	LatencyS   float64 // GPU time of the pass, seconds
	SeqLensSum float64 // decode: tokens of context over the batch; prefill: tokens prefilled
	// Activation is the mean number of routed experts active per MoE layer in the pass.
	Activation float64
	GPUs       int // gpu_num of the record; 0 means "use the cell's"
}

// Util is a pair of sparse utilisations, as fractions of peak (1.0 = 100%).
type Util struct {
	SMBU float64 `json:"s_mbu"`
	SMFU float64 `json:"s_mfu"`
}

// PassUtil is S-MBU and S-MFU of one pass, by MoE-CAP's formulas:
//
//	S-MBU = (ActiveParams(act)·bytes_per_param + ctx·kv_bytes_per_token) / t / (N·peak_bw)
//	S-MFU = (FLOPParams + AttentionScore(ctx)) · 2 · tokens_per_s / (N·peak_flops)
//
// where decode has t = latency, tokens/s = batch/t, ctx = seq_lens_sum (the whole batch's
// KV cache is read once); prefill has t = latency, tokens/s = seq_lens_sum/t and ctx =
// seq_lens_sum. FLOPParams = L·attn + MoE layers·(one expert + shared) + dense layers·FFN:
// MoE-CAP counts one routed expert per token (not top-k) and the whole batch's attention
// score per token; both are kept so numbers compare with MoE-CAP's. The KV cache is counted
// at its real width (bf16 even for FP8 weights) and peak_flops is the dense peak for the
// model's precision (FP8 for DeepSeek-R1 where the GPU has it).
func PassUtil(m config.Model, hw config.Hardware, gpus int, p Pass) (Util, error) {
	if p.GPUs > 0 {
		gpus = p.GPUs
	}
	if gpus <= 0 {
		return Util{}, fmt.Errorf("gpu count %d: want at least 1", gpus)
	}
	if p.LatencyS <= 0 {
		return Util{}, fmt.Errorf("%s pass latency %g s: want > 0", p.Mode, p.LatencyS)
	}
	var tokensPerS float64
	switch p.Mode {
	case "decode":
		tokensPerS = p.BatchSize / p.LatencyS
	case "prefill":
		tokensPerS = p.SeqLensSum / p.LatencyS
	default:
		return Util{}, fmt.Errorf("forward_mode %q: want prefill or decode", p.Mode)
	}
	n := float64(gpus)
	bytes := ActiveParams(m, p.Activation)*m.BytesPerParam() + p.SeqLensSum*m.KVBytesPerToken()
	smbu := bytes / p.LatencyS / (n * hw.HBMBandwidth)
	flops := (FLOPParams(m) + AttentionScore(m, p.SeqLensSum)) * 2 * tokensPerS
	smfu := flops / (n * hw.PeakFLOPs(m))
	return Util{SMBU: smbu, SMFU: smfu}, nil
}

// FLOPParams is the per-token weight count in MoE-CAP's S-MFU numerator: every layer's
// attention, one routed expert and the shared experts per MoE layer, the FFN of dense layers.
func FLOPParams(m config.Model) float64 {
	return float64(m.Layers)*AttnParams(m) +
		float64(m.MoELayers())*(m.ExpertParams()+SharedParams(m)) +
		float64(m.DenseLayers)*DenseFFNParams(m)
}

// Floor is the shortest time the hardware allows for a piece of work: the larger of the
// time to stream its bytes through HBM and the time to do its FLOPs at peak, on N GPUs that
// split both evenly (tensor parallelism; communication is free, so this is a lower bound).
type Floor struct {
	Seconds float64 `json:"seconds"`
	Bytes   float64 `json:"bytes"`
	FLOPs   float64 `json:"flops"`
	// Bound is "memory" or "compute": which of the two limits set Seconds.
	Bound string `json:"bound"`
}

func floorOf(bytes, flops float64, hw config.Hardware, m config.Model, gpus int) Floor {
	n := float64(gpus)
	tm := bytes / (n * hw.HBMBandwidth)
	tc := flops / (n * hw.PeakFLOPs(m))
	if tc > tm {
		return Floor{Seconds: tc, Bytes: bytes, FLOPs: flops, Bound: "compute"}
	}
	return Floor{Seconds: tm, Bytes: bytes, FLOPs: flops, Bound: "memory"}
}

// DecodeFloor is the lower bound of one decode step (= TPOT) for batch sequences that each
// hold ctx tokens of context, with act routed experts touched per MoE layer (pass
// ExpectedTouchedExperts(E, k, batch) when nothing was measured). Bytes: the active weights
// once per step plus every sequence's KV cache. FLOPs: per token, 2·(attention + top-k
// experts + shared + dense FFN) weights plus 2·AttentionScore of its context. The LM head is
// left out, as in the simulated server's roofline, so the bound stays a bound.
func DecodeFloor(m config.Model, hw config.Hardware, gpus int, batch, ctx, act float64) Floor {
	bytes := ActiveParams(m, act)*m.BytesPerParam() + batch*ctx*m.KVBytesPerToken()
	flops := batch * 2 * (ActiveParams(m, float64(m.TopK)) + AttentionScore(m, ctx))
	return floorOf(bytes, flops, hw, m, gpus)
}

// PrefillFloor is the lower bound of the TTFT of one request of tokens prompt tokens, alone
// on the GPUs: its FLOPs (2 per weight per token through attention, top-k experts, shared
// experts and dense FFNs, plus causal attention, on average tokens/2 keys per query) at
// peak, or the weights it must read at least once at full bandwidth, whichever is slower.
// Requests that queue behind others wait longer; this bounds every one of them.
func PrefillFloor(m config.Model, hw config.Hardware, gpus int, tokens float64) Floor {
	touched := ExpectedTouchedExperts(m.Experts, m.TopK, tokens)
	bytes := ActiveParams(m, touched)*m.BytesPerParam() + tokens*m.KVBytesPerToken()
	flops := tokens * 2 * (ActiveParams(m, float64(m.TopK)) + AttentionScore(m, tokens/2))
	return floorOf(bytes, flops, hw, m, gpus)
}

// UsableMemoryFraction is the share of each GPU's memory a server can give to weights and
// KV cache. The rest is the CUDA context, activations, CUDA graphs and allocator slack;
// SGLang and vLLM default to a static fraction of about 0.88-0.9 for the same reason.
const UsableMemoryFraction = 0.9

// Feasible reports whether a cell fits in memory: the full weights plus the KV cache of
// batch sequences of in+out tokens each, against UsableMemoryFraction of the GPUs' memory.
// It also refuses a sequence longer than the model's context window. need and have are in
// bytes; reason explains the verdict with the numbers either way.
func Feasible(m config.Model, hw config.Hardware, gpus, batch, in, out int) (ok bool, need, have float64, reason string) {
	w := TotalWeightBytes(m)
	kv := float64(batch) * float64(in+out) * m.KVBytesPerToken()
	need = w + kv
	have = float64(gpus) * hw.MemoryBytes * UsableMemoryFraction
	if gpus <= 0 || batch <= 0 {
		return false, need, have, fmt.Sprintf("gpus %d, batch %d: both must be at least 1", gpus, batch)
	}
	if m.MaxPositions > 0 && in+out > m.MaxPositions {
		return false, need, have, fmt.Sprintf("%d input + %d output tokens exceed the model's context window of %d", in, out, m.MaxPositions)
	}
	detail := fmt.Sprintf("weights %.1f GB + KV cache %.1f GB (%d × %d tokens) = %.1f GB vs %.1f GB usable (%.0f%% of %d × %.1f GB)",
		w/1e9, kv/1e9, batch, in+out, need/1e9, have/1e9, UsableMemoryFraction*100, gpus, hw.MemoryBytes/1e9)
	if need > have {
		return false, need, have, "does not fit: " + detail
	}
	return true, need, have, "fits: " + detail
}
