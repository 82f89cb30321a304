package capmath

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/records"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// DerivedVersion is the schema version of Derived (manifest extra "cap").
const DerivedVersion = 3

// PhysicalLimit is the highest physical utilisation shown as a result: above it the
// number is impossible (a bug or bad records) and is reported in Derived.Errors instead.
const PhysicalLimit = 1.01

// FloorLimit is the lowest measured ÷ floor ratio shown as a result: below it the latency
// beat the hardware (a sim that ran a pass short, a clock or unit error, records of other
// work) and the ratio is reported in Derived.Errors instead.
const FloorLimit = 0.98

// Cell is what Derive needs to know about a cell and its measurements. Pointers are
// measurements that may be absent.
type Cell struct {
	// Model is the cell's model; ModelErr, when set, says why it could not be described
	// (Model is then unused and the CAP numbers are absent with that reason).
	Model    config.Model
	ModelErr string
	Hardware config.Hardware
	GPUs     int

	BatchSize    int
	InputTokens  int
	OutputTokens int
	NumSamples   int

	// Flavor is the engine that wrote the records ("sglang" or "vllm"): SGLang averages
	// expert_activation over every layer, dense ones included.
	Flavor string

	// Ran is true for a cell that finished (status ok with metrics): only those get floors.
	Ran bool

	// Client latencies (milliseconds), nil when the client measured none.
	MeanTPOTMs *float64
	MeanTTFTMs *float64
	// Server forward-pass latencies (metrics.server_pass: MoE-CAP's ttft/tpot).
	ServerTPOTMs *float64
	ServerTTFTMs *float64
	LatencyKind  string // "client" or "server_pass"
	// Expert activation and decode batch the client read from the server, if any.
	AvgActivationDecode *float64
	AvgDecodeBatchSize  *float64
	// What the client saw of the load (profile.Metrics): mean requests in flight, and the
	// CPU its process used (fraction of its cores); nil when not measured.
	ClientInFlightMean *float64
	ClientCPUFraction  *float64

	// Cost inputs.
	TotalOutputTokens int
	WindowS           float64
	Window            string
	EnergyJ           *float64
	EnergySource      string
	Prices            *Prices // nil: the hardware table's

	// SimTimeScale is the sim's --sim-time-scale (0 or 1: real time); SimOverrides names
	// the sim's fixed pass times (--sim-tpot, --sim-ttft) when set.
	SimTimeScale float64
	SimOverrides []string
}

// Util is a pair of utilisations of one phase (fractions: 0.42 = 42%). S-MBU and S-MFU are
// physical (pkg/passcost: causal per-prompt attention, k experts per token, the LM head,
// MLA latent KV whole on every GPU, fp8 peak only for fp8 linear layers); nil when not
// computed or when impossible (then Derived.Errors holds the value and its likely cause).
// The *_moecap values are upstream MoE-CAP's, computed as upstream computes them; they may
// exceed 1 by its conventions.
type Util struct {
	SMBU  *float64 `json:"s_mbu,omitempty"`
	SMFU  *float64 `json:"s_mfu,omitempty"`
	Bound string   `json:"bound,omitempty"` // the binding resource of the phase: memory or compute

	SMBUMoECAP *float64 `json:"s_mbu_moecap,omitempty"`
	SMFUMoECAP *float64 `json:"s_mfu_moecap,omitempty"`
	// MoECAPPath is upstream's prefill path: "per_request" (records with per_req_info) or
	// "per_pass".
	MoECAPPath string `json:"moecap_path,omitempty"`
}

// Flag is a number that cannot be a result: its field, value, the limit it broke and the
// likely cause.
type Flag struct {
	Field string  `json:"field"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Cause string  `json:"cause"`
}

// Inputs are the numbers the derived values were computed from, so a reader can redo the
// arithmetic (docs/DESIGN.md).
type Inputs struct {
	Model           string         `json:"model"`
	ModelID         string         `json:"model_id"`
	ModelFamily     string         `json:"model_family"`
	ModelSource     string         `json:"model_source"`
	Precision       string         `json:"precision"`
	WeightBytes     float64        `json:"bytes_per_weight"`
	Hardware        string         `json:"hardware_family"`
	GPUs            int            `json:"gpus"`
	Peaks           passcost.Peaks `json:"peaks"`
	TotalParams     float64        `json:"total_params"`
	ActivatedParams float64        `json:"activated_params"`
	KVBytesPerToken float64        `json:"kv_bytes_per_token_per_gpu"`
	BatchSize       int            `json:"batch_size"`
	InputTokens     int            `json:"input_tokens"`
	OutputTokens    int            `json:"output_tokens"`

	PrefillPasses int `json:"prefill_passes"`
	DecodePasses  int `json:"decode_passes"`
	// What ran: the records' mean decode batch, mean context per sequence and mean
	// activation the TPOT floor uses.
	DecodeBatch      *float64 `json:"decode_batch_mean,omitempty"`
	DecodeBatchMax   *float64 `json:"decode_batch_max,omitempty"`
	DecodeContext    *float64 `json:"decode_context_mean,omitempty"`
	DecodeActivation *float64 `json:"decode_activation_mean,omitempty"`
	DecodeLatencyS   *float64 `json:"decode_latency_s_mean,omitempty"`
	// FloorSource says where the floors' batch and context came from: "records" or
	// "nominal" (the cell's batch, capped by memory, and lengths).
	FloorSource string `json:"floor_source,omitempty"`
	// TPOTMeasured says which TPOT tpot_over_floor divides: "client" or "server_pass" (the
	// MoE-CAP runner's, else the records' mean decode pass).
	TPOTMeasured string  `json:"tpot_measured,omitempty"`
	SimTimeScale float64 `json:"sim_time_scale,omitempty"`
}

// Prediction is what the pass-cost model expects of a cell before (or without) running it:
// its nominal batch (capped by memory) at its nominal lengths.
type Prediction struct {
	Batch int `json:"batch"`
	// TPOTMs and TTFTMs are absent when nothing can run (does-not-fit, no batch).
	TPOTMs *float64 `json:"tpot_ms,omitempty"`
	TTFTMs *float64 `json:"ttft_ms,omitempty"`
	// Fit is the memory verdict.
	Fit passcost.Fit `json:"fit"`
}

// Derived is a cell's CAP numbers (manifest extra.cap). Utilisations are fractions; nil
// means "not computed" (Notes say why). Floors exist only for cells that ran.
type Derived struct {
	Version int `json:"version"`
	// Absent says why there are no CAP numbers at all (the model cannot be described).
	Absent string `json:"absent,omitempty"`
	// Source of the utilisations: "records" (server pass records), "client_metrics" or
	// "none".
	Source  string `json:"source"`
	Inputs  Inputs `json:"inputs"`
	Prefill *Util  `json:"prefill,omitempty"`
	Decode  *Util  `json:"decode,omitempty"`
	// Errors lists impossible values (a physical utilisation above PhysicalLimit, a
	// measured ÷ floor ratio below FloorLimit), never shown as results.
	Errors []Flag `json:"errors,omitempty"`

	// Floors: the time the hardware needs for what really ran (cells that ran only).
	TPOTFloor   *passcost.Time `json:"tpot_floor,omitempty"`
	TTFTFloor   *passcost.Time `json:"ttft_floor,omitempty"`
	TPOTFloorMs *float64       `json:"tpot_floor_ms,omitempty"`
	TTFTFloorMs *float64       `json:"ttft_floor_ms,omitempty"`
	// Measured mean ÷ floor: 1 is the hardware's limit.
	TPOTOverFloor *float64 `json:"tpot_over_floor,omitempty"`
	TTFTOverFloor *float64 `json:"ttft_over_floor,omitempty"`
	// DecodePassOverFloor is the records' mean decode pass ÷ the TPOT floor.
	DecodePassOverFloor *float64 `json:"decode_pass_over_floor,omitempty"`

	Prediction *Prediction `json:"prediction,omitempty"`
	// Memory verdict (the prediction's, repeated for readers of v1): Feasible is false only
	// for "does-not-fit"; an under-batched cell is feasible with MaxConcurrent < batch.
	Feasible       bool    `json:"feasible"`
	FitVerdict     string  `json:"fit_verdict,omitempty"`
	MaxConcurrent  int     `json:"max_concurrent_requests,omitempty"`
	MemNeedBytes   float64 `json:"memory_need_bytes_per_gpu,omitempty"`
	MemHaveBytes   float64 `json:"memory_usable_bytes_per_gpu,omitempty"`
	FeasibleReason string  `json:"feasible_reason,omitempty"`

	Cost *Cost `json:"cost,omitempty"`

	// Load is the achieved mean decode batch next to the asked batch and K (cells that
	// ran); Flags holds "metric: reason" flags of values that are results but not what the
	// cell's label says (a load below LoadShortFraction of min(batch, K)).
	Load  *Load    `json:"load,omitempty"`
	Flags []string `json:"flags,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

func ptr(f float64) *float64 { return &f }

// Predict is the pass-cost model's expectation of a cell at its nominal batch (capped by
// what memory admits) and lengths: one decode step at context in + out/2, the prefill of a
// wave of that many prompts arriving together.
func Predict(m config.Model, hw config.Hardware, gpus, batch, in, out, samples int) Prediction {
	fit := passcost.Feasibility(m, hw, gpus, batch, in, out)
	p := Prediction{Fit: fit, Batch: batch}
	if fit.Verdict == passcost.UnderBatched {
		p.Batch = fit.Concurrent
	}
	if samples > 0 {
		p.Batch = min(p.Batch, samples)
	}
	if fit.Verdict == passcost.DoesNotFit || p.Batch <= 0 {
		return p
	}
	peaks := passcost.PeaksOf(m, hw)
	b := float64(p.Batch)
	ctx := float64(in) + float64(out)/2
	dec := passcost.Decode(m, gpus, b, b*ctx, passcost.TouchedExperts(m.Experts, m.TopK, b))
	p.TPOTMs = ptr(passcost.TimeOf(dec, peaks).Seconds * 1000)
	lens := make([]int, p.Batch)
	for i := range lens {
		lens[i] = in
	}
	pre := passcost.Prefill(m, gpus, passcost.Prompts(lens...), passcost.TouchedExperts(m.Experts, m.TopK, b*float64(in)))
	p.TTFTMs = ptr(passcost.TimeOf(pre, peaks).Seconds * 1000)
	return p
}

// Derive computes a cell's CAP numbers from its pass records when recs holds usable ones,
// else from the client metrics. set may be nil.
func Derive(c Cell, set *records.Set) (Derived, error) {
	d := Derived{Version: DerivedVersion, Source: "none"}
	if c.ModelErr != "" {
		d.Absent = c.ModelErr
		return d, nil
	}
	m, hw := c.Model, c.Hardware
	if c.GPUs <= 0 {
		return Derived{}, fmt.Errorf("cell has %d GPUs: want at least 1", c.GPUs)
	}
	if hw.HBMBandwidth <= 0 || hw.BF16FLOPs <= 0 {
		return Derived{}, fmt.Errorf("hardware %q has no peak bandwidth or FLOPs in the table", hw.Family)
	}
	peaks := passcost.PeaksOf(m, hw)
	in := Inputs{
		Model: m.Key, ModelID: m.HFID, ModelFamily: m.Family, ModelSource: m.Source, Precision: m.Precision,
		WeightBytes: m.WeightBytes, Hardware: hw.Family, GPUs: c.GPUs, Peaks: peaks,
		TotalParams: passcost.TotalParams(m), ActivatedParams: passcost.ActivatedParams(m),
		KVBytesPerToken: passcost.KVBytesPerTokenPerGPU(m, c.GPUs),
		BatchSize:       c.BatchSize, InputTokens: c.InputTokens, OutputTokens: c.OutputTokens,
	}
	scaled := c.SimTimeScale > 0 && c.SimTimeScale != 1
	if scaled {
		in.SimTimeScale = c.SimTimeScale
	}

	pr := Predict(m, hw, c.GPUs, c.BatchSize, c.InputTokens, c.OutputTokens, c.NumSamples)
	d.Prediction = &pr
	d.Feasible = pr.Fit.Verdict != passcost.DoesNotFit
	d.FitVerdict, d.MaxConcurrent = pr.Fit.Verdict, pr.Fit.Concurrent
	d.MemNeedBytes, d.MemHaveBytes, d.FeasibleReason = pr.Fit.NeedPerGPU, pr.Fit.Memory.UsablePerGPU, pr.Fit.Reason

	nominalCtx := float64(c.InputTokens) + float64(c.OutputTokens)/2
	var pre, dec []recordedPass
	var passes []pass
	if set != nil {
		records.DecodeContexts(set.Passes)
		var skipped map[string]int
		passes, skipped = usablePasses(set.Passes)
		d.Notes = append(d.Notes, setNotes(set, skipped)...)
	}
	if len(passes) > 0 {
		var notes []string
		pre, dec, notes = physicalPasses(m, c.GPUs, passes, nominalCtx, c.Flavor == "sglang")
		d.Notes = append(d.Notes, notes...)
	}
	in.PrefillPasses, in.DecodePasses = len(pre), len(dec)
	overridden := len(c.SimOverrides) > 0

	if len(pre)+len(dec) > 0 {
		d.Source = "records"
		up := moeCAP(m, hw, c.GPUs, passes)
		if len(pre) > 0 {
			u := &Util{}
			if !overridden {
				b, f, bound := physUtil(m, hw, pre)
				u.SMBU, u.SMFU, u.Bound = ptr(b), ptr(f), bound
			}
			if up.HasPrefill {
				u.SMBUMoECAP, u.SMFUMoECAP, u.MoECAPPath = ptr(up.PrefillSMBU), ptr(up.PrefillSMFU), up.PrefillPath
			}
			d.Prefill = u
		}
		if len(dec) > 0 {
			u := &Util{}
			if !overridden {
				b, f, bound := physUtil(m, hw, dec)
				u.SMBU, u.SMFU, u.Bound = ptr(b), ptr(f), bound
			}
			if up.HasDecode {
				u.SMBUMoECAP, u.SMFUMoECAP = ptr(up.DecodeSMBU), ptr(up.DecodeSMFU)
			}
			d.Decode = u
			var lat float64
			for _, p := range dec {
				lat += p.p.latency
			}
			in.DecodeLatencyS = ptr(lat / float64(len(dec)))
		}
		if overridden {
			d.Notes = append(d.Notes, "the sim's pass times were fixed by "+strings.Join(c.SimOverrides, ", ")+", not the model's: physical S-MBU/S-MFU and ratios to the floors are not computed")
		}
	} else if c.Ran && !overridden && !scaled && (c.MeanTPOTMs != nil || c.MeanTTFTMs != nil || c.ServerTPOTMs != nil) {
		d.Source = "client_metrics"
		d.Notes = append(d.Notes, "no pass records: physical S-MBU/S-MFU from mean latencies at the nominal batch and lengths (client TTFT includes queueing, so prefill utilisation is a lower bound); no MoE-CAP values")
		tpot := c.MeanTPOTMs
		if tpot == nil {
			tpot = c.ServerTPOTMs
		}
		if tpot != nil && *tpot > 0 {
			b := float64(pr.Batch)
			if c.AvgDecodeBatchSize != nil && *c.AvgDecodeBatchSize > 0 {
				b = *c.AvgDecodeBatchSize
			}
			act := passcost.TouchedExperts(m.Experts, m.TopK, b)
			if c.AvgActivationDecode != nil && *c.AvgActivationDecode > 0 {
				act = *c.AvgActivationDecode
			}
			w := passcost.Decode(m, c.GPUs, b, b*nominalCtx, act)
			mbu, mfu := passcost.Util(w, peaks, *tpot/1000)
			d.Decode = &Util{SMBU: ptr(mbu), SMFU: ptr(mfu), Bound: passcost.TimeOf(w, peaks).Bound}
		}
		ttft := c.MeanTTFTMs
		if ttft == nil {
			ttft = c.ServerTTFTMs
		}
		if ttft != nil && *ttft > 0 && c.InputTokens > 0 {
			w := passcost.Prefill(m, c.GPUs, passcost.Prompts(c.InputTokens), passcost.TouchedExperts(m.Experts, m.TopK, float64(c.InputTokens)))
			mbu, mfu := passcost.Util(w, peaks, *ttft/1000)
			d.Prefill = &Util{SMBU: ptr(mbu), SMFU: ptr(mfu), Bound: passcost.TimeOf(w, peaks).Bound}
		}
	} else if c.Ran {
		d.Notes = append(d.Notes, "no pass records and no usable latencies: S-MBU/S-MFU not computed")
	}

	if c.Ran {
		derivedFloors(&d, &in, c, m, hw, pre, dec, pr, nominalCtx)
		if scaled {
			d.Notes = append(d.Notes, fmt.Sprintf("the sim ran at --sim-time-scale %g: client latencies are wall time of a scaled run and are not compared with the floors; pass records carry the model's real pass latencies", c.SimTimeScale))
		}
	} else {
		d.Notes = append(d.Notes, "the cell did not finish: the prediction stands, there are no floors")
	}

	d.flagImpossible(c)

	switch {
	case !c.Ran:
	case scaled:
		d.Notes = append(d.Notes, "no cost: the sim's wall time was scaled")
	case c.WindowS <= 0:
		d.Notes = append(d.Notes, "no cost: no clock measured the bench window (no telemetry window, client duration or bench phase)")
	default:
		prices := Prices{GPUHourUSD: hw.GPUHourUSD, ElectricityUSDPerKWh: hw.ElectricityUSDPerKWh, Source: "hardware table"}
		if c.Prices != nil {
			prices = *c.Prices
		}
		d.Cost = ComputeCost(CostInputs{GPUs: c.GPUs, WindowS: c.WindowS, Window: c.Window, EnergyJ: c.EnergyJ,
			EnergySource: c.EnergySource, OutputTokens: c.TotalOutputTokens, Prices: prices})
	}
	d.Inputs = in
	if c.Ran {
		var achieved *float64
		switch {
		case in.FloorSource == "records":
			achieved = in.DecodeBatch
		case c.AvgDecodeBatchSize != nil && *c.AvgDecodeBatchSize > 0:
			achieved = c.AvgDecodeBatchSize
		}
		d.Load = achievedLoad(c, pr, achieved, in.DecodeBatchMax)
		if f := d.Load.Flag(); f != "" {
			d.Flags = append(d.Flags, f)
		}
	}
	return d, nil
}

// derivedFloors sets the floors of a cell that ran, from what ran.
func derivedFloors(d *Derived, in *Inputs, c Cell, m config.Model, hw config.Hardware, pre, dec []recordedPass, pr Prediction, nominalCtx float64) {
	peaks := passcost.PeaksOf(m, hw)
	if len(dec) > 0 {
		t, b, ctx, act := decodeFloorFromRecords(m, hw, dec)
		d.TPOTFloor = &t
		in.DecodeBatch, in.DecodeContext, in.DecodeActivation = ptr(b), ptr(ctx), ptr(act)
		in.FloorSource = "records"
		peak := 0.0
		for _, p := range dec {
			peak = max(peak, p.batch)
		}
		in.DecodeBatchMax = ptr(peak)
		if pr.Fit.Verdict == passcost.UnderBatched {
			d.Notes = append(d.Notes, fmt.Sprintf("under-batched as predicted (memory holds %d of %d requests at once): the server ran at most %.0f at once, %.1f on average; the floors use what ran",
				pr.Fit.Concurrent, c.BatchSize, peak, b))
		}
	} else if pr.Batch > 0 {
		b := float64(pr.Batch)
		if c.AvgDecodeBatchSize != nil && *c.AvgDecodeBatchSize > 0 {
			b = *c.AvgDecodeBatchSize
		}
		act := passcost.TouchedExperts(m.Experts, m.TopK, b)
		if c.AvgActivationDecode != nil && *c.AvgActivationDecode > 0 {
			act = *c.AvgActivationDecode
		}
		t := passcost.TimeOf(passcost.Decode(m, c.GPUs, b, b*nominalCtx, act), peaks)
		d.TPOTFloor = &t
		in.DecodeBatch, in.DecodeContext, in.DecodeActivation = ptr(b), ptr(nominalCtx), ptr(act)
		in.FloorSource = "nominal"
	}
	if s, n := ttftFloorFromRecords(m, hw, pre); n > 0 {
		d.TTFTFloor = &passcost.Time{Seconds: s, Bound: "wave"}
		if len(pre) > 0 {
			// Report the bound of the prefill passes taken together.
			var w passcost.Work
			for _, p := range pre {
				w = w.Add(p.work)
			}
			d.TTFTFloor.Bound = passcost.TimeOf(w, peaks).Bound
		}
	} else if pr.Batch > 0 && c.InputTokens > 0 {
		lens := make([]int, pr.Batch)
		for i := range lens {
			lens[i] = c.InputTokens
		}
		t := passcost.TimeOf(passcost.Prefill(m, c.GPUs, passcost.Prompts(lens...), passcost.TouchedExperts(m.Experts, m.TopK, float64(pr.Batch*c.InputTokens))), peaks)
		d.TTFTFloor = &t
	}
	if d.TPOTFloor != nil && d.TPOTFloor.Seconds > 0 {
		d.TPOTFloorMs = ptr(d.TPOTFloor.Seconds * 1000)
	}
	if d.TTFTFloor != nil && d.TTFTFloor.Seconds > 0 {
		d.TTFTFloorMs = ptr(d.TTFTFloor.Seconds * 1000)
	}
	if len(c.SimOverrides) > 0 {
		return
	}
	// The measured TPOT/TTFT: the client's; the server's passes when the client measured
	// none or the sim's clock was scaled (the runner's numbers, else the records' own: mean
	// decode pass, per-request prefill latency, as MoE-CAP measures them).
	scaled := c.SimTimeScale > 0 && c.SimTimeScale != 1
	srvTPOT, srvTTFT := c.ServerTPOTMs, c.ServerTTFTMs
	if srvTPOT == nil && in.DecodeLatencyS != nil {
		srvTPOT = ptr(*in.DecodeLatencyS * 1000)
	}
	if srvTTFT == nil {
		if s, n := ttftFromRecords(pre); n > 0 {
			srvTTFT = ptr(s * 1000)
		}
	}
	// The headline's rule (records.PickLatency), save that a time-scaled sim's client
	// clock is not the physical one its floors are in: there the server's passes speak.
	clientTPOT, clientTTFT := c.MeanTPOTMs, c.MeanTTFTMs
	if scaled {
		clientTPOT, clientTTFT = nil, nil
	}
	tpot, kind := records.PickLatency(clientTPOT, srvTPOT)
	ttft, _ := records.PickLatency(clientTTFT, srvTTFT)
	if d.TPOTFloorMs != nil && tpot != nil && *tpot > 0 {
		d.TPOTOverFloor = ptr(*tpot / *d.TPOTFloorMs)
		in.TPOTMeasured = kind
	}
	if d.TTFTFloorMs != nil && ttft != nil && *ttft > 0 {
		d.TTFTOverFloor = ptr(*ttft / *d.TTFTFloorMs)
	}
	if d.TPOTFloorMs != nil && in.DecodeLatencyS != nil {
		d.DecodePassOverFloor = ptr(*in.DecodeLatencyS * 1000 / *d.TPOTFloorMs)
	}
}

// flagImpossible moves physical utilisations above PhysicalLimit out of the results into
// Errors, with the likely cause.
func (d *Derived) flagImpossible(c Cell) {
	cause := "the passes ran faster than the hardware allows: pass latencies shorter than recorded work needs (latencies not in seconds, records of a different model or GPU count, gpu_num lower than the GPUs that served), or a model description that overstates the work"
	if d.Source == "client_metrics" {
		cause = "the mean latency is shorter than the work at the nominal batch needs: fewer requests were in flight than the batch size, or the client's latency is not a pass latency"
	}
	if c.SimTimeScale > 0 && c.SimTimeScale != 1 {
		cause += fmt.Sprintf("; the sim ran at --sim-time-scale %g and its records should carry unscaled latencies", c.SimTimeScale)
	}
	check := func(phase string, u *Util) {
		if u == nil {
			return
		}
		for _, f := range []struct {
			name string
			v    **float64
		}{{"s_mbu", &u.SMBU}, {"s_mfu", &u.SMFU}} {
			if *f.v != nil && (**f.v > PhysicalLimit || math.IsNaN(**f.v) || math.IsInf(**f.v, 0)) {
				d.Errors = append(d.Errors, Flag{Field: phase + "." + f.name, Value: **f.v, Limit: PhysicalLimit, Cause: cause})
				*f.v = nil
			}
		}
	}
	check("prefill", d.Prefill)
	check("decode", d.Decode)
	floorCause := "the measured latency is shorter than the hardware's floor for the work that ran: a server or simulator that ran passes short, latencies not in the unit or clock assumed, or records of other work than the cell's"
	for _, f := range []struct {
		name string
		v    **float64
	}{{"tpot_over_floor", &d.TPOTOverFloor}, {"ttft_over_floor", &d.TTFTOverFloor}, {"decode_pass_over_floor", &d.DecodePassOverFloor}} {
		if *f.v != nil && (**f.v < FloorLimit || math.IsNaN(**f.v) || math.IsInf(**f.v, 0)) {
			d.Errors = append(d.Errors, Flag{Field: f.name, Value: **f.v, Limit: FloorLimit, Cause: floorCause})
			*f.v = nil
		}
	}
}

func countList(m map[string]int) string {
	var ks []string
	for k, n := range m {
		ks = append(ks, strconv.Itoa(n)+" ("+k+")")
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// SimSettings reads the sim's timing flags from a server argv: --sim-time-scale (0 when
// absent) and which fixed pass times (--sim-tpot, --sim-ttft) were set.
func SimSettings(argv []string) (scale float64, overrides []string) {
	for i := 0; i < len(argv); i++ {
		name, val, has := strings.Cut(argv[i], "=")
		if !has && i+1 < len(argv) {
			val = argv[i+1]
		}
		switch name {
		case "--sim-time-scale":
			// Only a scale: "Inf" parses too, and NaN, 0 or a negative divides nothing.
			if f, err := strconv.ParseFloat(val, 64); err == nil && f > 0 && !math.IsInf(f, 1) {
				scale = f
			}
		case "--sim-tpot", "--sim-ttft":
			if val != "0" && val != "0s" {
				overrides = append(overrides, name)
			}
		}
	}
	return scale, overrides
}

// MarshalJSON writes a cell without CAP numbers (Absent: its model cannot be described) as
// its version and the reason only: no inputs of 0, no "feasible": false for a verdict never
// made. Every other cell is written field by field.
func (d Derived) MarshalJSON() ([]byte, error) {
	type plain Derived
	if d.Absent != "" {
		return json.Marshal(struct {
			Version int      `json:"version"`
			Absent  string   `json:"absent"`
			Notes   []string `json:"notes,omitempty"`
		}{d.Version, d.Absent, d.Notes})
	}
	return json.Marshal(plain(d))
}
