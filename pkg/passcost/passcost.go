// Package passcost is moecapd's one model of what a forward pass costs on the hardware:
// the bytes it moves through HBM and the FLOPs it does, per GPU of a tensor-parallel group,
// and the time those take at peak. The simulated server's timing, the floors, the matrix
// estimates, the feasibility prediction and the physical S-MBU/S-MFU all come from here,
// so "× floor" and "utilisation" mean the same thing everywhere. docs/DESIGN.md states
// every formula; the tests recompute a table of them by hand.
//
// Units: parameter counts are plain counts; bytes, FLOPs, seconds, bytes/s and FLOP/s.
package passcost

import (
	"fmt"
	"math"

	"github.com/moecapd/moecapd/pkg/config"
)

// AttnParams is the weight count of one attention block (A).
//
//	GQA/MHA: d·H·hd (q) + 2·d·KV·hd (k, v) + H·hd·d (o)
//	MLA:     q: d·q_lora + q_lora·H·(nope+rope)  (or d·H·(nope+rope) without q compression)
//	         kv: d·(kv_lora+rope) + kv_lora·H·(nope+v);  o: H·v·d
func AttnParams(m config.Model) float64 {
	d, h := float64(m.DModel), float64(m.Heads)
	if !m.MLA() {
		hd, kv := float64(m.HeadDim), float64(m.KVHeads)
		return d*h*hd + 2*d*kv*hd + h*hd*d
	}
	nope, rope, v := float64(m.QKNopeHeadDim), float64(m.QKRopeHeadDim), float64(m.VHeadDim)
	kvl, ql := float64(m.KVLoraRank), float64(m.QLoraRank)
	q := d * h * (nope + rope)
	if ql > 0 {
		q = d*ql + ql*h*(nope+rope)
	}
	return q + d*(kvl+rope) + kvl*h*(nope+v) + h*v*d
}

// ExpertParams is one routed expert (X = 3·expert_ffn·d: gate, up, down).
func ExpertParams(m config.Model) float64 { return 3 * float64(m.ExpertFFN) * float64(m.DModel) }

// SharedParams is the always-active shared experts of one MoE layer (Sh).
func SharedParams(m config.Model) float64 { return 3 * float64(m.SharedFFN) * float64(m.DModel) }

// DenseFFNParams is the FFN of one dense layer (D).
func DenseFFNParams(m config.Model) float64 { return 3 * float64(m.DenseFFN) * float64(m.DModel) }

// RouterParams is the router (gate) of one MoE layer: E·d.
func RouterParams(m config.Model) float64 { return float64(m.Experts) * float64(m.DModel) }

// LMHeadParams is the output projection V·d.
func LMHeadParams(m config.Model) float64 { return float64(m.Vocab) * float64(m.DModel) }

// layerParams is every layer's weights a batch reads when act routed experts are touched
// per MoE layer: L·A + Lm·(act·X + Sh + router) + Ld·D.
func layerParams(m config.Model, act float64) float64 {
	return float64(m.Layers)*AttnParams(m) +
		float64(m.MoELayers())*(act*ExpertParams(m)+SharedParams(m)+RouterParams(m)) +
		float64(m.DenseLayers)*DenseFFNParams(m)
}

// TotalParams is the whole checkpoint: every layer with all experts, the embedding and the
// LM head (once when tied).
func TotalParams(m config.Model) float64 {
	emb := 2 * LMHeadParams(m)
	if m.TiedEmbeddings {
		emb = LMHeadParams(m)
	}
	return layerParams(m, float64(m.Experts)) + emb
}

// ActivatedParams is what one token passes through: every layer with k routed experts, and
// the LM head. The input embedding is a row lookup, not a matrix a token passes through.
// DeepSeek and Mistral publish this count ("37B activated").
func ActivatedParams(m config.Model) float64 {
	return layerParams(m, float64(m.TopK)) + LMHeadParams(m)
}

// ActivatedParamsWithEmbedding adds the input embedding table, the way Qwen publishes its
// activated count ("A2.7B").
func ActivatedParamsWithEmbedding(m config.Model) float64 {
	if m.TiedEmbeddings {
		return ActivatedParams(m)
	}
	return ActivatedParams(m) + LMHeadParams(m)
}

// weightBytes is the bytes of the layer weights with act routed experts plus the LM head:
// routed experts at their own width (MXFP4 for GPT-OSS), the rest at the checkpoint's.
func weightBytes(m config.Model, act float64) float64 {
	experts := float64(m.MoELayers()) * act * ExpertParams(m)
	return (layerParams(m, act)-experts+LMHeadParams(m))*m.WeightBytes + experts*m.ExpertBytes()
}

// WeightBytes is the checkpoint's size in memory.
func WeightBytes(m config.Model) float64 {
	emb := 0.0
	if !m.TiedEmbeddings {
		emb = LMHeadParams(m) * m.WeightBytes // the input embedding besides the LM head
	}
	return weightBytes(m, float64(m.Experts)) + emb
}

// KVBytesPerToken is one token's KV cache over all layers, whole model (kv):
// MLA L·(kv_lora+rope)·e, GQA 2·L·KV·hd·e, with e the KV element width.
func KVBytesPerToken(m config.Model) float64 {
	if m.MLA() {
		return float64(m.Layers) * float64(m.KVLoraRank+m.QKRopeHeadDim) * m.KVElemBytes
	}
	return 2 * float64(m.Layers) * float64(m.KVHeads) * float64(m.HeadDim) * m.KVElemBytes
}

// KVBytesPerTokenPerGPU is what one GPU of a TP group of n holds and reads per token: GQA
// KV heads split over the GPUs (a GPU holds at least one head), the MLA latent whole on
// every GPU (it has no heads to split).
func KVBytesPerTokenPerGPU(m config.Model, n int) float64 {
	if m.MLA() || n <= 1 {
		return KVBytesPerToken(m)
	}
	per := math.Ceil(float64(m.KVHeads) / float64(n))
	return 2 * float64(m.Layers) * per * float64(m.HeadDim) * m.KVElemBytes
}

// fullShare and slideShare split the layers into full-attention and sliding-window ones.
func fullShare(m config.Model) float64 {
	if m.SlidingLayers <= 0 || m.SlidingWindow <= 0 || m.Layers <= 0 {
		return 1
	}
	return float64(m.Layers-m.SlidingLayers) / float64(m.Layers)
}

// kvTokens is how many positions' KV (all layers' worth) a batch of sequences with
// contexts summing to ctxSum holds and reads: every position in full-attention layers, at
// most the window per sequence in sliding-window ones (exact when the contexts are equal or
// all at least the window).
func kvTokens(m config.Model, batch, ctxSum float64) float64 {
	f := fullShare(m)
	if f == 1 || batch <= 0 {
		return ctxSum
	}
	return f*ctxSum + (1-f)*batch*math.Min(ctxSum/batch, float64(m.SlidingWindow))
}

// KVBytesPerSeqPerGPU is the KV cache of one sequence of seqLen tokens on one GPU.
func KVBytesPerSeqPerGPU(m config.Model, n, seqLen int) float64 {
	return kvTokens(m, 1, float64(seqLen)) * KVBytesPerTokenPerGPU(m, n)
}

// windowPairs is Σ over queries at positions p+1..p+e of min(position, w): the keys a
// sliding-window layer's queries attend to.
func windowPairs(e, p, w float64) float64 {
	lo, hi := p+1, p+e
	if hi <= w {
		return (lo + hi) * e / 2
	}
	if lo > w {
		return e * w
	}
	return (lo+w)*(w-lo+1)/2 + (hi-w)*w
}

// TouchedExperts is how many of E experts tokens routed top-k touch in one MoE layer, in
// expectation, with uniform independent routing: E·(1−(1−k/E)^tokens).
func TouchedExperts(experts, topK int, tokens float64) float64 {
	if experts <= 0 || topK <= 0 || tokens <= 0 {
		return 0
	}
	e, k := float64(experts), float64(topK)
	return e * (1 - math.Pow(1-k/e, tokens))
}

// attnFLOPsPerPair is 2·L·H·(d_qk+d_v): QKᵀ and AV of one query against one key, all
// layers and heads.
func attnFLOPsPerPair(m config.Model) float64 {
	return 2 * float64(m.Layers) * float64(m.Heads) * float64(m.QKHeadDim()+m.VDim())
}

// decodeAttnFLOPsPerPair is attnFLOPsPerPair for one decode query. MLA decode kernels run
// the absorbed form: W_UK is folded into the query and W_UV applied after the attention
// (those multiplies are the kv_lora·H·(nope+v) weights of A, counted per token in the
// linear FLOPs), so each head scores and averages against the cached latent itself:
// QKᵀ over kv_lora+rope, AV over kv_lora, i.e. 2·L·H·(2·kv_lora + rope) per pair.
// Prefill runs the non-absorbed form (attnFLOPsPerPair). Other attention is the same in
// both phases.
func decodeAttnFLOPsPerPair(m config.Model) float64 {
	if !m.MLA() {
		return attnFLOPsPerPair(m)
	}
	return 2 * float64(m.Layers) * float64(m.Heads) * float64(2*m.KVLoraRank+m.QKRopeHeadDim)
}

// Work is one pass as one GPU of the TP group sees it.
type Work struct {
	GPUs        int     `json:"gpus"`
	WeightBytes float64 `json:"weight_bytes"` // weights read, per GPU
	KVBytes     float64 `json:"kv_bytes"`     // KV cache read and written, per GPU
	LinearFLOPs float64 `json:"linear_flops"` // matrix multiplies with the weights, per GPU
	AttnFLOPs   float64 `json:"attn_flops"`   // QKᵀ and AV, per GPU
}

// Add sums two passes' work (same GPU count).
func (w Work) Add(o Work) Work {
	return Work{GPUs: max(w.GPUs, o.GPUs), WeightBytes: w.WeightBytes + o.WeightBytes, KVBytes: w.KVBytes + o.KVBytes,
		LinearFLOPs: w.LinearFLOPs + o.LinearFLOPs, AttnFLOPs: w.AttnFLOPs + o.AttnFLOPs}
}

// Bytes is all HBM traffic of the pass, per GPU.
func (w Work) Bytes() float64 { return w.WeightBytes + w.KVBytes }

// Decode is one decode step of batch sequences whose contexts (positions each new token
// attends to, itself included) sum to ctxSum, on n GPUs, with act routed experts touched
// per MoE layer (TouchedExperts(E, k, batch) when not measured).
//
//	bytes = (L·A + Lm·(act·X + Sh + router) + Ld·D + V·d)·b / n + ctxSum·kv_gpu
//	FLOPs = 2·batch·(L·A + Lm·(k·X + Sh + router) + Ld·D + V·d) / n + 2·L·H·(d_qk+d_v)·ctxSum / n
//
// with d_qk+d_v = 2·kv_lora + rope for MLA (the absorbed form, decodeAttnFLOPsPerPair).
func Decode(m config.Model, n int, batch, ctxSum, act float64) Work {
	n = max(n, 1)
	g := float64(n)
	kv := kvTokens(m, batch, ctxSum)
	return Work{
		GPUs:        n,
		WeightBytes: weightBytes(m, act) / g,
		KVBytes:     kv * KVBytesPerTokenPerGPU(m, n),
		LinearFLOPs: 2 * batch * (layerParams(m, float64(m.TopK)) + LMHeadParams(m)) / g,
		AttnFLOPs:   decodeAttnFLOPsPerPair(m) * kv / g,
	}
}

// Chunk is one request's share of a prefill pass: Extend new tokens after Prefix tokens
// already in its KV cache (0 for a whole prompt); Last when its first token comes out of
// this pass (the LM head runs for it).
type Chunk struct {
	Extend, Prefix int
	Last           bool
}

// Prompts is whole prompts of the given lengths, one chunk each.
func Prompts(lens ...int) []Chunk {
	cs := make([]Chunk, len(lens))
	for i, l := range lens {
		cs[i] = Chunk{Extend: l, Last: true}
	}
	return cs
}

// Prefill is one prefill pass over chunks on n GPUs, with act routed experts touched per
// MoE layer (TouchedExperts(E, k, tokens) when not measured). Each request attends only to
// itself, causally: a chunk of e tokens after p attends to e·p + e·(e+1)/2 keys.
//
//	T     = Σ e_i
//	bytes = (L·A + Lm·(act·X + Sh + router) + Ld·D + V·d)·b / n + (T + Σ p_i)·kv_gpu
//	FLOPs = 2·T·(L·A + Lm·(k·X + Sh + router) + Ld·D) / n + 2·last·V·d / n
//	        + 2·L·H·(d_qk+d_v)·Σ (e_i·p_i + e_i·(e_i+1)/2) / n
func Prefill(m config.Model, n int, chunks []Chunk, act float64) Work {
	n = max(n, 1)
	g := float64(n)
	f := fullShare(m)
	w := float64(m.SlidingWindow)
	var tokens, prefix, pairs, last float64
	for _, c := range chunks {
		e, p := float64(c.Extend), float64(c.Prefix)
		tokens += e
		full := e*p + e*(e+1)/2
		if f == 1 {
			prefix += p
			pairs += full
		} else {
			// Sliding-window layers read at most the window of the prefix and attend to at
			// most the window per query.
			prefix += f*p + (1-f)*math.Min(p, w)
			pairs += f*full + (1-f)*windowPairs(e, p, w)
		}
		if c.Last {
			last++
		}
	}
	if tokens == 0 {
		return Work{GPUs: n}
	}
	return Work{
		GPUs:        n,
		WeightBytes: weightBytes(m, act) / g,
		KVBytes:     (tokens + prefix) * KVBytesPerTokenPerGPU(m, n),
		LinearFLOPs: (2*tokens*layerParams(m, float64(m.TopK)) + 2*last*LMHeadParams(m)) / g,
		AttnFLOPs:   attnFLOPsPerPair(m) * pairs / g,
	}
}

// Peaks are the per-GPU peaks a model's passes run at: HBM bandwidth, the linear layers'
// FLOP/s (fp8 tensor cores for an fp8 checkpoint on a GPU that has them, else bf16) and the
// attention's (bf16: attention runs against a bf16 KV cache).
type Peaks struct {
	Bandwidth   float64 `json:"bandwidth_bytes_per_s"`
	LinearFLOPs float64 `json:"linear_flops_per_s"`
	AttnFLOPs   float64 `json:"attn_flops_per_s"`
}

// PeaksOf picks the peaks for m on hw.
func PeaksOf(m config.Model, hw config.Hardware) Peaks {
	p := Peaks{Bandwidth: hw.HBMBandwidth, LinearFLOPs: hw.BF16FLOPs, AttnFLOPs: hw.BF16FLOPs}
	if m.FP8Linear && hw.FP8FLOPs > 0 {
		p.LinearFLOPs = hw.FP8FLOPs
	}
	return p
}

// Time is how long a pass takes at best: the slower of moving its bytes at peak bandwidth
// and doing its FLOPs at peak (each kind at its own precision's peak, one after the other).
type Time struct {
	// MemoryS and ComputeS are absent (0, omitted) where the time is not one pass's
	// roofline: a per-request TTFT floor sums the floors of several passes, each bound by
	// its own resource, so it has only Seconds.
	MemoryS  float64 `json:"memory_s,omitempty"`
	ComputeS float64 `json:"compute_s,omitempty"`
	Seconds  float64 `json:"seconds"`
	// Bound is "memory" or "compute": which limit set Seconds.
	Bound string `json:"bound"`
}

// TimeOf is the roofline time of w at peaks p.
func TimeOf(w Work, p Peaks) Time {
	t := Time{MemoryS: w.Bytes() / p.Bandwidth, ComputeS: w.LinearFLOPs/p.LinearFLOPs + w.AttnFLOPs/p.AttnFLOPs}
	t.Seconds, t.Bound = t.MemoryS, "memory"
	if t.ComputeS > t.MemoryS {
		t.Seconds, t.Bound = t.ComputeS, "compute"
	}
	return t
}

// Util is the physical utilisation of a pass (or a sum of passes) that took seconds:
// S-MBU = bytes per GPU / (seconds · bandwidth); S-MFU = compute time at peak / seconds
// (= FLOPs / (seconds · peak) when one precision does all the work). Work at the floor
// makes the binding one 1; above 1 is impossible.
func Util(w Work, p Peaks, seconds float64) (smbu, smfu float64) {
	t := TimeOf(w, p)
	return t.MemoryS / seconds, t.ComputeS / seconds
}

// UsableMemoryFraction is the share of each GPU's memory a server gives to weights and KV
// cache; the rest is the CUDA context, activations, CUDA graphs and allocator slack (SGLang's
// mem_fraction_static and vLLM's gpu_memory_utilization default to about 0.9).
const UsableMemoryFraction = 0.9

// Memory is a model's memory plan on one GPU of a TP group.
type Memory struct {
	GPUs             int     `json:"gpus"`
	WeightsPerGPU    float64 `json:"weights_bytes_per_gpu"`
	KVPerTokenPerGPU float64 `json:"kv_bytes_per_token_per_gpu"`
	UsablePerGPU     float64 `json:"usable_bytes_per_gpu"`
	// KVFreeBytes is what is left for the KV cache beside the weights, per GPU (≤ 0 when
	// the weights alone do not fit); KVCapacityTokens the tokens of full-attention KV that
	// fills it.
	KVFreeBytes      float64 `json:"kv_free_bytes_per_gpu"`
	KVCapacityTokens int64   `json:"kv_capacity_tokens"`
}

// MemoryOf plans m on n GPUs of hw: weights / n + KV per token per GPU · tokens ≤
// UsableMemoryFraction · GPU memory.
func MemoryOf(m config.Model, hw config.Hardware, n int) Memory {
	n = max(n, 1)
	mem := Memory{GPUs: n, WeightsPerGPU: WeightBytes(m) / float64(n), KVPerTokenPerGPU: KVBytesPerTokenPerGPU(m, n),
		UsablePerGPU: UsableMemoryFraction * hw.MemoryBytes}
	mem.KVFreeBytes = mem.UsablePerGPU - mem.WeightsPerGPU
	if mem.KVFreeBytes > 0 && mem.KVPerTokenPerGPU > 0 {
		mem.KVCapacityTokens = int64(mem.KVFreeBytes / mem.KVPerTokenPerGPU)
	}
	return mem
}

// Fit verdicts.
const (
	Fits         = "fits"          // batch requests fit at once
	UnderBatched = "under-batched" // only Concurrent < batch fit at once: the server runs fewer
	DoesNotFit   = "does-not-fit"  // the weights, or one request, do not fit: infeasible
)

// Fit is the memory verdict of a cell.
type Fit struct {
	Verdict string `json:"verdict"`
	// Concurrent is how many requests of in+out tokens are in flight at most (≤ batch; 0
	// when it does not fit).
	Concurrent int    `json:"max_concurrent_requests"`
	Memory     Memory `json:"memory"`
	// NeedPerGPU is weights plus the KV cache of the whole batch, per GPU.
	NeedPerGPU float64 `json:"need_bytes_per_gpu"`
	Reason     string  `json:"reason"`
}

// Feasibility decides whether batch requests of in input and out output tokens fit on n GPUs
// of hw, and how many at once when not all do. A server that cannot hold the batch admits
// fewer (SGLang and vLLM both do): that cell runs under-batched, it is not infeasible.
func Feasibility(m config.Model, hw config.Hardware, n, batch, in, out int) Fit {
	mem := MemoryOf(m, hw, n)
	seq := in + out
	perSeq := KVBytesPerSeqPerGPU(m, n, seq)
	f := Fit{Memory: mem, NeedPerGPU: mem.WeightsPerGPU + float64(batch)*perSeq}
	gb := func(b float64) string { return fmt.Sprintf("%.1f GB", b/1e9) }
	detail := fmt.Sprintf("per GPU: weights %s + KV %s for %d × %d tokens = %s vs %s usable (%.0f%% of %s) on %d GPU(s)",
		gb(mem.WeightsPerGPU), gb(float64(batch)*perSeq), batch, seq, gb(f.NeedPerGPU),
		gb(mem.UsablePerGPU), UsableMemoryFraction*100, gb(hw.MemoryBytes), mem.GPUs)
	switch {
	case batch <= 0 || n <= 0:
		f.Verdict, f.Reason = DoesNotFit, fmt.Sprintf("gpus %d, batch %d: both must be at least 1", n, batch)
	case m.MaxPositions > 0 && seq > m.MaxPositions:
		f.Verdict, f.Reason = DoesNotFit, fmt.Sprintf("does not fit: %d input + %d output tokens exceed the model's context window of %d", in, out, m.MaxPositions)
	case mem.WeightsPerGPU > mem.UsablePerGPU:
		f.Verdict, f.Reason = DoesNotFit, fmt.Sprintf("does not fit at all: the weights alone need %s per GPU, %s usable; use more GPUs (--tp) or a larger GPU", gb(mem.WeightsPerGPU), gb(mem.UsablePerGPU))
	case perSeq > mem.KVFreeBytes:
		f.Verdict, f.Reason = DoesNotFit, fmt.Sprintf("does not fit at all: one request of %d tokens needs %s of KV cache per GPU, %s left beside the weights", seq, gb(perSeq), gb(mem.KVFreeBytes))
	default:
		k := int(min(math.Floor(mem.KVFreeBytes/perSeq), float64(batch)))
		f.Concurrent = k
		if k < batch {
			f.Verdict, f.Reason = UnderBatched, fmt.Sprintf("fits only %d of %d requests at once: the server will run under-batched (at most %d in flight); %s", k, batch, k, detail)
		} else {
			f.Verdict, f.Reason = Fits, "fits: "+detail
		}
	}
	return f
}
