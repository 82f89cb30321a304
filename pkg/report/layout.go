package report

import (
	"math"
	"sort"

	"gonum.org/v1/plot/vg"
)

// The geometry of a figure's text that gonum does not place for us: point labels (the
// batch sizes on the Pareto view) are placed where they overlap no other label, no
// marker and leave the data area nowhere; the legend is a column beside the data area,
// never on it. Everything here is in points, y up (gonum's canvas).

// labelReq is one label to place: its text box size and the point it names.
type labelReq struct {
	at   vg.Point
	w, h vg.Length
	text string
}

// labelPos is where a label went: its box, and whether it is far enough from its point
// to need a leader line. ok is false when it fits nowhere (the figure's note says so).
type labelPos struct {
	box    vg.Rectangle
	leader bool
	ok     bool
}

// segment is a drawn line piece a label should rather not cover.
type segment struct{ a, b vg.Point }

// Label placement parameters: the first ring sits just beside the point; the outer rings
// need a leader line back to it.
const (
	labelPad     = vg.Length(1) // kept free around every label box
	leaderAfter  = 1            // rings past this one get a leader line
	crossPenalty = 6.0
)

// labelRings are the distances from a point (its centre) to its label tried in turn: the
// first clears the marker, the rest need a leader line.
var labelRings = []vg.Length{markerR + 1.5, 11, 18, 28, 41, 58, 80}

// placeLabels places each label greedily, the most crowded point first, at the cheapest
// candidate position that stays inside bounds and overlaps no placed label and no obstacle
// (the markers). Crossing a drawn line costs, not forbids: in a dense figure a label on a
// line is better than none.
func placeLabels(reqs []labelReq, obstacles []vg.Rectangle, segs []segment, bounds vg.Rectangle) []labelPos {
	out := make([]labelPos, len(reqs))
	order := make([]int, len(reqs))
	crowd := make([]int, len(reqs))
	for i := range reqs {
		order[i] = i
		for j := range reqs {
			if i != j && dist(reqs[i].at, reqs[j].at) < 40 {
				crowd[i]++
			}
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return crowd[order[a]] > crowd[order[b]] })
	var placed []vg.Rectangle
	for _, i := range order {
		rq := reqs[i]
		best, bestCost := vg.Rectangle{}, math.Inf(1)
		bestRing := 0
		for ri, r := range labelRings {
			n := 8
			if ri > 0 {
				n = 16
			}
			for k := range n {
				// Right of the point first (reading order), then around.
				th := 2 * math.Pi * float64(k) / float64(n)
				box := boxAround(rq.at, rq.w, rq.h, r, th)
				if !inside(box, bounds) || hitsAny(pad(box, labelPad), placed) || hitsAny(box, obstacles) {
					continue
				}
				cost := float64(ri)*10 + dirCost(th)
				for _, s := range segs {
					if segHits(s, box) {
						cost += crossPenalty
					}
				}
				if cost < bestCost {
					best, bestCost, bestRing = box, cost, ri
				}
			}
			// A free spot on a ring beats any spot further out unless it crosses lines.
			if bestCost < float64(ri+1)*10 {
				break
			}
		}
		if math.IsInf(bestCost, 1) {
			continue
		}
		out[i] = labelPos{box: best, leader: bestRing >= leaderAfter, ok: true}
		placed = append(placed, best)
	}
	return out
}

// boxAround is a w×h box whose nearest side to at lies r away in direction th.
func boxAround(at vg.Point, w, h, r vg.Length, th float64) vg.Rectangle {
	cx, cy := vg.Length(math.Cos(th)), vg.Length(math.Sin(th))
	ax, ay := at.X+r*cx, at.Y+r*cy
	var x0, y0 vg.Length
	switch {
	case cx > 0.35:
		x0 = ax
	case cx < -0.35:
		x0 = ax - w
	default:
		x0 = ax - w/2
	}
	switch {
	case cy > 0.35:
		y0 = ay
	case cy < -0.35:
		y0 = ay - h
	default:
		y0 = ay - h/2
	}
	return vg.Rectangle{Min: vg.Point{X: x0, Y: y0}, Max: vg.Point{X: x0 + w, Y: y0 + h}}
}

// dirCost prefers right, then above, then the other sides (a small tie-breaker).
func dirCost(th float64) float64 {
	c, s := math.Cos(th), math.Sin(th)
	return 2 - c - 0.5*s
}

func dist(a, b vg.Point) vg.Length {
	return vg.Length(math.Hypot(float64(a.X-b.X), float64(a.Y-b.Y)))
}

func pad(r vg.Rectangle, p vg.Length) vg.Rectangle {
	return vg.Rectangle{Min: vg.Point{X: r.Min.X - p, Y: r.Min.Y - p}, Max: vg.Point{X: r.Max.X + p, Y: r.Max.Y + p}}
}

// overlaps says whether two boxes share area (touching edges do not).
func overlaps(a, b vg.Rectangle) bool {
	return a.Min.X < b.Max.X && b.Min.X < a.Max.X && a.Min.Y < b.Max.Y && b.Min.Y < a.Max.Y
}

func hitsAny(r vg.Rectangle, rs []vg.Rectangle) bool {
	for _, o := range rs {
		if overlaps(r, o) {
			return true
		}
	}
	return false
}

// inside says whether r lies within b.
func inside(r, b vg.Rectangle) bool {
	return r.Min.X >= b.Min.X && r.Max.X <= b.Max.X && r.Min.Y >= b.Min.Y && r.Max.Y <= b.Max.Y
}

// segHits says whether segment s crosses or lies in box r.
func segHits(s segment, r vg.Rectangle) bool {
	// Liang–Barsky clipping of the segment against the box.
	t0, t1 := 0.0, 1.0
	dx, dy := float64(s.b.X-s.a.X), float64(s.b.Y-s.a.Y)
	for _, e := range [4][2]float64{
		{-dx, float64(s.a.X - r.Min.X)}, {dx, float64(r.Max.X - s.a.X)},
		{-dy, float64(s.a.Y - r.Min.Y)}, {dy, float64(r.Max.Y - s.a.Y)},
	} {
		p, q := e[0], e[1]
		if p == 0 {
			if q < 0 {
				return false
			}
			continue
		}
		t := q / p
		if p < 0 {
			t0 = math.Max(t0, t)
		} else {
			t1 = math.Min(t1, t)
		}
		if t0 > t1 {
			return false
		}
	}
	return true
}

// nearestOn is the point of r nearest to p (where a leader line meets its label).
func nearestOn(r vg.Rectangle, p vg.Point) vg.Point {
	return vg.Point{X: max(r.Min.X, min(p.X, r.Max.X)), Y: max(r.Min.Y, min(p.Y, r.Max.Y))}
}
