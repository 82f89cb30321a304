package capmath

import (
	"fmt"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
)

// DerivedVersion is the schema version of Derived (manifest extra "cap").
const DerivedVersion = 1

// Cell is what Derive needs to know about a cell and its measurements. Pointers are
// measurements that may be absent.
type Cell struct {
	Model        config.Model
	Hardware     config.Hardware
	GPUs         int
	BatchSize    int
	InputTokens  int
	OutputTokens int

	// Client metrics (milliseconds), nil when the bench produced none.
	MeanTPOTMs  *float64
	MeanTTFTMs  *float64
	LatencyKind string // "client" or "server_pass"
	// Expert activation and decode batch the client read from the server, if any.
	AvgActivationDecode  *float64
	AvgActivationPrefill *float64
	AvgDecodeBatchSize   *float64
	// For the rental cost: total output tokens and the bench duration.
	TotalOutputTokens int
	DurationS         float64
}

// Inputs are the numbers the derived values were computed from, stored beside them so a
// reader can redo the arithmetic.
type Inputs struct {
	Model           string  `json:"model"`
	Hardware        string  `json:"hardware_family"`
	GPUs            int     `json:"gpus"`
	Precision       string  `json:"precision"`
	BytesPerParam   float64 `json:"bytes_per_param"`
	PeakBandwidth   float64 `json:"peak_bandwidth_bytes_per_s"`
	PeakFLOPs       float64 `json:"peak_flops_per_s"`
	Layers          int     `json:"layers"`
	MoELayers       int     `json:"moe_layers"`
	DenseLayers     int     `json:"dense_layers"`
	Experts         int     `json:"experts"`
	TopK            int     `json:"top_k"`
	AttnParams      float64 `json:"attn_params_per_layer"`
	ExpertParams    float64 `json:"expert_params"`
	SharedParams    float64 `json:"shared_params_per_layer"`
	DenseFFNParams  float64 `json:"dense_ffn_params_per_layer"`
	KVBytesPerToken float64 `json:"kv_bytes_per_token"`
	BatchSize       int     `json:"batch_size"`
	InputTokens     int     `json:"input_tokens"`
	OutputTokens    int     `json:"output_tokens"`

	PrefillPasses int `json:"prefill_passes"`
	DecodePasses  int `json:"decode_passes"`
	// Means over the passes used (or the client-metric stand-ins; see Source).
	PrefillTokens     *float64 `json:"prefill_tokens_mean,omitempty"`
	PrefillLatencyS   *float64 `json:"prefill_latency_s_mean,omitempty"`
	PrefillActivation *float64 `json:"prefill_activation_mean,omitempty"`
	DecodeBatch       *float64 `json:"decode_batch_mean,omitempty"`
	DecodeSeqLensSum  *float64 `json:"decode_seq_lens_sum_mean,omitempty"`
	DecodeLatencyS    *float64 `json:"decode_latency_s_mean,omitempty"`
	DecodeActivation  *float64 `json:"decode_activation_mean,omitempty"`

	// FloorActivation is the routed experts per MoE layer the TPOT floor assumed, and
	// FloorActivationSource says where it came from ("measured" or "uniform routing").
	FloorActivation       float64 `json:"floor_activation"`
	FloorActivationSource string  `json:"floor_activation_source"`
	// FloorContext is the mean context per sequence during decode: input + (output−1)/2.
	FloorContext float64 `json:"floor_context_tokens"`
}

// Derived is a cell's CAP numbers: S-MBU/S-MFU for prefill and decode, the physical floors
// and how far the measurement is above them, the memory verdict and the rental cost.
// Utilisations are fractions (0.42 = 42%); nil means "could not be computed" (see Notes).
type Derived struct {
	Version int `json:"version"`
	// Source of the S-MBU/S-MFU inputs: "records" (server pass records), "client_metrics"
	// (mean TTFT/TPOT of the client; prefill then includes queueing, so it is a lower
	// bound) or "none".
	Source  string `json:"source"`
	Inputs  Inputs `json:"inputs"`
	Prefill *Util  `json:"prefill,omitempty"`
	Decode  *Util  `json:"decode,omitempty"`

	TPOTFloor   Floor   `json:"tpot_floor"`
	TTFTFloor   Floor   `json:"ttft_floor"`
	TPOTFloorMs float64 `json:"tpot_floor_ms"`
	TTFTFloorMs float64 `json:"ttft_floor_ms"`
	// Measured mean ÷ floor: 1 is the hardware's limit, 3 means three times slower.
	TPOTOverFloor *float64 `json:"tpot_over_floor,omitempty"`
	TTFTOverFloor *float64 `json:"ttft_over_floor,omitempty"`

	Feasible       bool    `json:"feasible"`
	MemNeedBytes   float64 `json:"memory_need_bytes"`
	MemHaveBytes   float64 `json:"memory_usable_bytes"`
	FeasibleReason string  `json:"feasible_reason"`

	// RentalCostPerMOutputTokensUSD is GPUs × gpu_hour_usd × bench hours per million output
	// tokens: a cost that needs no power telemetry.
	RentalCostPerMOutputTokensUSD *float64 `json:"rental_cost_per_million_output_tokens_usd,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

func ptr(f float64) *float64 { return &f }

// Derive computes a cell's CAP numbers from its pass records when recs holds any usable
// ones, else from the client metrics. recs may be nil.
func Derive(c Cell, recs *Records) (Derived, error) {
	m, hw := c.Model, c.Hardware
	if c.GPUs <= 0 {
		return Derived{}, fmt.Errorf("cell has %d GPUs: want at least 1", c.GPUs)
	}
	if hw.HBMBandwidth <= 0 || hw.BF16FLOPs <= 0 {
		return Derived{}, fmt.Errorf("hardware %q has no peak bandwidth or FLOPs in the table", hw.Family)
	}
	d := Derived{Version: DerivedVersion, Source: "none"}
	in := Inputs{
		Model: m.Key, Hardware: hw.Family, GPUs: c.GPUs, Precision: m.Precision,
		BytesPerParam: m.BytesPerParam(), PeakBandwidth: hw.HBMBandwidth, PeakFLOPs: hw.PeakFLOPs(m),
		Layers: m.Layers, MoELayers: m.MoELayers(), DenseLayers: m.DenseLayers,
		Experts: m.Experts, TopK: m.TopK, AttnParams: AttnParams(m), ExpertParams: m.ExpertParams(),
		SharedParams: SharedParams(m), DenseFFNParams: DenseFFNParams(m),
		KVBytesPerToken: m.KVBytesPerToken(), BatchSize: c.BatchSize,
		InputTokens: c.InputTokens, OutputTokens: c.OutputTokens,
	}

	var pre, dec []Pass
	if recs != nil {
		for _, p := range recs.Passes {
			if p.Mode == "prefill" {
				pre = append(pre, p)
			} else {
				dec = append(dec, p)
			}
		}
		if len(recs.Skipped) > 0 {
			var ks []string
			for k, n := range recs.Skipped {
				ks = append(ks, fmt.Sprintf("%d (%s)", n, k))
			}
			sort.Strings(ks)
			d.Notes = append(d.Notes, "pass records skipped: "+strings.Join(ks, ", "))
		}
	}
	in.PrefillPasses, in.DecodePasses = len(pre), len(dec)

	if len(pre)+len(dec) > 0 {
		d.Source = "records"
		var err error
		if d.Prefill, err = meanUtil(m, hw, c.GPUs, pre); err != nil {
			return Derived{}, err
		}
		if d.Decode, err = meanUtil(m, hw, c.GPUs, dec); err != nil {
			return Derived{}, err
		}
		if len(pre) > 0 {
			in.PrefillTokens = ptr(mean(pre, func(p Pass) float64 { return p.SeqLensSum }))
			in.PrefillLatencyS = ptr(mean(pre, func(p Pass) float64 { return p.LatencyS }))
			in.PrefillActivation = ptr(mean(pre, func(p Pass) float64 { return p.Activation }))
		}
		if len(dec) > 0 {
			in.DecodeBatch = ptr(mean(dec, func(p Pass) float64 { return p.BatchSize }))
			in.DecodeSeqLensSum = ptr(mean(dec, func(p Pass) float64 { return p.SeqLensSum }))
			in.DecodeLatencyS = ptr(mean(dec, func(p Pass) float64 { return p.LatencyS }))
			in.DecodeActivation = ptr(mean(dec, func(p Pass) float64 { return p.Activation }))
		}
	} else if c.MeanTPOTMs != nil || c.MeanTTFTMs != nil {
		d.Source = "client_metrics"
		d.Notes = append(d.Notes, "no pass records: S-MBU/S-MFU from the client's mean TPOT and TTFT, with the cell's nominal batch and lengths; client TTFT includes queueing, so prefill utilisation is a lower bound")
		ctx := float64(c.InputTokens) + float64(max(c.OutputTokens-1, 0))/2
		if c.MeanTPOTMs != nil && *c.MeanTPOTMs > 0 {
			b := float64(c.BatchSize)
			if c.AvgDecodeBatchSize != nil && *c.AvgDecodeBatchSize > 0 {
				b = *c.AvgDecodeBatchSize
			}
			act := ExpectedTouchedExperts(m.Experts, m.TopK, b)
			if c.AvgActivationDecode != nil {
				act = *c.AvgActivationDecode
			}
			p := Pass{Mode: "decode", BatchSize: b, LatencyS: *c.MeanTPOTMs / 1000, SeqLensSum: b * ctx, Activation: act}
			u, err := PassUtil(m, hw, c.GPUs, p)
			if err != nil {
				return Derived{}, err
			}
			d.Decode = &u
			in.DecodeBatch, in.DecodeSeqLensSum, in.DecodeLatencyS, in.DecodeActivation = ptr(b), ptr(p.SeqLensSum), ptr(p.LatencyS), ptr(act)
		}
		if c.MeanTTFTMs != nil && *c.MeanTTFTMs > 0 {
			tok := float64(c.InputTokens)
			act := ExpectedTouchedExperts(m.Experts, m.TopK, tok)
			if c.AvgActivationPrefill != nil {
				act = *c.AvgActivationPrefill
			}
			p := Pass{Mode: "prefill", BatchSize: 1, LatencyS: *c.MeanTTFTMs / 1000, SeqLensSum: tok, Activation: act}
			u, err := PassUtil(m, hw, c.GPUs, p)
			if err != nil {
				return Derived{}, err
			}
			d.Prefill = &u
			in.PrefillTokens, in.PrefillLatencyS, in.PrefillActivation = ptr(tok), ptr(p.LatencyS), ptr(act)
		}
	} else {
		d.Notes = append(d.Notes, "no pass records and no client latencies: S-MBU/S-MFU not computed")
	}

	// The floor: measured activation when the server told us, else uniform routing.
	in.FloorContext = float64(c.InputTokens) + float64(max(c.OutputTokens-1, 0))/2
	in.FloorActivation = ExpectedTouchedExperts(m.Experts, m.TopK, float64(c.BatchSize))
	in.FloorActivationSource = "uniform routing"
	if in.DecodeActivation != nil && (d.Source == "records" || c.AvgActivationDecode != nil) {
		in.FloorActivation = *in.DecodeActivation
		in.FloorActivationSource = "measured"
	}
	if c.BatchSize > 0 {
		d.TPOTFloor = DecodeFloor(m, hw, c.GPUs, float64(c.BatchSize), in.FloorContext, in.FloorActivation)
		d.TPOTFloorMs = d.TPOTFloor.Seconds * 1000
	}
	if c.InputTokens > 0 {
		d.TTFTFloor = PrefillFloor(m, hw, c.GPUs, float64(c.InputTokens))
		d.TTFTFloorMs = d.TTFTFloor.Seconds * 1000
	}
	if c.MeanTPOTMs != nil && *c.MeanTPOTMs > 0 && d.TPOTFloorMs > 0 {
		d.TPOTOverFloor = ptr(*c.MeanTPOTMs / d.TPOTFloorMs)
	}
	if c.MeanTTFTMs != nil && *c.MeanTTFTMs > 0 && d.TTFTFloorMs > 0 {
		d.TTFTOverFloor = ptr(*c.MeanTTFTMs / d.TTFTFloorMs)
	}
	if c.LatencyKind == "server_pass" {
		d.Notes = append(d.Notes, "TTFT/TPOT are MoE-CAP server pass latencies, not client latencies")
	}

	d.Feasible, d.MemNeedBytes, d.MemHaveBytes, d.FeasibleReason = Feasible(m, hw, c.GPUs, c.BatchSize, c.InputTokens, c.OutputTokens)

	if hw.GPUHourUSD > 0 && c.DurationS > 0 && c.TotalOutputTokens > 0 {
		usd := float64(c.GPUs) * hw.GPUHourUSD * c.DurationS / 3600
		d.RentalCostPerMOutputTokensUSD = ptr(usd / float64(c.TotalOutputTokens) * 1e6)
	}
	d.Inputs = in
	return d, nil
}

// meanUtil averages per-pass utilisations, as MoE-CAP does (each pass counts once,
// whatever its length). nil when there are no passes.
func meanUtil(m config.Model, hw config.Hardware, gpus int, ps []Pass) (*Util, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	var s Util
	for _, p := range ps {
		u, err := PassUtil(m, hw, gpus, p)
		if err != nil {
			return nil, err
		}
		s.SMBU += u.SMBU
		s.SMFU += u.SMFU
	}
	n := float64(len(ps))
	return &Util{SMBU: s.SMBU / n, SMFU: s.SMFU / n}, nil
}

func mean(ps []Pass, f func(Pass) float64) float64 {
	var s float64
	for _, p := range ps {
		s += f(p)
	}
	return s / float64(len(ps))
}
