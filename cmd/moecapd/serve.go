package main

import (
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/internal/daemon"
)

func init() { register(newServeCmd) }

// serveOnly are matrix flags that belong to a submission, not to the daemon.
var serveOnly = map[string]bool{"matrix": true, "only": true, "include-done": true, "redo-failed": true}

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve --results ROOT [--listen unix:PATH|HOST:PORT]",
		Short: "Run the node's daemon: one queue of everyone's jobs, run unattended across crashes and restarts",
		Long: `One daemon per node owns the node's GPUs (a node-wide lock: while it runs, launch-and-bench
and matrix run refuse and point at moecapd submit). Jobs come in through its HTTP API (a unix
socket by default, mode 0660, the peer's uid is the job's owner; or TCP with bearer tokens) and
wait in one queue: higher --priority first, first submitted first within a priority. Cells are
packed onto free GPUs with matrix run --pack's allocator, retries, skip-after-OOM and per-cell
timeout; sim cells take no GPU and run up to --slots at once.

The state (jobs, cells, the GPU lease ledger) is a database under ROOT/.daemon, written before
anything is started or answered. After a crash, kill -9 or power cut the next start ends the
old daemon's servers (verified identity only), keeps results it finished and runs again what
it interrupted. SIGTERM drains (running cells may finish for --drain-timeout, then are
interrupted and stay queued); SIGHUP reloads --tokens. See docs/API.md.

--executor slurm runs the jobs on a Slurm cluster instead (from a login node): a submitted
job becomes the job arrays of "moecapd slurm submit" (one per hardware label, each task one
cell; --partition, --account, --qos, --time, --max-parallel, --sbatch-arg and --moecapd as
slurm submit takes them, cell flags given to serve go to every task), their ids are written
to the store before the job id is answered, and the daemon follows them (squeue, sacct, the
manifests) into the same jobs, cells, events and page. The cluster owns the GPUs: no node
lock is taken. --priority becomes sbatch --nice (minus the priority); cancel scancels the
job's own arrays. A restart follows the recorded arrays again and submits nothing twice.`,
		Example: `  moecapd serve --results /data/results
  moecapd serve --results /data/results --listen unix:/run/moecapd/moecapd.sock --listen 0.0.0.0:9410 --tokens /etc/moecapd/tokens
  moecapd serve --results results-sim --slots 4 --webhook https://hooks.slack.com/services/…
  moecapd serve --executor slurm --results /shared/results --partition h200 --account myproj --time 8h`,
		Args: cobra.NoArgs,
		RunE: runServe,
	}
	f := cmd.Flags()
	var sel pflag.FlagSet
	addSelectFlags(&sel)
	sel.VisitAll(func(fl *pflag.Flag) {
		if !serveOnly[fl.Name] {
			f.AddFlag(fl)
		}
	})
	f.Int("retries", 2, "extra attempts for a cell that crashed or never became ready")
	f.Duration("retry-backoff", 30*time.Second, "wait before the first retry; doubles each time")
	f.Duration("cell-timeout", 6*time.Hour, "stop a cell that runs longer (a group's timeout wins); 0: none")
	f.Int("slots", 0, "cells at once (default: the node's GPU count, at least 1; sim cells take a slot and no GPU)")
	f.StringArray("listen", nil, "where the API listens: unix:PATH or HOST:PORT, repeatable (default: unix socket in the run directory, $MOECAPD_RUN_DIR or /run/moecapd or $TMPDIR/moecapd)")
	f.String("tokens", "", "bearer tokens for TCP clients: a mode-0600 file of \"TOKEN USER\" lines (SIGHUP reloads it); needed for a non-loopback --listen")
	f.StringSlice("admin", nil, "users who may cancel anyone's job (root and the daemon's own user always may)")
	f.String("tls-cert", "", "TLS certificate for the TCP listeners (with --tls-key)")
	f.String("tls-key", "", "TLS key for the TCP listeners")
	f.Duration("drain-timeout", 2*time.Minute, "on SIGTERM, how long running cells may go on before they are interrupted (and kept queued)")
	f.String("webhook", "", "POST Slack-compatible JSON ({\"text\": …}) here when a job ends or a cell fails")
	f.String("executor", "local", "where cells run: local (this node's GPUs) or slurm (job arrays on the cluster this node submits to)")
	addSlurmArrayFlags(f)
	f.Duration("slurm-poll", 10*time.Second, "with --executor slurm: time between two looks at squeue, sacct and the manifests")
	return cmd
}

// addSlurmArrayFlags are sbatch's settings as slurm submit names them, so one settings
// file (or MOECAP_PARTITION…) serves slurm submit and serve --executor slurm.
func addSlurmArrayFlags(f *pflag.FlagSet) {
	f.String("partition", "", "with --executor slurm: sbatch --partition")
	f.String("account", "", "with --executor slurm: sbatch --account")
	f.String("qos", "", "with --executor slurm: sbatch --qos")
	f.String("time", "", "with --executor slurm: time limit per task: a duration such as 8h or 90m, or Slurm's own format (D-HH:MM:SS)")
	f.Int("max-parallel", 0, "with --executor slurm: tasks of one array running at once (--array=0-K%N; 0: no limit)")
	f.StringArray("sbatch-arg", nil, "with --executor slurm: extra sbatch option, passed as one argument (repeat)")
	f.String("moecapd", "", "with --executor slurm: moecapd binary the tasks run (default: this binary; must be reachable from the nodes)")
}

func runServe(cmd *cobra.Command, _ []string) error {
	v, log, err := commandLogger(cmd)
	if err != nil {
		return err
	}
	defer log.Sync()
	o, err := readMatrixOpts(cmd.Flags())
	if err != nil {
		return err
	}
	fs := cmd.Flags()
	listen, _ := fs.GetStringArray("listen")
	admins, _ := fs.GetStringSlice("admin")
	var sx *daemon.SlurmOptions
	switch ex := v.GetString("executor"); ex {
	case "local":
		// The sbatch settings are ignored: one settings file may serve slurm submit too.
	case "slurm":
		// Cell flags given to serve go to every task, as slurm submit forwards its own.
		forward := map[string]string{}
		task := pflag.NewFlagSet("task", pflag.ContinueOnError)
		addSlurmCellFlags(task)
		fs.Visit(func(fl *pflag.Flag) {
			if task.Lookup(fl.Name) != nil && fl.Name != "matrix" && fl.Name != "results" && fl.Name != "hardware" {
				forward[fl.Name] = fl.Value.String()
			}
		})
		sbatchArgs, _ := fs.GetStringArray("sbatch-arg")
		sx = &daemon.SlurmOptions{Poll: v.GetDuration("slurm-poll"), Arrays: app.SlurmArrayOptions{
			Moecapd: v.GetString("moecapd"), Partition: v.GetString("partition"), Account: v.GetString("account"),
			QOS: v.GetString("qos"), Time: v.GetString("time"), MaxParallel: v.GetInt("max-parallel"),
			SbatchArgs: sbatchArgs, Forward: forward}}
	default:
		return usageErrorf("--executor %q: want local or slurm", ex)
	}
	return daemon.Serve(daemon.ServeRequest{Matrix: o, Listen: listen, TokensFile: v.GetString("tokens"), Admins: admins,
		TLSCert: v.GetString("tls-cert"), TLSKey: v.GetString("tls-key"), DrainTimeout: v.GetDuration("drain-timeout"),
		Webhook: v.GetString("webhook"), Slurm: sx, Log: log})
}
