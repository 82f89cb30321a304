// Package compare answers "did this change make the cell slower?": it pairs the cells of two
// results roots (or two cell directories) and, per cell and metric, gives the change in %,
// its confidence interval and a verdict, with the two environments side by side.
//
// The interval of a change is Welch's t on the repeats when both cells ran at least two
// (--repeats), expressed as a share of the base mean; otherwise a seeded percentile
// bootstrap over the per-request values of the bench files (latencies only: a throughput or
// an energy figure has one value per run, so one run gives it no interval). Requests of one
// closed-loop run are not independent and one run cannot see run-to-run variance, so a
// bootstrap interval is narrower than the truth: repeats are the defensible comparison,
// and MinChange keeps a significant but negligible change from being called one.
package compare

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/stats"
)

// Request is one comparison.
type Request struct {
	// Base and New are each a results root (cells paired by id) or one cell directory (the
	// two cells paired whatever their ids).
	Base, New string
	// Level is the confidence level of the intervals (0 < Level < 1), e.g. 0.95.
	Level float64
	// MinChange (%, ≥ 0): a change whose size is below it is "no change" even when its
	// interval excludes zero.
	MinChange float64
	// Threshold (%, ≥ 0): a significant change for the worse larger than this is a
	// regression (Report.Regressions).
	Threshold float64
	// BootstrapReps is the bootstrap's resample count (default 2000).
	BootstrapReps int
}

// InputError is a bad request or a path that holds no cells: a usage problem.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

// Verdicts.
const (
	Better   = "better"
	Worse    = "worse"
	NoChange = "no change"
	Unknown  = "unknown"
)

// Report is the comparison.
type Report struct {
	Base      string  `json:"base"`
	New       string  `json:"new"`
	Level     float64 `json:"level"`
	MinChange float64 `json:"min_change_pct"`
	Threshold float64 `json:"threshold_pct"`
	Cells     []Cell  `json:"cells"`
	// OnlyBase and OnlyNew are cell ids present on one side only.
	OnlyBase []string `json:"only_base,omitempty"`
	OnlyNew  []string `json:"only_new,omitempty"`
	// Regressions lists "<cell>: <metric> <change>" for every regression.
	Regressions []string `json:"regressions,omitempty"`
}

// Cell is one pair of cells.
type Cell struct {
	BaseID  string   `json:"base_id"`
	NewID   string   `json:"new_id"`
	Metrics []Metric `json:"metrics"`
	Env     []EnvRow `json:"environment"`
	// Note says why a pair has no metrics (a cell that did not finish ok).
	Note string `json:"note,omitempty"`
}

// Metric is one metric's change. Base and New are the cells' values (the mean over
// repeats when repeated); ChangePct is 100·(New/Base − 1); Lo and Hi bound it at the
// report's level (absent when there is no interval). Verdict is Better, Worse, NoChange or
// Unknown; Word says it in the metric's terms ("faster", "slower", "less energy"…).
type Metric struct {
	Key        string   `json:"key"`
	Label      string   `json:"label"`
	Unit       string   `json:"unit"`
	Base       *float64 `json:"base,omitempty"`
	New        *float64 `json:"new,omitempty"`
	BaseN      int      `json:"base_n"`
	NewN       int      `json:"new_n"`
	ChangePct  *float64 `json:"change_pct,omitempty"`
	Lo         *float64 `json:"ci_lo_pct,omitempty"`
	Hi         *float64 `json:"ci_hi_pct,omitempty"`
	Method     string   `json:"method"`
	Verdict    string   `json:"verdict"`
	Word       string   `json:"word"`
	Regression bool     `json:"regression,omitempty"`
}

// EnvRow is one environment fact of both cells; Differs marks what changed.
type EnvRow struct {
	Key     string `json:"key"`
	Base    string `json:"base"`
	New     string `json:"new"`
	Differs bool   `json:"differs"`
}

// side is one cell's data.
type side struct {
	id   string
	dir  string
	m    *cell.Manifest
	reqs []profile.RequestResult // successful requests of the (last) bench file
}

type metricDef struct {
	key, label, unit string
	lowerBetter      bool
	better, worse    string
	value            func(m *profile.Metrics, jpt *float64) *float64
	perRequest       func(r profile.RequestResult) (float64, bool) // nil: one value per run
	latency          bool
}

var metrics = []metricDef{
	{key: "ttft_ms", label: "TTFT mean", unit: "ms", lowerBetter: true, better: "faster", worse: "slower", latency: true,
		value:      func(m *profile.Metrics, _ *float64) *float64 { return m.MeanTTFTMs },
		perRequest: func(r profile.RequestResult) (float64, bool) { return r.TTFTMs, true }},
	{key: "tpot_ms", label: "TPOT mean", unit: "ms", lowerBetter: true, better: "faster", worse: "slower", latency: true,
		value:      func(m *profile.Metrics, _ *float64) *float64 { return m.MeanTPOTMs },
		perRequest: func(r profile.RequestResult) (float64, bool) { return r.TPOTMs, r.OutputTokens > 1 }},
	{key: "e2el_ms", label: "E2E latency mean", unit: "ms", lowerBetter: true, better: "faster", worse: "slower", latency: true,
		value:      func(m *profile.Metrics, _ *float64) *float64 { return m.MeanE2ELMs },
		perRequest: func(r profile.RequestResult) (float64, bool) { return r.E2ELMs, true }},
	{key: "output_throughput", label: "output throughput", unit: "tok/s", better: "faster", worse: "slower",
		value: func(m *profile.Metrics, _ *float64) *float64 {
			if m.DurationS <= 0 {
				return nil
			}
			v := m.OutputThroughput
			return &v
		}},
	{key: "j_per_output_token", label: "energy per output token", unit: "J/token", lowerBetter: true, better: "less energy", worse: "more energy",
		value: func(_ *profile.Metrics, jpt *float64) *float64 { return jpt }},
}

// Compare reads both sides and compares every pair of cells.
func Compare(req Request) (*Report, error) {
	if !(req.Level > 0 && req.Level < 1) {
		return nil, &InputError{fmt.Sprintf("--level %v: give a confidence level between 0 and 1, e.g. 0.95", req.Level)}
	}
	if req.Threshold < 0 || req.MinChange < 0 || math.IsNaN(req.Threshold) || math.IsNaN(req.MinChange) {
		return nil, &InputError{"--threshold and --min-change are percentages ≥ 0"}
	}
	if req.BootstrapReps == 0 {
		req.BootstrapReps = 2000
	}
	base, baseCell, err := readSide(req.Base, "BASE")
	if err != nil {
		return nil, err
	}
	nw, newCell, err := readSide(req.New, "NEW")
	if err != nil {
		return nil, err
	}
	rep := &Report{Base: req.Base, New: req.New, Level: req.Level, MinChange: req.MinChange, Threshold: req.Threshold}
	var pairs [][2]*side
	if baseCell || newCell {
		if !(baseCell && newCell) {
			return nil, &InputError{"give two results roots or two cell directories, not one of each"}
		}
		pairs = append(pairs, [2]*side{base[0], nw[0]})
	} else {
		byID := map[string]*side{}
		for _, s := range nw {
			byID[s.id] = s
		}
		for _, b := range base {
			if n, ok := byID[b.id]; ok {
				pairs = append(pairs, [2]*side{b, n})
				delete(byID, b.id)
			} else {
				rep.OnlyBase = append(rep.OnlyBase, b.id)
			}
		}
		for id := range byID {
			rep.OnlyNew = append(rep.OnlyNew, id)
		}
		slices.Sort(rep.OnlyNew)
		if len(pairs) == 0 {
			return nil, &InputError{fmt.Sprintf("%s and %s share no cell id: nothing to compare (compare two cell directories to pair cells of different ids)", req.Base, req.New)}
		}
	}
	for _, p := range pairs {
		c := comparePair(p[0], p[1], req)
		for _, m := range c.Metrics {
			if m.Regression {
				rep.Regressions = append(rep.Regressions, fmt.Sprintf("%s: %s %+.1f%%", c.NewID, m.Label, *m.ChangePct))
			}
		}
		rep.Cells = append(rep.Cells, c)
	}
	return rep, nil
}

// readSide reads a cell directory (isCell) or every cell of a results root.
func readSide(path, name string) (sides []*side, isCell bool, err error) {
	st, err := os.Stat(path)
	if err != nil || !st.IsDir() {
		return nil, false, &InputError{fmt.Sprintf("%s %q is not a directory: give a results root or a cell directory", name, path)}
	}
	if _, err := os.Stat(filepath.Join(path, cell.ManifestFile)); err == nil {
		m, err := cell.ReadManifest(path)
		if err != nil {
			return nil, false, &InputError{fmt.Sprintf("%s: unreadable cell: %v", name, err)}
		}
		return []*side{load(path, m)}, true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, &InputError{fmt.Sprintf("%s: %v", name, err)}
	}
	lay, err := cell.OpenLayout(path)
	if err != nil {
		return nil, false, &InputError{fmt.Sprintf("%s: %v", name, err)}
	}
	ents, _, err := lay.Cells()
	if err != nil {
		return nil, false, &InputError{fmt.Sprintf("%s: %v", name, err)}
	}
	if len(ents) == 0 {
		return nil, false, &InputError{fmt.Sprintf("%s %q holds no cell (no <cell-id>/manifest.json): give a results root or a cell directory", name, path)}
	}
	for _, e := range ents {
		sides = append(sides, load(e.Dir.Path, e.Manifest))
	}
	return sides, false, nil
}

func load(dir string, m *cell.Manifest) *side {
	s := &side{id: m.Cell.ID, dir: dir, m: m}
	if p := profile.FindBenchFile(filepath.Join(dir, cell.ClientDir)); p != "" {
		if reqs, err := profile.ReadBenchRequests(p); err == nil {
			for _, r := range reqs {
				if r.Success {
					s.reqs = append(s.reqs, r)
				}
			}
		}
	}
	return s
}

// runs is a cell's measured benches: its repeats, or its one run.
func (s *side) runs() []cell.Repeat {
	if len(s.m.Repeats) > 0 {
		return s.m.Repeats
	}
	var jpt *float64
	if s.m.Telemetry != nil {
		jpt = s.m.Telemetry.JPerOutputToken
	}
	return []cell.Repeat{{Metrics: s.m.PhysicalMetrics(), JPerOutputToken: jpt}}
}

func comparePair(b, n *side, req Request) Cell {
	c := Cell{BaseID: b.id, NewID: n.id, Env: environment(b, n)}
	if b.m.Status != cell.StatusOK || n.m.Status != cell.StatusOK || b.m.Metrics == nil || n.m.Metrics == nil {
		c.Note = fmt.Sprintf("not compared: base is %s, new is %s (both must be ok with metrics)", b.m.Status, n.m.Status)
		return c
	}
	for _, d := range metrics {
		c.Metrics = append(c.Metrics, compareMetric(d, b, n, req))
	}
	return c
}

// maxValue bounds a metric value compare takes from a manifest: no latency (ms),
// throughput or energy comes near it.
const maxValue = 1e15

func values(d metricDef, s *side) []float64 {
	var xs []float64
	for _, r := range s.runs() {
		if r.Metrics == nil {
			continue
		}
		// A value past any measurement (a hand-edited 1e308) is none: two of them average
		// to +Inf, which no --json report can hold.
		if v := d.value(r.Metrics, r.JPerOutputToken); v != nil && math.Abs(*v) <= maxValue {
			xs = append(xs, *v)
		}
	}
	return xs
}

func compareMetric(d metricDef, b, n *side, req Request) Metric {
	m := Metric{Key: d.key, Label: d.label, Unit: d.unit, Verdict: Unknown}
	bv, nv := values(d, b), values(d, n)
	m.BaseN, m.NewN = len(bv), len(nv)
	if len(bv) > 0 {
		v := mean(bv)
		m.Base = &v
	}
	if len(nv) > 0 {
		v := mean(nv)
		m.New = &v
	}
	if d.latency && b.m.Metrics.LatencyKind != n.m.Metrics.LatencyKind {
		m.Method = fmt.Sprintf("not comparable: base latencies are %q, new %q", b.m.Metrics.LatencyKind, n.m.Metrics.LatencyKind)
		m.Word = m.Verdict
		return m
	}
	if m.Base == nil || m.New == nil {
		m.Method = "absent on " + map[bool]string{true: "base", false: "new"}[m.Base == nil]
		m.Word = m.Verdict
		return m
	}
	if *m.Base == 0 {
		m.Method = "base is 0: no relative change"
		m.Word = m.Verdict
		return m
	}
	ch := 100 * (*m.New / *m.Base - 1)
	if math.IsInf(ch, 0) || math.IsNaN(ch) {
		m.Method = fmt.Sprintf("base %g and new %g: the change is beyond the float range", *m.Base, *m.New)
		m.Word = m.Verdict
		return m
	}
	m.ChangePct = &ch
	var lo, hi float64
	ok := false
	switch {
	case len(bv) >= 2 && len(nv) >= 2:
		var dlo, dhi float64
		_, dlo, dhi, ok = stats.WelchDiff(bv, nv, req.Level)
		lo, hi = 100*dlo / *m.Base, 100*dhi / *m.Base
		m.Method = fmt.Sprintf("Welch t over %d and %d repeats", len(bv), len(nv))
	case d.perRequest != nil:
		ba, na := perRequest(d, b), perRequest(d, n)
		lo, hi, ok = stats.BootstrapRelChange(ba, na, req.Level, req.BootstrapReps, 1)
		m.Method = fmt.Sprintf("bootstrap over %d and %d requests (one run: run-to-run variance unseen)", len(ba), len(na))
		if !ok {
			m.Method = "no per-request values in a bench file: rerun with --repeats"
		}
	default:
		m.Method = "one value per run: rerun with --repeats 2 or more for an interval"
	}
	if ok && (math.IsInf(lo, 0) || math.IsNaN(lo) || math.IsInf(hi, 0) || math.IsNaN(hi)) {
		ok, m.Method = false, m.Method+": its interval is beyond the float range"
	}
	if !ok {
		m.Word = m.Verdict
		return m
	}
	if *m.Base < 0 { // a share of a negative base flips the sign; no metric here is negative
		lo, hi = hi, lo
	}
	m.Lo, m.Hi = &lo, &hi
	m.Verdict = NoChange
	if (lo > 0 || hi < 0) && math.Abs(ch) >= req.MinChange {
		up := ch > 0
		if up == d.lowerBetter {
			m.Verdict = Worse
		} else {
			m.Verdict = Better
		}
	}
	switch m.Verdict {
	case Worse:
		m.Word = d.worse
		m.Regression = math.Abs(ch) > req.Threshold
	case Better:
		m.Word = d.better
	default:
		m.Word = m.Verdict
	}
	return m
}

func perRequest(d metricDef, s *side) []float64 {
	var xs []float64
	for _, r := range s.reqs {
		// A value a torn or hand-edited file could hold is not a latency.
		if v, ok := d.perRequest(r); ok && v >= 0 && !math.IsInf(v, 0) && !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	return xs
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// environment is what the two cells ran on and with, side by side.
func environment(b, n *side) []EnvRow {
	row := func(key string, f func(s *side) string) EnvRow {
		bv, nv := f(b), f(n)
		return EnvRow{Key: key, Base: bv, New: nv, Differs: bv != nv}
	}
	orAbsent := func(s string) string {
		if s == "" {
			return "not recorded"
		}
		return s
	}
	return []EnvRow{
		row("model", func(s *side) string { return s.m.Cell.Model + " (" + s.m.Cell.ModelID + ")" }),
		row("backend", func(s *side) string { return s.m.Cell.Backend }),
		row("backend version", func(s *side) string { return orAbsent(s.m.Versions.Backend) }),
		row("MoE-CAP version", func(s *side) string { return orAbsent(moecapVersion(s.m)) }),
		row("moecapd version", func(s *side) string { return orAbsent(s.m.Versions.Moecapd) }),
		row("NVIDIA driver", func(s *side) string { return orAbsent(s.m.Versions.Driver) }),
		row("GPU", func(s *side) string {
			return orAbsent(s.m.Cell.GPUName) + " ×" + strconv.Itoa(s.m.Cell.GPUCount) + " (" + s.m.Cell.Hardware + ")"
		}),
		row("workload", func(s *side) string {
			c := s.m.Cell
			return fmt.Sprintf("%s, %d in / %d out tokens, %d samples, batch %d, TP %d", c.Task, c.InputTokens, c.OutputTokens, c.NumSamples, c.BatchSize, c.TP)
		}),
		row("client", func(s *side) string {
			k := s.m.Client.Kind
			if s.m.Metrics != nil {
				k += ", latencies " + s.m.Metrics.LatencyKind
			}
			return k
		}),
		row("load", func(s *side) string {
			if s.m.Cell.Load == "" {
				return "closed loop"
			}
			return "open loop " + s.m.Cell.Load
		}),
		row("repeats", func(s *side) string { return strconv.Itoa(max(len(s.m.Repeats), 1)) }),
		row("server flags", func(s *side) string { return normArgv(s.m.Server.Argv, s.dir) }),
		row("client flags", func(s *side) string {
			if len(s.m.Client.Argv) == 0 {
				return "none (in-process client)"
			}
			return normArgv(s.m.Client.Argv, s.dir)
		}),
	}
}

// moecapVersion is the MoE-CAP package version when the manifest's extra records it.
func moecapVersion(m *cell.Manifest) string {
	if m.Versions.MoECAP != "" {
		return m.Versions.MoECAP
	}
	raw, ok := m.Extra["moe_cap_version"]
	if !ok {
		return ""
	}
	v, err := strconv.Unquote(string(raw))
	if err != nil {
		return string(raw)
	}
	return v
}

var portFlag = regexp.MustCompile(`^--?port$`)

// normArgv joins an argv with the cell's own directory and port written as <cell> and
// <port>: they differ between any two runs and are not a difference of configuration.
func normArgv(argv []string, dir string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if dir != "" {
			a = strings.ReplaceAll(a, dir, "<cell>")
		}
		if i > 0 && portFlag.MatchString(argv[i-1]) {
			a = "<port>"
		}
		if k, _, ok := strings.Cut(a, "="); ok && portFlag.MatchString(k) {
			a = k + "=<port>"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
