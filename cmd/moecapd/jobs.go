package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/internal/daemon"
	"github.com/moecapd/moecapd/internal/settings"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

func init() {
	register(newSubmitCmd)
	register(newJobsCmd)
	register(newJobCmd)
	register(newCancelCmd)
	register(newLogsCmd)
}

// addServerFlags are the daemon clients' flags: where the daemon is, and its token.
func addServerFlags(cmd *cobra.Command) {
	cmd.Flags().String("server", "", "the daemon: unix:PATH or http(s)://HOST:PORT (default $MOECAPD_SERVER, else the default socket)")
	cmd.Flags().String("token-file", "", "file holding a bearer token for a TCP daemon (default $MOECAPD_TOKEN)")
}

func clientOf(cmd *cobra.Command) (*daemon.Client, error) {
	server, _ := cmd.Flags().GetString("server")
	tokens, _ := cmd.Flags().GetString("token-file")
	return daemon.ClientFor(server, tokens)
}

func newSubmitCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "submit (--matrix FILE [--only REGEX] | --backend B --config FILE --batch-size N) [--priority N] [-- extra server flags]",
		Short: "Submit a matrix (or part of it) to the node's daemon; prints the job id",
		Example: `  moecapd submit --matrix configs/matrix.yaml --only 'qwen1_5\..*'
  moecapd submit --matrix configs/matrix-sim.yaml --priority 10`,
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			if n := cmd.ArgsLenAtDash(); n > 0 || (n < 0 && len(args) > 0) {
				return usageErrorf("unexpected arguments %q; extra server flags go after --", args)
			}
			mx, _ := f.GetString("matrix")
			cfg, _ := f.GetString("config")
			if (mx == "") == (cfg == "") {
				return usageErrorf("give --matrix FILE, or one cell's --backend, --config and --batch-size (not both)")
			}
			abs, err := filepath.Abs(mx + cfg)
			if err != nil {
				return usageErrorf("%s: %v", mx+cfg, err)
			}
			if _, err := os.Stat(abs); err != nil {
				return usageErrorf("%v", err)
			}
			s := daemon.Spec{ServerArgs: args}
			if mx != "" {
				for _, n := range []string{"request-rate", "burstiness", "max-concurrency", "rates", "slo", "find-max-rate", "max-rate-steps"} {
					if f.Changed(n) {
						return usageErrorf("--%s is one cell's load; a matrix file's groups give theirs (request_rate:, rates:, slo:, …)", n)
					}
				}
				s.Matrix = abs
			} else {
				c := &app.OneCell{Config: abs}
				c.Backend, _ = f.GetString("backend")
				c.BatchSize, _ = f.GetInt("batch-size")
				c.TP, _ = f.GetInt("tp")
				c.NumSamples, _ = f.GetInt("num-samples")
				c.Repeats, _ = f.GetInt("repeats")
				c.Hardware, _ = f.GetString("hardware")
				c.Load = readLoadFlags(settings.NewReader(f))
				s.Cell = c
			}
			s.Only, _ = f.GetString("only")
			s.IncludeDone, _ = f.GetBool("include-done")
			s.NoSkip, _ = f.GetBool("no-skip")
			s.RedoFailed, _ = f.GetBool("redo-failed")
			s.Priority, _ = f.GetInt("priority")
			c, err := clientOf(cmd)
			if err != nil {
				return err
			}
			j, err := c.Submit(cmd.Context(), s)
			if err != nil {
				return err
			}
			fmt.Println(j.ID)
			fmt.Fprintf(os.Stderr, "job %s: %d cell(s) queued for %s; moecapd job %s shows them\n", j.ID, len(j.Cells), j.Owner, j.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("matrix", "", "matrix file (its path must be readable on the daemon's node)")
	f.String("only", "", "only cells whose id matches this regular expression")
	f.Bool("include-done", false, "also run cells the matrix marks done")
	f.Bool("no-skip", false, "run larger batch sizes even after a smaller one ran out of memory")
	f.Bool("redo-failed", false, "rerun cells whose earlier attempt failed")
	f.String("backend", "", "one cell: sglang, vllm or sim (with --config and --batch-size, as launch-and-bench)")
	f.String("config", "", "one cell: the benchmark YAML")
	f.Int("batch-size", 0, "one cell: the batch size")
	f.Int("tp", 0, "one cell: tensor parallel size (default 1)")
	f.Int("num-samples", 0, "one cell: requests to send (default: the bench file's, at least 2×batch)")
	f.Int("repeats", 0, "one cell: run the measured bench this many times (launch-and-bench --repeats; a matrix file says repeats:)")
	f.String("hardware", "", "one cell: its hardware label, e.g. 8xH100 (sim default <tp>xH100)")
	addLoadFlags(f) // one cell: launch-and-bench's open loop (a matrix file's groups say request_rate:, rates:, …)
	f.Int("priority", 0, fmt.Sprintf("higher runs first (%d to %d); first in, first out within a priority", -daemon.MaxPriority, daemon.MaxPriority))
	addServerFlags(cmd)
	return cmd
}

func newJobsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List the daemon's jobs: id, owner, state, cells ok/failed/running/queued",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := clientOf(cmd)
			if err != nil {
				return err
			}
			js, err := c.Jobs(cmd.Context())
			if err != nil {
				return err
			}
			return daemon.WriteJobs(cmd.OutOrStdout(), js)
		},
	}
	addServerFlags(cmd)
	return cmd
}

func newJobCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job ID",
		Short: "List one job's cells: state, phase, attempts, GPUs, why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientOf(cmd)
			if err != nil {
				return err
			}
			j, cs, err := c.Job(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return daemon.WriteJob(cmd.OutOrStdout(), j, cs)
		},
	}
	addServerFlags(cmd)
	return cmd
}

func newCancelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job: its running cells are torn down (interrupted), its queued ones dropped",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientOf(cmd)
			if err != nil {
				return err
			}
			j, err := c.Cancel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Printf("job %s %s\n", j.ID, j.State)
			return nil
		},
	}
	addServerFlags(cmd)
	return cmd
}

func newLogsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logs CELL [-f]",
		Short: "Print a cell's server log (--client: the client's); -f follows it while the cell runs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := clientOf(cmd)
			if err != nil {
				return err
			}
			follow, _ := cmd.Flags().GetBool("follow")
			file := "server"
			if cl, _ := cmd.Flags().GetBool("client"); cl {
				file = "client"
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err = c.Logs(ctx, args[0], file, follow, os.Stdout)
			if ctx.Err() != nil {
				return exitcode.New(exitcode.Interrupted, fmt.Errorf("interrupted"))
			}
			return err
		},
	}
	cmd.Flags().BoolP("follow", "f", false, "keep printing while the cell is queued or running")
	cmd.Flags().Bool("client", false, "the client's log instead of the server's")
	addServerFlags(cmd)
	return cmd
}
