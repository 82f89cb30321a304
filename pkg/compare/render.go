package compare

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Formats of Write.
var Formats = []string{"text", "markdown", "html", "json"}

// Write renders the report in format (one of Formats).
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "text":
		return r.writeText(w)
	case "markdown":
		return r.writeMarkdown(w)
	case "html":
		return htmlPage.Execute(w, r)
	case "json":
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(r)
	}
	return &InputError{fmt.Sprintf("--format %q: one of %s", format, strings.Join(Formats, ", "))}
}

func num(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*p, 'g', 4, 64)
}

func pct(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%+.1f%%", *p)
}

// Interval is "[lo, hi]" in % or "n/a".
func (m Metric) Interval() string {
	if m.Lo == nil || m.Hi == nil {
		return "n/a"
	}
	return fmt.Sprintf("[%+.1f%%, %+.1f%%]", *m.Lo, *m.Hi)
}

// Change is the change in %, "n/a" when absent.
func (m Metric) Change() string { return pct(m.ChangePct) }

// BaseS and NewS are the values as text.
func (m Metric) BaseS() string { return num(m.Base) }
func (m Metric) NewS() string  { return num(m.New) }

// Title says what is compared with what.
func (r *Report) Title() string {
	return fmt.Sprintf("compare %s → %s", r.Base, r.New)
}

// Pair names a cell pair: its id, or "base → new" when they differ.
func (c Cell) Pair() string {
	if c.BaseID == c.NewID {
		return c.BaseID
	}
	return c.BaseID + " → " + c.NewID
}

func (r *Report) summary() string {
	s := fmt.Sprintf("level %.0f%%, min change %g%%, regression threshold %g%%: ", 100*r.Level, r.MinChange, r.Threshold)
	if len(r.Regressions) == 0 {
		return s + "no regression"
	}
	return s + fmt.Sprintf("%d regression(s)", len(r.Regressions))
}

func (r *Report) writeText(w io.Writer) error {
	fmt.Fprintln(w, r.Title())
	fmt.Fprintln(w, r.summary())
	for _, c := range r.Cells {
		fmt.Fprintf(w, "\ncell %s\n", c.Pair())
		if c.Note != "" {
			fmt.Fprintln(w, "  "+c.Note)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		if len(c.Metrics) > 0 {
			fmt.Fprintln(tw, "  metric\tbase\tnew\tchange\tinterval\tverdict\tmethod")
			for _, m := range c.Metrics {
				mark := ""
				if m.Regression {
					mark = " REGRESSION"
				}
				fmt.Fprintf(tw, "  %s (%s)\t%s\t%s\t%s\t%s\t%s%s\t%s\n", m.Label, m.Unit, m.BaseS(), m.NewS(), m.Change(), m.Interval(), m.Word, mark, m.Method)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w, "  environment:")
		for _, e := range c.Env {
			if e.Differs {
				fmt.Fprintf(w, "    %s DIFFERS\n      base: %s\n      new:  %s\n", e.Key, e.Base, e.New)
			} else {
				fmt.Fprintf(w, "    %s: %s\n", e.Key, e.Base)
			}
		}
	}
	writeUnmatched(w, r, func(s string) string { return s })
	for _, g := range r.Regressions {
		fmt.Fprintln(w, "regression: "+g)
	}
	return nil
}

func writeUnmatched(w io.Writer, r *Report, esc func(string) string) {
	if len(r.OnlyBase) > 0 {
		fmt.Fprintf(w, "\nonly in base: %s\n", esc(strings.Join(r.OnlyBase, ", ")))
	}
	if len(r.OnlyNew) > 0 {
		fmt.Fprintf(w, "\nonly in new: %s\n", esc(strings.Join(r.OnlyNew, ", ")))
	}
}

// mdEscape makes s one markdown table cell's literal text: characters markdown or its
// inline HTML would interpret are backslash-escaped, line breaks become spaces.
func mdEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '\\', '`', '*', '_', '{', '}', '[', ']', '<', '>', '(', ')', '#', '+', '!', '|', '~', '&':
			b.WriteByte('\\')
			b.WriteRune(c)
		case '\n', '\r':
			b.WriteByte(' ')
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

func (r *Report) writeMarkdown(w io.Writer) error {
	fmt.Fprintf(w, "# %s\n\n%s\n", mdEscape(r.Title()), mdEscape(r.summary()))
	for _, c := range r.Cells {
		fmt.Fprintf(w, "\n## %s\n\n", mdEscape(c.Pair()))
		if c.Note != "" {
			fmt.Fprintf(w, "%s\n\n", mdEscape(c.Note))
		}
		if len(c.Metrics) > 0 {
			fmt.Fprintln(w, "| metric | base | new | change | interval | verdict | method |")
			fmt.Fprintln(w, "|---|--:|--:|--:|---|---|---|")
			for _, m := range c.Metrics {
				v := mdEscape(m.Word)
				if m.Regression {
					v = "**" + v + " (regression)**"
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", mdEscape(m.Label+" ("+m.Unit+")"), mdEscape(m.BaseS()), mdEscape(m.NewS()),
					mdEscape(m.Change()), mdEscape(m.Interval()), v, mdEscape(m.Method))
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, "| environment | base | new | |")
		fmt.Fprintln(w, "|---|---|---|---|")
		for _, e := range c.Env {
			d := ""
			if e.Differs {
				d = "**differs**"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", mdEscape(e.Key), mdEscape(e.Base), mdEscape(e.New), d)
		}
	}
	writeUnmatched(w, r, mdEscape)
	for _, g := range r.Regressions {
		fmt.Fprintf(w, "\n- regression: %s", mdEscape(g))
	}
	if len(r.Regressions) > 0 {
		fmt.Fprintln(w)
	}
	return nil
}

// Summary is the report's one-line verdict, for the page.
func (r *Report) Summary() string { return r.summary() }

var htmlPage = template.Must(template.New("compare").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.worse{color:#b00020;font-weight:600}.better{color:#1b7f3b;font-weight:600}
tr.differs td{background:#fff3cd}
</style></head><body>
<h1>{{.Title}}</h1>
<p>{{.Summary}}</p>
{{range .Cells}}<h2>{{.Pair}}</h2>
{{if .Note}}<p>{{.Note}}</p>{{end}}
{{if .Metrics}}<table><tr><th>metric</th><th>base</th><th>new</th><th>change</th><th>interval</th><th>verdict</th><th>method</th></tr>
{{range .Metrics}}<tr><td>{{.Label}} ({{.Unit}})</td><td class="n">{{.BaseS}}</td><td class="n">{{.NewS}}</td><td class="n">{{.Change}}</td><td class="n">{{.Interval}}</td><td class="{{.Verdict}}">{{.Word}}{{if .Regression}} (regression){{end}}</td><td>{{.Method}}</td></tr>
{{end}}</table>{{end}}
<table><tr><th>environment</th><th>base</th><th>new</th></tr>
{{range .Env}}<tr{{if .Differs}} class="differs"{{end}}><td>{{.Key}}{{if .Differs}} (differs){{end}}</td><td>{{.Base}}</td><td>{{.New}}</td></tr>
{{end}}</table>
{{end}}
{{if .OnlyBase}}<p>only in base: {{range .OnlyBase}}{{.}} {{end}}</p>{{end}}
{{if .OnlyNew}}<p>only in new: {{range .OnlyNew}}{{.}} {{end}}</p>{{end}}
{{range .Regressions}}<p class="worse">regression: {{.}}</p>{{end}}
</body></html>
`))
