package daemon

// The GPU lease ledger after a restart: what a killed daemon's leases left is checked
// against /proc (is each lease's server still the process it was: PID, start time, boot)
// and NVML's compute processes, the daemon's own orphans are ended through the launcher's
// verified-identity sweep (never an unverified PID), each leased GPU is held from the next
// lease until its memory is back at the baseline recorded when the lease was taken, and
// that proof goes into the manifest of the next cell on the GPU.

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// ExtraLeaseProof is the key of the restart's reconciliation proof in manifest.json
// "extra", on the first cell each held GPU is leased to after a restart (and on the first
// cell started after it, GPUs or not).
const ExtraLeaseProof = "lease_reconcile"

// holdPoll is how often held GPUs are read; holdMax bounds the hold (the cell's own
// preflight then judges the GPU, with --gpu-wait).
var (
	holdPoll = 500 * time.Millisecond
	holdMax  = cell.OrphanGPUWait
)

// Reconciliation is what a restarted daemon found of the killed one's ledger and did.
type Reconciliation struct {
	At        time.Time `json:"at"`
	DaemonPID int       `json:"daemon_pid"`
	// NVML says whether GPU memory and compute processes could be read; without it the
	// ledger is reconciled through /proc alone and no GPU number is recorded (absent, not 0).
	NVML            bool          `json:"nvml"`
	NVMLUnavailable string        `json:"nvml_unavailable,omitempty"`
	Ledger          []LedgerCheck `json:"ledger"`
	// GPUs is the baseline proof of this cell's GPUs (only on the cell that got them first).
	GPUs []GPUProof `json:"gpus,omitempty"`
}

// LedgerCheck is one lease of the killed daemon and what became of its server.
type LedgerCheck struct {
	Job        string    `json:"job"`
	Cell       string    `json:"cell"`
	GPUs       []string  `json:"gpus,omitempty"`
	LeaseStart time.Time `json:"lease_start"`
	// Server is the lease's server as recorded (PID, start ticks, boot); absent when the
	// daemon stopped before it was spawned and verified.
	Server *launcher.ProcessID `json:"server,omitempty"`
	// Outcome: "ended" (verified and ended here), "gone" (no longer running), "not
	// started", "left alone" (alive but not provably ours) or "not ended" (ending failed).
	Outcome string `json:"outcome"`
	Why     string `json:"why,omitempty"`
	// EndedPIDs are the verified processes signalled; Unverified live processes of the old
	// process group left alone.
	EndedPIDs  []int `json:"ended_pids,omitempty"`
	Graceful   *bool `json:"graceful,omitempty"`
	Unverified []int `json:"unverified_pids,omitempty"`
	// GPUProcesses are NVML's compute processes on the lease's GPUs right after the sweep
	// (absent without NVML); Foreign marks those not of this lease's server (never signalled).
	GPUProcesses []GPUProcess `json:"gpu_processes,omitempty"`
}

// GPUProcess is one compute process NVML listed on a leased GPU.
type GPUProcess struct {
	GPU     int      `json:"gpu_index"`
	PID     int      `json:"pid"`
	UsedMiB *float64 `json:"used_mib,omitempty"`
	Cmdline string   `json:"cmdline,omitempty"`
	Ours    bool     `json:"ours"`
}

// GPUProof is one leased GPU's return to its idle baseline after the restart.
type GPUProof struct {
	GPU  string `json:"gpu"`
	UUID string `json:"uuid,omitempty"`
	// BaselineMiB is the GPU's used memory when the killed daemon leased it (absent when
	// not recorded, or without NVML); ObservedMiB what was read when the hold ended
	// (absent without NVML); SlackMiB the --gpu-idle-mib allowance above the baseline.
	BaselineMiB *float64 `json:"baseline_mib,omitempty"`
	ObservedMiB *float64 `json:"observed_mib,omitempty"`
	SlackMiB    float64  `json:"slack_mib"`
	// At is when the hold ended; WaitedS how long the GPU was held from the restart.
	At      time.Time `json:"at"`
	WaitedS float64   `json:"waited_s"`
	// Back says the memory was at the baseline (within the slack); false after holdMax or
	// without NVML (then Why says so).
	Back bool   `json:"back"`
	Why  string `json:"why,omitempty"`
	// Processes are NVML's compute processes on it when it was not back.
	Processes []GPUProcess `json:"processes,omitempty"`
}

// gpuHold is a GPU kept from the next lease until its memory is back at baseline.
type gpuHold struct {
	dev      gpu.Device
	baseline *uint64
	since    time.Time
}

func mib(b uint64) *float64 {
	v := float64(b) / (1 << 20)
	return &v
}

// reconcileLedger settles the killed daemon's leases (see the file comment) and returns
// the record, one LedgerCheck per lease in the order given. Called from New, before the
// scheduler runs.
func (d *Daemon) reconcileLedger(ctx context.Context, leases []*Lease) *Reconciliation {
	t0 := time.Now()
	rec := &Reconciliation{At: t0.UTC(), DaemonPID: launcher.Self().PID, NVML: d.gb.Available()}
	if !rec.NVML {
		rec.NVMLUnavailable = d.gb.Reason()
	}
	// /proc before the sweep: does each lease's server still run as the process recorded?
	alive := make([]bool, len(leases))
	for i, l := range leases {
		if l.Server != nil {
			alive[i] = launcher.Alive(*l.Server)
		}
	}
	sw := cell.EndOrphans(ctx, d.o.ResultsFlag, cell.SweepConfig{Grace: d.o.Cell.Grace, GPUs: d.gb,
		SlackBytes: uint64(d.o.Cell.GPUIdleMiB) << 20, Log: d.log})
	results := filepath.Clean(d.o.ResultsFlag)
	for i, l := range leases {
		dir := filepath.Join(results, l.Cell)
		lc := LedgerCheck{Job: l.Job, Cell: l.Cell, GPUs: l.GPUs, LeaseStart: l.Start, Server: l.Server}
		switch {
		case findEnded(sw.Ended, dir) != nil:
			e := findEnded(sw.Ended, dir)
			g := e.Graceful
			lc.Outcome, lc.EndedPIDs, lc.Graceful, lc.Unverified = "ended", e.PIDs, &g, e.Unverified
			lc.Why = fmt.Sprintf("its server (PID %d, start ticks %d) outlived the killed daemon; verified by start time and token and ended in %s",
				e.State.PID, e.State.StartTicks, e.Took.Round(time.Millisecond))
			if lc.Server == nil {
				lc.Server = &launcher.ProcessID{PID: e.State.PID, StartTicks: e.State.StartTicks, BootID: e.State.BootID}
			}
		case findGone(sw.Failed, dir) != nil:
			g := findGone(sw.Failed, dir)
			lc.Outcome, lc.Why, lc.Unverified = "not ended", g.Why, g.Unverified
		case findGone(sw.Gone, dir) != nil:
			g := findGone(sw.Gone, dir)
			lc.Outcome, lc.Why, lc.Unverified = "gone", g.Why, g.Unverified
		case lc.Server == nil:
			lc.Outcome, lc.Why = "not started", "the daemon stopped before the cell's server was spawned and verified; no server state file"
		case alive[i]:
			lc.Outcome = "left alone"
			lc.Why = fmt.Sprintf("PID %d still runs with the recorded start time but has no server state file to prove it is this lease's server (and not the next cell's); not signalled", lc.Server.PID)
		default:
			lc.Outcome, lc.Why = "gone", "its server no longer runs (not in /proc with the recorded start time)"
		}
		rec.Ledger = append(rec.Ledger, lc)
	}
	d.checkGPUProcesses(rec, sw)
	for _, lc := range rec.Ledger {
		d.log.Warn("ledger reconciled: a lease of the previous daemon", zap.String("job", lc.Job), zap.String("cell", lc.Cell),
			zap.Strings("gpus", lc.GPUs), zap.String("server", lc.Outcome), zap.String("why", lc.Why), zap.Ints("ended_pids", lc.EndedPIDs))
	}
	d.holdLeasedGPUs(leases, sw, t0)
	return rec
}

func findEnded(es []cell.EndedServer, dir string) *cell.EndedServer {
	for i := range es {
		if filepath.Clean(es[i].Dir) == dir {
			return &es[i]
		}
	}
	return nil
}

func findGone(gs []cell.GoneServer, dir string) *cell.GoneServer {
	for i := range gs {
		if filepath.Clean(gs[i].Dir) == dir {
			return &gs[i]
		}
	}
	return nil
}

// checkGPUProcesses lists NVML's compute processes on each lease's GPUs after the sweep:
// those of the lease's ended server (memory not yet freed) and foreign ones (left alone).
func (d *Daemon) checkGPUProcesses(rec *Reconciliation, sw cell.SweepReport) {
	if !rec.NVML {
		return
	}
	ours := map[int]bool{}
	for _, e := range sw.Ended {
		for _, p := range e.PIDs {
			ours[p] = true
		}
	}
	for i := range rec.Ledger {
		lc := &rec.Ledger[i]
		devs := d.devicesOf(lc.GPUs)
		if len(devs) == 0 {
			continue
		}
		procs, err := d.gb.ComputeProcesses(devs)
		if err != nil {
			d.log.Warn("ledger reconcile: NVML compute processes unreadable", zap.Strings("gpus", lc.GPUs), zap.Error(err))
			continue
		}
		lc.GPUProcesses = gpuProcesses(procs, ours)
	}
}

func gpuProcesses(procs []gpu.Process, ours map[int]bool) []GPUProcess {
	var out []GPUProcess
	for _, p := range procs {
		gp := GPUProcess{GPU: p.GPUIndex, PID: p.PID, Cmdline: p.Cmdline, Ours: ours[p.PID]}
		if p.UsedBytes != nil {
			gp.UsedMiB = mib(*p.UsedBytes)
		}
		out = append(out, gp)
	}
	return out
}

// devicesOf maps pool entries (NVML indices when NVML is available) onto devices.
func (d *Daemon) devicesOf(gpus []string) []gpu.Device {
	var out []gpu.Device
	for _, g := range gpus {
		i, err := strconv.Atoi(g)
		if err != nil {
			continue
		}
		out = append(out, gpu.Device{Index: i, UUID: d.uuid[g]})
	}
	return out
}

// holdLeasedGPUs keeps every GPU of the killed daemon's leases from the next lease until
// releaseHolds sees it back at baseline. Without NVML nothing can be read: the GPUs are not
// held and their proof says so.
func (d *Daemon) holdLeasedGPUs(leases []*Lease, sw cell.SweepReport, t0 time.Time) {
	// Baselines from the ledger, else from the ended server's state file.
	stateBase := map[int]*uint64{}
	for _, e := range sw.Ended {
		for _, g := range e.State.GPUs {
			stateBase[g.Index] = g.BaselineBytes
		}
	}
	for _, e := range sw.Gone {
		for _, g := range e.State.GPUs {
			if stateBase[g.Index] == nil {
				stateBase[g.Index] = g.BaselineBytes
			}
		}
	}
	for _, l := range leases {
		for i, g := range l.GPUs {
			if _, seen := d.holds[g]; seen || !slices.Contains(d.pool, g) {
				continue
			}
			if _, seen := d.gpuProof[g]; seen {
				continue
			}
			if !d.gb.Available() {
				d.gpuProof[g] = &GPUProof{GPU: g, UUID: d.uuid[g], SlackMiB: float64(d.o.Cell.GPUIdleMiB), At: time.Now().UTC(),
					WaitedS: time.Since(t0).Seconds(), Why: "NVML unavailable (" + d.gb.Reason() + "): GPU memory not read; the ledger was reconciled through /proc only"}
				continue
			}
			devs := d.devicesOf([]string{g})
			if len(devs) == 0 {
				continue
			}
			h := &gpuHold{dev: devs[0], since: t0}
			if i < len(l.BaselineBytes) && l.BaselineBytes[i] != nil {
				h.baseline = l.BaselineBytes[i]
			} else {
				h.baseline = stateBase[devs[0].Index]
			}
			d.holds[g] = h
			d.freeGPU[g] = false
		}
	}
	if len(d.holds) > 0 {
		var gs []string
		for g := range d.holds {
			gs = append(gs, g)
		}
		slices.Sort(gs)
		d.log.Info("holding the previous daemon's leased GPUs until their memory is back at the idle baseline", zap.Strings("gpus", gs))
	}
}

// releaseHolds polls the held GPUs and frees each once its memory is back at the baseline
// (within --gpu-idle-mib), or after holdMax, recording the proof for the GPU's next cell.
func (d *Daemon) releaseHolds(ctx context.Context) {
	slack := uint64(d.o.Cell.GPUIdleMiB) << 20
	for {
		d.mu.Lock()
		held := make(map[string]*gpuHold, len(d.holds))
		for g, h := range d.holds {
			held[g] = h
		}
		d.mu.Unlock()
		if len(held) == 0 {
			return
		}
		for g, h := range held {
			used, err := d.gb.MemoryUsed([]gpu.Device{h.dev})
			timeUp := time.Since(h.since) >= holdMax
			if err != nil && !timeUp {
				continue
			}
			limit := slack
			if h.baseline != nil {
				limit += *h.baseline
			}
			u, read := used[h.dev.Index]
			back := err == nil && read && u <= limit
			if !back && !timeUp {
				continue
			}
			p := &GPUProof{GPU: g, UUID: h.dev.UUID, SlackMiB: float64(slack) / (1 << 20), At: time.Now().UTC(),
				WaitedS: time.Since(h.since).Seconds(), Back: back}
			if h.baseline != nil {
				p.BaselineMiB = mib(*h.baseline)
			} else {
				p.Why = "no baseline was recorded for this GPU; held until it used at most --gpu-idle-mib"
			}
			if err == nil && read {
				p.ObservedMiB = mib(u)
			}
			if !back {
				why := fmt.Sprintf("not back at its baseline after %s; released to the next cell's own idle check (--gpu-wait)", holdMax)
				if err != nil {
					why += "; memory unreadable: " + err.Error()
				}
				p.Why = strings.TrimPrefix(p.Why+"; "+why, "; ")
				if procs, perr := d.gb.ComputeProcesses([]gpu.Device{h.dev}); perr == nil {
					p.Processes = gpuProcesses(procs, nil)
				}
			}
			d.mu.Lock()
			delete(d.holds, g)
			d.freeGPU[g] = true
			d.gpuProof[g] = p
			d.mu.Unlock()
			f := []zap.Field{zap.String("gpu", g), zap.Bool("back", back), zap.Float64("waited_s", p.WaitedS)}
			if p.BaselineMiB != nil {
				f = append(f, zap.Float64("baseline_mib", *p.BaselineMiB))
			}
			if p.ObservedMiB != nil {
				f = append(f, zap.Float64("observed_mib", *p.ObservedMiB))
			}
			if back {
				d.log.Info("held GPU back at its idle baseline; free for the next lease", f...)
			} else {
				d.log.Warn("held GPU not back at its idle baseline; released to the next cell's idle check", f...)
			}
			d.kick()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(holdPoll):
		}
	}
}

// takeProof is the manifest note for a cell about to be leased gpus: the restart's record
// with the proof of each of its GPUs held since the restart, or, for the first cell started
// after a restart, the record alone. nil when there is nothing to tell. Called with d.mu
// held.
func (d *Daemon) takeProof(gpus []string) map[string]json.RawMessage {
	if d.recon == nil {
		return nil
	}
	var ps []GPUProof
	for _, g := range gpus {
		if p := d.gpuProof[g]; p != nil {
			ps = append(ps, *p)
			delete(d.gpuProof, g)
		}
	}
	if len(ps) == 0 && d.reconTold {
		return nil
	}
	d.reconTold = true
	r := *d.recon
	r.GPUs = ps
	b, err := json.Marshal(r)
	if err != nil {
		return nil
	}
	return map[string]json.RawMessage{ExtraLeaseProof: b}
}

// baselines reads the used memory of gpus for a new lease, in their order (nil entries
// where unknown; nil without NVML).
func (d *Daemon) baselines(gpus []string) []*uint64 {
	if !d.gb.Available() || len(gpus) == 0 {
		return nil
	}
	out := make([]*uint64, len(gpus))
	for i, g := range gpus {
		devs := d.devicesOf([]string{g})
		if len(devs) == 0 {
			continue
		}
		used, err := d.gb.MemoryUsed(devs)
		if err != nil {
			d.log.Warn("GPU memory unreadable; the lease records no baseline for it", zap.String("gpu", g), zap.Error(err))
			continue
		}
		if u, ok := used[devs[0].Index]; ok {
			out[i] = &u
		}
	}
	return out
}
