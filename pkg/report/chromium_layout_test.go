package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot/vg"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// layoutHarness is a page that inlines figures and measures, in the browser, what a person
// would see go wrong: text over text, text other than a point label inside the data area,
// the legend on the data or off the figure, anything drawn above the data area (a whisker
// past the axis) or outside the figure. The result goes into body's data-layout.
const layoutHarness = `<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:0}div.fig{width:640px;margin:4px}svg{width:100%;height:auto;display:block}</style></head><body>
%FIGS%
<script>
window.addEventListener("load", function () {
  var problems = [], n = 0;
  function rect(svg, s) {
    if (!s) return null;
    var v = s.split(" ").map(Number), r = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal, k = r.width / vb.width;
    return {left: r.left + v[0] * k, top: r.top + v[1] * k, right: r.left + (v[0] + v[2]) * k, bottom: r.top + (v[1] + v[3]) * k};
  }
  function show(r) { return "[" + [r.left, r.top, r.right, r.bottom].map(Math.round).join(",") + "]"; }
  function hit(a, b, tol) { return a.left + tol < b.right && b.left + tol < a.right && a.top + tol < b.bottom && b.top + tol < a.bottom; }
  document.querySelectorAll("div.fig").forEach(function (div) {
    var name = div.getAttribute("data-name"), svg = div.querySelector("svg");
    if (!svg) { problems.push(name + ": no svg"); return; }
    n++;
    var fig = svg.getBoundingClientRect(), area = rect(svg, svg.getAttribute("data-plot-area")), leg = rect(svg, svg.getAttribute("data-legend"));
    var labels = JSON.parse(svg.getAttribute("data-point-labels") || "[]") || [];
    if (!area) { problems.push(name + ": no data-plot-area"); return; }
    if (leg && hit(leg, area, 0)) problems.push(name + ": legend on the data area");
    if (leg && (leg.left < fig.left - 1 || leg.right > fig.right + 1 || leg.top < fig.top - 1 || leg.bottom > fig.bottom + 1)) problems.push(name + ": legend outside the figure");
    var texts = [];
    svg.querySelectorAll("text").forEach(function (t) {
      if (!t.textContent.trim()) return;
      var r = t.getBoundingClientRect();
      if (r.width === 0) return;
      texts.push({s: t.textContent, r: r});
    });
    for (var i = 0; i < texts.length; i++) {
      var t = texts[i];
      for (var j = i + 1; j < texts.length; j++) {
        if (hit(t.r, texts[j].r, 0.5)) problems.push(name + ": text " + JSON.stringify(t.s) + " " + show(t.r) + " overlaps " + JSON.stringify(texts[j].s) + " " + show(texts[j].r));
      }
      var k = labels.indexOf(t.s);
      if (hit(t.r, area, 1)) {
        if (k < 0) problems.push(name + ": text " + JSON.stringify(t.s) + " on the data area");
        else labels.splice(k, 1);
      }
      if (t.r.left < fig.left - 1 || t.r.right > fig.right + 1 || t.r.top < fig.top - 1 || t.r.bottom > fig.bottom + 1) problems.push(name + ": text " + JSON.stringify(t.s) + " " + show(t.r) + " outside the figure " + show(fig));
    }
    svg.querySelectorAll("path").forEach(function (p) {
      var r = p.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) return;
      if (/fill:#FFFFFF/i.test(p.getAttribute("style") || "")) return; // the figure's white background
      if (r.top < area.top - 6) problems.push(name + ": something drawn above the data area (a whisker past the axis?): " + show(r) + " " + (p.getAttribute("d") || "").slice(0, 80) + " area " + show(area));
      if (r.left < fig.left - 1 || r.right > fig.right + 1 || r.bottom > fig.bottom + 1) problems.push(name + ": a path outside the figure");
    });
  });
  document.body.setAttribute("data-layout", JSON.stringify({figures: n, problems: problems}));
});
</script></body></html>`

var svgStartRe = regexp.MustCompile(`(?s)^.*?(<svg )`)

// layoutInChromium inlines the SVG files into the harness page, loads it in headless
// Chromium and fails the test for each problem the page reports.
func layoutInChromium(t *testing.T, chrome string, svgs map[string][]byte) {
	t.Helper()
	var figs strings.Builder
	for name, b := range svgs {
		figs.WriteString(`<div class="fig" data-name="` + html.EscapeString(name) + `">`)
		figs.Write(svgStartRe.ReplaceAll(b, []byte("$1")))
		figs.WriteString("</div>\n")
	}
	page := filepath.Join(t.TempDir(), "harness.html")
	if err := os.WriteFile(page, []byte(strings.Replace(layoutHarness, "%FIGS%", figs.String(), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dom, err := exec.CommandContext(ctx, chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--user-data-dir="+t.TempDir(), "--window-size=700,900",
		"--virtual-time-budget=30000", "--dump-dom", "file://"+page).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	m := regexp.MustCompile(`data-layout="([^"]*)"`).FindSubmatch(dom)
	if m == nil {
		t.Fatalf("the harness page wrote no data-layout (%d bytes of DOM)", len(dom))
	}
	var res struct {
		Figures  int
		Problems []string
	}
	if err := json.Unmarshal([]byte(html.UnescapeString(string(m[1]))), &res); err != nil {
		t.Fatalf("data-layout: %v", err)
	}
	if res.Figures != len(svgs) {
		t.Errorf("the browser measured %d figures of %d", res.Figures, len(svgs))
	}
	for i, p := range res.Problems {
		if i == 30 {
			t.Errorf("… and %d more", len(res.Problems)-30)
			break
		}
		t.Error(p)
	}
}

// TestFigureLayoutInChromium: every figure of a 130-cell report (the guide's matrix shape:
// five models, two tasks, six hardware labels, two backends, up to nine batch sizes, so a
// Pareto view has up to twelve lines of labelled points), of the fixture report and of a
// deliberately crowded figure is measured in headless Chromium: no text over text, only
// point labels on the data, legends beside the data and inside the figure, nothing drawn
// above the data area. The index's contents list leads to its sections.
func TestFigureLayoutInChromium(t *testing.T) {
	if !launcher.E2E() {
		t.Skip("end to end (headless Chromium): make test-e2e (" + launcher.E2EEnv + "=1); TestFigureLayout checks the same geometry in Go")
	}
	chrome := findChromium()
	if chrome == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not installed in CI (.ci/run installs it)")
		}
		t.Skip("chromium not installed (apt-get install -y chromium)")
	}
	results, out := t.TempDir(), t.TempDir()
	writeSynthetic(t, results, 130)
	res, err := Write(Options{ResultsDir: results, OutDir: out, Tables: loadTables(t)})
	if err != nil {
		t.Fatal(err)
	}
	svgs := map[string][]byte{}
	ents, _ := os.ReadDir(filepath.Join(out, PlotsDir))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(out, PlotsDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		svgs["synthetic/"+e.Name()] = b
	}
	if len(svgs) != res.Plots || len(svgs) < 15 {
		t.Fatalf("%d figures in plots/, the report drew %d: want the same, and at least 15", len(svgs), res.Plots)
	}
	fx := t.TempDir()
	if _, err := Write(Options{ResultsDir: fixtures, OutDir: fx, Tables: loadTables(t)}); err != nil {
		t.Fatal(err)
	}
	ents, _ = os.ReadDir(filepath.Join(fx, PlotsDir))
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(fx, PlotsDir, e.Name()))
		svgs["fixtures/"+e.Name()] = b
	}
	crowded, _, err := drawFigure(crowdedSpec(`"><b>x</b>`))
	if err != nil {
		t.Fatal(err)
	}
	svgs["crowded.svg"] = crowded
	// Per-request boxes (no synthetic or fixture cell keeps per-request rows for a group):
	// fourteen boxes with far outliers; the top and bottom boxes must stay inside the axis.
	var bs []box
	for i := range 14 {
		vs := []float64{1, 2, 2.5, 3, 3.2, 4, 40 * float64(i+1)}
		bs = append(bs, box{name: fmt.Sprintf("1xH100 · sim bs%d", 1<<i), values: vs, color: gpuColor(i)})
	}
	boxes, _, err := drawFigure(&plotSpec{xlabel: "TPOT per request (ms)", boxes: bs, h: vg.Points(float64(70 + 20*len(bs)))})
	if err != nil {
		t.Fatal(err)
	}
	svgs["boxes.svg"] = boxes
	layoutInChromium(t, chrome, svgs)

	// The index: every figure loads, every contents link leads to a section.
	page, _ := os.ReadFile(res.Index)
	links := bytes.Count(page, []byte(`<li><a href="#`))
	if links < 5+3 {
		t.Fatalf("index.html has %d contents links; want one per model and task group and the fixed sections", links)
	}
	chromiumCheck(t, chrome, res.Index, res.Plots-countCellFigures(t, out), "")
}

// countCellFigures is how many figures in plots/ belong to cell pages, not the index.
func countCellFigures(t *testing.T, out string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(out, PlotsDir))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "cell.") {
			n++
		}
	}
	return n
}
