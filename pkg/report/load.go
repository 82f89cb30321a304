// Package report turns a results directory of cells into a static HTML page, a markdown
// summary and a CSV, and derives each cell's CAP numbers (S-MBU, S-MFU, floors) for the
// manifest.
//
// The report reads manifest.json as pkg/cell writes it; JSON decoding ignores fields it
// does not know, so a manifest of a newer moecapd does not stop a night's report.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
)

// Row is one cell as the report shows it.
type Row struct {
	ID        string
	Model     string
	ModelName string // display name ("Qwen1.5-MoE"); the key when none is known
	ModelID   string
	Hardware  string // label, e.g. 8xH100
	Family    string // H100, H200, A100…
	GPUName   string
	GPUs      int
	Task      string
	In, Out   int
	BatchSize int
	Backend   string
	// Load is the open loop's cell-id part (cell.Identity.Load); "" for the closed loop.
	Load   string
	Status string
	// Reason is why a cell that is not ok is not ok: failure kind, phase and message.
	Reason         string
	BackendVersion string
	Driver         string
	Moecapd        string

	Metrics   *profile.Metrics
	Telemetry *gpu.Summary
	// Cap is the derived CAP numbers (from manifest extra "cap", else computed here); nil
	// when the model or hardware is not in the tables.
	Cap *capmath.Derived
	// CapNote says why Cap is nil or where it came from.
	CapNote string
	// Flags mark values of this cell that are not results (see Flag).
	Flags []Flag
	// Data is what the cell's side files say (per-request latencies, timelines); nil when
	// it has none.
	Data *CellData
	// Manifest is the cell's manifest as read, for its page.
	Manifest *cell.Manifest
	// Dir is the cell directory.
	Dir string
}

// Problem is a cell directory that could not be read as a cell.
type Problem struct {
	Dir string
	Err string
}

// Load reads every <resultsDir>/<cell-id>/manifest.json. Directories without a manifest are
// skipped (they are not cells); unreadable manifests come back as Problems, not errors, so
// one torn file does not hide a night's results. Rows are sorted by model, task, hardware,
// backend and batch size.
func Load(resultsDir string, tables *config.Tables) ([]Row, []Problem, error) {
	return load(resultsDir, tables, nil)
}

// load is Load of the cells whose ids only names (every cell when only is nil).
func load(resultsDir string, tables *config.Tables, only map[string]bool) ([]Row, []Problem, error) {
	// The results root's layout (which directories are cells, and that each manifest names
	// its own directory) is cell.Layout's; a copied directory comes back as a Problem.
	lay, err := cell.OpenLayout(resultsDir)
	if err != nil {
		return nil, nil, fmt.Errorf("results directory: %w", err)
	}
	if _, err := os.Stat(lay.Root); err != nil {
		return nil, nil, fmt.Errorf("results directory: %w", err)
	}
	ents, cprobs, err := lay.Cells()
	if err != nil {
		return nil, nil, fmt.Errorf("results directory: %w", err)
	}
	if only != nil {
		ents = slices.DeleteFunc(ents, func(e cell.Entry) bool { return !only[e.Dir.ID] })
		cprobs = slices.DeleteFunc(cprobs, func(p cell.Problem) bool { return !only[p.Name] })
	}
	rows := make([]*Row, len(ents))
	// Reading records and deriving is per cell and independent: spread it over the cores.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, e := range ents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := rowFromManifest(e.Manifest)
			r.Cap, r.CapNote = capFor(e.Manifest, e.Dir.Path, tables)
			if r.Cap != nil && r.Cap.Absent != "" {
				// No CAP numbers at all (the model cannot be described): no row shows a 0
				// or a memory verdict for it.
				r.Cap, r.CapNote = nil, "absent: "+r.Cap.Absent
			}
			var capJSON json.RawMessage
			if r.Cap != nil {
				capJSON, _ = json.Marshal(r.Cap)
			}
			r.Flags = flagsOf(e.Manifest, capJSON)
			r.Manifest, r.Dir = e.Manifest, e.Dir.Path
			if r.Dir != "" {
				r.Data = readCellData(r.Dir)
				if sc := r.timeScale(); sc != 0 && r.Data != nil {
					r.Data.unscale(sc) // per-request rows in the units of the tables
				}
			}
			rows[i] = r
		}()
	}
	wg.Wait()
	var out []Row
	for _, r := range rows {
		out = append(out, *r)
	}
	var ps []Problem
	for _, p := range cprobs {
		ps = append(ps, Problem{Dir: p.Name, Err: p.Err})
	}
	SortRows(out)
	return out, ps, nil
}

// SortRows orders rows by model, task, hardware, backend, batch size, id.
func SortRows(rows []Row) {
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		if a.Task != b.Task {
			return a.Task < b.Task
		}
		if a.Hardware != b.Hardware {
			return hwLess(a.Hardware, b.Hardware)
		}
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		if a.BatchSize != b.BatchSize {
			return a.BatchSize < b.BatchSize
		}
		return a.ID < b.ID
	})
}

// hwLess puts 1xH100 before 8xH100 (numeric count, then family).
func hwLess(a, b string) bool {
	na, fa := cell.ParseHardware(a)
	nb, fb := cell.ParseHardware(b)
	if fa != fb {
		return fa < fb
	}
	if na != nb {
		return na < nb
	}
	return a < b
}

func rowFromManifest(m *cell.Manifest) *Row {
	n, fam := cell.ParseHardware(m.Cell.Hardware)
	if m.Cell.GPUCount > 0 {
		n = m.Cell.GPUCount
	}
	r := &Row{
		ID: m.Cell.ID, Model: m.Cell.Model, ModelName: m.Cell.Model, ModelID: m.Cell.ModelID, Hardware: m.Cell.Hardware,
		Family: fam, GPUName: m.Cell.GPUName, GPUs: n, Task: m.Cell.Task,
		In: m.Cell.InputTokens, Out: m.Cell.OutputTokens, BatchSize: m.Cell.BatchSize,
		Backend: m.Cell.Backend, Load: m.Cell.Load, Status: string(m.Status), BackendVersion: m.Versions.Backend,
		Driver: m.Versions.Driver, Moecapd: m.Versions.Moecapd,
		Metrics: m.PhysicalMetrics(), Telemetry: m.Telemetry,
	}
	if r.Status == "" {
		r.Status = "unknown"
	}
	if f := m.Failure; f != nil {
		r.Reason = strings.TrimSpace(fmt.Sprintf("%s in %s: %s", f.Kind, f.Phase, f.Message))
	} else if r.Status != "ok" {
		r.Reason = "no failure recorded (status " + r.Status + ")"
	}
	return r
}

// capFor takes the CAP numbers the pipeline stored, or derives them now (older manifests,
// failed cells: the floor and the memory verdict still say something about those).
func capFor(m *cell.Manifest, dir string, tables *config.Tables) (*capmath.Derived, string) {
	if d, ok := m.CAP(); ok && d.Version == capmath.DerivedVersion {
		return &d, "from manifest"
	}
	if tables == nil {
		return nil, "no model/hardware tables"
	}
	// Records are read for ok cells only: a failed cell's floor and memory verdict still say
	// something, its partial records do not.
	recordsDir := ""
	if m.Status == cell.StatusOK && dir != "" {
		recordsDir = cell.DirOf(dir).Records()
	}
	d, err := cell.DeriveCAP(m, tables, recordsDir, nil)
	if err != nil {
		return nil, err.Error()
	}
	return &d, "derived by report"
}
