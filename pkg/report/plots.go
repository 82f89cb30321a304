package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"runtime"
	"sort"
	"strconv"
	"sync"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot is one figure of the report: a PNG, or the reason there is none (no cell of the
// group measured the quantity), which the page shows in its place.
type Plot struct {
	Name   string // file-safe, unique: <model>.<task>.<kind>
	Title  string
	PNG    []byte
	Absent string
}

type series struct {
	name     string
	pts      plotter.XYs
	colorIdx int
	dashed   bool // floors
	frontier bool // the Pareto frontier
}

type plotSpec struct {
	name, title, xlabel, ylabel string
	batchX                      bool // x is batch size: log scale, ticks at the sizes present
	// legendLeft puts the legend top left, where curves that rise with batch size leave
	// room; falling curves and the Pareto view leave the top right free.
	legendLeft bool
	series     []series
	absent     string
}

// seriesKey is one line of a plot: hardware × backend.
func seriesKey(r *Row) string { return r.Hardware + " " + r.Backend }

// groupPlots builds the figure specs of one model × task group.
func groupPlots(g Group) []plotSpec {
	var keys []string
	byKey := map[string][]*Row{}
	hwColor := map[string]int{}
	for _, r := range g.Rows {
		k := seriesKey(r)
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
		return a.Backend < b.Backend
	})
	for i, k := range keys {
		hw := byKey[k][0].Hardware
		if _, ok := hwColor[hw]; !ok {
			hwColor[hw] = i
		}
	}
	var batches []float64
	seenB := map[int]bool{}
	for _, r := range g.Rows {
		if !seenB[r.BatchSize] && r.BatchSize > 0 {
			seenB[r.BatchSize] = true
			batches = append(batches, float64(r.BatchSize))
		}
	}
	sort.Float64s(batches)

	vsBatch := func(get func(*Row) *float64, suffix func([]*Row) string) []series {
		var out []series
		for i, k := range keys {
			s := series{name: k, colorIdx: i}
			var used []*Row
			for _, r := range byKey[k] {
				if v := get(r); v != nil && r.BatchSize > 0 {
					s.pts = append(s.pts, plotter.XY{X: float64(r.BatchSize), Y: *v})
					used = append(used, r)
				}
			}
			if len(s.pts) == 0 {
				continue
			}
			if suffix != nil {
				s.name += suffix(used)
			}
			sort.Slice(s.pts, func(a, b int) bool { return s.pts[a].X < s.pts[b].X })
			out = append(out, s)
		}
		return out
	}
	// floors are a property of model × hardware × batch, not of the backend: one dashed
	// line per hardware, in the colour of its first backend's line.
	floors := func(get func(*Row) *float64) []series {
		var hws []string
		pts := map[string]map[int]float64{}
		for _, k := range keys {
			for _, r := range byKey[k] {
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
		}
		var out []series
		for _, hw := range hws {
			s := series{name: "floor " + hw, colorIdx: hwColor[hw], dashed: true}
			for b, v := range pts[hw] {
				s.pts = append(s.pts, plotter.XY{X: float64(b), Y: v})
			}
			sort.Slice(s.pts, func(a, b int) bool { return s.pts[a].X < s.pts[b].X })
			out = append(out, s)
		}
		return out
	}
	capField := func(f func(*Row) *float64) func(*Row) *float64 {
		return func(r *Row) *float64 {
			if r.Cap == nil {
				return nil
			}
			return f(r)
		}
	}
	base := g.Model + "." + g.Task + "."
	what := g.Model + " · " + g.Task
	specs := []plotSpec{
		{name: base + "tpot", title: "TPOT vs batch size — " + what, xlabel: "batch size", ylabel: "mean TPOT (ms)", batchX: true, legendLeft: true,
			series: append(vsBatch((*Row).TPOTMs, nil), floors(capField(func(r *Row) *float64 { return r.Cap.TPOTFloorMs }))...)},
		{name: base + "throughput", title: "Output throughput vs batch size — " + what, xlabel: "batch size", ylabel: "output tokens/s", batchX: true, legendLeft: true,
			series: append(vsBatch((*Row).OutputThroughput, nil), floors(capField(func(r *Row) *float64 {
				// The throughput ceiling is batch / TPOT floor.
				if r.Cap.TPOTFloorMs == nil || *r.Cap.TPOTFloorMs <= 0 {
					return nil
				}
				return f64(float64(r.BatchSize) * 1000 / *r.Cap.TPOTFloorMs)
			}))...)},
		{name: base + "ttft", title: "TTFT vs batch size — " + what, xlabel: "batch size", ylabel: "mean TTFT (ms)", batchX: true, legendLeft: true,
			series: append(vsBatch((*Row).TTFTMs, nil), floors(capField(func(r *Row) *float64 { return r.Cap.TTFTFloorMs }))...)},
		{name: base + "energy", title: "Energy per output token — " + what, xlabel: "batch size", ylabel: "J per output token", batchX: true,
			series: vsBatch((*Row).JPerOutputToken, nil),
			absent: "absent: no cell of this group has GPU energy telemetry (NVML)"},
		{name: base + "cost", title: "Cost per million output tokens — " + what, xlabel: "batch size", ylabel: "USD per 1M output tokens", batchX: true,
			series: vsBatch(func(r *Row) *float64 { v, _ := r.CostPerMTok(); return v }, func(rs []*Row) string {
				for _, r := range rs {
					if _, src := r.CostPerMTok(); src == "rental" {
						return " (rental only)"
					}
				}
				return ""
			}),
			absent: "absent: no cell of this group has a cost (no telemetry and no GPU price)"},
		{name: base + "smbu", title: "Decode S-MBU vs batch size — " + what, xlabel: "batch size", ylabel: "S-MBU (% of peak HBM bandwidth)", batchX: true, legendLeft: true,
			series: vsBatch(func(r *Row) *float64 { return pct(r.util(false, true)) }, nil),
			absent: "absent: no cell of this group has S-MBU (no records and no client latencies)"},
		paretoSpec(base+"pareto", "Throughput per GPU vs interactivity — "+what, keys, byKey),
	}
	for i := range specs {
		if specs[i].absent == "" {
			specs[i].absent = "absent: no completed cell in this group"
		}
	}
	return specs
}

func paretoSpec(name, title string, keys []string, byKey map[string][]*Row) plotSpec {
	s := plotSpec{name: name, title: title, xlabel: "interactivity: 1000 / TPOT (tokens/s per user)", ylabel: "output tokens/s per GPU"}
	var all plotter.XYs
	for i, k := range keys {
		ser := series{name: k, colorIdx: i}
		rows := append([]*Row(nil), byKey[k]...)
		sort.Slice(rows, func(a, b int) bool { return rows[a].BatchSize < rows[b].BatchSize })
		for _, r := range rows {
			x, y := r.Interactivity(), r.ThroughputPerGPU()
			if x == nil || y == nil {
				continue
			}
			ser.pts = append(ser.pts, plotter.XY{X: *x, Y: *y})
		}
		if len(ser.pts) > 0 {
			all = append(all, ser.pts...)
			s.series = append(s.series, ser)
		}
	}
	if f := paretoFrontier(all); len(f) > 1 {
		s.series = append([]series{{name: "Pareto frontier", pts: f, frontier: true}}, s.series...)
	}
	return s
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

// renderPlot draws one spec to PNG. A spec without points comes back with Absent set.
func renderPlot(s plotSpec) (Plot, error) {
	out := Plot{Name: s.name, Title: s.title}
	n := 0
	for _, se := range s.series {
		if !se.dashed && !se.frontier {
			n += len(se.pts)
		}
	}
	if n == 0 {
		out.Absent = s.absent
		return out, nil
	}
	p := plot.New()
	p.Title.Text = s.title
	p.X.Label.Text = s.xlabel
	p.Y.Label.Text = s.ylabel
	p.Y.Min = 0
	// Headroom over the highest point so neither the frame nor the legend hides it.
	ymax := 0.0
	for _, se := range s.series {
		for _, q := range se.pts {
			ymax = math.Max(ymax, q.Y)
		}
	}
	if ymax > 0 {
		p.Y.Max = ymax * 1.3
	}
	p.Y.Tick.Marker = plainTicks{}
	p.Add(plotter.NewGrid())
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
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		// Room either side so the first and last points are not on the frame.
		p.X.Min, p.X.Max = ticks[0].Value/1.3, ticks[len(ticks)-1].Value*1.3
	} else {
		// The Pareto view reads against the origin: how far from zero, not from each other.
		p.X.Min = 0
		xmax := 0.0
		for _, se := range s.series {
			for _, q := range se.pts {
				xmax = math.Max(xmax, q.X)
			}
		}
		p.X.Max = xmax * 1.15
	}
	for _, se := range s.series {
		c := plotutil.Color(se.colorIdx)
		if se.frontier {
			l, err := plotter.NewLine(se.pts)
			if err != nil {
				return out, fmt.Errorf("%s: %w", s.name, err)
			}
			l.Color = color.Gray{Y: 190}
			l.Width = vg.Points(6)
			p.Add(l)
			p.Legend.Add(se.name, l)
			continue
		}
		if se.dashed {
			l, err := plotter.NewLine(se.pts)
			if err != nil {
				return out, fmt.Errorf("%s: %w", s.name, err)
			}
			l.Color = c
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			l.Width = vg.Points(1)
			p.Add(l)
			p.Legend.Add(se.name, l)
			continue
		}
		l, sc, err := plotter.NewLinePoints(se.pts)
		if err != nil {
			return out, fmt.Errorf("%s: %w", s.name, err)
		}
		l.Color, l.Width = c, vg.Points(1.5)
		sc.Color, sc.Shape, sc.Radius = c, plotutil.Shape(se.colorIdx), vg.Points(3)
		p.Add(l, sc)
		p.Legend.Add(se.name, l, sc)
	}
	p.Legend.Top = true
	p.Legend.Left = s.legendLeft
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.Legend.Padding = vg.Points(2)
	w, err := p.WriterTo(16*vg.Centimeter, 10*vg.Centimeter, "png")
	if err != nil {
		return out, fmt.Errorf("%s: %w", s.name, err)
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		return out, fmt.Errorf("%s: %w", s.name, err)
	}
	out.PNG = buf.Bytes()
	return out, nil
}

// RenderPlots draws every figure of every group, in parallel (gonum/plot rasterising is
// the slow part of a report), and returns them in group order.
func RenderPlots(groups []Group) ([][]Plot, error) {
	type job struct{ g, i int }
	specs := make([][]plotSpec, len(groups))
	out := make([][]Plot, len(groups))
	var jobs []job
	for gi, g := range groups {
		specs[gi] = groupPlots(g)
		out[gi] = make([]Plot, len(specs[gi]))
		for i := range specs[gi] {
			jobs = append(jobs, job{gi, i})
		}
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan job)
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				pl, err := renderPlot(specs[j.g][j.i])
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
				out[j.g][j.i] = pl
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return out, first
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
