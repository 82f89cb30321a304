package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/moecapd/moecapd/internal/app"
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
	res, err := app.Report(app.ReportRequest{Results: v.GetString("results"), Out: v.GetString("out"),
		ConfigsDir: v.GetString("configs-dir"), Matrix: v.GetString("matrix"), Title: v.GetString("title"), Log: log})
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), res.Index)
	return nil
}
