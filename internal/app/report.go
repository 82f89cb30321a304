package app

import (
	"errors"
	"os"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/report"
)

// ReportRequest is moecapd report: the results root, where the report goes, the tables
// and the matrix whose display names it uses.
type ReportRequest struct {
	Results, Out       string // Out "": <results>/report
	ConfigsDir, Matrix string
	Title              string
	// Cell, when given, limits the report to that one cell (its page is the index).
	Cell string
	Log  *zap.Logger
}

// Report writes the static report of every cell under the results root.
func Report(req ReportRequest) (*report.Result, error) {
	results, log := req.Results, req.Log
	if st, err := os.Stat(results); err != nil || !st.IsDir() {
		return nil, exitcode.Usagef("--results %q is not a directory; point it at the directory holding the <cell-id>/ directories", results)
	}
	out := req.Out
	if out == "" {
		out = results + string(os.PathSeparator) + "report"
	}
	tables, err := loadTables(req.ConfigsDir, "")
	if err != nil {
		return nil, exitcode.Usagef("model/hardware tables: %v", err)
	}
	names := map[string]string{}
	if mx, err := matrix.Load(req.Matrix, tables); err == nil {
		names = mx.File.ModelNames
	} else {
		log.Debug("no display names: matrix file unreadable; models show by key", zap.Error(err))
	}
	ro := report.Options{ResultsDir: results, OutDir: out, Tables: tables, ModelNames: names, Title: req.Title}
	if req.Cell != "" {
		ro.Cells = []string{req.Cell}
	}
	res, err := report.Write(ro)
	if errors.Is(err, report.ErrNoCells) {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	if err != nil {
		return nil, exitcode.New(exitcode.Internal, err)
	}
	log.Info("report written", zap.Int("cells", res.Cells), zap.Int("ok", res.OK),
		zap.Int("unreadable", res.Problems), zap.Int("plots", res.Plots), zap.String("index", res.Index))
	for _, n := range res.NotDrawn {
		log.Warn("a figure was left out: its data cannot be drawn", zap.String("figure", n))
	}
	return res, nil
}
