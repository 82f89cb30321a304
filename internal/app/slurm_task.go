package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// SlurmTaskRequest is one Slurm array task: its array's spec and the cell settings (the
// spec's flags already applied under the command line's).
type SlurmTaskRequest struct {
	Spec     *slurm.Spec
	SpecPath string
	Cell     SlurmCellOptions
	Log      *zap.Logger
}

// SlurmTask runs the cell of this array task (SLURM_ARRAY_TASK_ID) under its cell lock,
// within the cluster's KillWait, and records the task in the manifest.
func SlurmTask(req SlurmTaskRequest) error {
	spec, so, log := req.Spec, req.Cell, req.Log
	env, c, err := taskCell(req)
	if err != nil {
		return err
	}
	log = log.With(zap.String("job", env.ArrayJobID+"_"+strconv.Itoa(env.TaskID)))
	// The per-cell lock (pkg/cell's, the one matrix run and launch-and-bench take too), so
	// two runners (a duplicate submission, a requeue racing its predecessor, a matrix run
	// on the same root) never write one cell. It is the task's only lock: none on the whole
	// results root. The matrix runner keeps a lock its caller holds.
	dir, release, err := lockTaskCell(spec.Results, c.ID)
	if err != nil {
		return err
	}
	defer release()
	if prev, err := cell.ReadManifest(dir); err == nil && prev.Status == cell.StatusOK && env.RestartCount == 0 {
		log.Info("cell already ok in the results root; nothing to do")
		return nil
	}
	if env.RestartCount > 0 {
		log.Warn("requeued task: redoing its cell from the start", zap.Int("restart_count", env.RestartCount))
	}
	var drain time.Duration
	so.Cell.Grace, drain = withinKillWait(spec.KillWaitS, so.Cell.Grace, log)
	// scancel and the time limit send SIGTERM to the batch step, which is this process (the
	// batch script exec'd it): the cell ends interrupted with its server torn down.
	BecomeSubreaper(log)
	ctx, stop := SignalContext(log)
	defer stop()
	gb, err := gpu.Open(log, so.Cell.RequireGPU)
	if err != nil {
		return exitcode.New(exitcode.Usage, err)
	}
	defer gb.Close()
	log.Info("slurm task starting", zap.Strings("gpus", env.GPUs), zap.String("node", env.Node),
		zap.String("cuda_visible_devices", env.CUDAVisibleDevices), zap.Int("restart_count", env.RestartCount))
	r := &matrix.Runner{
		Results: spec.Results, Items: []*matrix.Item{{Cell: c, Action: matrix.ActRun}}, Slots: 1,
		// Where the task ran (extra.slurm), written by the pipeline with the manifest.
		Extra: map[string]json.RawMessage{slurm.ExtraKey: slurm.TaskNote(env)},
		Host:  so.Cell.Host, NoSkip: true, Retries: so.Retries,
		Backoff: so.RetryBackoff, CellTimeout: so.CellTimeout, Log: log,
		// GPUs left empty: the cell runs on the caller's CUDA_VISIBLE_DEVICES, Slurm's.
		Build: func(c *matrix.Cell) (*cell.Config, error) {
			cfg, err := matrixCellConfig(so.Cell, gb, log, c, nil)
			if err == nil && drain > 0 {
				cfg.Native.DrainTimeout = drain
			}
			return cfg, err
		},
	}
	_, runErr := r.Run(ctx)
	return taskVerdict(dir, runErr, log)
}

// taskCell is the task's Slurm environment and its cell of the matrix.
func taskCell(req SlurmTaskRequest) (slurm.TaskEnv, *matrix.Cell, error) {
	env, ok, err := slurm.ReadTaskEnv(os.Getenv)
	if err != nil {
		return env, nil, exitcode.Usagef("%v", err)
	}
	if !ok {
		return env, nil, exitcode.Usagef("SLURM_ARRAY_TASK_ID is not set: moecapd slurm task runs inside a Slurm array task (submit with moecapd slurm submit)")
	}
	id, err := req.Spec.CellAt(env.TaskID)
	if err != nil {
		return env, nil, exitcode.Usagef("%s: %v", req.SpecPath, err)
	}
	_, mx, err := loadMatrix(MatrixOptions{Matrix: req.Cell.Matrix, ConfigsDir: req.Cell.Cell.ConfigsDir})
	if err != nil {
		return env, nil, err
	}
	c := mx.Cell(id)
	if c == nil {
		return env, nil, exitcode.Usagef("cell %s is no longer in %s (the matrix changed after submit); submit again", id, mx.Path)
	}
	return env, c, nil
}

// lockTaskCell takes the cell's lock in the results root and returns its directory.
func lockTaskCell(root, id string) (string, func(), error) {
	leave := func(err error) error {
		return exitcode.New(exitcode.Usage, fmt.Errorf("this task leaves cell %s alone: %w", id, err))
	}
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return "", nil, leave(err)
	}
	cd, err := lay.Cell(id)
	if err != nil {
		return "", nil, leave(err)
	}
	release, err := lay.Lock(id)
	if err != nil {
		return "", nil, leave(err)
	}
	return cd.Path, release, nil
}

// withinKillWait shortens the server's grace and the bench's drain so stopping ends inside
// the cluster's KillWait: after it Slurm kills every process of the job, moecapd included,
// and the cell would stay "running". The drain of in-flight requests gets a fifth of it,
// the server's grace half. No KillWait known: grace as asked, drain 0 (the default).
func withinKillWait(killWaitS float64, grace time.Duration, log *zap.Logger) (time.Duration, time.Duration) {
	if killWaitS <= 0 {
		return grace, 0
	}
	kw := time.Duration(killWaitS * float64(time.Second))
	if grace > kw/2 {
		log.Info("grace shortened to half the cluster's KillWait", zap.Duration("grace", kw/2), zap.Duration("asked", grace))
		grace = kw / 2
	}
	return grace, min(5*time.Second, kw/5)
}

// taskVerdict is the task's exit: the cell manifest's own error, or the runner's.
func taskVerdict(dir string, runErr error, log *zap.Logger) error {
	if runErr != nil {
		// A results disk full, read-only or not writable (the manifest could not be written)
		// is a setup problem (2) with its message, as in matrix run; anything else a bug.
		if e := cell.StorageError(runErr); exitcode.Of(e) != int(exitcode.Internal) {
			return e
		}
	}
	m, err := cell.ReadManifest(dir)
	if err != nil {
		return exitcode.New(exitcode.Internal, errors.Join(runErr, fmt.Errorf("read the cell's manifest: %w", err)))
	}
	if runErr != nil {
		return exitcode.New(exitcode.Internal, runErr)
	}
	log.Info("slurm task finished", zap.String("status", string(m.Status)))
	return m.Err()
}
