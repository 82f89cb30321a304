package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/compare"
)

func init() { register(newCompareCmd) }

func newCompareCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "compare BASE NEW",
		Short: "Compare two results roots (cells paired by id) or two cell directories: change, interval and verdict per metric",
		Long: `compare reads two results roots (cells paired by id) or two cell directories and
prints, per cell and metric (TTFT, TPOT and E2E latency means, output throughput,
J/output token), the change in %, its confidence interval at --level and a verdict
(faster / slower / no change, less / more energy), with the two environments side
by side (what differs marked).
The interval is Welch's t over the repeats when both cells ran --repeats 2 or more,
else a bootstrap over the per-request values of the bench files (latencies only; one
run cannot see run-to-run variance, so prefer repeats). A change smaller than
--min-change is "no change". Exit 9 when a metric got significantly worse by more
than --threshold %, so a CI job can gate on it.`,
		Args: cobra.ExactArgs(2),
		RunE: runCompare,
	}
	f := cmd.Flags()
	f.String("format", "text", "output: "+strings.Join(compare.Formats, ", "))
	f.Float64("level", 0.95, "confidence level of the intervals")
	f.Float64("threshold", 5, "exit 9 when a metric got significantly worse by more than this many %")
	f.Float64("min-change", 1, "a change smaller than this many % is no change, even when significant")
	return cmd
}

func runCompare(cmd *cobra.Command, args []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return app.Compare(app.CompareRequest{Format: v.GetString("format"), Request: compare.Request{
		Base: args[0], New: args[1], Level: v.GetFloat64("level"), Threshold: v.GetFloat64("threshold"),
		MinChange: v.GetFloat64("min-change")}}, cmd.OutOrStdout())
}
