package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/moecapd/moecapd/internal/app"
)

func init() { register(newDoctorCmd) }

func newDoctorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check conda root and envs, moe_cap and backend versions in each env, ports and GPUs; each problem with its fix",
		RunE:  runDoctor,
	}
	f := cmd.Flags()
	f.String("conda-root", "", "conda installation to check (default: found as launch-and-bench finds it)")
	f.String("sglang-env", "sglang", "conda env of the sglang backend (name or prefix)")
	f.String("vllm-env", "vllm", "conda env of the vllm backend (name or prefix)")
	f.IntSlice("ports", []int{30000, 8000}, "ports that must be free")
	f.String("host", "127.0.0.1", "address the ports are checked on")
	f.Int("gpu-idle-mib", 512, "MiB a GPU may use above the driver's reservation and still count as idle (as launch-and-bench's)")
	f.Duration("timeout", 60*time.Second, "time allowed for each python check (importing vllm is slow)")
	return cmd
}

func runDoctor(cmd *cobra.Command, _ []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ports, _ := cmd.Flags().GetIntSlice("ports")
	return app.Doctor(ctx, app.DoctorRequest{CondaRoot: v.GetString("conda-root"), SGLangEnv: v.GetString("sglang-env"),
		VLLMEnv: v.GetString("vllm-env"), Ports: ports, Host: v.GetString("host"), GPUIdleMiB: v.GetInt("gpu-idle-mib"),
		Timeout: v.GetDuration("timeout"), Log: log, Out: cmd.OutOrStdout()})
}
