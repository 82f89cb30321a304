package report

import (
	"fmt"
	"image/color"
	"math"
	"sort"
	"strconv"

	"gonum.org/v1/plot/plotter"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// sloColor draws an SLO bound: a dotted line across the rates, so where the latency
// crosses it is where the rate stops meeting the SLO.
var sloColor = rgb(0xe15759)

// ratePlots are a rate-swept cell's figures (--rates, --find-max-rate): mean TTFT and TPOT
// (whiskers to p99) against the asked request rate, each with its SLO bound, and the
// achieved and good requests/s against it. Rates span decades: the x axis is logarithmic,
// ticked at the rates tried (three significant digits).
func ratePlots(m *cell.Manifest, base string, c color.Color) []*Plot {
	if m == nil || len(m.Rates) < 2 {
		return nil
	}
	pts := append([]cell.RatePoint(nil), m.Rates...)
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Rate < pts[j].Rate })
	var slo *profile.Goodput
	for _, p := range pts {
		if p.Metrics != nil && p.Metrics.Goodput != nil {
			slo = p.Metrics.Goodput
			break
		}
	}
	xOf := func(r float64) float64 {
		v, _ := strconv.ParseFloat(strconv.FormatFloat(r, 'g', 3, 64), 64)
		return v
	}
	lo, hi := xOf(pts[0].Rate), xOf(pts[len(pts)-1].Rate)
	latency := func(mean, p99 func(*profile.Metrics) *float64) series {
		s := series{color: c}
		for _, p := range pts {
			if p.Metrics == nil || mean(p.Metrics) == nil {
				continue
			}
			s.pts = append(s.pts, plotter.XY{X: xOf(p.Rate), Y: *mean(p.Metrics)})
			w := math.NaN()
			if v := p99(p.Metrics); v != nil {
				w = *v
			}
			s.hi = append(s.hi, w)
		}
		return s
	}
	bound := func(ms *float64) []series {
		if ms == nil {
			return nil
		}
		return []series{{name: "SLO " + strconv.FormatFloat(*ms, 'g', 4, 64) + " ms", color: sloColor, floor: true,
			pts: plotter.XYs{{X: lo, Y: *ms}, {X: hi, Y: *ms}}}}
	}
	var out []*Plot
	add := func(kind, title, ylabel string, ss []series) {
		if len(ss) == 0 || len(ss[0].pts) < 2 {
			return
		}
		out = append(out, &Plot{Name: base + kind + ".svg", Title: title,
			spec: &plotSpec{xlabel: "asked request rate (requests/s, log scale)", ylabel: ylabel, batchX: true, series: ss}})
	}
	var ttftB, tpotB *float64
	if slo != nil {
		ttftB, tpotB = slo.TTFTMs, slo.TPOTMs
	}
	ttft := latency(func(x *profile.Metrics) *float64 { return x.MeanTTFTMs }, func(x *profile.Metrics) *float64 { return x.P99TTFTMs })
	ttft.name = "mean TTFT (whisker: p99)"
	add("rate-ttft", "TTFT against request rate", "TTFT (ms)", append([]series{ttft}, bound(ttftB)...))
	tpot := latency(func(x *profile.Metrics) *float64 { return x.MeanTPOTMs }, func(x *profile.Metrics) *float64 { return x.P99TPOTMs })
	tpot.name = "mean TPOT (whisker: p99)"
	add("rate-tpot", "TPOT against request rate", "TPOT (ms)", append([]series{tpot}, bound(tpotB)...))
	achieved := series{name: "achieved requests/s", color: c}
	good := series{name: "good requests/s (meeting every SLO)", color: sloColor}
	for _, p := range pts {
		if p.Metrics == nil || p.Metrics.DurationS <= 0 {
			continue
		}
		achieved.pts = append(achieved.pts, plotter.XY{X: xOf(p.Rate), Y: p.Metrics.RequestThroughput})
		if g := p.Metrics.Goodput; g != nil && g.RequestsPerS != nil {
			good.pts = append(good.pts, plotter.XY{X: xOf(p.Rate), Y: *g.RequestsPerS})
		}
	}
	ss := []series{achieved}
	if len(good.pts) > 0 {
		ss = append(ss, good)
	}
	add("rate-goodput", "Throughput and goodput against request rate", "requests/s", ss)
	return out
}

// rateRows are a rate-swept cell's rows on its page: one per rate (the other rows are the
// first rate's), and what --find-max-rate found.
func rateRows(m *cell.Manifest) []kv {
	if m == nil || len(m.Rates) == 0 {
		return nil
	}
	var out []kv
	for _, p := range m.Rates {
		k := "rate " + strconv.FormatFloat(p.Rate, 'g', 4, 64) + " requests/s"
		if p.Search {
			k += " (search)"
		}
		x := p.Metrics
		if x == nil {
			out = append(out, kv{k, Absent})
			continue
		}
		v := fmt.Sprintf("achieved %s requests/s · TTFT mean %s ms, p99 %s · TPOT mean %s ms, p99 %s",
			round3(x.RequestThroughput), fmtP(x.MeanTTFTMs), fmtP(x.P99TTFTMs), fmtP(x.MeanTPOTMs), fmtP(x.P99TPOTMs))
		if g := x.Goodput; g != nil {
			verdict := "meets the SLO"
			if !g.Met {
				verdict = "misses the SLO"
			}
			v += fmt.Sprintf(" · goodput %d of %d (%s%%), %s good requests/s: %s", g.Good, g.Sent, round3(100*g.Share), fmtP(g.RequestsPerS), verdict)
		}
		out = append(out, kv{k, v})
	}
	if mr := m.MaxRate; mr != nil {
		v := "none of the rates tried met it"
		if mr.Rate != nil {
			v = round3(*mr.Rate) + " requests/s"
		}
		v += fmt.Sprintf(" (%d searched benches)", len(mr.Steps))
		if mr.Note != "" {
			v += "; " + mr.Note
		}
		out = append(out, kv{"highest rate meeting " + mr.SLO, v})
	}
	return out
}
