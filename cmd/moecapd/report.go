package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/report"
)

func init() { register(newReportCmd) }

func newReportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Write a static HTML report (plots embedded), summary.md and cells.csv of every cell under a results directory",
		Long: `report reads every <results>/<cell-id>/manifest.json and writes, to --out:
  index.html   self-contained page: plots per model and task (TPOT, throughput, TTFT,
               J/token, $/M tokens, S-MBU vs batch size; throughput/GPU vs 1000/TPOT),
               every cell, failed and infeasible cells with reasons, hardware, versions
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
	return cmd
}

func runReport(cmd *cobra.Command, _ []string) error {
	v, err := settings(cmd)
	if err != nil {
		return err
	}
	log, err := newLogger(v)
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
	res, err := report.Write(report.Options{ResultsDir: results, OutDir: out, Tables: tables, Title: v.GetString("title")})
	if err != nil {
		return withCode(exitInternal, err)
	}
	log.Info("report written", zap.Int("cells", res.Cells), zap.Int("ok", res.OK),
		zap.Int("unreadable", res.Problems), zap.Int("plots", res.Plots), zap.String("index", res.Index))
	fmt.Fprintln(cmd.OutOrStdout(), res.Index)
	return nil
}
