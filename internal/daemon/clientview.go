package daemon

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
)

// EnvToken holds a bearer token for a TCP daemon when the CLI is given no --token-file.
const EnvToken = "MOECAPD_TOKEN"

// ClientFor is the CLI clients' way to the daemon: server as NewClient takes it (else
// $MOECAPD_SERVER), the token from tokenFile (else $MOECAPD_TOKEN).
func ClientFor(server, tokenFile string) (*Client, error) {
	if server == "" {
		server = os.Getenv(EnvServer)
	}
	tok := os.Getenv(EnvToken)
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, exitcode.Usagef("--token-file: %v", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	return NewClient(server, tok)
}

// WriteJobs is `moecapd jobs`: one row per job with its cells counted by state.
func WriteJobs(w io.Writer, js []JobView) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tOWNER\tPRIORITY\tSTATE\tOK\tFAILED\tRUNNING\tQUEUED\tOTHER\tCREATED\tMATRIX")
	for _, j := range js {
		n := j.Counts
		other := n[CellSkipped] + n[CellInterrupted] + n[CellCancelled]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", j.ID, j.Owner, j.Priority, j.State,
			n[CellOK], n[CellFailed]+n[CellInfeasible], n[CellRunning], n[CellQueued], other,
			j.Created.Local().Format(time.DateTime), j.Spec.Matrix)
	}
	return tw.Flush()
}

// WriteJob is `moecapd job ID`: the job, then one row per cell (the phase while running).
func WriteJob(w io.Writer, j JobView, cs []Cell) error {
	fmt.Fprintf(w, "job %s  owner %s  priority %d  state %s  matrix %s\n\n", j.ID, j.Owner, j.Priority, j.State, j.Spec.Matrix)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CELL\tSTATE\tPHASE\tATTEMPTS\tRERUNS\tGPUS\tWHY")
	for _, x := range cs {
		phase := ""
		if x.State == CellRunning {
			phase = x.Phase
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", x.ID, x.State, phase, x.Attempts, x.Reruns, strings.Join(x.GPUs, ","), x.Reason)
	}
	return tw.Flush()
}
