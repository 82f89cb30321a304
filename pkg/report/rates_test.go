package report

import (
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

func TestRatePlotsAndRows(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	point := func(k int, rate, ttft, tpot float64, good int, search bool) cell.RatePoint {
		met := float64(good)/10 >= 0.9
		return cell.RatePoint{Index: k, Rate: rate, Search: search, MetSLO: &met, Metrics: &profile.Metrics{
			DurationS: 10, RequestThroughput: rate * 0.9, MeanTTFTMs: f(ttft), P99TTFTMs: f(2 * ttft), MeanTPOTMs: f(tpot), P99TPOTMs: f(tpot + 1),
			Goodput: &profile.Goodput{TTFTMs: f(400), TPOTMs: f(50), MinShare: 0.9, Sent: 10, Good: good, Share: float64(good) / 10, RequestsPerS: f(float64(good) / 10), Met: met}}}
	}
	best := 11.31
	m := &cell.Manifest{
		Rates:   []cell.RatePoint{point(1, 2, 30, 11, 10, false), point(2, 500, 900, 12, 4, false), point(3, 31.6, 500, 12, 7, true), point(4, 11.31, 200, 11, 10, true)},
		MaxRate: &cell.MaxRate{Rate: &best, SLO: "ttft=400ms,tpot=50ms,share=0.9", Steps: []profile.RateStep{{Rate: 31.6}, {Rate: 11.31, Met: true}}, Bracketed: true},
	}
	plots := ratePlots(m, "cell.x.", rgb(0x4c8fd6))
	if len(plots) != 3 {
		t.Fatalf("%d rate figures, want TTFT, TPOT and goodput", len(plots))
	}
	for _, p := range plots {
		svg, _, err := drawFigure(p.spec)
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		want := map[string]string{"cell.x.rate-ttft.svg": "SLO 400 ms", "cell.x.rate-tpot.svg": "SLO 50 ms", "cell.x.rate-goodput.svg": "good requests/s"}[p.Name]
		if want == "" || !strings.Contains(string(svg), want) || !strings.Contains(string(svg), ">11.3<") {
			t.Errorf("%s: want %q and the tick 11.3 (three significant digits) in the figure", p.Name, want)
		}
	}
	rows := rateRows(m)
	if len(rows) != 5 {
		t.Fatalf("%d rows, want one per rate and the max rate", len(rows))
	}
	if !strings.Contains(rows[1].V, "misses the SLO") || !strings.Contains(rows[0].V, "meets the SLO") || !strings.HasSuffix(rows[2].K, "(search)") {
		t.Errorf("rows %+v", rows)
	}
	if last := rows[4]; !strings.Contains(last.K, "ttft=400ms") || !strings.HasPrefix(last.V, "11.3 requests/s") {
		t.Errorf("max rate row %+v", last)
	}
	if ratePlots(&cell.Manifest{Rates: m.Rates[:1]}, "x.", rgb(0)) != nil || rateRows(&cell.Manifest{}) != nil {
		t.Error("a cell without a sweep has rate figures or rows")
	}
}
