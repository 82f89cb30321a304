package report

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// Flag marks a value of a cell as not a result: physically impossible, measured on a
// time-scaled simulator, or otherwise invalid. The report shows a flagged value as
// "flagged: <reason>", never as a number.
type Flag struct {
	// Metric is the value flagged, by the CSV column's name ("s_mbu_decode",
	// "tpot_over_floor"…); "cap" flags every CAP number of the cell (S-MBU, S-MFU, ×floor);
	// empty flags the cell as a whole (shown beside its status; its CAP numbers too).
	Metric string
	Reason string
}

// capMetrics are the values derived from the CAP model: what a flag on "cap" or on the
// whole cell covers.
var capMetrics = []string{"s_mbu_decode", "s_mfu_decode", "s_mbu_prefill", "s_mfu_prefill", "tpot_over_floor", "ttft_over_floor"}

// FlagFor says why metric is flagged for this cell ("" when it is not).
func (r *Row) FlagFor(metric string) string {
	var reasons []string
	for _, f := range r.Flags {
		switch {
		case f.Metric == metric:
		case f.Metric == "" || f.Metric == "cap":
			if !isCapMetric(metric) {
				continue
			}
		default:
			continue
		}
		reasons = append(reasons, f.Reason)
	}
	return strings.Join(reasons, "; ")
}

func isCapMetric(m string) bool {
	for _, c := range capMetrics {
		if c == m {
			return true
		}
	}
	return false
}

// flagsOf collects a cell's flags from every place that sets them: the derived CAP block
// (capJSON: the cell's CAP numbers as JSON, stored or derived by the report; its "flags" or
// "errors" list, written by the CAP physics check) and what the report itself can see in
// the manifest (a time-scaled simulator, unless the CAP block says it accounted for it).
func flagsOf(m *cell.Manifest, capJSON json.RawMessage) []Flag {
	var out []Flag
	stored := m.Extra[cell.ExtraCAP]
	seen := map[Flag]bool{}
	for _, raw := range []json.RawMessage{stored, capJSON} {
		for _, f := range capFlags(raw) {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	if s := simTimeScale(m); s != 0 && s != 1 && !capKnowsTimeScale(capJSON) && !capKnowsTimeScale(stored) {
		out = append(out, Flag{Metric: "cap", Reason: fmt.Sprintf("time-scaled sim ×%g", s)})
	}
	return out
}

// capKnowsTimeScale says whether the CAP block recorded the sim's time scale (and so
// compared only what the scale leaves physical).
func capKnowsTimeScale(raw json.RawMessage) bool {
	var blk struct {
		Inputs struct {
			SimTimeScale float64 `json:"sim_time_scale"`
		} `json:"inputs"`
	}
	return raw != nil && json.Unmarshal(raw, &blk) == nil && blk.Inputs.SimTimeScale > 0
}

// metricName maps a CAP block's field name ("decode.s_mbu") to the report's column name
// ("s_mbu_decode"); other names pass through.
func metricName(f string) string {
	if phase, name, ok := strings.Cut(f, "."); ok && (phase == "decode" || phase == "prefill") {
		return name + "_" + phase
	}
	return f
}

// capFlags reads the "flags" of the CAP block. Its entries may be plain reasons, "metric:
// reason" strings, or objects naming the metric and the reason; anything else is a flag on
// the whole cell with its JSON as the reason, so no flag is lost to a format change.
func capFlags(raw json.RawMessage) []Flag {
	if raw == nil {
		return nil
	}
	var blk struct {
		Flags  []json.RawMessage `json:"flags"`
		Errors []json.RawMessage `json:"errors"`
	}
	if json.Unmarshal(raw, &blk) != nil {
		return nil
	}
	var out []Flag
	for _, f := range append(blk.Flags, blk.Errors...) {
		var s string
		if json.Unmarshal(f, &s) == nil {
			if k, why, ok := strings.Cut(s, ":"); ok && !strings.ContainsAny(k, " \t") {
				out = append(out, Flag{Metric: metricName(k), Reason: strings.TrimSpace(why)})
			} else {
				out = append(out, Flag{Reason: s})
			}
			continue
		}
		var o map[string]any
		if json.Unmarshal(f, &o) == nil {
			fl := Flag{Metric: metricName(firstString(o, "metric", "field", "name")), Reason: firstString(o, "reason", "cause", "why", "message")}
			if fl.Reason == "" {
				fl.Reason = string(f)
			}
			if v, ok := o["value"].(float64); ok {
				if l, ok := o["limit"].(float64); ok {
					cmp := ">"
					if v < l {
						cmp = "<" // a ratio to a floor below its lower limit
					}
					fl.Reason = fmt.Sprintf("%s %s %s %s: %s", strings.ReplaceAll(fl.Metric, "_", " "), round3(v), cmp, round3(l), fl.Reason)
				}
			}
			out = append(out, fl)
			continue
		}
		out = append(out, Flag{Reason: string(f)})
	}
	return out
}

func firstString(o map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, ok := o[k].(string); ok && s != "" {
			return s
		}
	}
	return ""
}

// BackendLabel is the backend as every table row and page names it: a time-scaled sim's
// says so ("sim (sim, time ×0.01)"), its client numbers being un-scaled to physical units,
// and an open loop's names its load ("sglang · rates1-2-4"), so it is not read as the
// closed loop of the same batch.
func (r *Row) BackendLabel() string {
	b := r.Backend
	if l := profile.ScaleLabel(r.timeScale()); l != "" {
		b += " (" + l + ")"
	}
	if r.Load != "" {
		b += " · " + r.Load
	}
	return b
}

// timeScale is the sim's time scale when the cell ran scaled (not 0 or 1), else 0.
func (r *Row) timeScale() float64 {
	if r.Manifest == nil {
		return 0
	}
	if s := simTimeScale(r.Manifest); s != 0 && s != 1 {
		return s
	}
	return 0
}

// simTimeScale is the --sim-time-scale the cell's simulated server ran with (0: none or
// real time), as the cell reads it: a positive finite scale, never a NaN, negative or
// infinite one a hand-edited manifest holds, which would un-scale every latency to NaN.
func simTimeScale(m *cell.Manifest) float64 { return m.TimeScale() }

// flaggedText is how a flagged value shows.
func flaggedText(reason string) string { return "flagged: " + reason }
