package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"image/color"
	"math"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/moecapd/moecapd/pkg/profile"
)

// Plot is one figure of the report: an SVG file beside the page.
type Plot struct {
	Name  string // file name inside plots/, unique: <model>.<task>.<kind>.svg
	Title string // the caption the page shows
	Note  string // what the figure leaves out (flagged values), shown under it
	SVG   []byte
	// Err says why the figure could not be drawn (its data is degenerate); it is then
	// left out of the pages.
	Err  error
	spec *plotSpec
}

// series is one line of a figure.
type series struct {
	name   string
	pts    plotter.XYs
	color  color.Color
	style  backendStyle
	floor  bool      // a physical floor or ceiling: dotted, no markers
	labels []string  // per point, drawn beside it (batch sizes on the Pareto view)
	hi     []float64 // per point, a whisker up to this value (p99)
	// ci is per point the repeats' confidence interval (lo, hi), drawn as a thick error
	// bar; NaN where the cell has no repeats.
	ci    [][2]float64
	plain bool // a timeline or CDF: a line, no markers
}

type plotSpec struct {
	xlabel, ylabel string
	batchX         bool // x is batch size: log scale, ticks at the sizes present
	series         []series
	boxes          []box // a box plot instead of lines
	w, h           vg.Length
	yMax           float64 // fixed top of the y axis (a CDF's 1); 0: the data's, with headroom
	xFromData      bool    // x axis spans the data (timelines, CDFs), not from 0
}

// box is one box of a distribution figure.
type box struct {
	name   string
	values []float64
	color  color.Color
}

// seriesName is how a hardware × backend line is named in legends.
func seriesName(hw, backend string) string { return hw + " · " + backend }

// lineKeys are a group's hardware × backend combinations in a fixed order.
func lineKeys(rows []*Row) ([]string, map[string][]*Row) {
	var keys []string
	byKey := map[string][]*Row{}
	for _, r := range rows {
		k := seriesName(r.Hardware, r.Backend)
		if r.Load != "" {
			k += " · " + r.Load // an open loop is a line of its own, not a second point at its batch
		}
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], r)
	}
	sort.SliceStable(keys, func(i, j int) bool {
		a, b := byKey[keys[i]][0], byKey[keys[j]][0]
		if a.Hardware != b.Hardware {
			return hwLess(a.Hardware, b.Hardware)
		}
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		return a.Load < b.Load
	})
	for _, k := range keys {
		rs := byKey[k]
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].BatchSize < rs[j].BatchSize })
	}
	return keys, byKey
}

// valueFn reads one number of a completed cell; nil when absent. metric names the CSV
// column, so a flag on it keeps the value out of every figure.
type valueFn struct {
	metric string
	get    func(*Row) *float64
	// repeat names the metric in the manifest's repeat_stats (cell.RepeatMetricKeys); a
	// cell run with repeats is then drawn at the mean over its repeats with the interval
	// as an error bar. perGPU divides that mean and interval by the cell's GPUs.
	repeat string
	perGPU bool
}

// repeated is the mean over the cell's repeats of v's metric and its confidence interval;
// ok is false when the cell has no repeats or the metric no interval.
func (v valueFn) repeated(r *Row) (mean, lo, hi float64, ok bool) {
	if v.repeat == "" || r.Manifest == nil || r.Manifest.RepeatStats == nil {
		return 0, 0, 0, false
	}
	e, has := r.Manifest.RepeatStats.Metrics[v.repeat]
	if !has || e.Lo == nil || e.Hi == nil || !finite(e.Mean, *e.Lo, *e.Hi) {
		return 0, 0, 0, false
	}
	div := 1.0
	if v.perGPU {
		if r.GPUs <= 0 {
			return 0, 0, 0, false
		}
		div = float64(r.GPUs)
	}
	return e.Mean / div, *e.Lo / div, *e.Hi / div, true
}

func (v valueFn) of(r *Row) (*float64, string) {
	if !r.ok() {
		return nil, ""
	}
	if why := r.FlagFor(v.metric); why != "" {
		return nil, why
	}
	if why := r.unplottableBatch(); why != "" {
		return nil, why
	}
	x := v.get(r)
	if x != nil && !(*x > 0 && !math.IsInf(*x, 0)) {
		return nil, fmt.Sprintf("%s %g cannot be plotted", v.metric, *x)
	}
	return x, ""
}

// unplottableBatch says why a cell has no place on a batch-size axis ("" when it has).
func (r *Row) unplottableBatch() string {
	if r.BatchSize <= 0 {
		return fmt.Sprintf("batch_size %d is not a batch size", r.BatchSize)
	}
	return ""
}

// PlotNotes say which of a completed cell's numbers the figures leave out and why (a
// batch size ≤ 0, a zero, negative or non-finite value, unusable samples in its files).
func (r *Row) PlotNotes() []string {
	if !r.ok() {
		return nil
	}
	var out []string
	if why := r.unplottableBatch(); why != "" {
		out = append(out, "left out of the figures: "+why)
	}
	for _, v := range []valueFn{
		{metric: "tpot_mean_ms", get: (*Row).TPOTMs}, {metric: "ttft_mean_ms", get: (*Row).TTFTMs},
		{metric: "output_throughput_per_gpu_tok_s", get: (*Row).ThroughputPerGPU}, {metric: "j_per_output_token", get: (*Row).JPerOutputToken},
	} {
		if x := v.get(r); x != nil && !(*x > 0 && !math.IsInf(*x, 0)) {
			out = append(out, fmt.Sprintf("left out of the figures: %s is %g", v.metric, *x))
		}
	}
	if r.Data != nil {
		out = append(out, r.Data.Notes...)
	}
	return out
}

// groupPlots builds the figures of one model × task group. A figure that would show a
// single point, or nothing, is left out: the table says it better.
func groupPlots(g Group, base, what string) []Plot {
	var ok []*Row
	batches := map[int]bool{}
	for _, r := range g.Rows {
		if r.ok() {
			ok = append(ok, r)
			batches[r.BatchSize] = true
		}
	}
	if len(ok) < 2 {
		return nil
	}
	keys, byKey := lineKeys(ok)
	var out []Plot
	// Why floors were left out of the figure being built (its note says so).
	var floorFlags []string
	// Whether the figure being built draws a cell at the mean over its repeats.
	repeatsDrawn := false
	add := func(kind, title string, s *plotSpec, flagged []string) {
		// A figure needs a line: some series with two points (dots of one cell each say
		// nothing the table does not).
		n := 0
		for _, se := range s.series {
			if !se.floor && len(se.pts) >= 2 {
				n += len(se.pts)
			}
		}
		for _, b := range s.boxes {
			if len(b.values) > 0 {
				n += 2
			}
		}
		if n < 2 {
			floorFlags, repeatsDrawn = nil, false
			return
		}
		p := Plot{Name: base + kind + ".svg", Title: title + " — " + what, spec: s}
		var notes []string
		if len(flagged) > 0 {
			notes = append(notes, "left out, flagged: "+strings.Join(dedupe(flagged), "; "))
		}
		if len(floorFlags) > 0 {
			notes = append(notes, strings.Join(dedupe(floorFlags), "; "))
		}
		if repeatsDrawn {
			notes = append(notes, repeatsNote)
		}
		p.Note = strings.Join(notes, " · ")
		floorFlags, repeatsDrawn = nil, false
		out = append(out, p)
	}
	vsBatch := func(v valueFn, hi func(*Row) *float64) ([]series, []string) {
		var ss []series
		var flagged []string
		for _, k := range keys {
			rs := byKey[k]
			s := series{name: k, color: HardwareColor(rs[0].Hardware), style: styleOfBackend(rs[0].Backend)}
			anyCI := false
			var ci [][2]float64
			for _, r := range rs {
				y, why := v.of(r)
				if why != "" {
					flagged = append(flagged, r.ID+": "+why)
				}
				if y == nil {
					continue
				}
				ci = append(ci, [2]float64{math.NaN(), math.NaN()})
				if m, lo, h, ok := v.repeated(r); ok {
					y = &m
					ci[len(ci)-1] = [2]float64{lo, h}
					anyCI = true
					repeatsDrawn = true
				}
				s.pts = append(s.pts, plotter.XY{X: float64(r.BatchSize), Y: *y})
				if hi != nil {
					h := hi(r)
					if h == nil {
						s.hi = append(s.hi, math.NaN())
					} else {
						s.hi = append(s.hi, *h)
					}
				}
			}
			if anyCI {
				s.ci = ci
			}
			if len(s.pts) > 0 {
				ss = append(ss, s)
			}
		}
		return ss, flagged
	}
	// Floors are a property of model × hardware × batch: one dotted line per hardware, at
	// the batch sizes a cell of that hardware completed, never for cells that did not run.
	floors := func(name string, get func(*Row) *float64) []series {
		var hws []string
		pts := map[string]map[int]float64{}
		for _, r := range ok {
			// Where the comparison with the floor is flagged, no floor invites it.
			if why := r.FlagFor("tpot_over_floor"); why != "" {
				floorFlags = append(floorFlags, name+"s left out: "+why)
				continue
			}
			// A time-scaled sim's client latencies are un-scaled to physical units, the
			// client's own time with them (× 1/scale): a floor beside them would compare the
			// client, not the server.
			if sc := r.timeScale(); sc != 0 {
				floorFlags = append(floorFlags, fmt.Sprintf("%ss left out: %s, its un-scaled client latencies include the client's own time ÷ %g", name, profile.ScaleLabel(sc), sc))
				continue
			}
			v := get(r)
			if v == nil || r.BatchSize <= 0 {
				continue
			}
			if pts[r.Hardware] == nil {
				pts[r.Hardware] = map[int]float64{}
				hws = append(hws, r.Hardware)
			}
			pts[r.Hardware][r.BatchSize] = *v
		}
		sort.SliceStable(hws, func(i, j int) bool { return hwLess(hws[i], hws[j]) })
		var out []series
		for _, hw := range hws {
			s := series{name: name + " " + hw, color: HardwareColor(hw), floor: true}
			for b, v := range pts[hw] {
				s.pts = append(s.pts, plotter.XY{X: float64(b), Y: v})
			}
			sort.Slice(s.pts, func(a, b int) bool { return s.pts[a].X < s.pts[b].X })
			out = append(out, s)
		}
		return out
	}
	capOf := func(f func(*Row) *float64) func(*Row) *float64 {
		return func(r *Row) *float64 {
			if r.Cap == nil {
				return nil
			}
			return f(r)
		}
	}
	if len(batches) >= 2 {
		tp, fl := vsBatch(valueFn{metric: "tpot_mean_ms", get: (*Row).TPOTMs, repeat: "tpot_ms"}, (*Row).TPOTP99Ms)
		tp = append(tp, floors("floor", capOf(func(r *Row) *float64 { return r.Cap.TPOTFloorMs }))...)
		add("tpot", "Mean TPOT (whisker to p99) vs batch size, with the physical floor",
			&plotSpec{xlabel: "batch size", ylabel: "TPOT (ms)", batchX: true, series: tp}, fl)
		tt, fl := vsBatch(valueFn{metric: "ttft_mean_ms", get: (*Row).TTFTMs, repeat: "ttft_ms"}, (*Row).TTFTP99Ms)
		tt = append(tt, floors("floor", capOf(func(r *Row) *float64 { return r.Cap.TTFTFloorMs }))...)
		add("ttft", "Mean TTFT (whisker to p99) vs batch size, with the physical floor",
			&plotSpec{xlabel: "batch size", ylabel: "TTFT (ms)", batchX: true, series: tt}, fl)
		th, fl := vsBatch(valueFn{metric: "output_throughput_per_gpu_tok_s", get: (*Row).ThroughputPerGPU, repeat: "output_throughput", perGPU: true}, nil)
		th = append(th, floors("ceiling", capOf(func(r *Row) *float64 {
			if r.Cap.TPOTFloorMs == nil || *r.Cap.TPOTFloorMs <= 0 || r.GPUs <= 0 {
				return nil
			}
			return f64(float64(r.BatchSize) * 1000 / *r.Cap.TPOTFloorMs / float64(r.GPUs))
		}))...)
		add("throughput", "Output throughput per GPU vs batch size, with the ceiling batch / TPOT floor",
			&plotSpec{xlabel: "batch size", ylabel: "output tokens/s per GPU", batchX: true, series: th}, fl)
		sm, fl := vsBatch(valueFn{metric: "s_mbu_decode", get: func(r *Row) *float64 { return pct(r.util(false, true)) }}, nil)
		add("smbu", "Decode S-MBU vs batch size",
			&plotSpec{xlabel: "batch size", ylabel: "S-MBU (% of peak HBM bandwidth)", batchX: true, series: sm}, fl)
		// The energy panel only where cells have telemetry: vsBatch drops cells without it,
		// and add drops a figure with fewer than two points.
		en, fl := vsBatch(valueFn{metric: "j_per_output_token", get: (*Row).JPerOutputToken, repeat: "j_per_output_token"}, nil)
		add("energy", "GPU energy per output token vs batch size (NVML)",
			&plotSpec{xlabel: "batch size", ylabel: "J per output token", batchX: true, series: en}, fl)
	}
	pa, fl := paretoSeries(keys, byKey, ok)
	add("pareto", "Throughput per GPU vs per-user decode speed, labelled by batch size, with the floor's bound",
		&plotSpec{xlabel: "per-user decode speed: 1000 / TPOT (tokens/s)", ylabel: "output tokens/s per GPU", series: pa}, fl)
	// Distributions of the cells that kept per-request rows (the native client's bench.json).
	for _, d := range []struct {
		kind, title string
		get         func(*CellData) []float64
		unit        string
	}{
		{"tpot-dist", "TPOT per request, one box per cell (box: p25–p75, line: median)", func(c *CellData) []float64 { return c.TPOT }, "TPOT per request (ms)"},
		{"ttft-dist", "TTFT per request, one box per cell", func(c *CellData) []float64 { return c.TTFT }, "TTFT per request (ms)"},
	} {
		var bs []box
		for _, k := range keys {
			for _, r := range byKey[k] {
				if r.Data == nil || len(d.get(r.Data)) == 0 {
					continue
				}
				bs = append(bs, box{name: fmt.Sprintf("%s bs%d", k, r.BatchSize), values: d.get(r.Data), color: HardwareColor(r.Hardware)})
			}
		}
		if len(bs) >= 2 {
			add(d.kind, d.title, &plotSpec{xlabel: d.unit, boxes: bs, h: vg.Points(float64(70 + 20*len(bs)))}, nil)
		}
	}
	return out
}

// repeatsNote says how a figure draws cells run with repeats.
const repeatsNote = "cells run with --repeats: the point is the mean over the repeats, the thick bar its 95% confidence interval (Student t); the thin whisker is repeat 1's p99"

func dedupe(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// paretoSeries: one line per hardware × backend through its batch sizes, each point
// labelled "bs<N>"; the frontier over all of them; and per hardware the floor's bound (the
// point each batch size would reach at its TPOT floor).
func paretoSeries(keys []string, byKey map[string][]*Row, ok []*Row) ([]series, []string) {
	var out []series
	var all plotter.XYs
	var flagged []string
	for _, k := range keys {
		rs := byKey[k]
		s := series{name: k, color: HardwareColor(rs[0].Hardware), style: styleOfBackend(rs[0].Backend)}
		for _, r := range rs {
			if why := r.FlagFor("tpot_mean_ms"); why != "" {
				flagged = append(flagged, r.ID+": "+why)
				continue
			}
			if why := r.unplottableBatch(); why != "" {
				flagged = append(flagged, r.ID+": "+why)
				continue
			}
			x, y := r.Interactivity(), r.ThroughputPerGPU()
			if x == nil || y == nil || !finite(*x, *y) || *y < 0 {
				continue
			}
			s.pts = append(s.pts, plotter.XY{X: *x, Y: *y})
			s.labels = append(s.labels, "bs"+strconv.Itoa(r.BatchSize))
		}
		if len(s.pts) > 0 {
			all = append(all, s.pts...)
			out = append(out, s)
		}
	}
	if f := paretoFrontier(all); len(f) > 1 {
		out = append([]series{{name: "Pareto frontier", pts: f, color: color.Gray{Y: 110}, floor: true}}, out...)
	}
	hws := map[string][]*Row{}
	var order []string
	for _, r := range ok {
		if r.Cap == nil || r.Cap.TPOTFloorMs == nil || *r.Cap.TPOTFloorMs <= 0 || r.GPUs <= 0 || r.FlagFor("tpot_over_floor") != "" || r.timeScale() != 0 {
			continue
		}
		if hws[r.Hardware] == nil {
			order = append(order, r.Hardware)
		}
		hws[r.Hardware] = append(hws[r.Hardware], r)
	}
	sort.SliceStable(order, func(i, j int) bool { return hwLess(order[i], order[j]) })
	for _, hw := range order {
		s := series{name: "floor " + hw, color: HardwareColor(hw), floor: true}
		seen := map[int]bool{}
		for _, r := range hws[hw] {
			if seen[r.BatchSize] {
				continue
			}
			seen[r.BatchSize] = true
			fl := *r.Cap.TPOTFloorMs
			s.pts = append(s.pts, plotter.XY{X: 1000 / fl, Y: float64(r.BatchSize) * 1000 / fl / float64(r.GPUs)})
		}
		sort.Slice(s.pts, func(a, b int) bool { return s.pts[a].X < s.pts[b].X })
		if len(s.pts) > 1 {
			out = append(out, s)
		}
	}
	return out, flagged
}

// paretoFrontier is the points no other point beats on both axes (higher is better on
// both), ordered by x.
func paretoFrontier(pts plotter.XYs) plotter.XYs {
	p := append(plotter.XYs(nil), pts...)
	sort.Slice(p, func(i, j int) bool {
		if p[i].X != p[j].X {
			return p[i].X > p[j].X
		}
		return p[i].Y > p[j].Y
	})
	var f plotter.XYs
	best := math.Inf(-1)
	for _, q := range p {
		if q.Y > best {
			f = append(f, q)
			best = q.Y
		}
	}
	sort.Slice(f, func(i, j int) bool { return f[i].X < f[j].X })
	return f
}

// fontStack replaces the one family gonum writes with a stack a browser resolves: Liberation
// Sans has Arial's metrics, so text measured for it fits in either.
var fontStack = []byte("font-family:'Liberation Sans',Arimo,Arial,Helvetica,sans-serif;")

func setFonts(p *plot.Plot) {
	p.Title.TextStyle.Font.Size = vg.Points(12)
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font.Size = vg.Points(11)
		a.Tick.Label.Font.Size = vg.Points(10)
		a.Padding = vg.Points(4)
	}
	p.Legend.TextStyle.Font.Size = vg.Points(9.5)
}

// sanitize drops what no axis can show: non-finite points, x ≤ 0 on the batch (log)
// axis, non-finite box values; a non-finite whisker becomes none (NaN).
func (s *plotSpec) sanitize() {
	var ss []series
	for _, se := range s.series {
		var pts plotter.XYs
		var hi []float64
		var ci [][2]float64
		var labels []string
		for i, q := range se.pts {
			if !finite(q.X, q.Y) || s.batchX && q.X <= 0 {
				continue
			}
			pts = append(pts, q)
			if i < len(se.hi) {
				h := se.hi[i]
				if math.IsInf(h, 0) {
					h = math.NaN()
				}
				hi = append(hi, h)
			}
			if i < len(se.ci) {
				c := se.ci[i]
				if !finite(c[0], c[1]) || c[0] > c[1] {
					c = [2]float64{math.NaN(), math.NaN()}
				}
				ci = append(ci, c)
			}
			if i < len(se.labels) {
				labels = append(labels, se.labels[i])
			}
		}
		if len(pts) == 0 {
			continue
		}
		se.pts, se.labels = pts, labels
		if len(se.hi) > 0 {
			se.hi = hi
		}
		if len(se.ci) > 0 {
			se.ci = ci
		}
		ss = append(ss, se)
	}
	s.series = ss
	var bs []box
	for _, b := range s.boxes {
		var vs []float64
		for _, v := range b.values {
			if finite(v) {
				vs = append(vs, v)
			}
		}
		if len(vs) > 0 {
			b.values = vs
			bs = append(bs, b)
		}
	}
	s.boxes = bs
}

// figLayout is where a figure's parts went (points, y up), for the tests and the SVG's
// data attributes (which the headless-browser test reads).
type figLayout struct {
	W, H vg.Length
	// Area is the data area inside the axes.
	Area vg.Rectangle
	// Legend is the legend's box beside the data area; zero when the figure has none.
	Legend vg.Rectangle
	// Labels are the point labels drawn, Unplaced those that found no free spot.
	Labels   []placedLabel
	Unplaced []string
	// YMin and YMax are the y axis' range in data units; Whiskers the highest and lowest
	// end of every whisker and interval drawn (NaN when none).
	YMin, YMax           float64
	WhiskerLo, WhiskerHi float64
}

type placedLabel struct {
	Text string
	Box  vg.Rectangle
	At   vg.Point
}

// Figure geometry.
const (
	defaultW    = 16 * vg.Centimeter
	defaultH    = 10 * vg.Centimeter
	legendGap   = vg.Length(10)
	figMargin   = vg.Length(8)
	legendFont  = 9.5
	labelFont   = 8.5
	markerR     = vg.Length(3.5)
	minPlotFrac = 0.6 // the data area keeps at least this share of the width
)

// drawFigure draws one figure to SVG: the data area with its axes on the left, the legend
// in a column to its right (never on the data), point labels placed where they overlap
// nothing (placeLabels), whiskers and intervals inside the y axis' range.
func drawFigure(s *plotSpec) (svg []byte, lay *figLayout, err error) {
	defer func() {
		// gonum panics on some degenerate data; a figure that cannot be drawn is left out,
		// the report goes on.
		if v := recover(); v != nil {
			svg, lay, err = nil, nil, fmt.Errorf("cannot draw: %v", v)
		}
	}()
	s.sanitize()
	if len(s.series) == 0 && len(s.boxes) == 0 {
		return nil, nil, errors.New("nothing left to draw")
	}
	p := plot.New()
	setFonts(p)
	p.X.Label.Text = s.xlabel
	p.Y.Label.Text = s.ylabel
	w, h := s.w, s.h
	if w == 0 {
		w = defaultW
	}
	if h == 0 {
		h = defaultH
	}
	lay = &figLayout{WhiskerLo: math.NaN(), WhiskerHi: math.NaN()}
	if len(s.boxes) > 0 {
		if err := drawBoxes(p, s.boxes); err != nil {
			return nil, nil, err
		}
		svg, err := toSVG(p, nil, w, h, lay, nil)
		return svg, lay, err
	}
	p.Y.Min = 0
	ymax, xmax := 0.0, 0.0
	labelled := false
	for _, se := range s.series {
		labelled = labelled || len(se.labels) > 0
		for i, q := range se.pts {
			ymax = math.Max(ymax, q.Y)
			xmax = math.Max(xmax, q.X)
			for _, v := range se.whiskerEnds(i) {
				ymax = math.Max(ymax, v)
				p.Y.Min = math.Min(p.Y.Min, v)
				lay.WhiskerHi = nanMax(lay.WhiskerHi, v)
				lay.WhiskerLo = nanMin(lay.WhiskerLo, v)
			}
		}
	}
	switch {
	case s.yMax > 0:
		p.Y.Max = math.Max(s.yMax, ymax)
	case ymax > 0:
		// Headroom over the highest point and whisker: room for a label above it; the
		// legend is beside the data, so it needs none.
		p.Y.Max = ymax * 1.08
		if labelled {
			p.Y.Max = ymax * 1.15
		}
	}
	if p.Y.Min < 0 {
		p.Y.Min -= 0.05 * (p.Y.Max - p.Y.Min)
	}
	lay.YMin, lay.YMax = p.Y.Min, p.Y.Max
	p.Y.Tick.Marker = plainTicks{}
	p.X.Tick.Marker = plainTicks{}
	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = color.Gray{Y: 225}, color.Gray{Y: 225}
	p.Add(grid)
	if s.batchX {
		p.X.Scale = plot.LogScale{}
		var ticks []plot.Tick
		seen := map[float64]bool{}
		for _, se := range s.series {
			for _, q := range se.pts {
				if !seen[q.X] {
					seen[q.X] = true
					ticks = append(ticks, plot.Tick{Value: q.X, Label: strconv.FormatFloat(q.X, 'f', -1, 64)})
				}
			}
		}
		sort.Slice(ticks, func(i, j int) bool { return ticks[i].Value < ticks[j].Value })
		if len(ticks) == 0 {
			return nil, nil, errors.New("no point on the batch axis")
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.X.Min, p.X.Max = ticks[0].Value/1.4, ticks[len(ticks)-1].Value*1.4
	} else if !s.xFromData {
		p.X.Min, p.X.Max = 0, xmax*1.15
	}
	leg := plot.NewLegend()
	leg.TextStyle.Font.Size = vg.Points(legendFont)
	leg.Top, leg.Left = true, true
	// gonum spaces entries by the text's ascent; the padding clears the descent too.
	leg.Padding = vg.Points(3)
	nLegend := 0
	addLegend := func(name string, th ...plot.Thumbnailer) {
		leg.Add(name, th...)
		nLegend++
	}
	for _, se := range s.series {
		if se.plain {
			l, err := plotter.NewLine(se.pts)
			if err != nil {
				return nil, nil, err
			}
			l.Color, l.Width = se.color, vg.Points(1.6)
			p.Add(l)
			if len(s.series) > 1 {
				addLegend(se.name, l)
			}
			continue
		}
		if se.floor {
			l, err := plotter.NewLine(se.pts)
			if err != nil {
				return nil, nil, err
			}
			l.Color, l.Dashes, l.Width = se.color, floorDashes, vg.Points(1.3)
			p.Add(l)
			addLegend(se.name, l)
			continue
		}
		l, sc, err := plotter.NewLinePoints(se.pts)
		if err != nil {
			return nil, nil, err
		}
		l.Color, l.Width, l.Dashes = se.color, vg.Points(1.8), se.style.dashes
		sc.Color, sc.Shape, sc.Radius = se.color, se.style.shape, markerR
		p.Add(l, sc)
		if eb := se.p99Bars(); eb != nil {
			bars, err := plotter.NewYErrorBars(eb)
			if err != nil {
				return nil, nil, err
			}
			bars.Color, bars.Width, bars.CapWidth = se.color, vg.Points(0.8), vg.Points(4)
			p.Add(bars)
		}
		if eb := se.ciBars(); eb != nil {
			bars, err := plotter.NewYErrorBars(eb)
			if err != nil {
				return nil, nil, err
			}
			bars.Color, bars.Width, bars.CapWidth = se.color, vg.Points(2.4), vg.Points(9)
			p.Add(bars)
		}
		addLegend(se.name, l, sc)
	}
	if nLegend == 0 {
		svg, err := toSVG(p, nil, w, h, lay, s.series)
		return svg, lay, err
	}
	svg, err = toSVG(p, &leg, w, h, lay, s.series)
	return svg, lay, err
}

// whiskerEnds are the ends of point i's p99 whisker and interval that are drawn.
func (se *series) whiskerEnds(i int) []float64 {
	var out []float64
	if i < len(se.hi) && !math.IsNaN(se.hi[i]) && se.hi[i] > se.pts[i].Y {
		out = append(out, se.hi[i])
	}
	if i < len(se.ci) && !math.IsNaN(se.ci[i][0]) && !math.IsNaN(se.ci[i][1]) {
		out = append(out, se.ci[i][0], se.ci[i][1])
	}
	return out
}

// p99Bars are the whiskers from each point up to its p99; nil when the series has none.
func (se *series) p99Bars() errPts {
	if len(se.hi) != len(se.pts) {
		return nil
	}
	var eb errPts
	for i, q := range se.pts {
		hi := se.hi[i]
		if math.IsNaN(hi) || hi < q.Y {
			continue
		}
		eb = append(eb, errPt{q.X, q.Y, 0, hi - q.Y})
	}
	return eb
}

// ciBars are the repeats' confidence intervals around each point that has one.
func (se *series) ciBars() errPts {
	if len(se.ci) != len(se.pts) {
		return nil
	}
	var eb errPts
	for i, q := range se.pts {
		lo, hi := se.ci[i][0], se.ci[i][1]
		if math.IsNaN(lo) || math.IsNaN(hi) {
			continue
		}
		eb = append(eb, errPt{q.X, q.Y, math.Max(q.Y-lo, 0), math.Max(hi-q.Y, 0)})
	}
	return eb
}

func nanMax(a, b float64) float64 {
	if math.IsNaN(a) {
		return b
	}
	return math.Max(a, b)
}

func nanMin(a, b float64) float64 {
	if math.IsNaN(a) {
		return b
	}
	return math.Min(a, b)
}

type errPt struct{ x, y, lo, hi float64 }
type errPts []errPt

func (e errPts) Len() int                        { return len(e) }
func (e errPts) XY(i int) (float64, float64)     { return e[i].x, e[i].y }
func (e errPts) YError(i int) (float64, float64) { return e[i].lo, e[i].hi }

// drawBoxes draws horizontal boxes, one per cell, named on the y axis.
func drawBoxes(p *plot.Plot, bs []box) error {
	names := make([]string, len(bs))
	for i, b := range bs {
		// NominalY puts the first name at the bottom; list top-down as the legend reads.
		j := len(bs) - 1 - i
		bp, err := plotter.NewBoxPlot(vg.Points(11), float64(j), plotter.Values(b.values))
		if err != nil {
			return err
		}
		bp.Horizontal = true
		bp.FillColor = withAlpha(b.color, 90)
		bp.BoxStyle.Color, bp.MedianStyle.Color = b.color, color.Black
		bp.MedianStyle.Width = vg.Points(1.6)
		bp.GlyphStyle.Color = b.color
		bp.GlyphStyle.Radius = vg.Points(1.5)
		p.Add(bp)
		names[j] = b.name
	}
	p.NominalY(names...)
	// Half a row above the top box and below the bottom one: every box, whisker and
	// outlier inside the axis, none cut at the figure's edge.
	p.Y.Min, p.Y.Max = -0.5, float64(len(bs))-0.5
	p.X.Min = 0
	p.X.Tick.Marker = plainTicks{}
	grid := plotter.NewGrid()
	grid.Horizontal.Color = color.Transparent
	grid.Vertical.Color = color.Gray{Y: 225}
	p.Add(grid)
	return nil
}

func withAlpha(c color.Color, a uint8) color.Color {
	r, g, b, _ := c.RGBA()
	return color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: a}
}

// toSVG lays the figure out and draws it: the plot on the left, the legend (when leg is
// not nil) in a column on the right, top-aligned with the data area, the series' point
// labels placed inside the data area. The figure grows wider when the legend would leave
// the data less than minPlotFrac of it, and taller when the legend is longer than the
// figure is high. lay gets the geometry; the root <svg> carries it as data attributes.
func toSVG(p *plot.Plot, leg *plot.Legend, w, h vg.Length, lay *figLayout, ss []series) ([]byte, error) {
	var lw, lh vg.Length
	if leg != nil {
		lw, lh = legendSize(leg)
		if w-lw-legendGap-figMargin < minPlotFrac*w {
			w = minPlotFrac*w + lw + legendGap + figMargin
		}
		// The data area is the figure less about 40 pt of x axis.
		if lh > h-40 {
			h = lh + 40
		}
	}
	c := vgsvg.NewWith(vgsvg.UseWH(w, h))
	dc := draw.New(c)
	// A margin above and right of the axes, so the top tick label and the last point's
	// marker stay inside the figure.
	pc := draw.Crop(dc, figMargin/2, -figMargin, 0, -figMargin)
	if leg != nil {
		pc = draw.Crop(pc, 0, -(lw + legendGap), 0, 0)
	}
	p.Draw(pc)
	area := p.DataCanvas(pc)
	lay.W, lay.H, lay.Area = w, h, area.Rectangle
	if leg != nil {
		lc := dc
		lc.Min.X = pc.Max.X + legendGap
		lc.Max.Y = area.Max.Y
		leg.Draw(lc)
		lay.Legend = vg.Rectangle{Min: vg.Point{X: lc.Min.X, Y: area.Max.Y - lh}, Max: vg.Point{X: lc.Min.X + lw, Y: area.Max.Y}}
	}
	drawLabels(p, area, ss, lay)
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	for _, fam := range []string{"font-family:Liberation Sans;", "font-family:Liberation Sans Narrow;"} {
		b = bytes.ReplaceAll(b, []byte(fam), fontStack)
	}
	return withLayoutAttrs(b, lay), nil
}

// legendSize is the legend's width and height as plot.Legend.Draw lays it out.
func legendSize(leg *plot.Legend) (w, h vg.Length) {
	r := leg.Rectangle(draw.Canvas{})
	return r.Size().X, r.Size().Y
}

// labelStyle is the font of point labels.
func labelFace() font.Face {
	return font.DefaultCache.Lookup(plot.DefaultFont, vg.Points(labelFont))
}

// drawLabels places and draws the series' point labels inside the data area; a label far
// from its point gets a thin leader line, one with no free spot is left out (lay.Unplaced).
func drawLabels(p *plot.Plot, area draw.Canvas, ss []series, lay *figLayout) {
	xf, yf := p.Transforms(&area)
	at := func(q plotter.XY) vg.Point { return vg.Point{X: xf(q.X), Y: yf(q.Y)} }
	face := labelFace()
	ext := face.Extents()
	var reqs []labelReq
	var obstacles []vg.Rectangle
	var segs []segment
	for _, se := range ss {
		for i, q := range se.pts {
			pt := at(q)
			if !se.floor && !se.plain {
				obstacles = append(obstacles, pad(vg.Rectangle{Min: pt, Max: pt}, markerR+0.5))
			}
			if i > 0 {
				segs = append(segs, segment{at(se.pts[i-1]), pt})
			}
			for _, v := range se.whiskerEnds(i) {
				segs = append(segs, segment{pt, at(plotter.XY{X: q.X, Y: v})})
			}
		}
	}
	for _, se := range ss {
		if len(se.labels) != len(se.pts) {
			continue
		}
	next:
		for i, q := range se.pts {
			pt := at(q)
			// One label for the same text at the same spot (two lines through one point).
			for _, r := range reqs {
				if r.text == se.labels[i] && dist(r.at, pt) < 1.5 {
					continue next
				}
			}
			reqs = append(reqs, labelReq{at: pt, w: face.Width(se.labels[i]), h: ext.Ascent + ext.Descent, text: se.labels[i]})
		}
	}
	if len(reqs) == 0 {
		return
	}
	pos := placeLabels(reqs, obstacles, segs, area.Rectangle)
	area.SetColor(color.Gray{Y: 60})
	for i, ps := range pos {
		rq := reqs[i]
		if !ps.ok {
			lay.Unplaced = append(lay.Unplaced, rq.text)
			continue
		}
		if ps.leader {
			area.StrokeLine2(draw.LineStyle{Color: color.Gray{Y: 150}, Width: vg.Points(0.5)}, rq.at.X, rq.at.Y, nearestOn(ps.box, rq.at).X, nearestOn(ps.box, rq.at).Y)
		}
		area.SetColor(color.Gray{Y: 60})
		area.FillString(face, vg.Point{X: ps.box.Min.X, Y: ps.box.Min.Y + ext.Descent}, rq.text)
		lay.Labels = append(lay.Labels, placedLabel{Text: rq.text, Box: ps.box, At: rq.at})
	}
}

// withLayoutAttrs writes the layout onto the root <svg> as data attributes in the SVG's
// own units (points, y down): data-plot-area and data-legend "x y width height", and
// data-point-labels the labels drawn in the data area, as JSON. Only numbers and the
// labels (escaped) go in.
func withLayoutAttrs(svg []byte, lay *figLayout) []byte {
	i := bytes.Index(svg, []byte("<svg "))
	if i < 0 {
		return svg
	}
	box := func(r vg.Rectangle) string {
		return fmt.Sprintf("%.2f %.2f %.2f %.2f", float64(r.Min.X), float64(lay.H-r.Max.Y), float64(r.Size().X), float64(r.Size().Y))
	}
	attrs := ` data-plot-area="` + box(lay.Area) + `"`
	if lay.Legend != (vg.Rectangle{}) {
		attrs += ` data-legend="` + box(lay.Legend) + `"`
	}
	labels := []string{}
	for _, l := range lay.Labels {
		labels = append(labels, l.Text)
	}
	js, _ := json.Marshal(labels)
	attrs += ` data-point-labels="` + html.EscapeString(string(js)) + `"`
	out := make([]byte, 0, len(svg)+len(attrs))
	out = append(out, svg[:i+4]...)
	out = append(out, attrs...)
	return append(out, svg[i+4:]...)
}

// renderAll draws every figure; one that cannot be drawn gets Err (and no SVG), the
// others are drawn all the same.
func renderAll(plots []*Plot) {
	var (
		wg   sync.WaitGroup
		next = make(chan *Plot)
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pl := range next {
				var lay *figLayout
				pl.SVG, lay, pl.Err = drawFigure(pl.spec)
				if pl.Err != nil {
					pl.SVG = nil
					continue
				}
				if n := len(lay.Unplaced); n > 0 {
					note := fmt.Sprintf("%d of %d point labels left out for lack of room (%s); the table lists every cell", n, n+len(lay.Labels), strings.Join(firstN(dedupe(lay.Unplaced), 8), ", "))
					if pl.Note != "" {
						note = pl.Note + " · " + note
					}
					pl.Note = note
				}
			}
		}()
	}
	for _, p := range plots {
		next <- p
	}
	close(next)
	wg.Wait()
}

// firstN is xs cut to n, "…" standing for the rest.
func firstN(xs []string, n int) []string {
	if len(xs) <= n {
		return xs
	}
	return append(xs[:n:n], "…")
}

// drawn is ps without the figures that could not be drawn.
func drawn(ps []*Plot) []*Plot {
	out := ps[:0:0]
	for _, p := range ps {
		if p.Err == nil {
			out = append(out, p)
		}
	}
	return out
}

// plainTicks are gonum's default tick positions with labels as short as the value allows
// ("2500", not "2500.00").
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', 6, 64)
		}
	}
	return ts
}
