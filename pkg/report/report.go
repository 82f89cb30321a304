package report

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/moecapd/moecapd/pkg/config"
)

// Output file names inside the report directory.
const (
	IndexFile    = "index.html"
	MarkdownFile = "summary.md"
	CSVFile      = "cells.csv"
	PlotsDir     = "plots"
	CellsDir     = "cells"
	// OwnFile lists, one relative path a line, every file the last report wrote into its
	// output directory: the only files a later report may delete (figures and pages of
	// cells gone since). Files a user put there are never touched.
	OwnFile = ".moecapd-report-files"
)

// ErrNoCells is returned by Write for a results directory that holds no cell: a usage
// problem (wrong --results), not an internal one.
var ErrNoCells = errors.New("no cell")

// Options of Write.
type Options struct {
	ResultsDir string
	OutDir     string
	// Tables are the model and hardware tables; without them cells without stored CAP
	// numbers get none.
	Tables *config.Tables
	// ModelNames are display names by model key ("qwen1_5" → "Qwen1.5-MoE"); keys
	// without one show as the key.
	ModelNames map[string]string
	// Title of the page; default "moecapd report".
	Title string
	// Now stamps the page (not the markdown or CSV); default time.Now.
	Now func() time.Time
	// Cells, when given, limits the report to the cells of these ids (one cell's report
	// is its own page, as a daemon's status page links it).
	Cells []string
}

// Result says what Write wrote.
type Result struct {
	Cells    int
	OK       int
	Problems int
	Plots    int // figures drawn, report and cell pages together
	Index    string
	Markdown string
	CSV      string
	// NotDrawn names the figures whose data no axis can show, and why; the pages leave
	// them out.
	NotDrawn []string
}

// Write reads every cell under ResultsDir and writes to OutDir: index.html (no script or
// style from the network; figures are SVG files in plots/), one page per cell in cells/,
// summary.md and cells.csv. Each file is replaced atomically, so a browser or a concurrent
// reader never sees half of one.
func Write(o Options) (*Result, error) {
	if o.ResultsDir == "" || o.OutDir == "" {
		return nil, fmt.Errorf("report needs a results directory and an output directory")
	}
	var only map[string]bool
	if len(o.Cells) > 0 {
		only = map[string]bool{}
		for _, id := range o.Cells {
			only[id] = true
		}
	}
	rows, probs, err := load(o.ResultsDir, o.Tables, only)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 && len(probs) == 0 {
		return nil, fmt.Errorf("%s holds %w (no <cell-id>/manifest.json): nothing to report; point --results at the directory the cells were written to", o.ResultsDir, ErrNoCells)
	}
	for i := range rows {
		rows[i].ModelName = DisplayName(o.ModelNames, rows[i].Model)
	}
	for _, d := range []string{o.OutDir, filepath.Join(o.OutDir, PlotsDir), filepath.Join(o.OutDir, CellsDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("report directory: %w", err)
		}
	}
	res := &Result{Cells: len(rows), Problems: len(probs),
		Index: filepath.Join(o.OutDir, IndexFile), Markdown: filepath.Join(o.OutDir, MarkdownFile), CSV: filepath.Join(o.OutDir, CSVFile)}
	for _, r := range rows {
		if r.Status == "ok" {
			res.OK++
		}
	}

	var csvBuf, mdBuf, htmlBuf bytes.Buffer
	if err := WriteCSV(&csvBuf, rows); err != nil {
		return nil, err
	}
	if err := WriteMarkdown(&mdBuf, rows, probs); err != nil {
		return nil, err
	}
	groups := Groups(rows)
	gplots := make([][]*Plot, len(groups))
	var all []*Plot
	for gi, g := range groups {
		for _, p := range groupPlots(g, anchor(g.Model+"."+g.Task)+".", g.Rows[0].ModelName+" · "+g.Task) {
			gplots[gi] = append(gplots[gi], &p)
		}
		all = append(all, gplots[gi]...)
	}
	cplots := make([][]*Plot, len(rows))
	for i := range rows {
		cplots[i] = cellPlots(&rows[i])
		all = append(all, cplots[i]...)
	}
	renderAll(all)
	for _, p := range all {
		if p.Err != nil {
			res.NotDrawn = append(res.NotDrawn, p.Name+": "+p.Err.Error())
		}
	}
	all = drawn(all)
	for gi := range gplots {
		gplots[gi] = drawn(gplots[gi])
	}
	for i := range cplots {
		cplots[i] = drawn(cplots[i])
	}
	res.Plots = len(all)
	own := map[string]bool{} // what this report writes, relative to OutDir
	for _, p := range all {
		own[PlotsDir+"/"+p.Name] = true
		if err := writeAtomic(filepath.Join(o.OutDir, PlotsDir, p.Name), p.SVG); err != nil {
			return nil, err
		}
	}

	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	title := o.Title
	if title == "" {
		title = "moecapd report"
	}
	abs, _ := filepath.Abs(o.ResultsDir)
	pg := buildPage(title, now().UTC().Format(time.RFC3339), abs, rows, probs, groups, gplots, o.Tables)
	pg.NPlots = res.Plots
	if len(rows) == 1 && len(probs) == 0 {
		// One cell: its page is the report (six one-dot figures say nothing).
		pg.Single = buildCellPage(&rows[0], cplots[0], IndexFile, PlotsDir+"/")
	}
	if err := writeHTML(&htmlBuf, pg); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", IndexFile, err)
	}
	pages := map[string]bool{}
	for i := range rows {
		cp := buildCellPage(&rows[i], cplots[i], "../"+IndexFile, "../"+PlotsDir+"/")
		var b bytes.Buffer
		if err := pageTmpl.ExecuteTemplate(&b, "cellpage", cp); err != nil {
			return nil, fmt.Errorf("rendering the page of %s: %w", rows[i].ID, err)
		}
		p := cellPagePath(rows[i].ID)
		if pages[p] {
			return nil, fmt.Errorf("two cells share the page %s (ids %q): a bug of the page names", p, rows[i].ID)
		}
		pages[p], own[p] = true, true
		if err := writeAtomic(filepath.Join(o.OutDir, filepath.FromSlash(p)), b.Bytes()); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{{res.CSV, csvBuf.Bytes()}, {res.Markdown, mdBuf.Bytes()}, {res.Index, htmlBuf.Bytes()}} {
		if err := writeAtomic(f.path, f.b); err != nil {
			return nil, err
		}
		own[filepath.Base(f.path)] = true
	}
	removeStale(o.OutDir, own)
	names := make([]string, 0, len(own))
	for n := range own {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := writeAtomic(filepath.Join(o.OutDir, OwnFile), []byte(strings.Join(names, "\n")+"\n")); err != nil {
		return nil, err
	}
	return res, nil
}

// removeStale deletes the files the previous report listed in OwnFile that this one did
// not write (the page and figures of a cell archived since). Only those: a file the user
// put into the output directory was never listed, and a listed name that leaves plots/ or
// cells/ (a hand-edited list) is ignored.
func removeStale(outDir string, own map[string]bool) {
	b, err := os.ReadFile(filepath.Join(outDir, OwnFile))
	if err != nil {
		return
	}
	for _, n := range strings.Split(string(b), "\n") {
		n = strings.TrimSpace(n)
		dir, base := path.Split(n)
		if own[n] || base == "" || strings.ContainsRune(base, '\\') || base == ".." || base == "." ||
			(dir != PlotsDir+"/" && dir != CellsDir+"/") {
			continue
		}
		_ = os.Remove(filepath.Join(outDir, dir, base))
	}
}

func writeAtomic(path string, data []byte) error {
	return renameio.WriteFile(path, data, 0o644)
}
