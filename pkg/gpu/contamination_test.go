package gpu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// TestForeignProcessesInWindow: a process that is not the server's tree on one of the
// cell's GPUs during the bench window is listed (pid, GPU, rounds, peak memory, command
// line); one seen only before the window is not; the server's own are never.
func TestForeignProcessesInWindow(t *testing.T) {
	const GiB = 1 << 30
	g0, g1 := newFake("GPU-0000", "NVIDIA H100 80GB HBM3"), newFake("GPU-1111", "NVIDIA H100 80GB HBM3")
	r := newRig(t, []int{100, 101}, g0, g1)
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "300"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "300", "cmdline"), []byte("python\x00train.py\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.s.procRoot = proc
	g1.procs = []nvml.ProcessInfo{{Pid: 101, UsedGpuMemory: 2 * GiB}}
	// t=0: a leftover (pid 400) before the window; t=1,2 in the window: pid 300 joins GPU0.
	g0.procs = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 3 * GiB}, {Pid: 400, UsedGpuMemory: GiB}}
	r.at(0)
	r.clk.Set(500 * time.Millisecond)
	r.s.MarkBenchStart()
	g0.set(func(f *fakeGPU) {
		f.procs = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 3 * GiB}, {Pid: 300, UsedGpuMemory: GiB}}
	})
	r.at(time.Second)
	g0.set(func(f *fakeGPU) {
		f.procs = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 3 * GiB}, {Pid: 300, UsedGpuMemory: 5 * GiB}}
	})
	r.at(2 * time.Second)
	r.clk.Set(2500 * time.Millisecond)
	r.s.MarkBenchEnd()
	sum := r.s.Stop()
	if sum.ProcessCheck != "" || len(sum.ForeignProcesses) != 1 {
		t.Fatalf("foreign %+v (check %q); want pid 300 only", sum.ForeignProcesses, sum.ProcessCheck)
	}
	f := sum.ForeignProcesses[0]
	if f.PID != 300 || f.GPUIndex != 0 || f.Rounds != 2 || f.PeakUsedBytes == nil || *f.PeakUsedBytes != 5*GiB || f.Cmdline != "python train.py" {
		t.Errorf("foreign process %+v; want pid 300 on GPU 0, 2 rounds, peak 5 GiB, cmdline python train.py", f)
	}
	js, _ := json.Marshal(sum)
	if !strings.Contains(string(js), `"foreign_processes":[{"pid":300`) {
		t.Errorf("summary JSON lacks the foreign process: %s", js)
	}
}

// TestForeignProcessesNotChecked: without the server's tree, without process lists, or
// with lists that never show the server (another PID namespace) the check is absent with
// the reason, never an empty (clean) list; with the server alone it is [].
func TestForeignProcessesNotChecked(t *testing.T) {
	tests := []struct {
		name  string
		pids  []int
		procs []nvml.ProcessInfo
		unsup bool
		want  string // "" → checked, none
	}{
		{"no tree", nil, []nvml.ProcessInfo{{Pid: 7}}, false, "not given the server's process tree"},
		{"not supported", []int{7}, nil, true, "not supported"},
		{"other namespace", []int{7}, []nvml.ProcessInfo{{Pid: 123456}}, false, "PID namespace"},
		{"server alone", []int{7, 8}, []nvml.ProcessInfo{{Pid: 8}}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFake("GPU-0", "NVIDIA H200")
			g.procs = tt.procs
			g.unsupported["procs"] = tt.unsup
			r := newRig(t, tt.pids, g)
			r.at(0)
			r.at(time.Second)
			sum := r.s.Stop()
			if tt.want == "" {
				if sum.ForeignProcesses == nil || len(sum.ForeignProcesses) != 0 || sum.ProcessCheck != "" {
					t.Errorf("foreign %v check %q; want checked and none ([])", sum.ForeignProcesses, sum.ProcessCheck)
				}
				js, _ := json.Marshal(sum)
				if !strings.Contains(string(js), `"foreign_processes":[]`) {
					t.Errorf("checked-and-none is not [] in the JSON: %s", js)
				}
				return
			}
			if sum.ForeignProcesses != nil || !strings.Contains(sum.ProcessCheck, tt.want) {
				t.Errorf("foreign %v check %q; want absent because %q", sum.ForeignProcesses, sum.ProcessCheck, tt.want)
			}
		})
	}
}

// TestXIDEvents: XID events NVML delivers while the sampler runs are in the summary with
// their GPU; a GPU that cannot register for them leaves the check absent with the reason.
func TestXIDEvents(t *testing.T) {
	g0, g1 := newFake("GPU-0000", "NVIDIA H100 80GB HBM3"), newFake("GPU-1111", "NVIDIA H100 80GB HBM3")
	lib := newMockLib(g0, g1)
	ch := xidEvents(lib)
	b := openMock(lib)
	clk := &fakeClock{}
	clk.Set(0)
	b.now = clk.Now
	devs, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	h1, _ := lib.DeviceGetHandleByIndex(1)
	ch <- nvml.EventData{Device: h1, EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	s := b.NewSampler(SamplerConfig{Devices: devs, Interval: time.Hour, PIDs: func() []int { return nil }})
	s.now = clk.Now
	s.Start(context.Background())
	sum := s.Stop()
	if sum.XIDCheck != "" || len(sum.XIDErrors) != 1 || sum.XIDErrors[0].GPUIndex != 1 || sum.XIDErrors[0].XID != 79 {
		t.Errorf("xid %+v (check %q); want Xid 79 on GPU 1", sum.XIDErrors, sum.XIDCheck)
	}

	g1.unsupported["events"] = true
	s = b.NewSampler(SamplerConfig{Devices: devs, Interval: time.Hour})
	s.Start(context.Background())
	sum = s.Stop()
	if sum.XIDErrors != nil || !strings.Contains(sum.XIDCheck, "GPU 1 does not report XID events") {
		t.Errorf("xid %+v (check %q); want absent: GPU 1 cannot register", sum.XIDErrors, sum.XIDCheck)
	}
}

// TestXIDWindow: only the events received inside the window count.
func TestXIDWindow(t *testing.T) {
	base := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	times := []time.Time{base, base.Add(2 * time.Second), base.Add(5 * time.Second)}
	i := 0
	now := func() time.Time { t := times[i]; i++; return t }
	f := &fakeWaiter{xids: []uint64{13, 48, 94}}
	x := &xidWatch{w: f, done: make(chan struct{})}
	stop := make(chan struct{})
	close(stop)
	x.run(stop, nil, now)
	got, why := x.result(base.Add(time.Second), base.Add(3*time.Second))
	if why != "" || len(got) != 1 || got[0].XID != 48 || !f.closed {
		t.Errorf("events %+v (%q), closed %v; want Xid 48 only, the set freed", got, why, f.closed)
	}
}

type fakeWaiter struct {
	xids   []uint64
	closed bool
}

func (f *fakeWaiter) wait(time.Duration) (int, uint64, bool, error) {
	if len(f.xids) == 0 {
		return 0, 0, false, nil
	}
	x := f.xids[0]
	f.xids = f.xids[1:]
	return 0, x, true, nil
}

func (f *fakeWaiter) close() { f.closed = true }
