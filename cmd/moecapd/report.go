package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/report"
)

func init() { register(newReportCmd) }

func newReportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Write a static HTML report (plots embedded), summary.md and cells.csv of every cell under a results directory",
		Long: `report reads every <results>/<cell-id>/manifest.json and writes, to --out:
  index.html   the page: per model and task a compact table (TTFT/TPOT p50 / p99, ×floor,
               tok/s per GPU and per user, S-MBU, J/token), the same cell on each backend
               side by side, figures (TPOT, TTFT, throughput vs batch size with floors,
               S-MBU, J/token where telemetry exists, the batch-labelled Pareto view, boxes
               of per-request TPOT/TTFT), failed cells with reasons, hardware, versions
  plots/       the figures as SVG files
  cells/       one page per cell: its manifest in readable form, latency percentiles,
               timelines (tokens/s, decode batch, GPU power, utilisation, memory), CDFs
  summary.md   the same tables in markdown
  cells.csv    one row per cell; unmeasured values are empty fields
S-MBU/S-MFU and the TPOT/TTFT floors come from the manifest's extra "cap" when the cell
pipeline stored them, else they are derived here from the cell's records/.`,
		Args: cobra.NoArgs,
		RunE: runReport,
	}
	f := cmd.Flags()
	f.String("results", "results", "results directory: one <cell-id>/ directory per cell")
	f.String("out", "", "report directory (default <results>/report)")
	f.String("configs-dir", "configs", "directory of models.yaml and hardware.yaml (built-in copies when absent)")
	f.String("title", "moecapd report", "page title")
	f.String("matrix", "configs/matrix.yaml", "matrix file whose model_names give the models' display names (built-in copy when absent)")
	return cmd
}

func runReport(cmd *cobra.Command, _ []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	results := v.GetString("results")
	if st, err := os.Stat(results); err != nil || !st.IsDir() {
		return usageErrorf("--results %q is not a directory; point it at the directory holding the <cell-id>/ directories", results)
	}
	out := v.GetString("out")
	if out == "" {
		out = results + string(os.PathSeparator) + "report"
	}
	tables, err := loadTables(v.GetString("configs-dir"), "")
	if err != nil {
		return usageErrorf("model/hardware tables: %v", err)
	}
	names := map[string]string{}
	if mx, err := matrix.Load(v.GetString("matrix"), tables); err == nil {
		names = mx.File.ModelNames
	} else {
		log.Debug("no display names: matrix file unreadable; models show by key", zap.Error(err))
	}
	res, err := report.Write(report.Options{ResultsDir: results, OutDir: out, Tables: tables, ModelNames: names, Title: v.GetString("title")})
	if errors.Is(err, report.ErrNoCells) {
		return withCode(exitUsage, err)
	}
	if err != nil {
		return withCode(exitInternal, err)
	}
	log.Info("report written", zap.Int("cells", res.Cells), zap.Int("ok", res.OK),
		zap.Int("unreadable", res.Problems), zap.Int("plots", res.Plots), zap.String("index", res.Index))
	fmt.Fprintln(cmd.OutOrStdout(), res.Index)
	return nil
}
