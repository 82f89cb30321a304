package cell

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// ExtraTruth is the key of a cell's truth verdict in manifest.json "extra".
const ExtraTruth = "truth"

// Truth verdicts.
const (
	TruthClean        = "clean"        // every check passed
	TruthFlagged      = "flagged"      // a physics or triangulation check failed, or the CAP block flags a value
	TruthContaminated = "contaminated" // something outside the cell disturbed the measurement
)

// Check kinds.
const (
	CheckPhysics       = "physics"
	CheckTriangulation = "triangulation"
	CheckContamination = "contamination"
)

// Check is one test of a cell's numbers: its value, the bound it is held to, and whether
// it passed.
type Check struct {
	Name  string  `json:"name"`
	Kind  string  `json:"kind"`
	Value float64 `json:"value"`
	Bound string  `json:"bound"`
	Pass  bool    `json:"pass"`
	Note  string  `json:"note,omitempty"`
}

// Truth is a cell's truth verdict (manifest extra "truth"): every check that its data
// allowed, and what was not checked for want of data.
type Truth struct {
	Verdict    string   `json:"verdict"`
	Checks     []Check  `json:"checks"`
	Flags      []string `json:"flags,omitempty"` // the CAP block's flags (a short load…)
	NotChecked []string `json:"not_checked,omitempty"`
}

// contaminatingThrottles are NVML clock-event reasons that mean the GPU ran slower than
// the workload asked (heat, a hardware slowdown, a power brake), not its normal power cap.
var contaminatingThrottles = map[string]bool{"hw_slowdown": true, "sw_thermal_slowdown": true,
	"hw_thermal_slowdown": true, "hw_power_brake_slowdown": true}

// clientCPUContaminates is the client CPU fraction at which the client, not the server,
// set the pace.
const clientCPUContaminates = 0.9

// outputTokensTolerance is how far the server's decode tokens (+ one prefill token per
// request) may be from the client's output tokens.
const outputTokensTolerance = 0.05

// energyTolerancePct is how far (percent) the NVML energy counter and ∫power may disagree.
const energyTolerancePct = 5.0

// TruthOf judges a finished cell from its manifest and CAP block: physics (physical
// S-MBU/S-MFU ≤ 1, measured ÷ floor ≥ capmath.FloorLimit), triangulation (client output
// tokens against the records' decode tokens and against the server's /metrics generation
// counter over the measured requests, server preemptions, client TPOT against the mean
// decode pass, the energy counter against ∫power) and contamination (the client's CPU
// saturated, the GPU's clocks slowed by heat or a hardware event, a compute process that is
// not the server's on one of its GPUs, an NVML XID error). A check its data cannot support
// is listed under NotChecked with the reason, never passed. Nil for a cell that did not
// finish ok.
func TruthOf(m *Manifest, d capmath.Derived) *Truth {
	if m == nil || m.Status != StatusOK || m.Metrics == nil {
		return nil
	}
	t := &Truth{Checks: []Check{}}
	add := func(name, kind string, v float64, bound string, pass bool, note string) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return
		}
		t.Checks = append(t.Checks, Check{Name: name, Kind: kind, Value: v, Bound: bound, Pass: pass, Note: note})
	}
	// Physics.
	if d.Absent != "" {
		t.NotChecked = append(t.NotChecked, "physics: no CAP numbers ("+d.Absent+")")
	}
	for _, ph := range []struct {
		name string
		u    *capmath.Util
	}{{"prefill", d.Prefill}, {"decode", d.Decode}} {
		if ph.u == nil {
			continue
		}
		for _, v := range []struct {
			name string
			p    *float64
		}{{"s_mbu", ph.u.SMBU}, {"s_mfu", ph.u.SMFU}} {
			if v.p != nil {
				add(ph.name+"."+v.name, CheckPhysics, *v.p, fmt.Sprintf("≤ %g", capmath.PhysicalLimit), *v.p <= capmath.PhysicalLimit, "")
			}
		}
	}
	for _, e := range d.Errors {
		bound := fmt.Sprintf("≤ %g", e.Limit)
		if e.Value < e.Limit {
			bound = fmt.Sprintf("≥ %g", e.Limit)
		}
		add(e.Field, CheckPhysics, e.Value, bound, false, e.Cause)
	}
	for _, v := range []struct {
		name string
		p    *float64
	}{{"tpot_over_floor", d.TPOTOverFloor}, {"ttft_over_floor", d.TTFTOverFloor}, {"decode_pass_over_floor", d.DecodePassOverFloor}} {
		if v.p != nil {
			add(v.name, CheckPhysics, *v.p, fmt.Sprintf("≥ %g", capmath.FloorLimit), *v.p >= capmath.FloorLimit, "")
		}
	}

	// Triangulation.
	x := m.PhysicalMetrics()
	in := d.Inputs
	if in.DecodePasses > 0 && in.DecodeBatch != nil && in.FloorSource == "records" && x.TotalOutputTokens > 0 {
		// Every generated token but a request's first comes from a decode pass; the first
		// comes from its prefill.
		server := float64(in.DecodePasses)**in.DecodeBatch + float64(x.Completed)
		r := server / float64(x.TotalOutputTokens)
		add("output_tokens_records_vs_client", CheckTriangulation, r, fmt.Sprintf("%g–%g", 1-outputTokensTolerance, 1+outputTokensTolerance),
			math.Abs(r-1) <= outputTokensTolerance, fmt.Sprintf("records: %d decode passes × mean batch %.4g + %d first tokens; client: %d output tokens", in.DecodePasses, *in.DecodeBatch, x.Completed, x.TotalOutputTokens))
	} else {
		t.NotChecked = append(t.NotChecked, "output tokens against the server's: no decode pass records")
	}
	if x.MeanTPOTMs != nil && in.DecodeLatencyS != nil && *in.DecodeLatencyS > 0 && x.LatencyKind == "client" {
		r := *x.MeanTPOTMs / (*in.DecodeLatencyS * 1000)
		add("client_tpot_vs_decode_pass", CheckTriangulation, r, fmt.Sprintf("≥ %g", capmath.FloorLimit), r >= capmath.FloorLimit,
			"the client cannot see tokens faster than the server's decode passes make them")
	} else {
		t.NotChecked = append(t.NotChecked, "client TPOT against the decode passes: no client TPOT or no decode pass latencies")
	}
	if sm := m.ServerMetrics; sm != nil && sm.GenerationTokens != nil && sm.Window == servermetrics.WindowMeasured && x.TotalOutputTokens > 0 {
		r := *sm.GenerationTokens / float64(x.TotalOutputTokens)
		add("output_tokens_server_metrics_vs_client", CheckTriangulation, r, fmt.Sprintf("%g–%g", 1-outputTokensTolerance, 1+outputTokensTolerance),
			math.Abs(r-1) <= outputTokensTolerance, fmt.Sprintf("the server's /metrics generation-token counter over the measured requests (scraped at both edges): %.0f; client: %d output tokens", *sm.GenerationTokens, x.TotalOutputTokens))
	} else {
		t.NotChecked = append(t.NotChecked, "output tokens against the server's /metrics: "+serverMetricsGap(m.ServerMetrics, "generation-token counter"))
	}
	if sm := m.ServerMetrics; sm != nil && sm.Preemptions != nil {
		add("server_preemptions", CheckTriangulation, *sm.Preemptions, "0", *sm.Preemptions == 0,
			"requests the server preempted during the bench (its /metrics counter): their latencies include recomputation")
	} else {
		t.NotChecked = append(t.NotChecked, "preemptions: "+serverMetricsGap(m.ServerMetrics, "preemption counter"))
	}
	tel := m.Telemetry
	if tel != nil && tel.Available && tel.EnergyDisagreementPct != nil {
		v := *tel.EnergyDisagreementPct
		add("energy_counter_vs_integrated_power_pct", CheckTriangulation, v, fmt.Sprintf("≤ %g", energyTolerancePct), math.Abs(v) <= energyTolerancePct, "")
	} else {
		t.NotChecked = append(t.NotChecked, "NVML energy counter against ∫power: no telemetry")
	}

	// Contamination.
	if f := x.ClientCPUFraction; f != nil {
		add("client_cpu_fraction", CheckContamination, *f, fmt.Sprintf("< %g", clientCPUContaminates), *f < clientCPUContaminates,
			"CPU the client's process used over the run ÷ its cores (getrusage)")
	} else {
		t.NotChecked = append(t.NotChecked, "client CPU: not measured (the MoE-CAP runner is a separate process)")
	}
	if tel != nil && tel.Available {
		var bad []string
		for _, r := range tel.ThrottleReasonsSeen {
			if contaminatingThrottles[r] {
				bad = append(bad, r)
			}
		}
		note := "NVML clock-event reasons seen: " + strings.Join(tel.ThrottleReasonsSeen, ", ")
		add("gpu_slowdown_events", CheckContamination, float64(len(bad)), "0 (thermal, hardware slowdown, power brake)", len(bad) == 0, note)
	} else {
		t.NotChecked = append(t.NotChecked, "GPU clock slowdowns: no telemetry")
	}
	switch {
	case tel == nil || !tel.Available:
		t.NotChecked = append(t.NotChecked, "other processes on the cell's GPUs during the window: "+noTelemetry(tel))
		t.NotChecked = append(t.NotChecked, "XID errors during the window: "+noTelemetry(tel))
	default:
		if tel.ForeignProcesses != nil {
			add("foreign_gpu_processes", CheckContamination, float64(len(tel.ForeignProcesses)), "0", len(tel.ForeignProcesses) == 0,
				foreignNote(tel.ForeignProcesses))
		} else {
			t.NotChecked = append(t.NotChecked, "other processes on the cell's GPUs during the window: "+orUnrecorded(tel.ProcessCheck))
		}
		if tel.XIDErrors != nil {
			add("xid_errors", CheckContamination, float64(len(tel.XIDErrors)), "0", len(tel.XIDErrors) == 0, xidNote(tel.XIDErrors))
		} else {
			t.NotChecked = append(t.NotChecked, "XID errors during the window: "+orUnrecorded(tel.XIDCheck))
		}
	}

	t.Flags = d.Flags
	t.Verdict = TruthClean
	for _, c := range t.Checks {
		if c.Pass {
			continue
		}
		if c.Kind == CheckContamination {
			t.Verdict = TruthContaminated
			break
		}
		t.Verdict = TruthFlagged
	}
	if t.Verdict == TruthClean && len(t.Flags) > 0 {
		t.Verdict = TruthFlagged
	}
	return t
}

// serverMetricsGap says why a server-metrics check could not be made: no /metrics, the
// counter (what) not exported, or a window that is not the measured requests'.
func serverMetricsGap(sm *servermetrics.Summary, what string) string {
	switch {
	case sm == nil:
		return "the server exported no /metrics during the bench"
	case sm.Window != servermetrics.WindowMeasured && what == "generation-token counter":
		return "the scraped window is not the measured requests' (the client marked none)"
	}
	return "the server's /metrics has no " + what
}

// noTelemetry says why there is no GPU telemetry.
func noTelemetry(tel *gpu.Summary) string {
	if tel != nil && tel.Reason != "" {
		return "no GPU telemetry (" + tel.Reason + ")"
	}
	return "no GPU telemetry"
}

func orUnrecorded(why string) string {
	if why == "" {
		return "not recorded (telemetry from before the check)"
	}
	return why
}

func foreignNote(fs []gpu.ForeignProcess) string {
	if len(fs) == 0 {
		return "NVML's compute processes on the cell's GPUs during the window: the server's tree only"
	}
	var b strings.Builder
	b.WriteString("not the server's process tree: ")
	for i, f := range fs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "pid %d on GPU %d (%d samples", f.PID, f.GPUIndex, f.Rounds)
		if f.PeakUsedBytes != nil {
			fmt.Fprintf(&b, ", %.2f GiB", float64(*f.PeakUsedBytes)/(1<<30))
		}
		b.WriteString(")")
		if f.Cmdline != "" {
			c := f.Cmdline
			if len(c) > 80 {
				c = c[:80] + "…"
			}
			b.WriteString(" " + c)
		}
	}
	return b.String()
}

func xidNote(es []gpu.XIDEvent) string {
	if len(es) == 0 {
		return "NVML XID error events on the cell's GPUs during the window: none"
	}
	var parts []string
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("Xid %d on GPU %d at %s", e.XID, e.GPUIndex, e.Time.UTC().Format("15:04:05.000")))
	}
	return strings.Join(parts, "; ")
}

// SetTruth stores t as the manifest's truth verdict (nil removes it).
func (m *Manifest) SetTruth(t *Truth) {
	if t == nil {
		delete(m.Extra, ExtraTruth)
		return
	}
	raw, err := json.Marshal(t)
	if err != nil {
		return
	}
	if m.Extra == nil {
		m.Extra = map[string]json.RawMessage{}
	}
	m.Extra[ExtraTruth] = raw
}

// Truth is the manifest's stored truth verdict; false when absent or unreadable.
func (m *Manifest) Truth() (*Truth, bool) {
	raw, ok := m.Extra[ExtraTruth]
	if !ok {
		return nil, false
	}
	var t Truth
	if json.Unmarshal(raw, &t) != nil {
		return nil, false
	}
	return &t, true
}
