package daemon

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/gpu"
)

// fakeGPUs is a node whose GPU memory is what used returns, read by read.
type fakeGPUs struct {
	gpu.Backend
	avail bool
	mu    sync.Mutex
	reads int
	used  func(read int) uint64
	procs []gpu.Process
}

func (f *fakeGPUs) Available() bool { return f.avail }
func (f *fakeGPUs) Reason() string {
	if f.avail {
		return ""
	}
	return "test: no NVML"
}
func (f *fakeGPUs) MemoryUsed(devs []gpu.Device) (map[int]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	out := map[int]uint64{}
	for _, d := range devs {
		out[d.Index] = f.used(f.reads)
	}
	return out, nil
}
func (f *fakeGPUs) ComputeProcesses([]gpu.Device) ([]gpu.Process, error) { return f.procs, nil }
func (f *fakeGPUs) Close()                                               {}

const mibB = 1 << 20

func testDaemon(t *testing.T, gb gpu.Backend) *Daemon {
	o := app.MatrixOptions{ResultsFlag: t.TempDir()}
	o.Cell.GPUIdleMiB = 64
	return &Daemon{o: o, log: zaptest.NewLogger(t), gb: gb, pool: []string{"0", "1"}, uuid: map[string]string{"0": "GPU-a", "1": "GPU-b"},
		freeGPU: map[string]bool{"0": true, "1": true}, holds: map[string]*gpuHold{}, gpuProof: map[string]*GPUProof{},
		wake: make(chan struct{}, 1)}
}

func setHold(t *testing.T, poll, most time.Duration) {
	p, m := holdPoll, holdMax
	holdPoll, holdMax = poll, most
	t.Cleanup(func() { holdPoll, holdMax = p, m })
}

// A GPU of the killed daemon's lease is held (not free) until its memory is back within
// --gpu-idle-mib of the baseline the lease recorded; the proof (baseline, observed, how
// long) then goes to the next cell leased that GPU, once.
func TestHoldUntilBaseline(t *testing.T) {
	setHold(t, 5*time.Millisecond, time.Minute)
	f := &fakeGPUs{avail: true, used: func(n int) uint64 {
		if n <= 4 {
			return 20 << 30 // the orphan's memory, not yet freed
		}
		return 530 * mibB
	}}
	d := testDaemon(t, f)
	base := uint64(500 * mibB)
	leases := []*Lease{{Job: "j1", Cell: "c1", GPUs: []string{"0"}, Start: time.Now(), BaselineBytes: []*uint64{&base}}}
	d.recon = d.reconcileLedger(context.Background(), leases)
	if len(d.recon.Ledger) != 1 || d.recon.Ledger[0].Outcome != "not started" {
		t.Fatalf("ledger %+v; want the one lease, no server", d.recon.Ledger)
	}
	if d.freeGPU["0"] || !d.freeGPU["1"] || d.holds["0"] == nil {
		t.Fatalf("after reconcile: free %v holds %v; want GPU 0 held, 1 free", d.freeGPU, d.holds)
	}
	// A cell started meanwhile (on GPU 1, or none) gets the record without GPU 0's proof.
	var first Reconciliation
	if x := d.takeProof([]string{"1"}); x == nil || json.Unmarshal(x[ExtraLeaseProof], &first) != nil || first.GPUs != nil || len(first.Ledger) != 1 {
		t.Fatalf("first cell's note %s; want the record without a GPU proof", x[ExtraLeaseProof])
	}
	d.releaseHolds(context.Background())
	p := d.gpuProof["0"]
	if !d.freeGPU["0"] || p == nil || !p.Back || f.reads < 5 {
		t.Fatalf("after the hold: free %v proof %+v reads %d; want GPU 0 back and free after 5 reads", d.freeGPU["0"], p, f.reads)
	}
	if *p.BaselineMiB != 500 || *p.ObservedMiB != 530 || p.SlackMiB != 64 || p.WaitedS <= 0 || p.UUID != "GPU-a" {
		t.Errorf("proof %+v", p)
	}
	x := d.takeProof([]string{"0"})
	var rec Reconciliation
	if err := json.Unmarshal(x[ExtraLeaseProof], &rec); err != nil || len(rec.GPUs) != 1 || rec.GPUs[0].GPU != "0" || !rec.NVML {
		t.Fatalf("GPU 0's next cell: %s %v", x[ExtraLeaseProof], err)
	}
	if x := d.takeProof([]string{"0"}); x != nil {
		t.Errorf("the proof was given twice: %s", x[ExtraLeaseProof])
	}
}

// A GPU that does not come back is released after holdMax to the next cell's own idle
// check, its proof saying so and naming who holds it; nothing is signalled.
func TestHoldGivesUp(t *testing.T) {
	setHold(t, 5*time.Millisecond, 60*time.Millisecond)
	u := uint64(3 << 30)
	f := &fakeGPUs{avail: true, used: func(int) uint64 { return 8 << 30 },
		procs: []gpu.Process{{PID: 4242, GPUIndex: 1, UsedBytes: &u, Cmdline: "python other.py"}}}
	d := testDaemon(t, f)
	d.recon = d.reconcileLedger(context.Background(), []*Lease{{Job: "j1", Cell: "c1", GPUs: []string{"1"}, Start: time.Now()}})
	if lc := d.recon.Ledger[0]; len(lc.GPUProcesses) != 1 || lc.GPUProcesses[0].Ours || lc.GPUProcesses[0].PID != 4242 {
		t.Errorf("ledger's GPU processes %+v; want the foreign PID 4242", lc.GPUProcesses)
	}
	d.releaseHolds(context.Background())
	p := d.gpuProof["1"]
	if p == nil || p.Back || !d.freeGPU["1"] || len(p.Processes) != 1 || p.BaselineMiB != nil || *p.ObservedMiB != 8192 {
		t.Fatalf("proof %+v free %v; want not back, released, PID 4242 named, no baseline", p, d.freeGPU["1"])
	}
	if !strings.Contains(p.Why, "no baseline was recorded") || !strings.Contains(p.Why, "not back") {
		t.Errorf("why %q", p.Why)
	}
}

// Without NVML nothing is held and the proof records that no memory was read: numbers
// absent, never 0.
func TestHoldWithoutNVML(t *testing.T) {
	d := testDaemon(t, &fakeGPUs{used: func(int) uint64 { panic("memory read without NVML") }})
	d.recon = d.reconcileLedger(context.Background(), []*Lease{{Job: "j1", Cell: "c1", GPUs: []string{"0"}, Start: time.Now()}})
	if len(d.holds) != 0 || !d.freeGPU["0"] {
		t.Fatalf("holds %v free %v; want none held", d.holds, d.freeGPU)
	}
	if d.recon.NVML || d.recon.NVMLUnavailable != "test: no NVML" {
		t.Errorf("record %+v", d.recon)
	}
	x := d.takeProof([]string{"0"})
	s := string(x[ExtraLeaseProof])
	if !strings.Contains(s, "NVML unavailable") || strings.Contains(s, "baseline_mib") || strings.Contains(s, "observed_mib") {
		t.Errorf("proof without NVML: %s", s)
	}
}
