// Package daemon is moecapd serve: one process per node that owns the node's GPUs, keeps
// one queue of everyone's jobs in a durable store under the results root, runs their cells
// through the orchestration layer (internal/app, pkg/matrix's runner: the same allocator,
// retries, skip-after-OOM and per-cell timeout as matrix run --pack), and serves the queue
// over HTTP (unix socket or TCP) to the CLI clients and the web page. It is a front end of
// internal/app, like cmd/moecapd.
package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/internal/daemon/storecheck"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// FormatVersion is the store's on-disk format; a store of another version is refused, not
// guessed at.
const FormatVersion = 1

// StoreDir is the store's directory under the results root; StoreFile its database.
const (
	StoreDir  = ".daemon"
	StoreFile = "state.db"
)

var (
	bMeta   = []byte("meta")
	bJobs   = []byte("jobs")
	bCells  = []byte("cells")
	bLeases = []byte("leases")
)

// Job states.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobDone      = "done"
	JobCancelled = "cancelled"
)

// Cell states. queued and running are live; the others are final.
const (
	CellQueued      = "queued"
	CellRunning     = "running"
	CellOK          = "ok"
	CellFailed      = "failed"
	CellInfeasible  = "infeasible"
	CellSkipped     = "skipped"
	CellInterrupted = "interrupted"
	CellCancelled   = "cancelled"
)

// Spec is what was submitted: a matrix (its absolute path on the node) and the selection,
// as matrix run takes them.
type Spec struct {
	Matrix      string   `json:"matrix"`
	Only        string   `json:"only,omitempty"`
	IncludeDone bool     `json:"include_done,omitempty"`
	NoSkip      bool     `json:"no_skip,omitempty"`
	RedoFailed  bool     `json:"redo_failed,omitempty"`
	ServerArgs  []string `json:"server_args,omitempty"`
	Priority    int      `json:"priority,omitempty"`
	// Cell is one cell by launch-and-bench's flags instead of a matrix.
	Cell *app.OneCell `json:"cell,omitempty"`
}

// Job is one submission.
type Job struct {
	ID       string     `json:"id"`
	Seq      uint64     `json:"seq"`
	Owner    string     `json:"owner"`
	Priority int        `json:"priority"`
	State    string     `json:"state"`
	Created  time.Time  `json:"created"`
	Finished *time.Time `json:"finished,omitempty"`
	Spec     Spec       `json:"spec"`
	Cells    []string   `json:"cells"` // cell ids in run order
	// CancelledBy names who cancelled it.
	CancelledBy string `json:"cancelled_by,omitempty"`
	// Slurm is the job's arrays when the daemon runs on Slurm (serve --executor slurm).
	Slurm *SlurmJob `json:"slurm,omitempty"`
}

// Cell is one cell of a job and where it stands.
type Cell struct {
	Job      string     `json:"job"`
	ID       string     `json:"id"`
	Index    int        `json:"index"`
	State    string     `json:"state"`
	Phase    string     `json:"phase,omitempty"`
	Attempts int        `json:"attempts"` // times the daemon started it
	Reruns   int        `json:"reruns"`   // times it was interrupted by a daemon stop or crash and queued again
	Reason   string     `json:"reason,omitempty"`
	GPUs     []string   `json:"gpus,omitempty"`
	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
	// Recovery is what the daemon found of this cell after a restart (the ledger against
	// the manifest, /proc and the GPUs).
	Recovery string `json:"recovery,omitempty"`
	// Slurm is the cell's task and Slurm's view of it (serve --executor slurm).
	Slurm *CellSlurm `json:"slurm,omitempty"`
	// EstimateS is the plan's estimate of the cell's whole run in seconds (absent when the
	// plan has none).
	EstimateS *float64 `json:"estimate_s,omitempty"`
	// Progress is the bench's requests, while the built-in client runs them (the last
	// report is kept once the cell ends).
	Progress *Progress `json:"progress,omitempty"`
}

// Progress is where a cell's bench stands: requests done (failed included) of total, and
// the time left at the rate measured so far (absent until there is a rate).
type Progress struct {
	Done       int      `json:"done"`
	Failed     int      `json:"failed"`
	InFlight   int      `json:"in_flight"`
	Total      int      `json:"total"`
	TokensPerS float64  `json:"tokens_per_s"`
	ETAS       *float64 `json:"eta_s,omitempty"`
}

// Final says the cell will not run again.
func (c *Cell) Final() bool { return c.State != CellQueued && c.State != CellRunning }

// Lease is a GPU lease of the ledger: written before the cell's server is spawned and
// removed once the cell is over (its server torn down).
type Lease struct {
	Job   string    `json:"job"`
	Cell  string    `json:"cell"`
	GPUs  []string  `json:"gpus"`            // CUDA_VISIBLE_DEVICES entries
	UUIDs []string  `json:"uuids,omitempty"` // the same GPUs by UUID, when NVML knows them
	Start time.Time `json:"start"`
	// DaemonPID is the supervising daemon; ServerPID the server, once the launcher has
	// started and verified it (from the cell's manifest).
	DaemonPID int `json:"daemon_pid"`
	ServerPID int `json:"server_pid,omitempty"`
	Port      int `json:"port,omitempty"`
	// Supervisor is the daemon and Server the cell's server (from its state file, once the
	// launcher started and verified it) as the launcher names processes: PID, start time
	// and boot, so a restarted daemon never mistakes a reused PID for them.
	Supervisor *launcher.ProcessID `json:"supervisor,omitempty"`
	Server     *launcher.ProcessID `json:"server,omitempty"`
	// BaselineBytes is each GPU's used memory (NVML) when the lease was taken, in GPUs'
	// order: the idle baseline a restarted daemon waits for. Absent without NVML.
	BaselineBytes []*uint64 `json:"baseline_bytes,omitempty"`
}

func cellKey(job, id string) []byte { return []byte(job + "/" + id) }

// Store is the durable state: every change is committed (fsync) before it is acted on or
// answered.
type Store struct{ db *bolt.DB }

// OpenStore opens (or creates) the store under the results root.
func OpenStore(results string) (*Store, error) {
	dir := filepath.Join(results, StoreDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the daemon's store directory %s: %w", dir, err)
	}
	p := filepath.Join(dir, StoreFile)
	if err := storecheck.File(p); err != nil {
		return nil, err
	}
	db, err := bolt.Open(p, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("the daemon's store %s is open in another process (a second daemon on this results root?); stop it first", p)
		}
		return nil, fmt.Errorf("open the daemon's store %s: %w", p, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bMeta, bJobs, bCells, bLeases} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bMeta)
		v := m.Get([]byte("format"))
		if v == nil {
			return m.Put([]byte("format"), []byte(strconv.Itoa(FormatVersion)))
		}
		if string(v) != strconv.Itoa(FormatVersion) {
			return fmt.Errorf("the daemon's store %s has format %s; this moecapd reads format %d (use the moecapd that wrote it, or move the store aside)", p, v, FormatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func put(tx *bolt.Tx, bucket, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, b)
}

// AddJob gives the job its id and writes it with its cells, in one transaction.
func (s *Store) AddJob(j *Job, cells []*Cell) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		seq, err := tx.Bucket(bJobs).NextSequence()
		if err != nil {
			return err
		}
		j.Seq, j.ID = seq, "j"+strconv.FormatUint(seq, 10)
		for _, c := range cells {
			c.Job = j.ID
			if err := put(tx, bCells, cellKey(j.ID, c.ID), c); err != nil {
				return err
			}
		}
		return put(tx, bJobs, []byte(j.ID), j)
	})
}

// Save writes jobs, cells and leases (nil entries skipped) and deletes the leases named in
// drop, in one transaction.
func (s *Store) Save(jobs []*Job, cells []*Cell, leases []*Lease, drop []*Cell) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, j := range jobs {
			if err := put(tx, bJobs, []byte(j.ID), j); err != nil {
				return err
			}
		}
		for _, c := range cells {
			if err := put(tx, bCells, cellKey(c.Job, c.ID), c); err != nil {
				return err
			}
		}
		for _, l := range leases {
			if err := put(tx, bLeases, cellKey(l.Job, l.Cell), l); err != nil {
				return err
			}
		}
		for _, c := range drop {
			if err := tx.Bucket(bLeases).Delete(cellKey(c.Job, c.ID)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Load reads everything.
func (s *Store) Load() (jobs []*Job, cells []*Cell, leases []*Lease, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bJobs).ForEach(func(k, v []byte) error {
			j := &Job{}
			if err := json.Unmarshal(v, j); err != nil {
				return fmt.Errorf("job %s: %w", k, err)
			}
			jobs = append(jobs, j)
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bCells).ForEach(func(k, v []byte) error {
			c := &Cell{}
			if err := json.Unmarshal(v, c); err != nil {
				return fmt.Errorf("cell %s: %w", k, err)
			}
			cells = append(cells, c)
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bLeases).ForEach(func(k, v []byte) error {
			l := &Lease{}
			if err := json.Unmarshal(v, l); err != nil {
				return fmt.Errorf("lease %s: %w", k, err)
			}
			leases = append(leases, l)
			return nil
		})
	})
	return jobs, cells, leases, err
}
