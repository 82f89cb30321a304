package cell

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// fakeGPUs is one GPU whose memory stays held for a while after a process dies, as a CUDA
// context's does. It satisfies gpu.Backend with what the orphan sweep uses.
type fakeGPUs struct {
	mu       sync.Mutex
	holder   int           // PID whose memory it holds
	linger   time.Duration // how long the memory outlives the holder
	diedAt   time.Time
	freedAt  time.Time
	held     uint64
	baseline uint64
}

func (f *fakeGPUs) used() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.diedAt.IsZero() && syscall.Kill(f.holder, 0) != nil {
		f.diedAt = time.Now()
	}
	if !f.diedAt.IsZero() && time.Since(f.diedAt) >= f.linger {
		if f.freedAt.IsZero() {
			f.freedAt = time.Now()
		}
		return f.baseline
	}
	return f.held
}

var fakeDev = gpu.Device{Index: 0, UUID: "GPU-fake", Name: "NVIDIA H200", Family: "H200"}

func (f *fakeGPUs) Available() bool                           { return true }
func (f *fakeGPUs) Reason() string                            { return "" }
func (f *fakeGPUs) DriverVersion() string                     { return "570.0" }
func (f *fakeGPUs) Devices() ([]gpu.Device, error)            { return []gpu.Device{fakeDev}, nil }
func (f *fakeGPUs) Resolve(string) ([]gpu.Device, error)      { return []gpu.Device{fakeDev}, nil }
func (f *fakeGPUs) Read([]gpu.Device) ([]gpu.Reading, error)  { return nil, nil }
func (f *fakeGPUs) NewSampler(gpu.SamplerConfig) *gpu.Sampler { return nil }
func (f *fakeGPUs) Close()                                    {}
func (f *fakeGPUs) MemoryUsed([]gpu.Device) (map[int]uint64, error) {
	return map[int]uint64{0: f.used()}, nil
}
func (f *fakeGPUs) Memory([]gpu.Device) (map[int]gpu.MemoryInfo, error) {
	u := f.used()
	return map[int]gpu.MemoryInfo{0: {API: gpu.MemAPIv2, Total: 141 << 30, Used: u, V2Used: &u}}, nil
}
func (f *fakeGPUs) ComputeProcesses([]gpu.Device) ([]gpu.Process, error) {
	if syscall.Kill(f.holder, 0) == nil {
		return []gpu.Process{{PID: f.holder, GPUIndex: 0}}, nil
	}
	return []gpu.Process{}, nil
}

// orphanCell leaves a real server process recorded in a state file whose supervisor is
// dead, in a cell whose manifest says running in phase.
func orphanCell(t *testing.T, root string, ph Phase, baseline uint64) (*launcher.Process, string) {
	t.Helper()
	dir := filepath.Join(root, "qwen1_5.1xH200.4k-1k.bs1.sglang")
	os.MkdirAll(dir, 0o755)
	p, err := launcher.Start(launcher.Spec{Argv: []string{"sleep", "3600"}, Env: os.Environ(), LogPath: filepath.Join(dir, "server.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	dead := exec.Command("true")
	dead.Run()
	st := launcher.NewState(p, nil, 0)
	st.Supervisor, st.SupStart = dead.Process.Pid, 1
	st.GPUs = []launcher.StateGPU{{Index: 0, UUID: fakeDev.UUID, BaselineBytes: &baseline}}
	if err := launcher.WriteState(dir, st); err != nil {
		t.Fatal(err)
	}
	sup := launcher.ProcessID{PID: dead.Process.Pid, StartTicks: 1, BootID: launcher.BootID()}
	if err := WriteManifest(dir, &Manifest{SchemaVersion: SchemaVersion, Status: StatusRunning, Phase: ph, Supervisor: &sup}); err != nil {
		t.Fatal(err)
	}
	return p, dir
}

// Ending an orphan waits until its GPU is back to the baseline recorded before it launched,
// so the next preflight does not find the GPU busy with a dead server's memory; bounded.
func TestEndOrphansWaitsForGPUBaseline(t *testing.T) {
	cases := []struct {
		name    string
		linger  time.Duration
		max     time.Duration
		freed   bool
		logWant string
	}{
		{"memory released a moment after the process", 600 * time.Millisecond, 10 * time.Second, true, "GPUs back to baseline"},
		{"memory never released: bounded", time.Hour, 700 * time.Millisecond, false, "not back to baseline"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "runs[1]")
			p, dir := orphanCell(t, root, PhaseReady, 615<<20)
			g := &fakeGPUs{holder: p.PID(), linger: c.linger, held: 70 << 30, baseline: 615 << 20}
			core, logs := observer.New(zap.InfoLevel)
			t0 := time.Now()
			EndOrphans(t.Context(), root, SweepConfig{Grace: time.Second, GPUs: g, SlackBytes: 512 << 20, GPUWaitMax: c.max, Log: zap.New(core)})
			took := time.Since(t0)
			if !p.Exited() {
				t.Fatal("orphan not ended")
			}
			if logs.FilterMessageSnippet("waiting for the ended server's GPUs").Len() != 1 || logs.FilterMessageSnippet(c.logWant).Len() != 1 {
				t.Errorf("log lacks the wait's start or %q: %v", c.logWant, logs.All())
			}
			g.mu.Lock()
			freedAt := g.freedAt
			g.mu.Unlock()
			if c.freed && (freedAt.IsZero() || time.Since(freedAt) > took) {
				t.Errorf("EndOrphans returned before the GPU was back to baseline (took %s)", took)
			}
			if !c.freed && (took < c.max || took > c.max+5*time.Second) {
				t.Errorf("EndOrphans took %s, want about the %s bound", took, c.max)
			}
			m, err := ReadManifest(dir)
			if err != nil || m.Status != StatusInterrupted || m.Failure == nil || m.Failure.Phase != PhaseReady || m.Phase != "" {
				t.Errorf("manifest %+v (%v), want interrupted during ready", m, err)
			}
			if !strings.Contains(m.Failure.Message, "ended by a later run") {
				t.Errorf("message %q", m.Failure.Message)
			}
		})
	}
}
