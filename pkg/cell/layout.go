package cell

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// Names inside a results root and inside a cell directory. Layout and Dir are the only
// code that joins them into paths.
const (
	// AttemptsDir holds earlier attempts of cells, moved aside by a rerun.
	AttemptsDir = ".attempts"
	// LocksDir holds one lock file per cell (and its holder record). It lives beside the
	// cell directories, not in them, so archiving a directory never moves a lock.
	LocksDir = ".locks"

	ServerLogFile = "server.log"
	ClientLogFile = "client.log"
	ClientDir     = "client"
	RecordsDir    = "records"
	TelemetryFile = "telemetry.csv"
	// ServerMetricsFile holds the server's Prometheus metrics scraped during the bench.
	ServerMetricsFile = "server_metrics.csv"
)

// Layout is a results root: one directory per cell, named by its cell id. It owns every
// path under the root, the per-cell lock, moving earlier attempts aside, and reading all
// cells back. cell, matrix, report and the Slurm task runner go through it.
type Layout struct {
	// Root is absolute.
	Root string
}

// OpenLayout makes a Layout for a results root. The root need not exist yet (the first
// Lock creates it); a root that exists but is not a directory is a config error (exit 2).
func OpenLayout(root string) (*Layout, error) {
	if root == "" {
		return nil, &config.Error{File: "command line", Key: "--results", Msg: "empty; pass the results root, e.g. --results results"}
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("results root %s: %w", root, err)
	}
	st, err := os.Stat(abs)
	switch {
	case err == nil && !st.IsDir():
		return nil, &config.Error{File: abs, Key: "--results",
			Msg: "is a file, not a directory; point --results at a directory (it is created when missing)"}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, &config.Error{File: abs, Key: "--results", Msg: fmt.Sprintf("cannot be used as the results root: %v", err)}
	}
	return &Layout{Root: abs}, nil
}

// Dir is one cell's directory and the paths of what it holds.
type Dir struct {
	ID   string
	Path string
}

// Cell is the directory of cell id. The id must be ValidID: nothing it says can name a
// path outside the root.
func (l *Layout) Cell(id string) (Dir, error) {
	if !ValidID(id) {
		return Dir{}, &config.Error{File: l.Root, Key: "cell id",
			Msg: fmt.Sprintf("%q is not a valid cell id: dot-separated parts of %s", id, PartCharset)}
	}
	return Dir{ID: id, Path: filepath.Join(l.Root, id)}, nil
}

// DirOf is the cell directory at path (its base name is the cell id), for code that was
// handed a directory rather than a root and an id.
func DirOf(path string) Dir { return Dir{ID: filepath.Base(path), Path: path} }

// ReadManifest reads cell id's manifest.
func (l *Layout) ReadManifest(id string) (*Manifest, error) {
	d, err := l.Cell(id)
	if err != nil {
		return nil, err
	}
	return ReadManifest(d.Path)
}

// Manifest is manifest.json.
func (d Dir) Manifest() string { return filepath.Join(d.Path, ManifestFile) }

// ServerLog is the server's stdout and stderr.
func (d Dir) ServerLog() string { return filepath.Join(d.Path, ServerLogFile) }

// ClientLog is the client's log.
func (d Dir) ClientLog() string { return filepath.Join(d.Path, ClientLogFile) }

// Client is the MoE-CAP runner's --output_dir (and the native client's files).
func (d Dir) Client() string { return filepath.Join(d.Path, ClientDir) }

// Records is where the server writes its expert/batch records.
func (d Dir) Records() string { return filepath.Join(d.Path, RecordsDir) }

// Telemetry is the GPU samples, one row per GPU per tick.
func (d Dir) Telemetry() string { return filepath.Join(d.Path, TelemetryFile) }

// ServerMetrics is the server's scraped Prometheus metrics, one row per tick.
func (d Dir) ServerMetrics() string { return filepath.Join(d.Path, ServerMetricsFile) }

// State is the running server's state file (the launcher writes and reads it).
func (d Dir) State() string { return filepath.Join(d.Path, launcher.StateFile) }

// Bench is the cell's copy of its benchmark YAML.
func (d Dir) Bench() string { return filepath.Join(d.Path, BenchFile) }

// lockPath is the lock file of cell id.
func (l *Layout) lockPath(id string) string { return filepath.Join(l.Root, LocksDir, id+".lock") }

// Lock takes cell id's lock without waiting: while it is held no other runner, in this
// process or any other, may run, archive or write that cell. The lock is flock(2), which
// the kernel drops when its holder dies, even by SIGKILL: a crash never leaves a stale lock.
// When another runner holds it the error is a *LockedError naming the holder (PID, host,
// start time, command). unlock is idempotent.
func (l *Layout) Lock(id string) (unlock func(), err error) {
	if _, err := l.Cell(id); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(l.Root, LocksDir), 0o755); err != nil {
		return nil, fmt.Errorf("create the lock directory of results root %s: %w (check --results)", l.Root, err)
	}
	fl, err := TryLock(l.lockPath(id), "cell "+id)
	if err != nil {
		return nil, err
	}
	return fl.Unlock, nil
}

// Held reports whether this process holds cell id's lock.
func (l *Layout) Held(id string) bool { return heldHere(l.lockPath(id)) }

// Archive moves the cell's directory aside (root/.attempts/<id>.<UTC time>) so a rerun never
// mixes its files with the old ones and the old ones are not lost. The caller must hold the
// cell's lock: a directory some other runner is writing is never moved. It returns where
// the directory went ("" when there was none).
func (l *Layout) Archive(id string) (string, error) {
	d, err := l.Cell(id)
	if err != nil {
		return "", err
	}
	if !l.Held(id) {
		return "", fmt.Errorf("archive %s: this process does not hold the cell's lock (a live directory is never archived)", id)
	}
	if _, err := os.Lstat(d.Path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	att := filepath.Join(l.Root, AttemptsDir)
	if err := os.MkdirAll(att, 0o755); err != nil {
		return "", err
	}
	to := filepath.Join(att, id+"."+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(d.Path, to); err != nil {
		return "", err
	}
	return to, nil
}

// Create archives an earlier attempt of the cell and makes a fresh directory with client/
// and records/. The caller must hold the cell's lock.
func (l *Layout) Create(id string) (Dir, error) {
	d, err := l.Cell(id)
	if err != nil {
		return Dir{}, err
	}
	if _, err := l.Archive(id); err != nil {
		return Dir{}, fmt.Errorf("move the earlier attempt of %s aside: %w", id, err)
	}
	for _, p := range []string{d.Path, d.Client(), d.Records()} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return Dir{}, fmt.Errorf("create %s: %w (check --results)", p, err)
		}
	}
	return d, nil
}

// Entry is a cell directory of a results root whose manifest names the directory's own
// cell.
type Entry struct {
	Dir      Dir
	Manifest *Manifest
}

// Problem is a directory of a results root that holds a manifest which cannot be trusted:
// unreadable, or naming another cell than its directory (a copied or renamed directory).
// Such a directory is counted as no cell at all.
type Problem struct {
	Name     string // the directory's name under the root
	Path     string
	Mismatch bool   // the manifest is readable but its cell.id is not Name
	ID       string // the manifest's cell.id when Mismatch
	Err      string
}

func (p Problem) String() string { return p.Path + ": " + p.Err }

// Cells reads every cell directory of the root, sorted by name. A cell is identified by its
// directory and its manifest's id together: a manifest whose id is not its directory's
// name is a Problem, never another cell's result. Directories starting with '.'
// (.attempts, .locks) and directories without manifest.json (a report) are not cells. A
// missing root holds no cells.
func (l *Layout) Cells() ([]Entry, []Problem, error) {
	ents, err := os.ReadDir(l.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read results root %s: %w", l.Root, err)
	}
	var out []Entry
	var probs []Problem
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(l.Root, name)
		b, err := os.ReadFile(filepath.Join(path, ManifestFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			probs = append(probs, Problem{Name: name, Path: path, Err: err.Error()})
			continue
		}
		m := &Manifest{}
		if err := json.Unmarshal(b, m); err != nil {
			probs = append(probs, Problem{Name: name, Path: path, Err: ManifestFile + ": " + err.Error()})
			continue
		}
		switch {
		case m.Cell.ID == "":
			probs = append(probs, Problem{Name: name, Path: path, Err: "manifest.json has no cell.id; the directory is not counted as a cell"})
		case m.Cell.ID != name:
			probs = append(probs, Problem{Name: name, Path: path, Mismatch: true, ID: m.Cell.ID,
				Err: fmt.Sprintf("directory %s holds the manifest of cell %s (copied or renamed?); it is not counted for either cell: move it out of the results root", name, m.Cell.ID)})
		default:
			out = append(out, Entry{Dir: Dir{ID: name, Path: path}, Manifest: m})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir.ID < out[j].Dir.ID })
	return out, probs, nil
}
