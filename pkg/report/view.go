package report

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
)

// cellView is a cell's numbers as people read them: rounded, "—" where they do not apply,
// "absent" where not measured, "flagged: <reason>" where they are no result.
type cellView struct {
	TTFT, TPOT, Over, TputGPU, Interact, SMBU, JTok, Cost, StatusText string
	// Flagged lists the flag reasons of the cell, shown beside its status.
	Flagged []string
}

// fmtVal is one value for the tables: flagged beats absent beats the number.
func fmtVal(r *Row, metric string, p *float64, unit string) string {
	if why := r.FlagFor(metric); why != "" {
		return flaggedText(why)
	}
	if p == nil {
		return "—"
	}
	return round3(*p) + unit
}

// latencyText is "p50 / p99" from the client, or the runner's server-pass mean marked so.
func latencyText(r *Row, metric string, p50, p99 *float64, mean *float64) string {
	if why := r.FlagFor(metric); why != "" {
		return flaggedText(why)
	}
	if !r.ok() {
		return "—"
	}
	if p50 != nil {
		s := round3(*p50)
		if p99 != nil {
			s += " / " + round3(*p99)
		}
		return s
	}
	if mean != nil {
		return round3(*mean) + " (server pass, mean)"
	}
	return Absent
}

func viewOf(r *Row) cellView {
	v := cellView{StatusText: r.Status}
	v.TTFT = latencyText(r, "ttft_p50_ms", r.pctl(func(m *profile.Metrics) *float64 { return m.MedianTTFTMs }), r.TTFTP99Ms(), r.TTFTMs())
	v.TPOT = latencyText(r, "tpot_p50_ms", r.pctl(func(m *profile.Metrics) *float64 { return m.MedianTPOTMs }), r.TPOTP99Ms(), r.TPOTMs())
	var over *float64
	if r.Cap != nil && r.ok() {
		over = r.Cap.TPOTOverFloor
	}
	v.Over = fmtVal(r, "tpot_over_floor", over, "×")
	v.TputGPU = fmtVal(r, "output_throughput_per_gpu_tok_s", r.ThroughputPerGPU(), "")
	v.Interact = fmtVal(r, "interactivity_tok_s_per_user", r.Interactivity(), "")
	v.SMBU = fmtVal(r, "s_mbu_decode", pct(r.util(false, true)), "%")
	if !r.ok() {
		v.SMBU = "—"
	}
	switch {
	case !r.ok():
		v.JTok = "—"
	case r.FlagFor("j_per_output_token") != "":
		v.JTok = flaggedText(r.FlagFor("j_per_output_token"))
	default:
		v.JTok = show(r.JPerOutputToken(), "%.3g")
	}
	cost, src := r.CostPerMTok()
	v.Cost = fmtVal(r, "cost_per_million_output_tokens_usd", cost, "")
	if src == "rental" && cost != nil {
		v.Cost += " (rental)"
	}
	for _, f := range r.Flags {
		v.Flagged = append(v.Flagged, f.Reason)
	}
	v.Flagged = dedupe(v.Flagged)
	if len(v.Flagged) > 0 {
		v.StatusText += " (flagged: " + strings.Join(v.Flagged, "; ") + ")"
	}
	for _, m := range r.marks() {
		v.StatusText += " (" + m.Name + ": " + m.Why + ")"
	}
	return v
}

// count shows a counter's value: whole numbers with separators ("1,204"), others rounded.
func count(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return thousands(v)
	}
	return round3(v)
}

// cellMark is a warning about a completed cell's numbers that are still results: its
// repeats spread more than the threshold (unstable), its server preempted requests.
type cellMark struct{ Name, Why string }

// marks are the cell's warnings, in a fixed order.
func (r *Row) marks() []cellMark {
	m := r.Manifest
	if m == nil {
		return nil
	}
	var out []cellMark
	if rs := m.RepeatStats; rs != nil && len(rs.Unstable) > 0 {
		out = append(out, cellMark{"unstable", fmt.Sprintf("over its %d repeats the coefficient of variation of %s exceeds %g%%",
			len(m.Repeats), strings.Join(rs.Unstable, ", "), 100*rs.UnstableCV)})
	}
	if sm := m.ServerMetrics; sm != nil && sm.Preempted && sm.Preemptions != nil {
		out = append(out, cellMark{"preempted", fmt.Sprintf("the server preempted %s requests during the bench; their latencies include recomputation", count(*sm.Preemptions))})
	}
	return out
}

// memoryVerdict is the predicted-memory check in binary units.
func memoryVerdict(r *Row) string {
	c := r.Cap
	if c == nil {
		return "—"
	}
	if c.MemNeedBytes <= 0 || strings.Contains(c.FeasibleReason, "context window") || strings.Contains(c.FeasibleReason, "at least") {
		return c.FeasibleReason
	}
	verdict := c.FitVerdict
	if verdict == "" {
		verdict = "fits"
		if !c.Feasible {
			verdict = "does not fit"
		}
	}
	if c.MaxConcurrent > 0 && c.MaxConcurrent < r.BatchSize {
		verdict += fmt.Sprintf(" (%d requests at once)", c.MaxConcurrent)
	}
	return fmt.Sprintf("needs %s per GPU (weights + KV cache) of %s usable: %s", showGiB(c.MemNeedBytes), showGiB(c.MemHaveBytes), verdict)
}

// backendPair is one (hardware, batch) of a group that ran on more than one backend.
type backendPair struct {
	Hardware string
	Batch    int
	By       map[string]*Row
}

func (p backendPair) cellText(backend string) string {
	r := p.By[backend]
	if r == nil {
		return "—"
	}
	if !r.ok() {
		return r.Status
	}
	t := latencyText(r, "tpot_p50_ms", r.pctl(func(m *profile.Metrics) *float64 { return m.MedianTPOTMs }), nil, r.TPOTMs())
	return t + " · " + fmtVal(r, "output_throughput_per_gpu_tok_s", r.ThroughputPerGPU(), "")
}

// backendPairs are the (hardware, batch) points of rows run on two backends or more, for
// the side-by-side table.
func backendPairs(rows []*Row) []backendPair {
	idx := map[string]int{}
	var out []backendPair
	for _, r := range rows {
		k := fmt.Sprintf("%s\x00%d", r.Hardware, r.BatchSize)
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, backendPair{Hardware: r.Hardware, Batch: r.BatchSize, By: map[string]*Row{}})
		}
		out[i].By[r.Backend] = r
	}
	var keep []backendPair
	for _, p := range out {
		if len(p.By) >= 2 {
			keep = append(keep, p)
		}
	}
	sort.SliceStable(keep, func(i, j int) bool {
		if keep[i].Hardware != keep[j].Hardware {
			return hwLess(keep[i].Hardware, keep[j].Hardware)
		}
		return keep[i].Batch < keep[j].Batch
	})
	return keep
}

func pairBackends(ps []backendPair) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range ps {
		for b := range p.By {
			if !seen[b] {
				seen[b] = true
				out = append(out, b)
			}
		}
	}
	sort.Strings(out)
	return out
}

// telemetryText is a telemetry value for the cell page.
func telText(r *Row, f func(*gpu.Summary) *float64, format string) string {
	return show(r.tel(f), format)
}
