package report

import (
	"fmt"
	"hash/fnv"
	"html/template"
	"io"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
)

type htmlCell struct {
	ID, Page, Hardware, Backend, Status, Reason string
	Batch                                       int
	V                                           cellView
	// The table values, flagged ones as "flagged" with a footnote mark.
	TTFT, TPOT, Over, TputGPU, Interact, SMBU, JTok template.HTML
	OK                                              bool
	// Marks are the cell's warnings beside its status: unstable repeats, preemptions.
	Marks []cellMark
}

// footnotes number the flag reasons of one table, so a flagged value reads "flagged¹" and
// the note under the table says "¹ flagged: <reason>" once, not in every row.
type footnotes struct {
	idx   map[string]int
	Notes []string
}

func (f *footnotes) html(s string) template.HTML {
	why, ok := strings.CutPrefix(s, "flagged: ")
	if !ok {
		return template.HTML(template.HTMLEscapeString(s))
	}
	if f.idx == nil {
		f.idx = map[string]int{}
	}
	n, seen := f.idx[why]
	if !seen {
		f.Notes = append(f.Notes, why)
		n = len(f.Notes)
		f.idx[why] = n
	}
	return template.HTML(fmt.Sprintf(`<span class="flag" title="flagged: %s">flagged<sup>%d</sup></span>`, template.HTMLEscapeString(why), n))
}

type htmlPlot struct {
	Title, Note, Src, Name string
}

type htmlPair struct {
	Hardware string
	Batch    int
	Cells    []string
}

type htmlGroup struct {
	Anchor, Name, Task string
	// Summary counts the group's cells by status ("14 cells: 13 ok, 1 failed").
	Summary      string
	Plots        []htmlPlot
	Cells        []htmlCell
	PairBackends []string
	Pairs        []htmlPair
	NoPlots      string
	Notes        []string
}

// htmlModel is one model's part of the report: its task groups, each a section a person
// can jump to from the contents list and fold.
type htmlModel struct {
	Anchor, Name string
	Cells        int
	Groups       []*htmlGroup
	key          string
}

type htmlBad struct{ ID, Page, Status, Reason, Memory string }

type htmlHW struct {
	Family, Name, BW, BF16, FP8, Mem, TDP, Price, SeenAs string
}

type htmlVersion struct {
	Backend, BackendVersion, Driver, Moecapd string
	Cells                                    int
}

type htmlCAPError struct{ ID, Page, Field, Value, Cause string }

type htmlCount struct {
	Status string
	N      int
}

type htmlPage struct {
	Title, Generated, Results string
	Total                     int
	Counts                    []htmlCount
	Groups                    []htmlGroup
	// Models are the groups by model, in the same order, for the contents list.
	Models []htmlModel
	Bad    []htmlBad
	// CAPErrors are impossible CAP values (capmath moved them out of the results).
	CAPErrors   []htmlCAPError
	Hardware    []htmlHW
	Versions    []htmlVersion
	Definitions []Definition
	NPlots      int
	// Single is the one cell of a one-cell report: its page is the report.
	Single *cellPage
}

// anchor is s as a file name and HTML id, one per s: letters, digits, '-', '_' and '.'
// stay; any other character becomes '-' and a hash of s is appended after a '~' (which
// no kept character is), so ids differing only there (a+b, a-b) never share a page or a
// figure.
func anchor(s string) string {
	changed := false
	out := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		changed = true
		return '-'
	}, s)
	if !changed && out != "" && out != "." && out != ".." {
		return out
	}
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("%s~%016x", out, h.Sum64())
}

// cellPagePath is a cell page's path relative to the report directory.
func cellPagePath(id string) string { return "cells/" + anchor(id) + ".html" }

func toHTMLCell(r *Row) htmlCell {
	return htmlCell{ID: r.ID, Page: cellPagePath(r.ID), Hardware: r.Hardware, Backend: r.BackendLabel(), Status: r.Status,
		Reason: r.Reason, Batch: r.BatchSize, V: viewOf(r), OK: r.ok(), Marks: r.marks()}
}

// ids hands out HTML ids, each once: a second id that anchor makes alike (a model key
// that reads like a section's name) gets a counter.
type ids map[string]bool

func (u ids) take(s string) string {
	id := s
	for n := 2; u[id]; n++ {
		id = fmt.Sprintf("%s-%d", s, n)
	}
	u[id] = true
	return id
}

// groupSummary is "14 cells: 13 ok, 1 failed".
func groupSummary(rows []*Row) string {
	var rs []Row
	for _, r := range rows {
		rs = append(rs, *r)
	}
	var parts []string
	for _, c := range statusCounts(rs) {
		parts = append(parts, fmt.Sprintf("%d %s", c.N, c.Status))
	}
	n := "cells"
	if len(rows) == 1 {
		n = "cell"
	}
	return fmt.Sprintf("%d %s: %s", len(rows), n, strings.Join(parts, ", "))
}

func buildPage(title, generated, results string, rows []Row, probs []Problem, groups []Group, plots [][]*Plot, tables *config.Tables) htmlPage {
	pg := htmlPage{Title: title, Generated: generated, Results: results, Total: len(rows), Definitions: definitions}
	for _, c := range statusCounts(rows) {
		pg.Counts = append(pg.Counts, htmlCount(c))
	}
	used := ids{}
	for _, fixed := range []string{"contents", "problems", "hardware", "software", "cap-errors", "definitions", "render-check"} {
		used.take(fixed)
	}
	for gi, g := range groups {
		name := g.Rows[0].ModelName
		hg := htmlGroup{Anchor: used.take(anchor(g.Model + "-" + g.Task)), Name: name, Task: g.Task, Summary: groupSummary(g.Rows)}
		for _, p := range plots[gi] {
			hg.Plots = append(hg.Plots, htmlPlot{Title: p.Title, Note: p.Note, Src: "plots/" + p.Name, Name: p.Name})
			pg.NPlots++
		}
		if len(hg.Plots) == 0 {
			n := 0
			for _, r := range g.Rows {
				if r.ok() {
					n++
				}
			}
			hg.NoPlots = fmt.Sprintf("No figures: %d completed cell(s) in this group; a figure needs two points at least. Each cell's page has its own timelines and distributions.", n)
		}
		var fn footnotes
		for _, r := range g.Rows {
			c := toHTMLCell(r)
			c.TTFT, c.TPOT, c.Over, c.TputGPU = fn.html(c.V.TTFT), fn.html(c.V.TPOT), fn.html(c.V.Over), fn.html(c.V.TputGPU)
			c.Interact, c.SMBU, c.JTok = fn.html(c.V.Interact), fn.html(c.V.SMBU), fn.html(c.V.JTok)
			hg.Cells = append(hg.Cells, c)
		}
		hg.Notes = fn.Notes
		pairs := backendPairs(g.Rows)
		hg.PairBackends = pairBackends(pairs)
		for _, p := range pairs {
			hp := htmlPair{Hardware: p.Hardware, Batch: p.Batch}
			for _, b := range hg.PairBackends {
				hp.Cells = append(hp.Cells, p.cellText(b))
			}
			hg.Pairs = append(hg.Pairs, hp)
		}
		pg.Groups = append(pg.Groups, hg)
	}
	for i := range pg.Groups {
		g := &pg.Groups[i]
		model := groups[i].Model
		if n := len(pg.Models); n == 0 || pg.Models[n-1].key != model {
			pg.Models = append(pg.Models, htmlModel{Anchor: used.take("model-" + anchor(model)), Name: g.Name, key: model})
		}
		m := &pg.Models[len(pg.Models)-1]
		m.Groups = append(m.Groups, g)
		m.Cells += len(g.Cells)
	}
	seenName := map[string]map[string]bool{}
	vers := map[htmlVersion]int{}
	for i := range rows {
		r := &rows[i]
		if r.Cap != nil {
			for _, e := range r.Cap.Errors {
				pg.CAPErrors = append(pg.CAPErrors, htmlCAPError{ID: r.ID, Page: cellPagePath(r.ID), Field: e.Field,
					Value: fmt.Sprintf("%s (limit %s)", round3(e.Value), round3(e.Limit)), Cause: e.Cause})
			}
		}
		if r.Status != "ok" {
			pg.Bad = append(pg.Bad, htmlBad{ID: r.ID, Page: cellPagePath(r.ID), Status: r.Status, Reason: r.Reason, Memory: memoryVerdict(r)})
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
				h.Mem = fmt.Sprintf("%.0f GiB", GiB(hw.MemoryBytes))
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

func writeHTML(w io.Writer, pg htmlPage) error { return pageTmpl.ExecuteTemplate(w, "page", pg) }

// css is shared by the report and the cell pages.
const css = `
*{box-sizing:border-box}body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;margin:0 auto;max-width:1400px;padding:0 1.5em 3em;color:#1b1f24}
h1{margin:.8em 0 .2em;font-size:1.7em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
.meta{color:#57606a}.counts span{display:inline-block;margin-right:.6em;padding:.1em .7em;border-radius:1em;background:#eaeef2}
.counts .ok{background:#dafbe1}.counts .failed,.counts .unreadable{background:#ffebe9}.counts .infeasible{background:#fff8c5}
nav#contents ol.toc{columns:2 26em;column-gap:2.5em;padding-left:1.4em}nav#contents li{break-inside:avoid;margin-bottom:.35em}
nav#contents ul{margin:.1em 0;padding-left:1.1em;list-style:none}nav#contents ul a{display:inline-block;min-width:4.5em}
nav#contents .fold button{font:inherit;font-size:13px;padding:0 .5em}
a.up{font-size:13px;font-weight:normal;margin-left:.8em}
details.group{border-top:1px solid #d0d7de;margin:.6em 0;padding-top:.2em}details.group>summary{cursor:pointer;padding:.2em 0}
details.group>summary h3{display:inline;margin:0}details.group>summary .meta{margin-left:.5em}
.mark{display:inline-block;font-size:12px;padding:0 .45em;margin-left:.2em;border-radius:.8em;background:#fff1e5;color:#9a3412}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:1.2em;margin:1em 0}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.6em;background:#fff}
figure img{width:100%;height:auto;display:block}
figcaption{font-weight:600;margin-bottom:.3em}.note{font-size:13px;color:#8a5a00;margin-top:.3em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f6f8fa}
td.l,th.l{text-align:left}td.reason{white-space:normal;text-align:left;max-width:48em}
.flag{color:#9a3412;font-style:italic;font-size:13px}td .flag{white-space:normal;display:inline-block;max-width:11em;text-align:right}
tr.failed td,tr.unreadable td{background:#fff5f5}tr.infeasible td{background:#fffbe6}tr.interrupted td{background:#f6f0ff}
code,pre{font-size:13px}pre{background:#f6f8fa;padding:.7em;border-radius:6px;overflow-x:auto;white-space:pre-wrap}
dt{font-weight:600;margin-top:.5em}dd{margin-left:1.5em}
table.kv th{text-align:left;font-weight:600}table.kv td{text-align:left;white-space:pre-wrap}
`

const renderCheck = `<p class="meta" id="render-check">figures loaded: checking…</p>
<script>
// Says on the page (and to the headless-browser test) whether every figure loaded and
// whether every link of the contents list leads to a section of the page.
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot"), ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0 && i.naturalHeight > 0) ok++; });
  document.body.setAttribute("data-plots-ok", ok + "/" + imgs.length);
  var links = document.querySelectorAll("#contents a"), found = 0;
  links.forEach(function (a) {
    var h = a.getAttribute("href");
    if (h && h.charAt(0) === "#" && document.getElementById(decodeURIComponent(h.slice(1)))) found++;
  });
  document.body.setAttribute("data-contents-ok", found + "/" + links.length);
  document.getElementById("render-check").textContent = "figures loaded: " + ok + " of " + imgs.length;
});
document.querySelectorAll("button[data-fold]").forEach(function (b) {
  b.addEventListener("click", function () {
    var open = b.getAttribute("data-fold") === "open";
    document.querySelectorAll("details.group").forEach(function (d) { d.open = open; });
  });
});
</script>`

// val shows a table value; a flagged one in the flag style, its reason cut to fit a table
// cell (the whole reason is its tooltip and on the cell page).
func val(s string) template.HTML {
	esc := template.HTMLEscapeString(s)
	if !strings.HasPrefix(s, "flagged: ") {
		return template.HTML(esc)
	}
	short := s
	if r := []rune(s); len(r) > 40 {
		short = string(r[:38]) + "…"
	}
	return template.HTML(`<span class="flag" title="` + esc + `">` + template.HTMLEscapeString(short) + `</span>`)
}

// full shows a value with its whole reason (cell pages).
func full(s string) template.HTML {
	esc := template.HTMLEscapeString(s)
	if strings.HasPrefix(s, "flagged: ") {
		return template.HTML(`<span class="flag">` + esc + `</span>`)
	}
	return template.HTML(esc)
}

var funcs = template.FuncMap{"val": val, "full": full, "inc": func(i int) int { return i + 1 }}

var pageTmpl = mustTemplates()

const mainTmpl = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>{{template "css"}}</style></head>
<body>
<h1>{{.Title}}</h1>
<p class="meta">Generated {{.Generated}} from <code>{{.Results}}</code> · {{.Total}} cell{{if ne .Total 1}}s{{end}} · {{.NPlots}} figures · every number per cell in <a href="cells.csv">cells.csv</a> · <a href="summary.md">summary.md</a></p>
<p class="counts">{{range .Counts}}<span class="{{.Status}}">{{.N}} {{.Status}}</span>{{end}}</p>
<p class="meta">Latencies in ms as <b>p50 / p99</b> over requests (native client); <em>absent</em> = not measured, never shown as 0; — = does not apply (the cell did not complete); <span class="flag">flagged: …</span> = a value that is no result, with the reason.</p>
{{if .Single}}{{with .Single}}{{template "cellbody" .}}{{end}}{{else}}
<nav id="contents" aria-label="contents"><h2>Contents</h2>
<p class="meta fold">Each model × task section folds: click its title, or <button type="button" data-fold="close">fold all</button> <button type="button" data-fold="open">unfold all</button></p>
<ol class="toc">{{range .Models}}<li><a href="#{{.Anchor}}"><b>{{.Name}}</b></a> <span class="meta">{{.Cells}} cell{{if ne .Cells 1}}s{{end}}</span><ul>{{range .Groups}}<li><a href="#{{.Anchor}}">{{.Task}}</a> <span class="meta">{{.Summary}}{{if .Plots}} · {{len .Plots}} figure{{if ne (len .Plots) 1}}s{{end}}{{end}}</span></li>{{end}}</ul></li>
{{end}}<li><a href="#problems">Cells that did not complete</a> <span class="meta">{{len .Bad}}</span></li>{{if .CAPErrors}}<li><a href="#cap-errors">Impossible CAP values</a></li>{{end}}<li><a href="#hardware">Hardware</a></li><li><a href="#software">Software</a></li><li><a href="#definitions">Definitions and units</a></li></ol>
</nav>
{{range .Models}}
<section class="model" id="{{.Anchor}}">
<h2>{{.Name}} <a class="up" href="#contents" title="back to the contents">↑ contents</a></h2>
{{range .Groups}}
<details class="group" id="{{.Anchor}}" open>
<summary><h3>{{.Name}} · {{.Task}}</h3> <span class="meta">{{.Summary}}</span></summary>
<div class="scroll"><table>
<tr><th class="l">cell</th><th class="l">hardware</th><th class="l">backend</th><th>batch</th><th>TTFT ms<br>p50 / p99</th><th>TPOT ms<br>p50 / p99</th><th>TPOT<br>×floor</th><th>tok/s<br>per GPU</th><th>tok/s<br>per user</th><th>S-MBU<br>decode</th><th>J/tok</th><th class="l">status</th></tr>
{{range .Cells}}<tr class="{{.Status}}"><td class="l"><a href="{{.Page}}"><code>{{.ID}}</code></a></td><td class="l">{{.Hardware}}</td><td class="l">{{.Backend}}</td><td>{{.Batch}}</td><td>{{.TTFT}}</td><td>{{.TPOT}}</td><td>{{.Over}}</td><td>{{.TputGPU}}</td><td>{{.Interact}}</td><td>{{.SMBU}}</td><td>{{.JTok}}</td><td class="l">{{.Status}}{{range .Marks}} <span class="mark" title="{{.Why}}">{{.Name}}</span>{{end}}</td></tr>
{{end}}</table></div>
{{range $i, $n := .Notes}}<p class="flag"><sup>{{inc $i}}</sup> flagged: {{$n}} (the value is no result; the cell's page says more)</p>{{end}}
{{if .Pairs}}<h4>Same cell on each backend</h4>
<p class="meta">TPOT p50 ms · output tokens/s per GPU</p>
<table><tr><th class="l">hardware</th><th>batch</th>{{range .PairBackends}}<th>{{.}}</th>{{end}}</tr>
{{range .Pairs}}<tr><td class="l">{{.Hardware}}</td><td>{{.Batch}}</td>{{range .Cells}}<td>{{val .}}</td>{{end}}</tr>
{{end}}</table>{{end}}
{{if .NoPlots}}<p class="meta">{{.NoPlots}}</p>{{end}}
<div class="plots">{{range .Plots}}
<figure><figcaption>{{.Title}}</figcaption><a href="{{.Src}}"><img class="plot" alt="{{.Title}}" src="{{.Src}}"></a>{{if .Note}}<div class="note">{{.Note}}</div>{{end}}</figure>{{end}}
</div>
</details>{{end}}
</section>{{end}}
<section id="problems">
<h2>Cells that did not complete</h2>
{{if .Bad}}<table><tr><th class="l">cell</th><th class="l">status</th><th class="l">reason</th><th class="l">predicted memory</th></tr>
{{range .Bad}}<tr class="{{.Status}}"><td class="l">{{if .Page}}<a href="{{.Page}}"><code>{{.ID}}</code></a>{{else}}<code>{{.ID}}</code>{{end}}</td><td class="l">{{.Status}}</td><td class="reason">{{.Reason}}</td><td class="reason">{{.Memory}}</td></tr>
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
{{end}}
{{if .CAPErrors}}<section id="cap-errors">
<h2>ERROR: impossible CAP values (not shown as results)</h2>
<table><tr><th class="l">cell</th><th class="l">field</th><th>value</th><th class="l">likely cause</th></tr>
{{range .CAPErrors}}<tr class="failed"><td class="l"><a href="{{.Page}}"><code>{{.ID}}</code></a></td><td class="l">{{.Field}}</td><td>{{.Value}}</td><td class="reason">{{.Cause}}</td></tr>
{{end}}</table>
</section>{{end}}
<section id="definitions">
<h2>Definitions and units</h2>
<dl>{{range .Definitions}}<dt>{{.Name}} ({{.Unit}})</dt><dd>{{.Text}}</dd>{{end}}</dl>
</section>
{{template "check"}}
</body></html>
`

func mustTemplates() *template.Template {
	t := template.New("root").Funcs(funcs)
	for _, p := range []struct{ name, text string }{{"page", mainTmpl}, {"css", css}, {"check", renderCheck},
		{"cellbody", cellBodyTmpl}, {"cellpage", cellPageTmpl}} {
		template.Must(t.New(p.name).Funcs(funcs).Parse(p.text))
	}
	return t
}
