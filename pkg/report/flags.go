package report

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/cell"
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

// flagsOf collects a cell's flags from every place that sets them: the derived CAP
// block's "flags" list (written by the CAP physics check) and what the report itself can
// see in the manifest (a time-scaled simulator).
func flagsOf(m *cell.Manifest) []Flag {
	var out []Flag
	if raw, ok := m.Extra[ExtraKey]; ok {
		out = append(out, capFlags(raw)...)
	}
	if s := simTimeScale(m); s != 0 && s != 1 {
		out = append(out, Flag{Metric: "cap", Reason: fmt.Sprintf("time-scaled sim ×%g", s)})
	}
	return out
}

// capFlags reads the "flags" of the CAP block. Its entries may be plain reasons, "metric:
// reason" strings, or objects naming the metric and the reason; anything else is a flag on
// the whole cell with its JSON as the reason, so no flag is lost to a format change.
func capFlags(raw json.RawMessage) []Flag {
	var blk struct {
		Flags []json.RawMessage `json:"flags"`
	}
	if json.Unmarshal(raw, &blk) != nil {
		return nil
	}
	var out []Flag
	for _, f := range blk.Flags {
		var s string
		if json.Unmarshal(f, &s) == nil {
			if k, why, ok := strings.Cut(s, ":"); ok && !strings.ContainsAny(k, " \t") {
				out = append(out, Flag{Metric: k, Reason: strings.TrimSpace(why)})
			} else {
				out = append(out, Flag{Reason: s})
			}
			continue
		}
		var o map[string]any
		if json.Unmarshal(f, &o) == nil {
			fl := Flag{Metric: firstString(o, "metric", "field", "name", "value"), Reason: firstString(o, "reason", "why", "message")}
			if fl.Reason == "" {
				fl.Reason = string(f)
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

// simTimeScale is the --sim-time-scale the cell's simulated server ran with (0: none).
func simTimeScale(m *cell.Manifest) float64 {
	a := m.Server.Argv
	for i := 0; i+1 < len(a); i++ {
		if a[i] == "--sim-time-scale" {
			v, err := strconv.ParseFloat(a[i+1], 64)
			if err == nil {
				return v
			}
		}
		if v, ok := strings.CutPrefix(a[i], "--sim-time-scale="); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return 0
}

// flaggedText is how a flagged value shows.
func flaggedText(reason string) string { return "flagged: " + reason }
