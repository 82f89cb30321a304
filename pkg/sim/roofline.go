package sim

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
)

// Cost is the work of one forward pass: bytes moved through HBM and floating-point
// operations. The pass takes as long as the slower of the two on the hardware.
type Cost struct {
	Bytes float64
	FLOPs float64
}

// Duration is the roofline time of c on tp GPUs of hw: weights and KV cache are sharded
// over the TP group, so bandwidth and compute add up.
func (c Cost) Duration(m config.Model, hw config.Hardware, tp int) time.Duration {
	if tp < 1 {
		tp = 1
	}
	n := float64(tp)
	sec := math.Max(c.Bytes/(n*hw.HBMBandwidth), c.FLOPs/(n*hw.PeakFLOPs(m)))
	return time.Duration(sec * float64(time.Second))
}

// ExpectedActiveExperts is the mean number of distinct routed experts one MoE layer
// touches when tokens tokens each pick topK of experts uniformly: E·(1−(1−k/E)^tokens).
// Real routers are skewed, so measured activation is a bit lower; uniform routing is the
// worst case for bandwidth, which is what a floor should assume.
func ExpectedActiveExperts(experts, topK int, tokens float64) float64 {
	if tokens <= 0 || experts <= 0 {
		return 0
	}
	e := float64(experts)
	return e * (1 - math.Pow(1-float64(topK)/e, tokens))
}

// denseParams are the weights every token passes through: attention in every layer, the
// dense FFN of the first layers, shared experts and the router of each MoE layer.
func denseParams(m config.Model) float64 {
	d := float64(m.DModel)
	p := float64(m.Layers) * m.AttnParams()
	p += float64(m.DenseLayers) * 3 * float64(m.DenseFFN) * d
	p += float64(m.MoELayers()) * (3*float64(m.SharedFFN)*d + float64(m.Experts)*d)
	return p
}

// lmHeadParams is the output projection. Decode reads it whole every step (it is ~12% of
// Qwen1.5-MoE's active weights), which MoE-CAP's S-MBU leaves out; the embedding table is
// only gathered row by row and is not counted.
func lmHeadParams(m config.Model) float64 { return float64(m.Vocab) * float64(m.DModel) }

// attnScoreFLOPs is QKᵀ plus AV for one query token attending to ctx positions, all layers.
func attnScoreFLOPs(m config.Model, ctx float64) float64 {
	return 4 * float64(m.Layers) * float64(m.Heads) * float64(m.HeadDim) * ctx
}

// DecodeCost is one decode step of batch requests whose contexts hold kvTokens tokens in
// total: all always-active weights, the expected touched experts of every MoE layer and
// the whole KV cache are read once; each request computes one token.
func DecodeCost(m config.Model, batch int, kvTokens float64) Cost {
	if batch < 1 {
		return Cost{}
	}
	b := float64(batch)
	moe := float64(m.MoELayers())
	touched := ExpectedActiveExperts(m.Experts, m.TopK, b)
	params := denseParams(m) + moe*touched*m.ExpertParams() + lmHeadParams(m)
	perToken := denseParams(m) + moe*float64(m.TopK)*m.ExpertParams() + lmHeadParams(m)
	return Cost{
		Bytes: params*m.BytesPerParam() + kvTokens*m.KVBytesPerToken(),
		FLOPs: 2*perToken*b + attnScoreFLOPs(m, kvTokens),
	}
}

// PrefillCost is one prefill pass over whole prompts of the given lengths (no prefix
// cache): every prompt token goes through the always-active weights and its k experts,
// attends causally to the tokens before it, and writes its KV entry; logits are computed
// for the last token of each prompt only.
func PrefillCost(m config.Model, prompts []int) Cost {
	var tokens, scores float64
	for _, n := range prompts {
		t := float64(n)
		tokens += t
		scores += attnScoreFLOPs(m, t) * (t + 1) / 2
	}
	if tokens == 0 {
		return Cost{}
	}
	moe := float64(m.MoELayers())
	touched := ExpectedActiveExperts(m.Experts, m.TopK, tokens)
	bytes := (denseParams(m)+moe*touched*m.ExpertParams()+lmHeadParams(m))*m.BytesPerParam() +
		tokens*m.KVBytesPerToken()
	perToken := denseParams(m) + moe*float64(m.TopK)*m.ExpertParams()
	flops := 2*perToken*tokens + 2*lmHeadParams(m)*float64(len(prompts)) + scores
	return Cost{Bytes: bytes, FLOPs: flops}
}

// StepTimes is the roofline of one cell: batch requests that each hold ctxLen tokens of
// context. prefillPerToken is the prefill pass over batch prompts of ctxLen tokens divided
// by the tokens it processes; decodeStep is one decode step of the whole batch.
func StepTimes(m config.Model, hw config.Hardware, tp, batch, ctxLen int) (prefillPerToken, decodeStep time.Duration) {
	if batch < 1 || ctxLen < 1 {
		return 0, 0
	}
	prompts := make([]int, batch)
	for i := range prompts {
		prompts[i] = ctxLen
	}
	pre := PrefillCost(m, prompts).Duration(m, hw, tp)
	prefillPerToken = pre / time.Duration(batch*ctxLen)
	decodeStep = DecodeCost(m, batch, float64(batch*ctxLen)).Duration(m, hw, tp)
	return prefillPerToken, decodeStep
}

// GPURawType is the GPU name the way MoE-CAP's get_gpu_details formats it (spaces to
// dashes, any "<n>GB" part moved to the end as the rounded memory size), e.g.
// "NVIDIA-H100-HBM3-80GB"; MoE-CAP looks its bandwidth tables up by this string.
func GPURawType(hw config.Hardware) string {
	name := hw.Name
	if name == "" {
		name = "NVIDIA " + hw.Family
	}
	var parts []string
	for _, p := range strings.FieldsFunc(name, func(r rune) bool { return r == ' ' || r == '-' }) {
		if n, ok := strings.CutSuffix(p, "GB"); ok && n != "" && strings.Trim(n, "0123456789") == "" {
			continue
		}
		parts = append(parts, p)
	}
	gb := int(math.Round(hw.MemoryBytes / (1 << 30)))
	return strings.Join(parts, "-") + "-" + strconv.Itoa(gb) + "GB"
}
