package cell

// The orphan sweep: what a killed run left on a results root (servers, GPU memory, cells
// that still say running) is ended or marked before the next cell starts.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// OrphanGPUWait bounds how long ending an orphaned server waits for its GPUs to release
// its memory (a CUDA context takes seconds to go after the process dies).
const OrphanGPUWait = 2 * time.Minute

// SweepConfig is what EndOrphans needs.
type SweepConfig struct {
	Grace time.Duration
	// GPUs (may be nil or unavailable) is used to wait for an ended server's GPUs to return
	// to baseline, within SlackBytes, for at most OrphanGPUWait.
	GPUs       gpu.Backend
	SlackBytes uint64
	// GPUWaitMax bounds that wait (0: OrphanGPUWait).
	GPUWaitMax time.Duration
	Log        *zap.Logger
}

// SweepReport is what EndOrphans did, server by server, for a caller that records it (the
// daemon's ledger reconciliation).
type SweepReport struct {
	Ended []EndedServer
	Gone  []GoneServer
	// Failed are servers found orphaned that could not be ended (their directory and why).
	Failed []GoneServer
}

// EndedServer is an orphaned server EndOrphans ended: its record and the verified PIDs it
// signalled.
type EndedServer struct {
	Dir      string
	State    launcher.State
	PIDs     []int
	Graceful bool
	Took     time.Duration
	// Unverified are live processes of its old group it left alone.
	Unverified []int
}

// GoneServer is a recorded server that was already gone (or could not be ended).
type GoneServer struct {
	Dir        string
	State      launcher.State
	Why        string
	Unverified []int
}

// EndOrphans ends every server under the results root whose supervisor died (kill -9,
// machine lost), found through their state files, waits until its GPUs are back to
// baseline, and marks those cells interrupted with the phase they were in, so a later run
// gets the GPUs and ports back and nobody mistakes the old cell for live. A running cell
// whose supervisor is gone and whose server is gone too (it died, or the machine
// rebooted) is marked interrupted as well. Unreadable state files are reported.
func EndOrphans(ctx context.Context, root string, sc SweepConfig) SweepReport {
	var rep SweepReport
	log := sc.Log
	if log == nil {
		log = zap.NewNop()
	}
	sw, err := launcher.FindOrphans(root)
	if err != nil {
		log.Warn("orphan scan failed; a server of a killed run may still hold GPUs or ports", zap.String("results", root), zap.Error(err))
	}
	for _, p := range sw.Problems {
		log.Warn("unreadable server state file", zap.Error(p))
	}
	lay, _ := OpenLayout(root)
	for _, o := range sw.Orphans {
		unlock, ok := lockForSweep(lay, root, o.Dir, log)
		if !ok {
			continue
		}
		if r, err := endOrphan(ctx, sc, o, log); err != nil {
			rep.Failed = append(rep.Failed, GoneServer{Dir: o.Dir, State: o.State, Why: err.Error(), Unverified: o.Unverified})
		} else {
			rep.Ended = append(rep.Ended, EndedServer{Dir: o.Dir, State: o.State, PIDs: o.PIDs, Graceful: r.Graceful, Took: r.Took, Unverified: o.Unverified})
		}
		unlock()
	}
	for _, g := range sw.Gone {
		unlock, ok := lockForSweep(lay, root, g.Dir, log)
		if !ok {
			continue
		}
		log.Warn("a killed run's server is already gone; marking its cell interrupted", zap.String("dir", g.Dir), zap.String("why", g.Why))
		warnUnverified(log, g.Dir, g.Unverified)
		if !strings.Contains(g.Why, "rebooted") {
			waitOrphanGPUs(ctx, sc, g.State, orphanGPUs(sc.GPUs, g.State, nil), nil, log)
		}
		markInterrupted(g.Dir, "the supervisor died (killed or machine lost) while this cell ran, and "+g.Why)
		rep.Gone = append(rep.Gone, GoneServer{Dir: g.Dir, State: g.State, Why: g.Why, Unverified: g.Unverified})
		unlock()
	}
	sweepDeadCells(lay, root, log)
	return rep
}

// lockForSweep takes the lock of the cell at dir while the sweep ends or marks it, so two
// runners starting at once do not both handle it, and a runner that already took the cell
// over (it holds the lock) is left to it (ok false). Archived attempts and cells whose lock
// this process holds already need none.
func lockForSweep(lay *Layout, root, dir string, log *zap.Logger) (unlock func(), ok bool) {
	id := filepath.Base(dir)
	if lay == nil || filepath.Dir(dir) != filepath.Clean(root) || !ValidID(id) || lay.Held(id) {
		return func() {}, true
	}
	unlock, err := lay.Lock(id)
	if errors.Is(err, ErrLocked) {
		log.Info("a cell left behind by a killed run is being handled by another runner", zap.String("dir", dir), zap.Error(err))
		return nil, false
	}
	if err != nil {
		return func() {}, true
	}
	return unlock, true
}

// endOrphan ends one orphaned server, waits for its GPUs and marks its cell.
func endOrphan(ctx context.Context, sc SweepConfig, o launcher.Orphan, log *zap.Logger) (launcher.StopReport, error) {
	log.Warn("ending a server left behind by a killed run (its supervisor died)",
		zap.String("dir", o.Dir), zap.Int("pid", o.State.PID), zap.Bool("leader_verified", o.LeaderVerified), zap.Ints("pids", o.PIDs))
	warnUnverified(log, o.Dir, o.Unverified)
	devs := orphanGPUs(sc.GPUs, o.State, o.PIDs)
	rep, err := launcher.EndOrphan(o, sc.Grace)
	if err != nil {
		log.Error("could not end an orphaned server; kill it by hand", zap.Error(err))
		return rep, err
	}
	log.Info("orphaned server ended", zap.String("dir", o.Dir), zap.Bool("graceful", rep.Graceful), zap.Duration("took", rep.Took))
	waitOrphanGPUs(ctx, sc, o.State, devs, o.PIDs, log)
	markInterrupted(o.Dir, "the supervisor died (killed or machine lost) while this cell ran; its server was ended by a later run")
	return rep, nil
}

func warnUnverified(log *zap.Logger, dir string, pids []int) {
	if len(pids) == 0 {
		return
	}
	var cmds []string
	for _, pid := range pids {
		cmds = append(cmds, fmt.Sprintf("%d %q", pid, strings.Join(launcher.Cmdline(pid), " ")))
	}
	log.Warn("processes in the recorded server's old process group cannot be proven to be ours (PID reused, or they dropped the server's token): left alone; end them by hand if they are",
		zap.String("dir", dir), zap.Strings("processes", cmds))
}

// orphanGPUs is the GPUs a recorded server used: those in its state file, plus any on which
// one of pids holds memory now.
func orphanGPUs(b gpu.Backend, s launcher.State, pids []int) []gpu.Device {
	if b == nil || !b.Available() {
		return nil
	}
	var out []gpu.Device
	have := map[int]bool{}
	for _, g := range s.GPUs {
		out = append(out, gpu.Device{Index: g.Index, UUID: g.UUID})
		have[g.Index] = true
	}
	if len(pids) > 0 {
		all, err := b.Devices()
		if err != nil {
			return out
		}
		procs, err := b.ComputeProcesses(all)
		if err != nil {
			return out
		}
		for _, pr := range procs {
			if slices.Contains(pids, pr.PID) && !have[pr.GPUIndex] {
				for _, d := range all {
					if d.Index == pr.GPUIndex {
						out = append(out, d)
					}
				}
				have[pr.GPUIndex] = true
			}
		}
	}
	return out
}

// waitOrphanGPUs waits, bounded, until the GPUs of an ended server are back to the baseline
// recorded before it launched (or, unrecorded, hold no more than the slack), so that the
// preflight that follows does not find them busy with a dead server's memory.
func waitOrphanGPUs(ctx context.Context, sc SweepConfig, s launcher.State, devs []gpu.Device, pids []int, log *zap.Logger) {
	if len(devs) == 0 || sc.GPUs == nil || !sc.GPUs.Available() {
		return
	}
	base := map[int]uint64{}
	for _, g := range s.GPUs {
		if g.BaselineBytes != nil {
			base[g.Index] = *g.BaselineBytes
		}
	}
	var idx []int
	for _, d := range devs {
		idx = append(idx, d.Index)
	}
	limit := sc.GPUWaitMax
	if limit <= 0 {
		limit = OrphanGPUWait
	}
	t0 := time.Now()
	log.Info("waiting for the ended server's GPUs to return to baseline before preflight",
		zap.Ints("gpus", idx), zap.Duration("at_most", limit))
	if _, err := gpu.WaitMemoryBaseline(ctx, sc.GPUs, devs, base, sc.SlackBytes, limit); err != nil {
		if ctx.Err() != nil {
			log.Warn("interrupted while waiting for the ended server's GPUs to return to baseline", zap.Ints("gpus", idx))
			return
		}
		log.Error("the ended server's GPUs are not back to baseline; the next preflight will likely find them busy", zap.Ints("gpus", idx), zap.Error(err))
		return
	}
	// The driver may list a dead process for a moment after its memory is counted free.
	for time.Since(t0) < limit && ctx.Err() == nil {
		procs, err := sc.GPUs.ComputeProcesses(devs)
		if err != nil || !slices.ContainsFunc(procs, func(p gpu.Process) bool { return slices.Contains(pids, p.PID) }) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	log.Info("GPUs back to baseline", zap.Ints("gpus", idx), zap.Duration("took", time.Since(t0)))
}

// markInterrupted rewrites a "running" manifest of a cell whose supervisor died, recording
// the phase it was in.
func markInterrupted(dir, why string) {
	m, err := ReadManifest(dir)
	if err != nil || m.Status != StatusRunning {
		return
	}
	ph := m.Phase
	if ph == "" {
		ph = PhaseBench // a manifest from before phases were recorded
		why += " (its phase was not recorded; bench assumed)"
	}
	m.Status = StatusInterrupted
	m.Phase = ""
	now := time.Now().UTC()
	m.FinishedAt = &now
	m.Failure = &Failure{Phase: ph, Kind: exitcode.FailInterrupted, Message: fmt.Sprintf("interrupted during %s: %s", ph, why)}
	_ = WriteManifest(dir, m)
}

// sweepDeadCells marks interrupted every "running" cell under root (and its archived
// attempts) whose runner is gone: it was killed before it had a server to leave behind
// (during preflight), or its server already died, or the machine rebooted. A runner is gone
// when its recorded supervisor no longer runs; for a manifest without that record (an older
// moecapd), when nobody holds the cell's lock.
func sweepDeadCells(lay *Layout, root string, log *zap.Logger) {
	for _, d := range []string{root, filepath.Join(root, ".attempts")} {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || e.Name() == ".attempts" {
				continue
			}
			dir := filepath.Join(d, e.Name())
			m, err := ReadManifest(dir)
			if err != nil || m.Status != StatusRunning {
				continue
			}
			if m.Supervisor != nil && !m.SupervisorGone() {
				continue
			}
			if _, err := os.Stat(DirOf(dir).State()); err == nil {
				continue // its server is recorded (FindOrphans reported why it was left)
			}
			unlock, ok := lockForSweep(lay, root, dir, log)
			if !ok {
				continue // a live runner holds it
			}
			if m.Supervisor == nil && (d != root || lay == nil || !lay.Held(e.Name())) {
				unlock()
				continue // no record and no lock of ours to prove its runner gone
			}
			log.Warn("a cell still says running but its runner is gone; marking it interrupted", zap.String("dir", dir), zap.String("phase", string(m.Phase)))
			markInterrupted(dir, "the supervisor died (killed or machine lost) while this cell ran")
			unlock()
		}
	}
}
