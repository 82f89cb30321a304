// Package matrix plans, runs and reports many cells of the experiment matrix: the matrix
// file (configs/matrix.yaml), which cells apply to a node and in what order, what the
// results root already holds, scheduling (one at a time or packed on disjoint GPUs),
// retries, skipping larger batches after an out-of-memory, and the status tables.
package matrix

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/sim"
)

// File is a matrix file as written. Groups is a mapping (not a list) so every group has a
// name that errors and tables can point at, and so strict decoding covers every key.
type File struct {
	Version int `yaml:"version"`
	// ModelNames are the display names of the status tables ("Qwen1.5-MoE").
	ModelNames map[string]string `yaml:"model_names"`
	Tasks      map[string]Task   `yaml:"tasks"`
	Defaults   Group             `yaml:"defaults"`
	Groups     map[string]Group  `yaml:"groups"`
}

// Task names a benchmark file; {model} in Config is replaced by the model key.
type Task struct {
	Config string `yaml:"config"`
}

// Group is a block of the matrix: models × hardware × (task → batch sizes) × backends, with
// settings for every cell it yields. In defaults only the settings are allowed.
type Group struct {
	Models   []string         `yaml:"models"`
	Hardware []string         `yaml:"hardware"`
	Tasks    map[string][]int `yaml:"tasks"`
	// Done marks cells the guide lists as completed elsewhere: shown as done, not run
	// (unless --include-done).
	Done     *bool    `yaml:"done"`
	Backends []string `yaml:"backends"`
	// NumSamples pins num_samples; unset, it is the bench file's raised to 2×batch.
	NumSamples int      `yaml:"num_samples"`
	TP         int      `yaml:"tp"`
	ServerArgs []string `yaml:"server_args"`
	Timeout    string   `yaml:"timeout"`
	Sim        *Sim     `yaml:"sim"`
	// Repeats runs each cell's measured bench this many times (native client; --repeats).
	Repeats int `yaml:"repeats"`
	// The native client's load (launch-and-bench's --request-rate, --burstiness,
	// --max-concurrency, --rates, --slo, --find-max-rate, --max-rate-steps; cell.Load): a
	// group only, since an open loop names its cells (cell.Load.IDPart).
	RequestRate    float64   `yaml:"request_rate"`
	Burstiness     float64   `yaml:"burstiness"`
	MaxConcurrency int       `yaml:"max_concurrency"`
	Rates          []float64 `yaml:"rates"`
	SLO            string    `yaml:"slo"`
	FindMaxRate    bool      `yaml:"find_max_rate"`
	MaxRateSteps   int       `yaml:"max_rate_steps"`
}

// Load is the group's load settings.
func (g Group) Load() cell.Load {
	return cell.Load{RequestRate: g.RequestRate, Burstiness: g.Burstiness, MaxConcurrency: g.MaxConcurrency,
		Rates: slices.Clone(g.Rates), SLO: g.SLO, FindMaxRate: g.FindMaxRate, MaxRateSteps: g.MaxRateSteps}
}

// loadKeys names a group's load keys in errors.
func (mx *Matrix) loadKeys(key string) cell.LoadKeys {
	return cell.LoadKeys{Source: mx.Path, Prefix: key + ".", Style: cell.YAMLKeys}
}

// Sim holds the simulated server's knobs (tests, demos): they become --sim-* server flags.
type Sim struct {
	Fault     string  `yaml:"fault"`
	TPOT      string  `yaml:"tpot"`
	TTFT      string  `yaml:"ttft"`
	Startup   string  `yaml:"startup"`
	Workers   int     `yaml:"workers"`
	TimeScale float64 `yaml:"time_scale"`
}

// Cell is one expanded, validated cell of the matrix.
type Cell struct {
	ID       string
	Group    string
	Model    string // model table key
	Hardware string // label, e.g. 1xH100
	Family   string // H100
	GPUs     int    // GPUs the label names
	Task     string // e.g. 4k-1k
	Backend  string
	Batch    int
	TP       int
	Bench    *config.Bench
	// BenchFile is the path the bench was loaded from (Bench.Path is for display and may
	// name a built-in copy).
	BenchFile string
	// NumSamples is what the client sends; Pinned says the matrix fixed it.
	NumSamples int
	Pinned     bool
	ServerArgs []string
	Timeout    time.Duration
	Done       bool
	// SimTPOT and friends feed the duration estimate of sim cells.
	SimTPOT, SimTTFT, SimStartup time.Duration
	SimTimeScale                 float64
	// Repeats is the group's repeats: (0: once).
	Repeats int
	// Load is the group's load (the zero value: the guide's closed loop); LoadKeys names
	// its keys for the errors of checks that need the run's settings (the client).
	Load     cell.Load
	LoadKeys cell.LoadKeys
}

// Chain is the (model, hardware, task, backend) a cell belongs to: the cells whose larger
// batch sizes are skipped once a smaller one runs out of memory.
func (c *Cell) Chain() string {
	return c.Model + "." + c.Hardware + "." + c.Task + "." + c.Backend
}

// Matrix is a loaded matrix file and its cells in run order.
type Matrix struct {
	Path  string
	File  File
	Cells []*Cell
}

// Cell finds a cell by id.
func (m *Matrix) Cell(id string) *Cell {
	for _, c := range m.Cells {
		if c.ID == id {
			return c
		}
	}
	return nil
}

// ModelName is the display name of a model key.
func (m *Matrix) ModelName(key string) string {
	if n := m.File.ModelNames[key]; n != "" {
		return n
	}
	return key
}

var hwLabel = regexp.MustCompile(`^([1-9][0-9]*)x([A-Za-z0-9_-]+)$`)

// ParseHardware splits a label such as 8xH200 into 8 and H200.
func ParseHardware(label string) (int, string, error) {
	m := hwLabel.FindStringSubmatch(label)
	if m == nil {
		return 0, "", fmt.Errorf("hardware %q: expected <gpu count>x<family> such as 1xH100 or 8xH200", label)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n > config.MaxTP {
		return 0, "", fmt.Errorf("hardware %q: expected 1 to %d GPUs", label, config.MaxTP)
	}
	return n, m[2], nil
}

// Load reads and validates a matrix file. A path that does not exist but names a built-in
// file (configs/matrix.yaml) is read from the binary. Bench files named by tasks are
// resolved relative to the matrix file, falling back to the built-in configs.
func Load(path string, tables *config.Tables) (*Matrix, error) {
	data, shown, err := config.ReadFile(filepath.Dir(path), filepath.Base(path))
	if err != nil {
		return nil, &config.Error{File: path, Msg: "no such file; pass --matrix with a matrix file such as configs/matrix.yaml"}
	}
	mx := &Matrix{Path: shown}
	if err := config.DecodeStrict(shown, data, &mx.File); err != nil {
		return nil, err
	}
	base := filepath.Dir(path)
	if _, err := os.Stat(path); err != nil {
		base = "configs" // built-in copy: its bench files are built in too
	}
	if err := mx.expand(base, tables); err != nil {
		return nil, err
	}
	return mx, nil
}

func (mx *Matrix) errf(key, format string, a ...any) error {
	return &config.Error{File: mx.Path, Key: key, Msg: fmt.Sprintf(format, a...)}
}

func (mx *Matrix) expand(base string, tables *config.Tables) error {
	f := &mx.File
	if f.Version != 1 {
		return mx.errf("version", "got %d, expected 1 (the only format this moecapd reads)", f.Version)
	}
	if len(f.Tasks) == 0 {
		return mx.errf("tasks", "missing; expected e.g. tasks: {4k-1k: {config: fixed_4k_1k_{model}.yaml}}")
	}
	if len(f.Groups) == 0 {
		return mx.errf("groups", "missing; expected at least one group of models × hardware × tasks")
	}
	d := f.Defaults
	if len(d.Models)+len(d.Hardware)+len(d.Tasks) > 0 || d.Done != nil {
		return mx.errf("defaults", "may only hold settings (backends, num_samples, tp, server_args, timeout, sim, repeats); models, hardware, tasks and done belong in a group")
	}
	if l := d.Load(); l.OpenLoop() || l.SLO != "" || l.Burstiness != 0 || l.MaxConcurrency != 0 || l.MaxRateSteps != 0 {
		return mx.errf("defaults", "may not hold request_rate, burstiness, max_concurrency, rates, slo, find_max_rate or max_rate_steps: a load names its cells (a closed-loop group could not undo it); set them in each group that sends that load")
	}
	if err := mx.checkSettings("defaults", d); err != nil {
		return err
	}
	benches := map[string]*config.Bench{} // task.model → bench
	seen := map[string]string{}           // cell id → group
	names := make([]string, 0, len(f.Groups))
	for n := range f.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, gname := range names {
		g := f.Groups[gname]
		key := "groups." + gname
		if err := mx.checkSettings(key, g); err != nil {
			return err
		}
		s := merge(d, g)
		load := g.Load()
		if err := load.Check(mx.loadKeys(key)); err != nil {
			return err
		}
		if err := load.CheckRepeats(s.Repeats, mx.loadKeys(key)); err != nil {
			return err
		}
		if len(g.Models) == 0 || len(g.Hardware) == 0 || len(g.Tasks) == 0 {
			return mx.errf(key, "needs models, hardware and tasks (each non-empty)")
		}
		if len(s.Backends) == 0 {
			return mx.errf(key+".backends", "no backends here nor in defaults; expected a list of sglang, vllm, sim")
		}
		for _, hw := range g.Hardware {
			if _, fam, err := ParseHardware(hw); err != nil {
				return mx.errf(key+".hardware", "%v", err)
			} else if _, ok := tables.HardwareFamily(fam); !ok {
				return mx.errf(key+".hardware", "unknown GPU family %q in %q; known: %s (configs/hardware.yaml)", fam, hw, strings.Join(hwFamilies(tables), ", "))
			}
		}
		for _, mk := range g.Models {
			if _, ok := tables.Models[mk]; !ok {
				return mx.errf(key+".models", "unknown model %q;%s known: %s (keys of configs/models.yaml)", mk, tables.DidYouMean(mk), strings.Join(tables.ModelKeys(), ", "))
			}
		}
		for task, sizes := range g.Tasks {
			t, ok := f.Tasks[task]
			if !ok {
				return mx.errf(key+".tasks."+task, "unknown task; defined tasks: %s", strings.Join(sortedKeys(f.Tasks), ", "))
			}
			if len(sizes) == 0 {
				return mx.errf(key+".tasks."+task, "no batch sizes; expected a list such as [1, 32, 64, 128]")
			}
			for _, bs := range sizes {
				if bs <= 0 || bs > config.MaxBatchSize {
					return mx.errf(key+".tasks."+task, "batch size %d; expected 1 to %d", bs, config.MaxBatchSize)
				}
			}
			for _, mk := range g.Models {
				bkey := task + "." + mk
				b := benches[bkey]
				bfile := benchPath(base, t, mk)
				if b == nil {
					var err error
					if b, err = mx.loadBench(bfile, task, t, mk, tables); err != nil {
						return err
					}
					benches[bkey] = b
				}
				for _, hw := range g.Hardware {
					n, fam, _ := ParseHardware(hw)
					for _, be := range s.Backends {
						for _, bs := range sizes {
							c := &Cell{Group: gname, Model: mk, Hardware: hw, Family: fam, GPUs: n, Task: task,
								Backend: be, Batch: bs, TP: n, Bench: b, BenchFile: bfile, ServerArgs: slices.Clone(s.ServerArgs),
								Done: s.Done != nil && *s.Done}
							if s.TP > 0 {
								c.TP = s.TP
							}
							if c.TP > n {
								return mx.errf(key+".tp", "tp %d is more than the %d GPUs of %s", c.TP, n, hw)
							}
							if m := tables.Models[mk]; m.Heads%c.TP != 0 {
								return mx.errf(key+".tp", "tp %d does not divide the %d attention heads of %s", c.TP, m.Heads, mk)
							}
							c.NumSamples, c.Pinned = max(b.NumSamples, 2*bs), false
							if s.NumSamples > 0 {
								c.NumSamples, c.Pinned = s.NumSamples, true
							}
							if s.Timeout != "" {
								c.Timeout, _ = time.ParseDuration(s.Timeout)
							}
							c.Repeats = s.Repeats
							c.Load, c.LoadKeys = load, mx.loadKeys(key)
							if s.Sim != nil {
								if be != launcher.BackendSim {
									return mx.errf(key+".sim", "sim settings apply to the sim backend only, and this group runs %s; move them to a group with backends: [sim]", be)
								}
								c.ServerArgs = append(c.ServerArgs, s.Sim.args()...)
								c.SimTPOT, _ = time.ParseDuration(orZero(s.Sim.TPOT))
								c.SimTTFT, _ = time.ParseDuration(orZero(s.Sim.TTFT))
								c.SimStartup, _ = time.ParseDuration(orZero(s.Sim.Startup))
								c.SimTimeScale = s.Sim.TimeScale
							}
							id, err := cell.MakeID(mk, hw, task, bs, be, load)
							if err != nil {
								return mx.errf(key, "%v", err)
							}
							c.ID = id
							if other, dup := seen[c.ID]; dup {
								return mx.errf(key, "cell %s is also in group %q; each cell may appear once", c.ID, other)
							}
							seen[c.ID] = gname
							mx.Cells = append(mx.Cells, c)
						}
					}
				}
			}
		}
	}
	sortCells(mx.Cells)
	return nil
}

func orZero(s string) string {
	if s == "" {
		return "0s"
	}
	return s
}

func (s *Sim) args() []string {
	var a []string
	add := func(k, v string) {
		if v != "" {
			a = append(a, "--sim-"+k, v)
		}
	}
	add("fault", s.Fault)
	add("tpot", s.TPOT)
	add("ttft", s.TTFT)
	add("startup", s.Startup)
	if s.Workers > 0 {
		add("workers", strconv.Itoa(s.Workers))
	}
	if s.TimeScale > 0 {
		add("time-scale", strconv.FormatFloat(s.TimeScale, 'g', -1, 64))
	}
	return a
}

// merge applies a group's settings over the defaults.
func merge(d, g Group) Group {
	s := d
	if len(g.Backends) > 0 {
		s.Backends = g.Backends
	}
	if g.NumSamples > 0 {
		s.NumSamples = g.NumSamples
	}
	if g.TP > 0 {
		s.TP = g.TP
	}
	if g.ServerArgs != nil {
		s.ServerArgs = g.ServerArgs
	}
	if g.Timeout != "" {
		s.Timeout = g.Timeout
	}
	if g.Sim != nil {
		s.Sim = g.Sim
	}
	if g.Repeats > 0 {
		s.Repeats = g.Repeats
	}
	s.Done = g.Done
	return s
}

func (mx *Matrix) checkSettings(key string, g Group) error {
	for _, b := range g.Backends {
		switch b {
		case launcher.BackendSGLang, launcher.BackendVLLM, launcher.BackendSim:
		default:
			return mx.errf(key+".backends", "unknown backend %q; expected sglang, vllm or sim", b)
		}
	}
	if g.NumSamples < 0 || g.NumSamples > config.MaxNumSamples {
		return mx.errf(key+".num_samples", "got %d, expected 1 to %d requests (leave it out to use the bench file's, raised to 2×batch)", g.NumSamples, config.MaxNumSamples)
	}
	if g.Repeats < 0 || g.Repeats > cell.MaxRepeats {
		return mx.errf(key+".repeats", "got %d, expected 1 to %d measured benches per cell (leave it out: once)", g.Repeats, cell.MaxRepeats)
	}
	if g.TP < 0 || g.TP > config.MaxTP {
		return mx.errf(key+".tp", "got %d, expected 1 to %d GPUs (leave it out: the hardware label's count)", g.TP, config.MaxTP)
	}
	if g.Timeout != "" {
		if d, err := time.ParseDuration(g.Timeout); err != nil || d <= 0 || d > 7*24*time.Hour {
			return mx.errf(key+".timeout", "got %q, expected a duration with a unit from 1s to 168h, such as 90m or 2h", g.Timeout)
		}
	}
	if s := g.Sim; s != nil {
		if s.Fault != "" && !slices.Contains(sim.Faults, s.Fault) {
			return mx.errf(key+".sim.fault", "got %q, expected one of %s", s.Fault, strings.Join(sim.Faults, ", "))
		}
		for k, v := range map[string]string{"tpot": s.TPOT, "ttft": s.TTFT, "startup": s.Startup} {
			if v == "" {
				continue
			}
			if d, err := time.ParseDuration(v); err != nil || d < 0 {
				return mx.errf(key+".sim."+k, "got %q, expected a duration such as 2ms", v)
			}
		}
		if s.Workers < 0 || s.Workers > 64 || !(s.TimeScale >= 0 && s.TimeScale <= 1000) {
			return mx.errf(key+".sim", "workers must be 0 to 64 and time_scale 0 to 1000")
		}
	}
	return nil
}

func benchPath(base string, t Task, model string) string {
	p := strings.ReplaceAll(t.Config, "{model}", model)
	if p != "" && !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	return p
}

func (mx *Matrix) loadBench(p, task string, t Task, model string, tables *config.Tables) (*config.Bench, error) {
	key := "tasks." + task + ".config"
	if t.Config == "" {
		return nil, mx.errf(key, "missing; expected a benchmark file such as fixed_4k_1k_{model}.yaml")
	}
	b, err := config.LoadBench(p)
	if err != nil {
		return nil, fmt.Errorf("%s: task %s for model %s: %w", mx.Path, task, model, err)
	}
	m, err := tables.Describe(b.ModelID)
	if err != nil {
		return nil, mx.errf(key, "%s: %v.%s Fix model_id there (a matrix runs described models only)", b.Path, err, tables.DidYouMean(b.ModelID))
	}
	if m.Key != model {
		return nil, mx.errf(key, "%s serves model_id %q, which is not model %s; point the task at that model's bench file", b.Path, b.ModelID, model)
	}
	if b.Task() != task {
		// Cell ids take the task from the bench file's token counts: a mismatch would put
		// results under a name the matrix does not know.
		return nil, mx.errf("tasks."+task, "%s has %d input and %d output tokens, which is task %q; rename the task to %q", b.Path, b.TargetInputTokens, b.TargetOutputTokens, b.Task(), b.Task())
	}
	return b, nil
}

func hwFamilies(t *config.Tables) []string {
	var out []string
	for k := range t.Hardware {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// sortCells puts cells in run order: fewer GPUs first (they can pack), then hardware,
// model, task (shorter prompts first), backend and batch size ascending, so a chain's small
// batches run before the large ones an out-of-memory would skip.
func sortCells(cs []*Cell) {
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		switch {
		case a.GPUs != b.GPUs:
			return a.GPUs < b.GPUs
		case a.Hardware != b.Hardware:
			return a.Hardware < b.Hardware
		case a.Model != b.Model:
			return a.Model < b.Model
		case a.Bench.TargetInputTokens != b.Bench.TargetInputTokens:
			return a.Bench.TargetInputTokens < b.Bench.TargetInputTokens
		case a.Task != b.Task:
			return a.Task < b.Task
		case a.Backend != b.Backend:
			return a.Backend < b.Backend
		}
		return a.Batch < b.Batch
	})
}
