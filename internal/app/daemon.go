package app

// What moecapd serve (internal/daemon, a second front end) takes from this layer: the
// node's GPUs, a submitted matrix's plan, and each cell's pipeline config, so a daemon's
// cell runs exactly as the same cell of matrix run --pack. And the refusal of one-shot
// runs while a daemon owns the node.

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/nodelock"
)

// refuseUnderDaemon is launch-and-bench's and matrix run's first check: while moecapd
// serve owns the node, one-shot runs would race it for GPUs, so they are refused (exit 2)
// with the daemon named and moecapd submit as the way.
func refuseUnderDaemon() error {
	if err := nodelock.Check(); err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	return nil
}

// NodeGPUs is the node's GPU pool as matrix run builds it: NVML's visible GPUs (ids for
// CUDA_VISIBLE_DEVICES, and their UUIDs), else CUDA_VISIBLE_DEVICES' entries, else none.
// The backend stays open for the caller (Close it).
func NodeGPUs(o MatrixOptions, log *zap.Logger) (gb gpu.Backend, pool, uuids []string, err error) {
	if gb, err = gpu.Open(log, o.Cell.RequireGPU); err != nil {
		return nil, nil, nil, exitcode.New(exitcode.Usage, err)
	}
	if gb.Available() {
		devs, err := gb.Resolve(os.Getenv("CUDA_VISIBLE_DEVICES"))
		if err != nil {
			gb.Close()
			return nil, nil, nil, exitcode.Usagef("CUDA_VISIBLE_DEVICES=%q: %v", os.Getenv("CUDA_VISIBLE_DEVICES"), err)
		}
		pool, uuids = devicePool(devs)
		return gb, pool, uuids, nil
	}
	pool = visiblePool()
	return gb, pool, pool, nil
}

// devicePool is NVML's GPUs as a pool: their indices (for CUDA_VISIBLE_DEVICES) and
// UUIDs (for the per-GPU locks).
func devicePool(devs []gpu.Device) (pool, uuids []string) {
	for _, d := range devs {
		pool = append(pool, strconv.Itoa(d.Index))
		uuids = append(uuids, d.UUID)
	}
	return pool, uuids
}

// visiblePool is CUDA_VISIBLE_DEVICES' entries without NVML to resolve them; nil when unset.
func visiblePool() []string {
	if vis := os.Getenv("CUDA_VISIBLE_DEVICES"); vis != "" {
		return strings.Split(vis, ",")
	}
	return nil
}

// PlanMatrix is matrix plan's answer for a submitted job: every cell of the matrix that
// applies to this node with its action (the caller runs the ActRun ones). Usage errors
// (a bad matrix, --only) carry exit code 2.
func PlanMatrix(o MatrixOptions, log *zap.Logger) ([]*matrix.Item, error) {
	s, err := setupMatrix(o, log)
	if err != nil {
		return nil, err
	}
	s.gb.Close()
	return s.items, nil
}

// LoadMatrix loads a matrix file with the tables (a daemon finds a queued cell by id in it
// again after a restart).
func LoadMatrix(o MatrixOptions) (*matrix.Matrix, error) {
	_, mx, err := loadMatrix(o)
	return mx, err
}

// CellBuilder is matrix run's per-cell config: launch-and-bench's settings with the
// matrix's values for the per-cell ones, extra server flags after the cell's own.
func CellBuilder(o CellOptions, gb gpu.Backend, log *zap.Logger, extra []string) func(*matrix.Cell) (*cell.Config, error) {
	return func(c *matrix.Cell) (*cell.Config, error) { return matrixCellConfig(o, gb, log, c, extra) }
}

// OneCell is a cell named the way launch-and-bench names it (its flags), for moecapd
// submit without a matrix.
type OneCell struct {
	Backend    string `json:"backend"`
	Config     string `json:"config"` // absolute path of the bench file
	BatchSize  int    `json:"batch_size"`
	TP         int    `json:"tp,omitempty"`
	NumSamples int    `json:"num_samples,omitempty"`
	Hardware   string `json:"hardware,omitempty"` // label, e.g. 1xH100; sim default: <tp>xH100
	// Repeats is launch-and-bench's --repeats (the matrix file's repeats:).
	Repeats int `json:"repeats,omitempty"`
	// Load is launch-and-bench's --request-rate, --burstiness, --max-concurrency, --rates,
	// --slo, --find-max-rate and --max-rate-steps (the matrix file's keys of the same
	// names), fields of this object: "request_rate", "rates", …
	cell.Load
}

// OneCellMatrix is the matrix of that one cell (YAML), so a daemon runs it through the
// matrix path like any other: the bench file's model and task, the given hardware.
func OneCellMatrix(o MatrixOptions, c OneCell) ([]byte, error) {
	if c.Backend == "" || c.Config == "" || c.BatchSize < 1 {
		return nil, exitcode.Usagef("one cell needs --backend, --config and --batch-size (or give --matrix)")
	}
	if c.Backend != launcher.BackendSim && c.Hardware == "" {
		return nil, exitcode.Usagef("--hardware: name the cell's hardware label (e.g. 8xH100) for a %s cell", c.Backend)
	}
	// The load is checked here, its errors naming the job's fields; the matrix written
	// below checks it again under its own keys.
	keys := cell.LoadKeys{Source: "job", Style: cell.JSONKeys}
	if err := c.Load.Check(keys); err != nil {
		return nil, err
	}
	if err := checkCellLoad(o.Cell, c.Backend, c.Repeats, c.Load, keys); err != nil {
		return nil, err
	}
	tables, err := loadTables(o.ConfigsDir, "")
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	b, err := config.LoadBench(c.Config)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	m, err := tables.Describe(b.ModelID)
	if err != nil {
		return nil, exitcode.Usagef("%s: %v", c.Config, err)
	}
	tp := max(c.TP, 1)
	hw := c.Hardware
	if hw == "" {
		hw = fmt.Sprintf("%dxH100", tp)
	}
	var sb strings.Builder
	q := func(s string) string { return strconv.Quote(s) }
	fmt.Fprintf(&sb, "version: 1\ntasks:\n  %s: {config: %s}\ngroups:\n  submitted:\n    models: [%s]\n    hardware: [%s]\n    tasks: {%s: [%d]}\n    backends: [%s]\n    tp: %d\n",
		q(b.Task()), q(c.Config), q(m.Key), q(hw), q(b.Task()), c.BatchSize, q(c.Backend), tp)
	if c.NumSamples > 0 {
		fmt.Fprintf(&sb, "    num_samples: %d\n", c.NumSamples)
	}
	if c.Repeats > 1 {
		fmt.Fprintf(&sb, "    repeats: %d\n", c.Repeats)
	}
	writeLoadYAML(&sb, "    ", c.Load)
	return []byte(sb.String()), nil
}

// writeLoadYAML writes a load as a matrix group's keys (none for the closed loop).
func writeLoadYAML(sb *strings.Builder, indent string, l cell.Load) {
	num := func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
	if l.RequestRate > 0 {
		fmt.Fprintf(sb, "%srequest_rate: %s\n", indent, num(l.RequestRate))
	}
	if l.Burstiness > 0 {
		fmt.Fprintf(sb, "%sburstiness: %s\n", indent, num(l.Burstiness))
	}
	if l.MaxConcurrency > 0 {
		fmt.Fprintf(sb, "%smax_concurrency: %d\n", indent, l.MaxConcurrency)
	}
	if len(l.Rates) > 0 {
		rs := make([]string, len(l.Rates))
		for i, r := range l.Rates {
			rs[i] = num(r)
		}
		fmt.Fprintf(sb, "%srates: [%s]\n", indent, strings.Join(rs, ", "))
	}
	if l.SLO != "" {
		fmt.Fprintf(sb, "%sslo: %s\n", indent, strconv.Quote(l.SLO))
	}
	if l.FindMaxRate {
		fmt.Fprintf(sb, "%sfind_max_rate: true\n", indent)
	}
	if l.MaxRateSteps > 0 {
		fmt.Fprintf(sb, "%smax_rate_steps: %d\n", indent, l.MaxRateSteps)
	}
}
