// Package cell runs one matrix cell end to end (preflight → launch → ready → bench →
// teardown → record) and owns manifest.json, the self-describing record of a cell.
package cell

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/fsx"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// SchemaVersion of manifest.json.
const SchemaVersion = 1

// Status of a cell.
type Status string

// Statuses of DESIGN.md.
const (
	StatusRunning     Status = "running"
	StatusOK          Status = "ok"
	StatusFailed      Status = "failed"
	StatusInfeasible  Status = "infeasible"
	StatusInterrupted Status = "interrupted"
)

// Phase names where a failure happened.
type Phase string

// Phases of the pipeline.
const (
	PhasePreflight Phase = "preflight"
	PhaseLaunch    Phase = "launch"
	PhaseReady     Phase = "ready"
	PhaseBench     Phase = "bench"
	PhaseTeardown  Phase = "teardown"
	// PhaseRecord is the last step: the cell's files are checked and its final manifest
	// written. A failure there is a missing file or a manifest that could not be written.
	PhaseRecord Phase = "record"
)

// Kind classifies a failure: one of pkg/exitcode's failure kinds (exitcode.Fail*).
type Kind = exitcode.Failure

// Identity says which cell this is.
type Identity struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	ModelID      string `json:"model_id"`
	Hardware     string `json:"hardware"`
	GPUName      string `json:"gpu_name,omitempty"`
	GPUCount     int    `json:"gpu_count"`
	GPUIndices   []int  `json:"gpu_indices"`
	Task         string `json:"task"`
	Dataset      string `json:"dataset,omitempty"`
	InputTokens  int    `json:"input_tokens"`
	OutputTokens int    `json:"output_tokens"`
	NumSamples   int    `json:"num_samples"`
	BatchSize    int    `json:"batch_size"`
	Backend      string `json:"backend"`
	TP           int    `json:"tp"`
	ConfigFile   string `json:"config_file,omitempty"`
	// AllowUnknownModel records --allow-unknown-model on a model moecapd could not describe;
	// ModelUndescribed says why it could not. Such a cell has no CAP numbers.
	AllowUnknownModel bool   `json:"allow_unknown_model,omitempty"`
	ModelUndescribed  string `json:"model_undescribed,omitempty"`
	// Load is the open loop's cell-id part (Load.IDPart: "rates1-2-4", "rate10-b0_5"…);
	// absent for the guide's closed loop.
	Load string `json:"load,omitempty"`
}

// Failure says what went wrong, where, and what the server said last.
type Failure struct {
	Phase   Phase  `json:"phase"`
	Kind    Kind   `json:"kind"`
	Message string `json:"message"`
	LogTail string `json:"log_tail,omitempty"`
	// Teardown lists every problem the teardown found (a process that survived SIGKILL, a
	// port still answering, GPU memory not back), also when an earlier phase failed first.
	Teardown []string `json:"teardown_problems,omitempty"`
}

// Err is the failure as one error: the first failure joined with every teardown problem
// that does not repeat it.
func (f *Failure) Err() error {
	if f == nil {
		return nil
	}
	errs := []error{fmt.Errorf("%s/%s: %s", f.Phase, f.Kind, f.Message)}
	if f.Phase != PhaseTeardown {
		for _, p := range f.Teardown {
			errs = append(errs, fmt.Errorf("teardown: %s", p))
		}
	}
	return errors.Join(errs...)
}

// Timings in seconds.
type Timings struct {
	Preflight     float64 `json:"preflight"`
	LaunchToReady float64 `json:"launch_to_ready"`
	Bench         float64 `json:"bench"`
	Teardown      float64 `json:"teardown"`
	Total         float64 `json:"total"`
}

// Server describes the launched inference server.
type Server struct {
	Argv     []string          `json:"argv"`
	EnvAdded map[string]string `json:"env_added"`
	PID      int               `json:"pid,omitempty"`
	ExitCode *int              `json:"exit_code,omitempty"`
	Port     int               `json:"port"`
	Host     string            `json:"host"`
	CondaEnv string            `json:"conda_env,omitempty"`
	// Tracking is how the supervisor found the server's processes for teardown:
	// "subreaper+token" or "token" (see launcher.Tracking).
	Tracking string `json:"tracking,omitempty"`
}

// Client describes the profiling client.
type Client struct {
	Kind     string            `json:"kind"`
	Argv     []string          `json:"argv,omitempty"`
	EnvAdded map[string]string `json:"env_added,omitempty"`
	ExitCode *int              `json:"exit_code,omitempty"`
}

// Versions of the software involved.
type Versions struct {
	Moecapd string `json:"moecapd"`
	Backend string `json:"backend,omitempty"`
	// MoECAP is the moe_cap package's version in the runner's conda env (MoE-CAP runner
	// cells; absent when it cannot be told).
	MoECAP string `json:"moecap,omitempty"`
	Driver string `json:"driver,omitempty"`
}

// Manifest is manifest.json.
type Manifest struct {
	SchemaVersion int      `json:"schema_version"`
	Cell          Identity `json:"cell"`
	Status        Status   `json:"status"`
	// Phase is the phase a running cell is in, kept current while it runs (absent once it
	// finished), so a later run that finds its supervisor dead records where it stopped.
	Phase Phase `json:"phase,omitempty"`
	// Supervisor is the moecapd process that runs the cell; a running cell whose supervisor
	// is gone was interrupted.
	Supervisor *launcher.ProcessID `json:"supervisor,omitempty"`
	Failure    *Failure            `json:"failure,omitempty"`
	StartedAt  time.Time           `json:"started_at"`
	FinishedAt *time.Time          `json:"finished_at,omitempty"`
	Timings    Timings             `json:"timings_s"`
	Server     Server              `json:"server"`
	Client     Client              `json:"client"`
	Metrics    *profile.Metrics    `json:"metrics,omitempty"`
	Telemetry  *gpu.Summary        `json:"telemetry,omitempty"`
	// ServerMetrics summarises the server's Prometheus metrics over the measured window
	// (repeat 1's when repeated); absent when the server exposes none.
	ServerMetrics *servermetrics.Summary `json:"server_metrics,omitempty"`
	Versions      Versions               `json:"versions"`
	// Files are the files the cell wrote that its record relies on (the benchmark copy, the
	// logs, the client's result files, telemetry and server metrics where written), relative
	// to the cell directory and in the order written. A cell is ok only if every one exists
	// at the end (MissingFiles); a file compressed at rest (NAME.zst) counts as NAME.
	Files []string `json:"files,omitempty"`
	// Repeats holds every measured bench of a cell run with --repeats N > 1, in order
	// (index 1 to N); Metrics and Telemetry above are then the first repeat's (the
	// telemetry window is the first repeat's measured bench). Absent for one run.
	Repeats []Repeat `json:"repeats,omitempty"`
	// RepeatStats is the repeats' mean, interval and CV per metric; absent for one run.
	RepeatStats *RepeatStats `json:"repeat_stats,omitempty"`
	// Rates holds every bench of a rate sweep (--rates, --find-max-rate) in order; Metrics
	// above is then the first rate's. MaxRate is what --find-max-rate found. Both absent
	// without a sweep.
	Rates   []RatePoint `json:"rates,omitempty"`
	MaxRate *MaxRate    `json:"max_rate,omitempty"`
	// Extra holds derived numbers added by later stages (S-MBU, floors) keyed by name.
	Extra map[string]json.RawMessage `json:"extra,omitempty"`
}

// TimeScale is the --sim-time-scale a simulated cell's server ran with when it is not real
// time (≠ 0, 1), else 0. The cell's metrics are recorded un-scaled (profile.Metrics.Unscaled).
func (m *Manifest) TimeScale() float64 {
	if m == nil || m.Cell.Backend != launcher.BackendSim {
		return 0
	}
	a := m.Server.Argv
	for i, s := range a {
		name, val, has := strings.Cut(s, "=")
		if name != "--sim-time-scale" {
			continue
		}
		if !has && i+1 < len(a) {
			val = a[i+1]
		}
		// ParseFloat reads "Inf" too: a hand-edited argv must not scale latencies to 0.
		if f, err := strconv.ParseFloat(val, 64); err == nil && f > 0 && f != 1 && !math.IsInf(f, 1) {
			return f
		}
	}
	return 0
}

// PhysicalMetrics is the cell's metrics in physical units: as recorded, or un-scaled when an
// older manifest recorded a time-scaled sim's wall numbers.
func (m *Manifest) PhysicalMetrics() *profile.Metrics {
	if m == nil {
		return nil
	}
	return m.Metrics.Unscaled(m.TimeScale())
}

// Repeat is one measured bench of a cell run with --repeats: its metrics and the energy per
// output token over its own window (absent without telemetry, and for every repeat but the
// first: the telemetry window is the first repeat's).
type Repeat struct {
	Index           int              `json:"index"`
	StartedAt       time.Time        `json:"started_at"`
	Metrics         *profile.Metrics `json:"metrics,omitempty"`
	JPerOutputToken *float64         `json:"j_per_output_token,omitempty"`
}

// ManifestFile is the manifest's name inside a cell directory.
const ManifestFile = "manifest.json"

// WriteManifest writes m to dir/manifest.json atomically: a crash leaves the old file or the
// new one, never half of either.
func WriteManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		// A NaN or Inf that a reader let through: name the file it did not reach.
		return fmt.Errorf("write %s: encode the manifest: %w", DirOf(dir).Manifest(), err)
	}
	return WriteFileAtomic(DirOf(dir).Manifest(), append(b, '\n'))
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(DirOf(dir).Manifest())
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", DirOf(dir).Manifest(), err)
	}
	return &m, nil
}

// WriteFileAtomic writes data to a synced temp file renamed over path, then syncs the
// directory so the rename itself survives a power cut: a crash leaves the old file or the
// new one, never half of either.
func WriteFileAtomic(path string, data []byte) error {
	if err := renameio.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// MissingFiles lists the files the manifest names (Files) that dir does not hold, in
// either form (NAME or NAME.zst); empty when all are there.
func (m *Manifest) MissingFiles(dir string) []string {
	var out []string
	for _, f := range m.Files {
		if !fsx.Exists(filepath.Join(dir, f)) {
			out = append(out, f)
		}
	}
	return out
}

// InterruptedWhy says why the cell's run ended without a result when its manifest records
// it interrupted, or still says running while its recorded supervisor is gone
// (SupervisorGone: a killed moecapd or daemon, a lost machine); "" otherwise. matrix status,
// matrix plan and the daemon all show such a cell as interrupted at once, through this one
// check, before any sweep rewrites its manifest.
func (m *Manifest) InterruptedWhy() string {
	switch {
	case m == nil:
		return ""
	case m.SupervisorGone():
		ph := m.Phase
		if ph == "" {
			ph = PhaseBench
		}
		return fmt.Sprintf("interrupted during %s: its supervisor (PID %d) is gone (killed or machine lost) while the manifest still says running", ph, m.Supervisor.PID)
	case m.Status == StatusInterrupted && m.Failure != nil:
		msg, _, _ := strings.Cut(m.Failure.Message, "\n") // "interrupted during PHASE …"
		return msg
	case m.Status == StatusInterrupted:
		return "interrupted"
	}
	return ""
}

// SupervisorGone reports whether a running cell's recorded supervisor no longer runs: no
// live process has its PID and start time in this boot (a killed moecapd, a lost machine).
// False for a cell that is not running or whose manifest records no supervisor.
func (m *Manifest) SupervisorGone() bool {
	return m != nil && m.Status == StatusRunning && m.Supervisor != nil && !launcher.Alive(*m.Supervisor)
}
