package report

import (
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
)

type htmlCell struct {
	ID, Hardware, Backend, Status, Reason                                 string
	Batch                                                                 int
	TTFT, TPOT, Floor, Over, TTFTFloor, TTFTOver, Tput, TputGPU, Interact string
	SMBUDec, SMFUDec, SMBUPre, SMFUPre, JTok, Power, Cost, CapSource      string
	OK                                                                    bool
}

type htmlPlot struct {
	Title, Absent string
	// Src is the whole src="data:…" attribute: as a template.URL the base64 '+' would be
	// escaped to &#43;, five bytes for one on a page that is mostly images.
	Src template.HTMLAttr
}

type htmlGroup struct {
	Anchor, Model, Task string
	Plots               []htmlPlot
	Cells               []htmlCell
}

type htmlBad struct{ ID, Status, Reason, Memory string }

type htmlHW struct {
	Family, Name, BW, BF16, FP8, Mem, TDP, Price, SeenAs string
}

type htmlVersion struct {
	Backend, BackendVersion, Driver, Moecapd string
	Cells                                    int
}

type htmlCAPError struct{ ID, Field, Value, Cause string }

type htmlPage struct {
	Title, Generated, Results string
	Total                     int
	Counts                    []struct {
		Status string
		N      int
	}
	Groups []htmlGroup
	Bad    []htmlBad
	// CAPErrors are impossible CAP values (capmath moved them out of the results).
	CAPErrors   []htmlCAPError
	Hardware    []htmlHW
	Versions    []htmlVersion
	Definitions []Definition
	NPlots      int
}

func anchor(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, s)
}

func srcAttr(png []byte) template.HTMLAttr {
	// Base64 has no quote, '<' or '&', and the bytes are our own PNG encoding, so the
	// attribute is safe as written.
	return template.HTMLAttr(`src="data:image/png;base64,` + base64.StdEncoding.EncodeToString(png) + `"`)
}

func toHTMLCell(r *Row) htmlCell {
	c := htmlCell{ID: r.ID, Hardware: r.Hardware, Backend: r.Backend, Status: r.Status, Reason: r.Reason,
		Batch: r.BatchSize, OK: r.ok()}
	var floor, over, tfloor, tover *float64
	if r.Cap != nil {
		floor, over = r.Cap.TPOTFloorMs, r.Cap.TPOTOverFloor
		tfloor, tover = r.Cap.TTFTFloorMs, r.Cap.TTFTOverFloor
		c.CapSource = r.Cap.Source
	}
	c.Floor, c.TTFTFloor = showNA(floor, "%.2f"), showNA(tfloor, "%.1f")
	c.TTFT, c.TPOT = showNA(r.TTFTMs(), "%.1f"), showNA(r.TPOTMs(), "%.2f")
	c.Over, c.TTFTOver = showNA(over, "%.2f×"), showNA(tover, "%.2f×")
	c.Tput, c.TputGPU, c.Interact = showNA(r.OutputThroughput(), "%.1f"), showNA(r.ThroughputPerGPU(), "%.1f"), showNA(r.Interactivity(), "%.1f")
	c.SMBUDec, c.SMFUDec = showNA(pct(r.util(false, true)), "%.1f%%"), showNA(pct(r.util(false, false)), "%.2f%%")
	c.SMBUPre, c.SMFUPre = showNA(pct(r.util(true, true)), "%.1f%%"), showNA(pct(r.util(true, false)), "%.1f%%")
	if r.ok() {
		c.JTok = show(r.JPerOutputToken(), "%.3f")
		c.Power = show(r.tel(func(t *gpu.Summary) *float64 { return t.AvgPowerW }), "%.0f")
	} else {
		c.JTok, c.Power = "—", "—"
	}
	cost, src := r.CostPerMTok()
	c.Cost = showNA(cost, "%.2f")
	if src == "rental" {
		c.Cost += " (rental)"
	}
	return c
}

func buildPage(title, generated, results string, rows []Row, probs []Problem, groups []Group, plots [][]Plot, tables *config.Tables) htmlPage {
	pg := htmlPage{Title: title, Generated: generated, Results: results, Total: len(rows),
		Counts: statusCounts(rows), Definitions: definitions}
	for gi, g := range groups {
		hg := htmlGroup{Anchor: anchor(g.Model + "-" + g.Task), Model: g.Model, Task: g.Task}
		for _, p := range plots[gi] {
			hp := htmlPlot{Title: p.Title, Absent: p.Absent}
			if len(p.PNG) > 0 {
				hp.Src = srcAttr(p.PNG)
				pg.NPlots++
			}
			hg.Plots = append(hg.Plots, hp)
		}
		for _, r := range g.Rows {
			hg.Cells = append(hg.Cells, toHTMLCell(r))
		}
		pg.Groups = append(pg.Groups, hg)
	}
	seenName := map[string]map[string]bool{}
	vers := map[htmlVersion]int{}
	for i := range rows {
		r := &rows[i]
		if r.Cap != nil {
			for _, e := range r.Cap.Errors {
				pg.CAPErrors = append(pg.CAPErrors, htmlCAPError{ID: r.ID, Field: e.Field,
					Value: fmt.Sprintf("%.3g (limit %.2f)", e.Value, e.Limit), Cause: e.Cause})
			}
		}
		if r.Status != "ok" {
			mem := "—"
			if r.Cap != nil {
				mem = r.Cap.FeasibleReason
			}
			pg.Bad = append(pg.Bad, htmlBad{ID: r.ID, Status: r.Status, Reason: r.Reason, Memory: mem})
		}
		if seenName[r.Family] == nil {
			seenName[r.Family] = map[string]bool{}
		}
		if r.GPUName != "" {
			seenName[r.Family][r.GPUName] = true
		}
		vers[htmlVersion{Backend: r.Backend, BackendVersion: r.BackendVersion, Driver: r.Driver, Moecapd: r.Moecapd}]++
	}
	for _, p := range probs {
		pg.Bad = append(pg.Bad, htmlBad{ID: p.Dir, Status: "unreadable", Reason: p.Err, Memory: "—"})
	}
	var fams []string
	for f := range seenName {
		fams = append(fams, f)
	}
	sort.Strings(fams)
	for _, f := range fams {
		h := htmlHW{Family: f, Name: "not in the hardware table", BW: "—", BF16: "—", FP8: "—", Mem: "—", TDP: "—", Price: "—"}
		if tables != nil {
			if hw, ok := tables.HardwareFamily(f); ok {
				h.Name = hw.Name
				h.BW = fmt.Sprintf("%.3g TB/s", hw.HBMBandwidth/1e12)
				h.BF16 = fmt.Sprintf("%.0f TFLOP/s", hw.BF16FLOPs/1e12)
				h.FP8 = "none"
				if hw.FP8FLOPs > 0 {
					h.FP8 = fmt.Sprintf("%.0f TFLOP/s", hw.FP8FLOPs/1e12)
				}
				h.Mem = fmt.Sprintf("%.1f GB", hw.MemoryBytes/1e9)
				h.TDP = fmt.Sprintf("%.0f W", hw.TDPWatts)
				h.Price = fmt.Sprintf("$%.2f/GPU-h, $%.2f/kWh", hw.GPUHourUSD, hw.ElectricityUSDPerKWh)
			}
		}
		var names []string
		for n := range seenName[f] {
			names = append(names, n)
		}
		sort.Strings(names)
		h.SeenAs = strings.Join(names, ", ")
		if h.SeenAs == "" {
			h.SeenAs = Absent
		}
		pg.Hardware = append(pg.Hardware, h)
	}
	for v, n := range vers {
		v.Cells = n
		for _, s := range []*string{&v.BackendVersion, &v.Driver, &v.Moecapd} {
			if *s == "" {
				*s = Absent
			}
		}
		pg.Versions = append(pg.Versions, v)
	}
	sort.Slice(pg.Versions, func(i, j int) bool {
		a, b := pg.Versions[i], pg.Versions[j]
		return a.Backend+a.BackendVersion+a.Driver+a.Moecapd < b.Backend+b.BackendVersion+b.Driver+b.Moecapd
	})
	return pg
}

func writeHTML(w io.Writer, pg htmlPage) error { return pageTmpl.Execute(w, pg) }

var pageTmpl = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1500px;padding:0 1.5em 3em;color:#1b1f24}
h1{margin:.8em 0 .2em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
.meta{color:#57606a}.counts span{display:inline-block;margin-right:1em;padding:.1em .6em;border-radius:1em;background:#eaeef2}
.counts .ok{background:#dafbe1}.counts .failed,.counts .unreadable{background:#ffebe9}.counts .infeasible{background:#fff8c5}
nav a{margin-right:1em}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em;margin:1em 0}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.4em;background:#fff}
figure img{width:100%;height:auto;display:block}
.absent{min-height:120px;display:flex;align-items:center;justify-content:center;color:#57606a;font-style:italic;background:#f6f8fa;text-align:center;padding:1em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
td.l,th.l{text-align:left}td.reason{white-space:normal;text-align:left;max-width:48em}
tr.failed td,tr.unreadable td{background:#fff5f5}tr.infeasible td{background:#fffbe6}tr.interrupted td{background:#f6f0ff}
code{font-size:12px}dt{font-weight:600;margin-top:.5em}dd{margin-left:1.5em}
</style></head>
<body>
<h1>{{.Title}}</h1>
<p class="meta">Generated {{.Generated}} from <code>{{.Results}}</code> · {{.Total}} cells · {{.NPlots}} plots</p>
<p class="counts">{{range .Counts}}<span class="{{.Status}}">{{.N}} {{.Status}}</span>{{end}}</p>
<p class="meta"><em>absent</em> = not measured (no NVML, or the GPU does not report it), never shown as 0; — = does not apply (the cell did not complete).</p>
<nav>{{range .Groups}}<a href="#{{.Anchor}}">{{.Model}} · {{.Task}}</a>{{end}}<a href="#problems">did not complete</a><a href="#hardware">hardware</a><a href="#software">software</a><a href="#definitions">definitions</a></nav>
{{range .Groups}}
<section id="{{.Anchor}}">
<h2>{{.Model}} · {{.Task}}</h2>
<div class="plots">{{range .Plots}}
<figure>{{if .Src}}<img class="plot" alt="{{.Title}}" title="{{.Title}}" {{.Src}}>{{else}}<div class="absent">{{.Title}}<br>{{.Absent}}</div>{{end}}</figure>{{end}}
</div>
<div class="scroll"><table>
<tr><th class="l">cell</th><th class="l">hardware</th><th class="l">backend</th><th>batch</th><th>TTFT ms</th><th>TTFT floor ms</th><th>TTFT ×floor</th><th>TPOT ms</th><th>TPOT floor ms</th><th>TPOT ×floor</th><th>out tok/s</th><th>tok/s/GPU</th><th>tok/s/user</th><th>S-MBU dec</th><th>S-MFU dec</th><th>S-MBU pre</th><th>S-MFU pre</th><th>J/tok</th><th>avg W</th><th>$/M tok</th><th class="l">CAP from</th><th class="l">status</th></tr>
{{range .Cells}}<tr class="{{.Status}}"><td class="l"><code>{{.ID}}</code></td><td class="l">{{.Hardware}}</td><td class="l">{{.Backend}}</td><td>{{.Batch}}</td><td>{{.TTFT}}</td><td>{{.TTFTFloor}}</td><td>{{.TTFTOver}}</td><td>{{.TPOT}}</td><td>{{.Floor}}</td><td>{{.Over}}</td><td>{{.Tput}}</td><td>{{.TputGPU}}</td><td>{{.Interact}}</td><td>{{.SMBUDec}}</td><td>{{.SMFUDec}}</td><td>{{.SMBUPre}}</td><td>{{.SMFUPre}}</td><td>{{.JTok}}</td><td>{{.Power}}</td><td>{{.Cost}}</td><td class="l">{{.CapSource}}</td><td class="l">{{.Status}}</td></tr>
{{end}}</table></div>
</section>{{end}}
{{if .CAPErrors}}<section id="cap-errors">
<h2>ERROR: impossible CAP values (not shown as results)</h2>
<table><tr><th class="l">cell</th><th class="l">field</th><th>value</th><th class="l">likely cause</th></tr>
{{range .CAPErrors}}<tr class="failed"><td class="l"><code>{{.ID}}</code></td><td class="l">{{.Field}}</td><td>{{.Value}}</td><td class="reason">{{.Cause}}</td></tr>
{{end}}</table>
</section>{{end}}
<section id="problems">
<h2>Cells that did not complete</h2>
{{if .Bad}}<table><tr><th class="l">cell</th><th class="l">status</th><th class="l">reason</th><th class="l">predicted memory</th></tr>
{{range .Bad}}<tr class="{{.Status}}"><td class="l"><code>{{.ID}}</code></td><td class="l">{{.Status}}</td><td class="reason">{{.Reason}}</td><td class="reason">{{.Memory}}</td></tr>
{{end}}</table>{{else}}<p>None: every cell completed.</p>{{end}}
</section>
<section id="hardware">
<h2>Hardware</h2>
<table><tr><th class="l">family</th><th class="l">table name</th><th>HBM bandwidth</th><th>dense BF16</th><th>dense FP8</th><th>memory / GPU</th><th>TDP</th><th class="l">prices</th><th class="l">NVML name seen</th></tr>
{{range .Hardware}}<tr><td class="l">{{.Family}}</td><td class="l">{{.Name}}</td><td>{{.BW}}</td><td>{{.BF16}}</td><td>{{.FP8}}</td><td>{{.Mem}}</td><td>{{.TDP}}</td><td class="l">{{.Price}}</td><td class="l">{{.SeenAs}}</td></tr>
{{end}}</table>
</section>
<section id="software">
<h2>Software</h2>
<table><tr><th class="l">backend</th><th class="l">backend version</th><th class="l">NVIDIA driver</th><th class="l">moecapd</th><th>cells</th></tr>
{{range .Versions}}<tr><td class="l">{{.Backend}}</td><td class="l">{{.BackendVersion}}</td><td class="l">{{.Driver}}</td><td class="l">{{.Moecapd}}</td><td>{{.Cells}}</td></tr>
{{end}}</table>
</section>
<section id="definitions">
<h2>Definitions and units</h2>
<dl>{{range .Definitions}}<dt>{{.Name}} ({{.Unit}})</dt><dd>{{.Text}}</dd>{{end}}</dl>
</section>
<p class="meta" id="render-check">plots rendered: checking…</p>
<script>
// Says on the page (and to the headless-browser test) whether every plot decoded.
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot"), ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0 && i.naturalHeight > 0) ok++; });
  document.body.setAttribute("data-plots-ok", ok + "/" + imgs.length);
  document.getElementById("render-check").textContent = "plots rendered: " + ok + " of " + imgs.length;
});
</script>
</body></html>
`))
