package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// checkPlaced asserts what placeLabels promises: every placed box inside bounds, over no
// marker and no other placed box.
func checkPlaced(t *testing.T, reqs []labelReq, pos []labelPos, markers []vg.Rectangle, bounds vg.Rectangle) (placed int) {
	t.Helper()
	for i, p := range pos {
		if !p.ok {
			continue
		}
		placed++
		if sz := p.box.Size(); math.Abs(float64(sz.X-reqs[i].w)) > 1e-9 || math.Abs(float64(sz.Y-reqs[i].h)) > 1e-9 {
			t.Errorf("label %d box %v, want %v × %v", i, p.box, reqs[i].w, reqs[i].h)
		}
		if !inside(p.box, bounds) {
			t.Errorf("label %q at %v leaves the data area %v", reqs[i].text, p.box, bounds)
		}
		for _, m := range markers {
			if overlaps(p.box, m) {
				t.Errorf("label %q at %v covers a marker at %v", reqs[i].text, p.box, m)
			}
		}
		for j := i + 1; j < len(pos); j++ {
			if pos[j].ok && overlaps(p.box, pos[j].box) {
				t.Errorf("labels %q %v and %q %v overlap", reqs[i].text, p.box, reqs[j].text, pos[j].box)
			}
		}
	}
	return placed
}

// Sparse points get their labels right beside them; a pile of points in a corner (the
// "bs1bs128bs32" of a crowded Pareto view) gets labels that overlap nothing, some on
// leader lines, and those with no room are reported, not drawn over each other.
func TestPlaceLabels(t *testing.T) {
	bounds := vg.Rectangle{Max: vg.Point{X: 400, Y: 250}}
	marker := func(p vg.Point) vg.Rectangle { return pad(vg.Rectangle{Min: p, Max: p}, markerR+0.5) }
	t.Run("sparse", func(t *testing.T) {
		var reqs []labelReq
		var markers []vg.Rectangle
		for i := range 5 {
			p := vg.Point{X: vg.Length(50 + 70*i), Y: vg.Length(40 + 40*i)}
			reqs = append(reqs, labelReq{at: p, w: 20, h: 10, text: "bs" + strconv.Itoa(1<<i)})
			markers = append(markers, marker(p))
		}
		pos := placeLabels(reqs, markers, nil, bounds)
		if n := checkPlaced(t, reqs, pos, markers, bounds); n != 5 {
			t.Fatalf("placed %d of 5 sparse labels", n)
		}
		for i, p := range pos {
			if p.leader || dist(nearestOn(p.box, reqs[i].at), reqs[i].at) > labelRings[0]+markerR+2 {
				t.Errorf("sparse label %d at %v, %v from its point (leader %v): want it beside the point", i, p.box, dist(nearestOn(p.box, reqs[i].at), reqs[i].at), p.leader)
			}
		}
	})
	t.Run("pile", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		var reqs []labelReq
		var markers []vg.Rectangle
		for i := range 40 {
			// Forty points within 30 × 20 pt near the lower right corner, three exactly
			// on one spot.
			p := vg.Point{X: vg.Length(360 + rng.Float64()*30), Y: vg.Length(5 + rng.Float64()*20)}
			if i < 3 {
				p = vg.Point{X: 380, Y: 10}
			}
			reqs = append(reqs, labelReq{at: p, w: vg.Length(14 + 4*(i%3)), h: 10, text: fmt.Sprintf("bs%d", i)})
			markers = append(markers, marker(p))
		}
		pos := placeLabels(reqs, markers, nil, bounds)
		n := checkPlaced(t, reqs, pos, markers, bounds)
		leaders := 0
		for _, p := range pos {
			if p.ok && p.leader {
				leaders++
			}
		}
		if n < 20 || leaders == 0 {
			t.Errorf("placed %d of 40 piled labels, %d on leader lines; want most placed, the far ones with leaders", n, leaders)
		}
	})
	t.Run("no room", func(t *testing.T) {
		// A data area smaller than any label: nothing is placed, nothing overlaps.
		tiny := vg.Rectangle{Max: vg.Point{X: 12, Y: 8}}
		reqs := []labelReq{{at: vg.Point{X: 6, Y: 4}, w: 20, h: 10, text: "bs1"}, {at: vg.Point{X: 6, Y: 4}, w: 20, h: 10, text: "bs2"}}
		for _, p := range placeLabels(reqs, nil, nil, tiny) {
			if p.ok {
				t.Errorf("label placed at %v in a %v area", p.box, tiny)
			}
		}
	})
	t.Run("lines cost", func(t *testing.T) {
		// A line through the spot right of the point: the label goes elsewhere beside it.
		p := vg.Point{X: 200, Y: 100}
		segs := []segment{{vg.Point{X: 205, Y: 0}, vg.Point{X: 205, Y: 250}}, {vg.Point{X: 230, Y: 0}, vg.Point{X: 230, Y: 250}}}
		pos := placeLabels([]labelReq{{at: p, w: 20, h: 10, text: "bs8"}}, []vg.Rectangle{marker(p)}, segs, bounds)
		if !pos[0].ok || segHits(segs[0], pos[0].box) || segHits(segs[1], pos[0].box) {
			t.Errorf("label at %v crosses a line though the other side is free", pos[0].box)
		}
	})
}

func TestSegHits(t *testing.T) {
	r := vg.Rectangle{Min: vg.Point{X: 10, Y: 10}, Max: vg.Point{X: 20, Y: 20}}
	for _, tc := range []struct {
		s    segment
		want bool
	}{
		{segment{vg.Point{X: 0, Y: 15}, vg.Point{X: 30, Y: 15}}, true},  // through
		{segment{vg.Point{X: 12, Y: 12}, vg.Point{X: 13, Y: 13}}, true}, // inside
		{segment{vg.Point{X: 0, Y: 0}, vg.Point{X: 9, Y: 30}}, false},   // beside
		{segment{vg.Point{X: 0, Y: 30}, vg.Point{X: 30, Y: 30}}, false}, // above
		{segment{vg.Point{X: 0, Y: 0}, vg.Point{X: 30, Y: 30}}, true},   // diagonal
		{segment{vg.Point{X: 25, Y: 0}, vg.Point{X: 25, Y: 30}}, false}, // vertical beside
	} {
		if got := segHits(tc.s, r); got != tc.want {
			t.Errorf("segHits(%v) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// crowdedSpec is a Pareto-like figure at its worst: twelve lines of nine labelled points
// crowded into one corner, with floors, whiskers to ten times the value and repeat
// intervals below zero.
func crowdedSpec(hostile string) *plotSpec {
	s := &plotSpec{xlabel: "x", ylabel: "y"}
	for l := range 12 {
		se := series{name: fmt.Sprintf("%dxH%d00 · backend-%d %s", 1+l%8, 1+l%3, l, hostile), color: otherColors[l%len(otherColors)], style: styleOfBackend("vllm")}
		for b := range 9 {
			bs := 1 << b
			se.pts = append(se.pts, plotter.XY{X: 30 - float64(b)*0.3 + float64(l)*0.7, Y: 10 + float64(bs)*(1+0.01*float64(l))})
			lb := "bs" + strconv.Itoa(bs)
			if l == 0 && b == 0 {
				lb += hostile
			}
			se.labels = append(se.labels, lb)
			se.hi = append(se.hi, 10*se.pts[b].Y)
			se.ci = append(se.ci, [2]float64{-50, se.pts[b].Y * 1.1})
		}
		s.series = append(s.series, se)
	}
	s.series = append(s.series, series{name: "floor", pts: plotter.XYs{{X: 1, Y: 1}, {X: 40, Y: 300}}, color: color.Gray{Y: 110}, floor: true})
	return s
}

// The legend is a column beside the data area, inside the figure; labels stay inside the
// data area and overlap neither each other nor the legend; every whisker and interval end
// lies within the y axis; the figure grows for a long legend; the SVG's root carries the
// layout, escaped.
func TestFigureLayout(t *testing.T) {
	const hostile = `"><script>x</script>`
	svg, lay, err := drawFigure(crowdedSpec(hostile))
	if err != nil {
		t.Fatal(err)
	}
	fig := vg.Rectangle{Max: vg.Point{X: lay.W, Y: lay.H}}
	if lay.Legend == (vg.Rectangle{}) || overlaps(lay.Legend, lay.Area) || !inside(lay.Legend, fig) || !inside(lay.Area, fig) {
		t.Errorf("legend %v, data area %v, figure %v: want the legend beside the data, both inside the figure", lay.Legend, lay.Area, fig)
	}
	if lay.W <= defaultW {
		t.Errorf("figure %v wide with a legend of long names: want it widened past %v", lay.W, defaultW)
	}
	if len(lay.Labels)+len(lay.Unplaced) != 12*9 || len(lay.Labels) < 40 {
		t.Errorf("%d labels drawn, %d unplaced, of 108", len(lay.Labels), len(lay.Unplaced))
	}
	for i, l := range lay.Labels {
		if !inside(l.Box, lay.Area) || overlaps(l.Box, lay.Legend) {
			t.Errorf("label %q at %v outside the data area %v or on the legend", l.Text, l.Box, lay.Area)
		}
		for _, m := range lay.Labels[i+1:] {
			if overlaps(l.Box, m.Box) {
				t.Errorf("labels %q %v and %q %v overlap", l.Text, l.Box, m.Text, m.Box)
			}
		}
	}
	if !(lay.WhiskerHi <= lay.YMax && lay.WhiskerLo >= lay.YMin) || lay.WhiskerLo != -50 {
		t.Errorf("whiskers %g..%g, y axis %g..%g: want every whisker inside the axis (down to the interval's -50)", lay.WhiskerLo, lay.WhiskerHi, lay.YMin, lay.YMax)
	}
	if bytes.Contains(svg, []byte("<script>")) {
		t.Error("a label or legend name reached the SVG unescaped")
	}
	root := string(svg[bytes.Index(svg, []byte("<svg ")):])
	root = root[:strings.Index(root, ">")]
	area := regexp.MustCompile(`data-plot-area="([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)"`).FindStringSubmatch(root)
	if area == nil || !strings.Contains(root, `data-legend="`) || !strings.Contains(root, `data-point-labels="[&#34;bs`) {
		t.Fatalf("svg root %s: want the layout as data attributes", root)
	}
	if x, _ := strconv.ParseFloat(area[1], 64); math.Abs(x-float64(lay.Area.Min.X)) > 0.01 {
		t.Errorf("data-plot-area x %s, want %.2f", area[1], float64(lay.Area.Min.X))
	}
	if y, _ := strconv.ParseFloat(area[2], 64); math.Abs(y-float64(lay.H-lay.Area.Max.Y)) > 0.01 {
		t.Errorf("data-plot-area y %s, want %.2f (SVG y runs down)", area[2], float64(lay.H-lay.Area.Max.Y))
	}

	// Many legend entries: the figure grows taller instead of the legend running off it.
	tall := &plotSpec{xlabel: "t", ylabel: "W", xFromData: true}
	for g := range 30 {
		tall.series = append(tall.series, series{name: "GPU " + strconv.Itoa(g), pts: plotter.XYs{{X: 0, Y: 1}, {X: 1, Y: float64(g)}}, color: gpuColor(g), plain: true})
	}
	_, lay, err = drawFigure(tall)
	if err != nil {
		t.Fatal(err)
	}
	if lay.H <= defaultH || !inside(lay.Legend, vg.Rectangle{Max: vg.Point{X: lay.W, Y: lay.H}}) || overlaps(lay.Legend, lay.Area) {
		t.Errorf("30-entry legend %v in a %v × %v figure (data %v): want a taller figure holding it beside the data", lay.Legend, lay.W, lay.H, lay.Area)
	}
	// One line: no legend at all.
	_, lay, err = drawFigure(&plotSpec{series: []series{{name: "only", pts: plotter.XYs{{X: 1, Y: 1}, {X: 2, Y: 2}}, plain: true, color: gpuColor(0)}}})
	if err != nil || lay.Legend != (vg.Rectangle{}) {
		t.Errorf("one-line figure: legend %v, err %v; want none", lay.Legend, err)
	}
}
