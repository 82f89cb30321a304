package report

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"

	"gonum.org/v1/plot/plotter"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/records"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// CellData is what a cell's files say beyond its manifest: the per-request latencies the
// native client wrote (client/**/bench.json), and timelines of the run from the client,
// the server's pass records and telemetry.csv. Each part is nil when its file is absent.
type CellData struct {
	// Per-request latencies (ms) of the successful requests.
	TTFT, TPOT, E2EL []float64
	// TokensPerS is output tokens/s over the bench (seconds since the bench started),
	// from the client's token arrival times.
	TokensPerS plotter.XYs
	// DecodeBatch is the running decode batch over cumulative server pass time (s).
	DecodeBatch plotter.XYs
	// GPU timelines from telemetry.csv, one series per GPU index, seconds since the first
	// sample: power (W), utilisation (%), memory used (GiB).
	Power, Util, MemGiB map[int]plotter.XYs
	// Server timelines from server_metrics.csv (the server's own Prometheus metrics), on
	// the same clock as the GPU timelines: running and waiting requests, KV-cache usage (%)
	// and preemptions since the first scrape. Nil where the server did not export it.
	Running, Waiting, KVPct, Preempted plotter.XYs
	// telT0 is the time of the first telemetry sample, the zero of the GPU timelines.
	telT0 time.Time
	// Notes say what the side files held that could not be used (negative or non-finite
	// times, NaN/Inf samples): left out, and the cell page says so.
	Notes []string
}

// unscale puts a time-scaled sim's client-side data in physical units, as its manifest's
// metrics are (profile.Metrics.Unscaled): the simulator's clock ran ×scale, so a latency
// is wall ÷ scale and a rate wall × scale. The GPU and server timelines stay on the wall
// clock they were sampled on.
func (d *CellData) unscale(scale float64) {
	for _, xs := range [][]float64{d.TTFT, d.TPOT, d.E2EL} {
		for i := range xs {
			xs[i] /= scale
		}
	}
	for i := range d.TokensPerS {
		d.TokensPerS[i].X /= scale
		d.TokensPerS[i].Y *= scale
	}
}

// finite reports whether every v is a finite number.
func finite(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// timelineBins is how many points a timeline keeps: enough for a page, small for 1000 cells.
const timelineBins = 60

// readCellData reads what there is; a file that cannot be parsed is skipped (the manifest
// stays the record; a half-written side file must not stop a report).
func readCellData(dir string) *CellData {
	d := &CellData{}
	found := false
	if p := profile.FindBenchFile(cell.DirOf(dir).Client()); p != "" {
		found = readBench(p, d) || found
	}
	// The one reader of pass records (the recording window when moecapd wrote it, each
	// pass once), not a file picked by name.
	if recs, err := records.ReadDir(cell.DirOf(dir).Records()); err == nil {
		found = decodeTimeline(recs.Passes, d) || found
	}
	found = readTelemetryCSV(cell.DirOf(dir).Telemetry(), d) || found
	found = readServerMetrics(cell.DirOf(dir).ServerMetrics(), d) || found
	if !found && len(d.Notes) == 0 {
		return nil
	}
	return d
}

func readBench(path string, d *CellData) bool {
	reqs, err := profile.ReadBenchRequests(path)
	if err != nil || len(reqs) == 0 {
		return false
	}
	// Token arrivals: the first chunk at start+TTFT, each later chunk one ITL after the
	// last; a chunk carries output_tokens/chunks tokens.
	type ev struct{ t, n float64 }
	var evs []ev
	end := 0.0
	bad := 0
	for _, r := range reqs {
		if !r.Success {
			continue
		}
		if !finite(append([]float64{r.StartS, r.TTFTMs, r.TPOTMs, r.E2ELMs}, r.ITLMs...)...) || r.StartS < 0 || r.TTFTMs < 0 || r.TPOTMs < 0 || r.E2ELMs < 0 || slices.ContainsFunc(r.ITLMs, func(x float64) bool { return x < 0 }) || r.OutputTokens < 0 {
			bad++
			continue
		}
		d.TTFT = append(d.TTFT, r.TTFTMs)
		if r.OutputTokens > 1 {
			d.TPOT = append(d.TPOT, r.TPOTMs)
		}
		d.E2EL = append(d.E2EL, r.E2ELMs)
		chunks := max(len(r.ITLMs)+1, 1)
		per := float64(r.OutputTokens) / float64(chunks)
		t := r.StartS + r.TTFTMs/1e3
		evs = append(evs, ev{t, per})
		for _, g := range r.ITLMs {
			t += g / 1e3
			evs = append(evs, ev{t, per})
		}
		end = max(end, r.StartS+r.E2ELMs/1e3)
	}
	if bad > 0 {
		d.Notes = append(d.Notes, fmt.Sprintf("%s: %d successful requests with negative or non-finite times left out of the per-request figures", filepath.Base(path), bad))
	}
	if end > 0 && len(evs) > 0 {
		w := end / timelineBins
		bins := make([]float64, timelineBins)
		for _, e := range evs {
			bins[timelineBin(e.t/w)] += e.n
		}
		for i, n := range bins {
			d.TokensPerS = append(d.TokensPerS, plotter.XY{X: (float64(i) + 0.5) * w, Y: n / w})
		}
	}
	return len(d.TTFT) > 0
}

// timelineBin is the bin of an event (a token arrival, a decode pass) at x bin widths from
// the timeline's start: one past the end (a chunk a hostile or broken bench file places
// after its request's end, a sum of gaps that overflows) goes into the last bin, never
// past it; a NaN into the first.
func timelineBin(x float64) int {
	switch {
	case !(x >= 0):
		return 0
	case x >= timelineBins-1:
		return timelineBins - 1
	}
	return int(x)
}

// decodeTimeline turns the decode passes into the decode batch timeline (time = summed
// pass latency).
func decodeTimeline(passes []records.Pass, d *CellData) bool {
	type pass struct{ t, b float64 }
	var ps []pass
	t := 0.0
	for i := range passes {
		p := &passes[i]
		if p.Latency == nil || *p.Latency <= 0 || !finite(*p.Latency) {
			continue
		}
		t += *p.Latency
		if p.Mode.DecodeStep() {
			// A batch past any server's (1e308 in a broken record) would sum its bin to +Inf.
			if b := records.Val(p.DecodeBatch()); finite(b) && b >= 0 && b <= 1e9 {
				ps = append(ps, pass{t, b})
			}
		}
	}
	if len(ps) == 0 || !finite(t) {
		return false
	}
	// Mean batch per bin of pass time.
	w := t / timelineBins
	sum := make([]float64, timelineBins)
	n := make([]float64, timelineBins)
	for _, p := range ps {
		i := timelineBin(p.t / w)
		sum[i] += p.b
		n[i]++
	}
	for i := range sum {
		if n[i] > 0 {
			d.DecodeBatch = append(d.DecodeBatch, plotter.XY{X: (float64(i) + 0.5) * w, Y: sum[i] / n[i]})
		}
	}
	return true
}

// maxTelemetryValue bounds a telemetry sample (mW, %, bytes): 1e18 is beyond any GPU's
// power, utilisation or memory, and a sum of a file's worth of such values stays finite in
// the downsampled figures, where 1e308s would add up to +Inf.
const maxTelemetryValue = 1e18

func readTelemetryCSV(path string, d *CellData) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	r := csv.NewReader(bufio.NewReader(f))
	r.FieldsPerRecord = -1
	head, err := r.Read()
	if err != nil {
		return false
	}
	col := map[string]int{}
	for i, h := range head {
		col[h] = i
	}
	need := []string{"timestamp", "gpu_index"}
	for _, n := range need {
		if _, ok := col[n]; !ok {
			return false
		}
	}
	type sample struct {
		t          time.Time
		gpu        int
		p, u, m    float64
		hp, hu, hm bool
	}
	var ss []sample
	nonFinite := 0
	defer func() {
		if nonFinite > 0 {
			d.Notes = append(d.Notes, fmt.Sprintf("telemetry.csv: %d NaN/Inf or out-of-range values left out of the GPU figures", nonFinite))
		}
	}()
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			break
		}
		get := func(name string) (float64, bool) {
			i, ok := col[name]
			if !ok || i >= len(rec) || rec[i] == "" {
				return 0, false
			}
			v, err := strconv.ParseFloat(rec[i], 64)
			if err == nil && (!finite(v) || math.Abs(v) > maxTelemetryValue) {
				nonFinite++
				return 0, false
			}
			return v, err == nil
		}
		// A torn or hand-edited row may be shorter than the header (FieldsPerRecord is -1).
		ti := col["timestamp"]
		if ti >= len(rec) {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, rec[ti])
		if err != nil {
			continue
		}
		g, ok := get("gpu_index")
		if !ok || g < 0 || g > 1<<16 {
			continue
		}
		s := sample{t: ts, gpu: int(g)}
		s.p, s.hp = get("power_mw")
		s.u, s.hu = get("util_gpu_pct")
		s.m, s.hm = get("mem_used_bytes")
		ss = append(ss, s)
	}
	if len(ss) == 0 {
		return false
	}
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].t.Before(ss[j].t) })
	t0 := ss[0].t
	d.telT0 = t0
	add := func(m *map[int]plotter.XYs, g int, x, y float64) {
		if *m == nil {
			*m = map[int]plotter.XYs{}
		}
		(*m)[g] = append((*m)[g], plotter.XY{X: x, Y: y})
	}
	for _, s := range ss {
		x := s.t.Sub(t0).Seconds()
		if s.hp {
			add(&d.Power, s.gpu, x, s.p/1e3)
		}
		if s.hu {
			add(&d.Util, s.gpu, x, s.u)
		}
		if s.hm {
			add(&d.MemGiB, s.gpu, x, GiB(s.m))
		}
	}
	for _, m := range []map[int]plotter.XYs{d.Power, d.Util, d.MemGiB} {
		for g, xy := range m {
			m[g] = downsample(xy, 4*timelineBins)
		}
	}
	return d.Power != nil || d.Util != nil || d.MemGiB != nil
}

// downsample keeps at most n points by averaging runs of neighbours.
func downsample(xy plotter.XYs, n int) plotter.XYs {
	if len(xy) <= n {
		return xy
	}
	k := (len(xy) + n - 1) / n
	var out plotter.XYs
	for i := 0; i < len(xy); i += k {
		j := min(i+k, len(xy))
		var sx, sy float64
		for _, p := range xy[i:j] {
			sx += p.X
			sy += p.Y
		}
		out = append(out, plotter.XY{X: sx / float64(j-i), Y: sy / float64(j-i)})
	}
	return out
}

// readServerMetrics reads the server's scraped metrics into timelines on the GPU
// timelines' clock (seconds since the first telemetry sample; since the first scrape when
// the cell has no telemetry, and both shifted to the earlier when the scrapes began first).
func readServerMetrics(path string, d *CellData) bool {
	f, err := fsx.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	ss, bad, err := servermetrics.ReadCSV(bufio.NewReader(f))
	if bad > 0 {
		d.Notes = append(d.Notes, fmt.Sprintf("%s: %d unreadable or non-finite rows left out of the server figures", cell.ServerMetricsFile, bad))
	}
	if err != nil || len(ss) == 0 {
		return false
	}
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].T.Before(ss[j].T) })
	t0 := ss[0].T
	if !d.telT0.IsZero() {
		if d.telT0.Before(t0) {
			t0 = d.telT0
		} else {
			shift := d.telT0.Sub(t0).Seconds()
			for _, m := range []map[int]plotter.XYs{d.Power, d.Util, d.MemGiB} {
				for _, xy := range m {
					for i := range xy {
						xy[i].X += shift
					}
				}
			}
			d.telT0 = t0
		}
	}
	// Preemptions since the first scrape; a counter that goes down restarted (a fresh
	// server between repeats) and counts on from its new value.
	var prev *float64
	cum := 0.0
	for _, s := range ss {
		x := s.T.Sub(t0).Seconds()
		if s.Running != nil {
			d.Running = append(d.Running, plotter.XY{X: x, Y: *s.Running})
		}
		if s.Waiting != nil {
			d.Waiting = append(d.Waiting, plotter.XY{X: x, Y: *s.Waiting})
		}
		if s.KVUsage != nil {
			d.KVPct = append(d.KVPct, plotter.XY{X: x, Y: 100 * *s.KVUsage})
		}
		if v := s.Preemptions; v != nil {
			switch {
			case prev == nil:
			case *v >= *prev:
				cum += *v - *prev
			default:
				cum += *v
			}
			prev = v
			d.Preempted = append(d.Preempted, plotter.XY{X: x, Y: cum})
		}
	}
	for _, xy := range []*plotter.XYs{&d.Running, &d.Waiting, &d.KVPct, &d.Preempted} {
		*xy = downsample(*xy, 4*timelineBins)
	}
	return d.Running != nil || d.Waiting != nil || d.KVPct != nil || d.Preempted != nil
}
