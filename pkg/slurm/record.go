package slurm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
)

// Dir is the directory inside a results root where submissions are recorded.
const Dir = ".slurm"

// Files under <root>/.slurm/.
const (
	JobsFile   = "jobs.json"   // every array submitted for this root, oldest first
	ScriptFile = "task.sh"     // the batch script every array runs
	SubmitLock = "submit.lock" // held by one submit at a time
	ArraysDir  = "arrays"      // one task spec per array
	LogsDir    = "logs"        // one log per task
)

// SpecVersion of the task spec files.
const SpecVersion = 1

// Spec is the data file every task of one array reads: which cell each task index runs
// and the settings to run it with. The batch script takes its path as an argument; no value
// of it is ever part of a shell script.
type Spec struct {
	SchemaVersion int    `json:"schema_version"`
	Matrix        string `json:"matrix"`
	Results       string `json:"results"`
	GPUs          int    `json:"gpus"`
	// Cells: task i runs Cells[i].
	Cells []string `json:"cells"`
	// KillWait is the cluster's time from SIGTERM to SIGKILL at submit; a task keeps its
	// teardown inside it.
	KillWaitS float64 `json:"kill_wait_s,omitempty"`
	// Flags are the moecapd flags given to submit (name → value as typed), applied to every
	// task so a cell runs with the settings it was submitted with.
	Flags map[string]string `json:"flags,omitempty"`
}

// Array is one submitted job array, as recorded in jobs.json.
type Array struct {
	JobID       string    `json:"job_id"`
	Name        string    `json:"name"`
	Hardware    string    `json:"hardware"`
	GPUs        int       `json:"gpus"`
	Cells       []string  `json:"cells"`
	Spec        string    `json:"spec"`
	SbatchArgv  []string  `json:"sbatch_argv"`
	SubmittedAt time.Time `json:"submitted_at"`
}

// Record is jobs.json.
type Record struct {
	Arrays []Array `json:"arrays"`
}

// Assignment says which task of which array a cell was last submitted as.
type Assignment struct {
	Array *Array
	Index int
}

// Key is the task's (array job id, task id) key, as Task.Key.
func (a Assignment) Key() string { return a.Array.JobID + "_" + strconv.Itoa(a.Index) }

// Latest maps each cell to the task of its most recent submission.
func (r *Record) Latest() map[string]Assignment {
	out := map[string]Assignment{}
	for i := range r.Arrays {
		a := &r.Arrays[i]
		for j, id := range a.Cells {
			out[id] = Assignment{Array: a, Index: j}
		}
	}
	return out
}

// JobIDs lists every recorded array job id.
func (r *Record) JobIDs() []string {
	var ids []string
	for _, a := range r.Arrays {
		ids = append(ids, a.JobID)
	}
	return ids
}

// Path joins parts under root/.slurm.
func Path(root string, parts ...string) string {
	return filepath.Join(append([]string{root, Dir}, parts...)...)
}

// ReadRecord reads root/.slurm/jobs.json; a root never submitted has an empty record.
func ReadRecord(root string) (*Record, error) {
	b, err := os.ReadFile(Path(root, JobsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &Record{}, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w; restore it or move it aside (status and cancel then no longer know the submitted jobs)", Path(root, JobsFile), err)
	}
	return &r, nil
}

// WriteRecord writes jobs.json atomically.
func WriteRecord(root string, r *Record) error {
	return writeJSON(Path(root, JobsFile), r)
}

// WriteSpec writes a task spec atomically.
func WriteSpec(path string, s *Spec) error { return writeJSON(path, s) }

// ReadSpec reads a task spec.
func ReadSpec(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.SchemaVersion != SpecVersion {
		return nil, fmt.Errorf("%s: schema_version %d, this moecapd reads %d; submit again with this moecapd", path, s.SchemaVersion, SpecVersion)
	}
	return &s, nil
}

// CellAt returns the cell of task index i.
func (s *Spec) CellAt(i int) (string, error) {
	if i < 0 || i >= len(s.Cells) {
		return "", fmt.Errorf("array task %d: the spec lists %d cells (0..%d)", i, len(s.Cells), len(s.Cells)-1)
	}
	return s.Cells[i], nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return cell.WriteFileAtomic(path, append(b, '\n'))
}

// script is the batch script of every array. Its arguments are moecapd's binary and
// arguments; it interpolates nothing, and exec makes moecapd the batch step's process,
// so scancel's and the time limit's SIGTERM reach moecapd itself.
const script = `#!/bin/sh
# Written by moecapd slurm submit: one array task runs one matrix cell.
# "$@" is the moecapd binary and its arguments (slurm task --spec FILE); nothing is spliced.
exec "$@"
`

// WriteScript writes root/.slurm/task.sh and returns its path.
func WriteScript(root string) (string, error) {
	p := Path(root, ScriptFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	if err := cell.WriteFileAtomic(p, []byte(script)); err != nil {
		return "", err
	}
	return p, os.Chmod(p, 0o755)
}

// ExtraKey is the key of manifest.extra where a Slurm task records where it ran.
const ExtraKey = "slurm"

// TaskNote is manifest.extra.slurm for a task: its TaskEnv as JSON.
func TaskNote(env TaskEnv) json.RawMessage {
	b, _ := json.Marshal(env) // strings and numbers always marshal
	return b
}

// TaskEnv is what a running array task learns from Slurm's environment, recorded in its
// cell's manifest (extra.slurm).
type TaskEnv struct {
	JobID        string `json:"job_id"`
	ArrayJobID   string `json:"array_job_id"`
	TaskID       int    `json:"array_task_id"`
	RestartCount int    `json:"restart_count"`
	Node         string `json:"node,omitempty"`
	Cluster      string `json:"cluster,omitempty"`
	// CUDAVisibleDevices is what the task's processes see; with device constraint it
	// starts at 0 on every node.
	CUDAVisibleDevices string `json:"cuda_visible_devices,omitempty"`
	// JobGPUs is SLURM_JOB_GPUS: the node's own indices of the GPUs given.
	JobGPUs string `json:"job_gpus,omitempty"`
	// GPUs is the list of GPUs given (SLURM_JOB_GPUS, else CUDA_VISIBLE_DEVICES).
	GPUs []string `json:"gpus"`
}

// ReadTaskEnv reads a task's Slurm variables; ok is false outside an array task.
func ReadTaskEnv(getenv func(string) string) (TaskEnv, bool, error) {
	e := TaskEnv{JobID: getenv("SLURM_JOB_ID"), ArrayJobID: getenv("SLURM_ARRAY_JOB_ID"),
		Node: getenv("SLURMD_NODENAME"), Cluster: getenv("SLURM_CLUSTER_NAME"),
		CUDAVisibleDevices: getenv("CUDA_VISIBLE_DEVICES"), JobGPUs: getenv("SLURM_JOB_GPUS"), GPUs: []string{}}
	tid := getenv("SLURM_ARRAY_TASK_ID")
	if tid == "" {
		return e, false, nil
	}
	var err error
	if e.TaskID, err = strconv.Atoi(tid); err != nil {
		return e, false, fmt.Errorf("SLURM_ARRAY_TASK_ID=%q: not a task index", tid)
	}
	if rc := getenv("SLURM_RESTART_COUNT"); rc != "" {
		if e.RestartCount, err = strconv.Atoi(rc); err != nil {
			return e, false, fmt.Errorf("SLURM_RESTART_COUNT=%q: not a count", rc)
		}
	}
	list := e.JobGPUs
	if list == "" {
		list = e.CUDAVisibleDevices
	}
	for _, g := range strings.Split(list, ",") {
		if g = strings.TrimSpace(g); g != "" {
			e.GPUs = append(e.GPUs, g)
		}
	}
	return e, true, nil
}
