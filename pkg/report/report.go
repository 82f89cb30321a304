package report

import (
	"bytes"
	"fmt"
	"github.com/google/renameio/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
)

// Output file names inside the report directory.
const (
	IndexFile    = "index.html"
	MarkdownFile = "summary.md"
	CSVFile      = "cells.csv"
)

// Options of Write.
type Options struct {
	ResultsDir string
	OutDir     string
	// Tables are the model and hardware tables; without them cells without stored CAP
	// numbers get none.
	Tables *config.Tables
	// Title of the page; default "moecapd report".
	Title string
	// Now stamps the page (not the markdown or CSV); default time.Now.
	Now func() time.Time
}

// Result says what Write wrote.
type Result struct {
	Cells    int
	OK       int
	Problems int
	Plots    int // images drawn
	Index    string
	Markdown string
	CSV      string
}

// Write reads every cell under ResultsDir and writes index.html (self-contained: plots are
// PNG data URIs, no script or style from the network), summary.md and cells.csv to OutDir.
// Each file is replaced atomically, so a browser or a concurrent reader never sees half.
func Write(o Options) (*Result, error) {
	if o.ResultsDir == "" || o.OutDir == "" {
		return nil, fmt.Errorf("report needs a results directory and an output directory")
	}
	rows, probs, err := Load(o.ResultsDir, o.Tables)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 && len(probs) == 0 {
		return nil, fmt.Errorf("%s holds no cell (no <cell-id>/manifest.json): nothing to report", o.ResultsDir)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("report directory: %w", err)
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
	plots, err := RenderPlots(groups)
	if err != nil {
		return nil, fmt.Errorf("drawing plots: %w", err)
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
	pg := buildPage(title, now().UTC().Format(time.RFC3339), abs, rows, probs, groups, plots, o.Tables)
	res.Plots = pg.NPlots
	if err := writeHTML(&htmlBuf, pg); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", IndexFile, err)
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{{res.CSV, csvBuf.Bytes()}, {res.Markdown, mdBuf.Bytes()}, {res.Index, htmlBuf.Bytes()}} {
		if err := writeAtomic(f.path, f.b); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func writeAtomic(path string, data []byte) error {
	return renameio.WriteFile(path, data, 0o644)
}
