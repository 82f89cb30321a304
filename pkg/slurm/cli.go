// Package slurm runs the matrix as Slurm job arrays: it talks to Slurm through its
// command-line tools with parsable output formats (sbatch --parsable, squeue -o, sacct -P),
// every value passed as its own argv element (no shell), and keeps the record of what was
// submitted for a results root in <root>/.slurm/.
//
// The commands are short-lived clients of the controller; pkg/launcher starts them
// (launcher.Command), as it starts every process.
package slurm

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/launcher"
)

// ErrNoSlurm is wrapped by errors for Slurm commands that are not installed.
var ErrNoSlurm = errors.New("slurm commands not found")

// ErrController is wrapped by errors for a controller that does not answer (or a client
// that cannot find its configuration).
var ErrController = errors.New("slurm controller does not answer")

// ErrNoAccounting is returned by Acct when the cluster keeps no accounting (no slurmdbd).
var ErrNoAccounting = errors.New("slurm accounting storage is disabled")

// CLI runs Slurm's commands.
type CLI struct {
	// Env is the commands' environment (nil: this process's). SLURM_CONF in it picks the
	// cluster.
	Env []string
	// Timeout bounds one command (0: 60 s). A controller that does not answer makes the
	// clients retry for about 10 s before they give up.
	Timeout time.Duration
}

// CommandError is a Slurm command that ran and failed.
type CommandError struct {
	Argv   []string
	Code   int
	Stderr string
	kind   error // ErrController, or nil
}

func (e *CommandError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = "no output"
	}
	s := fmt.Sprintf("%s exited %d: %s", strings.Join(e.Argv, " "), e.Code, msg)
	if e.kind == ErrController {
		s += "; check that slurmctld runs and SLURM_CONF (or /etc/slurm/slurm.conf) names it, or run on a login node of the cluster"
	}
	return s
}

func (e *CommandError) Unwrap() error { return e.kind }

// controllerDown matches what the clients print when they cannot reach the controller or
// cannot load their configuration.
var controllerDown = regexp.MustCompile(`(?i)unable to contact slurm controller|socket timed out|connection refused|could not establish a configuration source|unable to process configuration file|communication connection failure|zero bytes were transmitted`)

// Run runs one Slurm command and returns its standard output.
func (c *CLI) Run(ctx context.Context, name string, args ...string) (string, error) {
	to := c.Timeout
	if to <= 0 {
		to = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	argv := append([]string{name}, args...)
	out, err := launcher.Command(ctx, argv, c.Env)
	switch {
	case errors.Is(err, launcher.ErrNotFound):
		return "", fmt.Errorf("%w: %s is not on PATH; install the Slurm client tools (Debian: apt-get install slurm-client) or run moecapd slurm on a login node of the cluster", ErrNoSlurm, name)
	case errors.Is(err, context.DeadlineExceeded):
		return "", &CommandError{Argv: argv, Code: -1, Stderr: fmt.Sprintf("no answer within %s", to), kind: ErrController}
	case err != nil:
		return "", err
	case out.ExitCode != 0:
		ce := &CommandError{Argv: argv, Code: out.ExitCode, Stderr: out.Stderr}
		if controllerDown.MatchString(ce.Stderr) {
			ce.kind = ErrController
		}
		return out.Stdout, ce
	}
	return out.Stdout, nil
}

// SubmitSpec is one sbatch call: a job array whose every task gets GPUs GPUs and runs
// Script with Args.
type SubmitSpec struct {
	Name        string
	GPUs        int
	Tasks       int // array indices 0..Tasks-1
	MaxParallel int // %K throttle (0: none)
	Partition   string
	Account     string
	QOS         string
	Time        string // Slurm time limit, e.g. 6:00:00
	Output      string // log path pattern (%A array job id, %a task id)
	Chdir       string
	Extra       []string // --sbatch-arg values, passed as they are
	Script      string
	Args        []string
}

// Argv is the sbatch command line (without "sbatch"): options, the script, its arguments.
func (s SubmitSpec) Argv() []string {
	a := []string{"--parsable", "--job-name=" + s.Name, "--gpus=" + strconv.Itoa(s.GPUs), "--nodes=1", "--ntasks=1"}
	arr := fmt.Sprintf("--array=0-%d", s.Tasks-1)
	if s.MaxParallel > 0 {
		arr += "%" + strconv.Itoa(s.MaxParallel)
	}
	a = append(a, arr)
	for _, kv := range [][2]string{{"partition", s.Partition}, {"account", s.Account}, {"qos", s.QOS}, {"time", s.Time}, {"chdir", s.Chdir}} {
		if kv[1] != "" {
			a = append(a, "--"+kv[0]+"="+kv[1])
		}
	}
	if s.Output != "" {
		// One log per task; appended so a requeued task keeps its first attempt's log.
		a = append(a, "--output="+s.Output, "--open-mode=append")
	}
	// Node failures requeue the task; the task redoes its cell (SLURM_RESTART_COUNT > 0).
	a = append(a, "--requeue")
	a = append(a, s.Extra...)
	a = append(a, s.Script)
	return append(a, s.Args...)
}

// Submit runs sbatch and returns the array's job id.
func (c *CLI) Submit(ctx context.Context, s SubmitSpec) (string, error) {
	if s.Tasks <= 0 {
		return "", fmt.Errorf("submit %s: no tasks", s.Name)
	}
	out, err := c.Run(ctx, "sbatch", s.Argv()...)
	if err != nil {
		return "", err
	}
	// --parsable prints "jobid" or "jobid;cluster".
	id, _, _ := strings.Cut(strings.TrimSpace(lastLine(out)), ";")
	if _, err := strconv.Atoi(id); err != nil {
		return "", fmt.Errorf("sbatch printed %q, expected a job id (--parsable)", strings.TrimSpace(out))
	}
	return id, nil
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Task is Slurm's view of one array task.
type Task struct {
	JobID      string // this task's own job id
	ArrayJobID string
	TaskID     int
	State      string // PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, FAILED, NODE_FAIL…
	Reason     string // why pending ("Resources", "Priority"), "None" otherwise
	Node       string
	Elapsed    string
	Limit      string
	ExitCode   string // from sacct only
	Start, End string // from sacct only
	Source     string // squeue or sacct
}

// Key names a task by (array job id, task id): the highest task of an array carries the
// array's own job id, so the pair is the stable name.
func (t Task) Key() string { return t.ArrayJobID + "_" + strconv.Itoa(t.TaskID) }

// Active says Slurm will still run (or is running) the task.
func (t Task) Active() bool {
	switch t.State {
	case "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT":
		return true
	}
	return false
}

const squeueFormat = "%i|%A|%F|%K|%T|%r|%N|%M|%l"

// Queue lists the tasks of the given array jobs that the controller still knows (pending,
// running, and finished ones for MinJobAge, about 5 minutes), keyed by Task.Key.
func (c *CLI) Queue(ctx context.Context, arrayIDs []string) (map[string]Task, error) {
	out := map[string]Task{}
	if len(arrayIDs) == 0 {
		return out, nil
	}
	s, err := c.Run(ctx, "squeue", "-h", "-r", "-t", "all", "-j", strings.Join(arrayIDs, ","), "-o", squeueFormat)
	var ce *CommandError
	if errors.As(err, &ce) && ce.kind == nil && strings.Contains(ce.Stderr, "Invalid job id") {
		return out, nil // every job aged out of the controller: none queued
	}
	if err != nil {
		return nil, err
	}
	return out, parseQueue(s, out)
}

func parseQueue(s string, out map[string]Task) error {
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 9 {
			return fmt.Errorf("squeue line %q: expected 9 fields of %s", line, squeueFormat)
		}
		tid, err := strconv.Atoi(f[3])
		if err != nil {
			continue // not an array task (N/A)
		}
		t := Task{JobID: f[1], ArrayJobID: f[2], TaskID: tid, State: f[4], Reason: f[5], Node: f[6],
			Elapsed: f[7], Limit: f[8], Source: "squeue"}
		out[t.Key()] = t
	}
	return nil
}

// Acct lists finished and running tasks of the given arrays from accounting, keyed by
// Task.Key; ErrNoAccounting when the cluster has none.
func (c *CLI) Acct(ctx context.Context, arrayIDs []string) (map[string]Task, error) {
	out := map[string]Task{}
	if len(arrayIDs) == 0 {
		return out, nil
	}
	s, err := c.Run(ctx, "sacct", "-n", "-P", "-X", "-j", strings.Join(arrayIDs, ","),
		"-o", "JobID,JobIDRaw,State,ExitCode,Start,End,NodeList")
	var ce *CommandError
	if errors.As(err, &ce) && strings.Contains(strings.ToLower(ce.Stderr), "accounting storage is disabled") {
		return nil, ErrNoAccounting
	}
	if err != nil {
		return nil, err
	}
	return out, parseAcct(s, out)
}

func parseAcct(s string, out map[string]Task) error {
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 7 {
			return fmt.Errorf("sacct line %q: expected 7 fields", line)
		}
		arr, idx, ok := strings.Cut(f[0], "_")
		if !ok {
			continue
		}
		tid, err := strconv.Atoi(idx)
		if err != nil {
			continue // a pending range such as 12_[3-7] is in squeue's view
		}
		// "CANCELLED by 0" → CANCELLED
		state, _, _ := strings.Cut(f[2], " ")
		t := Task{JobID: f[1], ArrayJobID: arr, TaskID: tid, State: state, ExitCode: f[3], Start: f[4], End: f[5],
			Node: f[6], Source: "sacct"}
		out[t.Key()] = t
	}
	return nil
}

// Cancel cancels the given jobs or tasks (ids such as 12 or 12_3). Signals go through
// the controller: SIGTERM to the batch script, SIGKILL after KillWait.
func (c *CLI) Cancel(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := c.Run(ctx, "scancel", ids...)
	return err
}

var (
	killWaitRe     = regexp.MustCompile(`(?m)^KillWait\s*=\s*(\d+)\s*sec`)
	maxArraySizeRe = regexp.MustCompile(`(?m)^MaxArraySize\s*=\s*(\d+)`)
)

// Config is what submit needs of the cluster's configuration.
type Config struct {
	// KillWait is how long the cluster waits between SIGTERM and SIGKILL of a job.
	KillWait time.Duration
	// MaxArraySize bounds array indices: 0..MaxArraySize-1.
	MaxArraySize int
}

// ShowConfig reads KillWait and MaxArraySize from scontrol show config.
func (c *CLI) ShowConfig(ctx context.Context) (Config, error) {
	s, err := c.Run(ctx, "scontrol", "show", "config")
	if err != nil {
		return Config{}, err
	}
	return parseConfig(s)
}

func parseConfig(s string) (Config, error) {
	var cfg Config
	m := killWaitRe.FindStringSubmatch(s)
	if m == nil {
		return cfg, fmt.Errorf("scontrol show config: no KillWait line")
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n > 1<<20 {
		// Slurm caps KillWait at 65533 s; beyond int or a Duration it is no setting.
		return cfg, fmt.Errorf("scontrol show config: KillWait %s sec is not a Slurm setting (at most 65533)", m[1])
	}
	cfg.KillWait = time.Duration(n) * time.Second
	cfg.MaxArraySize = 1001 // Slurm's default
	if m := maxArraySizeRe.FindStringSubmatch(s); m != nil {
		cfg.MaxArraySize, _ = strconv.Atoi(m[1])
	}
	if cfg.MaxArraySize < 1 {
		return cfg, fmt.Errorf("scontrol show config: MaxArraySize %d: the cluster takes no job arrays", cfg.MaxArraySize)
	}
	return cfg, nil
}

// ParseQueue reads squeue's output in Queue's format, keyed by Task.Key (a caller that
// ran squeue itself, or a test of what a state means).
func ParseQueue(s string) (map[string]Task, error) {
	out := map[string]Task{}
	return out, parseQueue(s, out)
}

// ParseAcct reads sacct's output in Acct's format, keyed by Task.Key.
func ParseAcct(s string) (map[string]Task, error) {
	out := map[string]Task{}
	return out, parseAcct(s, out)
}
