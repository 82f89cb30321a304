package report

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// withRepeats gives a fixture cell three repeats of the given mean TPOTs (ms), summarised
// as the cell pipeline does (cell.SummarizeRepeats, 95 % Student t, unstable above 5 % CV).
func withRepeats(t *testing.T, dir string, tpots ...float64) *cell.RepeatStats {
	t.Helper()
	var rs *cell.RepeatStats
	editManifest(t, dir, func(m *cell.Manifest) {
		m.Repeats = nil
		for i, v := range tpots {
			mt := *m.Metrics
			mt.MeanTPOTMs = &v
			m.Repeats = append(m.Repeats, cell.Repeat{Index: i + 1, Metrics: &mt})
		}
		m.RepeatStats = cell.SummarizeRepeats(m.Repeats, cell.RepeatLevel, cell.DefaultUnstableCV)
		rs = m.RepeatStats
	})
	return rs
}

// A cell run with repeats is drawn at the mean over its repeats with its 95 % interval as
// an error bar inside the axis; the figure's note says so; a cell whose repeats spread is
// marked unstable in the index, summary.md and its page.
func TestRepeatsDrawnWithIntervals(t *testing.T) {
	root := t.TempDir()
	const bs1, bs32 = "qwen1_5.1xH100.4k-1k.bs1.sglang", "qwen1_5.1xH100.4k-1k.bs32.sglang"
	copyCell(t, root, bs1)
	copyCell(t, root, bs32)
	stable := withRepeats(t, filepath.Join(root, bs1), 9.4, 9.5, 9.6)
	unstable := withRepeats(t, filepath.Join(root, bs32), 15, 20.6, 30)
	if len(stable.Unstable) != 0 || len(unstable.Unstable) != 1 || unstable.Unstable[0] != "tpot_ms" {
		t.Fatalf("fixture: unstable %v / %v, want the bs32 cell's TPOT only", stable.Unstable, unstable.Unstable)
	}
	rows, _, err := Load(root, loadTables(t))
	if err != nil {
		t.Fatal(err)
	}
	g := Groups(rows)[0]
	var tpot *Plot
	for _, p := range groupPlots(g, "g.", "g") {
		if strings.HasSuffix(p.Name, ".tpot.svg") {
			tpot = &p
		}
	}
	if tpot == nil {
		t.Fatal("no TPOT figure")
	}
	if !strings.Contains(tpot.Note, "95% confidence interval") {
		t.Errorf("TPOT note %q does not say what the bars are", tpot.Note)
	}
	var se *series
	for i := range tpot.spec.series {
		if !tpot.spec.series[i].floor {
			se = &tpot.spec.series[i]
		}
	}
	if se == nil || len(se.ci) != 2 {
		t.Fatalf("TPOT series %+v: want one line with an interval per point", se)
	}
	for i, e := range []*cell.RepeatStats{stable, unstable} {
		m := e.Metrics["tpot_ms"]
		if se.pts[i].Y != m.Mean || se.ci[i][0] != *m.Lo || se.ci[i][1] != *m.Hi {
			t.Errorf("point %d at %g [%g, %g], want the repeats' mean %g [%g, %g]", i, se.pts[i].Y, se.ci[i][0], se.ci[i][1], m.Mean, *m.Lo, *m.Hi)
		}
	}
	_, lay, err := drawFigure(tpot.spec)
	if err != nil {
		t.Fatal(err)
	}
	if hi := *unstable.Metrics["tpot_ms"].Hi; lay.WhiskerHi < hi || lay.WhiskerHi > lay.YMax || lay.WhiskerLo < lay.YMin {
		t.Errorf("whiskers %g..%g in an axis %g..%g: want the interval's top %g drawn inside it", lay.WhiskerLo, lay.WhiskerHi, lay.YMin, lay.YMax, hi)
	}

	out := t.TempDir()
	res, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t)})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(res.Index)
	if c := strings.Count(string(page), `<span class="mark" title="over its 3 repeats the coefficient of variation of tpot_ms exceeds 5%">unstable</span>`); c != 1 {
		t.Errorf("index marks %d cells unstable, want the bs32 one", c)
	}
	md, _ := os.ReadFile(res.Markdown)
	if !strings.Contains(string(md), "ok (unstable: over its 3 repeats") {
		t.Error("summary.md does not mark the unstable cell")
	}
	cp, _ := os.ReadFile(filepath.Join(out, cellPagePath(bs32)))
	for _, want := range []string{"flagged: unstable: over its 3 repeats", "tpot_ms over repeats", "(unstable)"} {
		if !strings.Contains(string(cp), want) {
			t.Errorf("bs32 page lacks %q", want)
		}
	}
}

// writeServerMetrics writes a server_metrics.csv as the scraper does: n samples a second
// apart from t0, preemptions counting up by preempt per sample.
func writeServerMetrics(t *testing.T, dir string, t0 time.Time, n int, preempt float64) {
	t.Helper()
	var b strings.Builder
	b.WriteString("time,running,waiting,kv_usage,preemptions_total,prompt_tokens_total,generation_tokens_total\n")
	for i := range n {
		fmt.Fprintf(&b, "%s,%d,%d,%g,%g,%d,%d\n", t0.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano), 30+i%3, i%2, 0.1*float64(i%10), preempt*float64(i), 1000*i, 10*i)
	}
	if err := os.WriteFile(filepath.Join(dir, cell.ServerMetricsFile), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The cell page plots the server's own metrics over the run on the GPU timelines' clock,
// the preemptions only when there were some; a cell whose server preempted requests is
// marked in the index and flagged on its page.
func TestServerMetricsOnTheCellPage(t *testing.T) {
	root := t.TempDir()
	const tel, quiet = "qwen1_5.1xH100.4k-1k.bs1.sglang", "qwen1_5.1xH100.4k-1k.bs32.sglang"
	dir := copyCell(t, root, tel)
	copyCell(t, root, quiet)
	// Telemetry's first sample is the zero of the clock; the scrapes begin 2 s later.
	d0 := readCellData(dir)
	if d0 == nil || d0.telT0.IsZero() {
		t.Fatal("fixture cell has no telemetry")
	}
	writeServerMetrics(t, dir, d0.telT0.Add(2*time.Second), 20, 3)
	writeServerMetrics(t, filepath.Join(root, quiet), time.Date(2026, 8, 14, 1, 0, 0, 0, time.UTC), 10, 0)
	editManifest(t, dir, func(m *cell.Manifest) {
		ss, _, err := servermetrics.ReadCSV(strings.NewReader(mustRead(t, filepath.Join(dir, cell.ServerMetricsFile))))
		if err != nil {
			t.Fatal(err)
		}
		m.ServerMetrics = servermetrics.Summarize(ss)
	})
	d := readCellData(dir)
	if len(d.Running) != 20 || len(d.Waiting) != 20 || len(d.KVPct) != 20 || len(d.Preempted) != 20 {
		t.Fatalf("server timelines of %d/%d/%d/%d points, want 20 each", len(d.Running), len(d.Waiting), len(d.KVPct), len(d.Preempted))
	}
	if d.Running[0].X != 2 || d.Preempted[19].Y != 57 || math.Abs(d.KVPct[5].Y-50) > 1e-9 {
		t.Errorf("first scrape at %g s (want 2, on the telemetry clock), preemptions %g at the end (want 57), KV %g%% (want 50)", d.Running[0].X, d.Preempted[19].Y, d.KVPct[5].Y)
	}
	rows, _, err := Load(root, loadTables(t))
	if err != nil {
		t.Fatal(err)
	}
	kinds := func(r *Row) string {
		var ks []string
		for _, p := range cellPlots(r) {
			ks = append(ks, strings.TrimSuffix(strings.TrimPrefix(p.Name, "cell."+anchor(r.ID)+"."), ".svg"))
		}
		return strings.Join(ks, " ")
	}
	if got := kinds(rowByID(t, rows, tel)); !strings.Contains(got, "batch server-requests power server-kv server-preempt util") {
		t.Errorf("figures %q: want the server's next to the decode batch and GPU power, preemptions included", got)
	}
	if got := kinds(rowByID(t, rows, quiet)); !strings.Contains(got, "server-requests server-kv") || strings.Contains(got, "server-preempt") {
		t.Errorf("figures %q: want the server's, no preemption figure for a server that preempted nothing", got)
	}
	out := t.TempDir()
	res, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t)})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(res.Index)
	if c := strings.Count(string(page), `">preempted</span>`); c != 1 {
		t.Errorf("index marks %d cells preempted, want 1", c)
	}
	cp, _ := os.ReadFile(filepath.Join(out, cellPagePath(tel)))
	if !strings.Contains(string(cp), "flagged: preempted: the server preempted 57 requests") || !strings.Contains(string(cp), "Server: KV-cache usage") {
		t.Error("cell page lacks the preemption flag or the server figures")
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A time-scaled sim's per-request rows (its bench file holds wall times) are drawn in the
// physical units its tables show: latencies ÷ scale, the tokens/s timeline's rate × scale.
func TestTimeScaledPerRequestRowsUnscaled(t *testing.T) {
	root := t.TempDir()
	const id = "qwen1_5.1xH100.4k-1k.bs1.sglang"
	dir := copyCell(t, root, id)
	wall := readCellData(dir)
	if wall == nil || len(wall.TPOT) == 0 || len(wall.TokensPerS) == 0 {
		t.Fatal("fixture cell has no per-request rows")
	}
	editManifest(t, dir, func(m *cell.Manifest) {
		m.Cell.Backend = "sim"
		m.Server.Argv = []string{"moecapd", "sim-server", "--sim-time-scale", "0.5"}
	})
	rows, _, err := Load(root, loadTables(t))
	if err != nil {
		t.Fatal(err)
	}
	d := rowByID(t, rows, id).Data
	if d.TPOT[0] != wall.TPOT[0]/0.5 || d.TTFT[0] != wall.TTFT[0]/0.5 || d.E2EL[0] != wall.E2EL[0]/0.5 {
		t.Errorf("TPOT/TTFT/E2EL %g/%g/%g, want the wall %g/%g/%g ÷ 0.5", d.TPOT[0], d.TTFT[0], d.E2EL[0], wall.TPOT[0], wall.TTFT[0], wall.E2EL[0])
	}
	if p, w := d.TokensPerS[3], wall.TokensPerS[3]; p.X != w.X/0.5 || p.Y != w.Y*0.5 {
		t.Errorf("tokens/s point %v, want the wall %v at t ÷ 0.5, rate × 0.5", p, w)
	}
}
