package main

import (
	"github.com/moecapd/moecapd/internal/settings"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
)

func init() { register(newGPUsCmd) }

func newGPUsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Show this node's GPUs through NVML: driver, hardware label, memory, utilization, power, temperature, processes",
		Args:  cobra.NoArgs,
		RunE:  runGPUs,
	}
	f := cmd.Flags()
	f.Bool("json", false, "print the snapshot as JSON")
	f.Bool("require-gpu", false, "exit 2 when NVML is unavailable instead of reporting it")
	return cmd
}

func runGPUs(cmd *cobra.Command, _ []string) error {
	v, err := settings.Load(cmd)
	if err != nil {
		return err
	}
	if _, err := newLogger(v); err != nil {
		return err
	}
	// The snapshot itself says why there is no GPU; the backend's log warning would only
	// repeat it.
	b, err := gpu.Open(zap.NewNop(), v.GetBool("require-gpu"))
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	defer b.Close()
	snap, err := gpu.TakeSnapshot(b)
	if err != nil {
		return exitcode.New(exitcode.Internal, err)
	}
	if v.GetBool("json") {
		return snap.WriteJSON(cmd.OutOrStdout())
	}
	return snap.WriteText(cmd.OutOrStdout())
}
