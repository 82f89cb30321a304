package gpu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func fastPoll(t *testing.T) {
	old := pollInterval
	pollInterval = 5 * time.Millisecond
	t.Cleanup(func() { pollInterval = old })
}

func TestWaitIdle(t *testing.T) {
	fastPoll(t)

	t.Run("idle at once", func(t *testing.T) {
		g := newFake("GPU-i", "NVIDIA H100 80GB HBM3")
		g.memUsed = 300 * MiB // the driver's own reservation
		b := openMock(newMockLib(g))
		devs, _ := b.Devices()
		if err := WaitIdle(t.Context(), b, devs, 1024*MiB, 0, nil); err != nil {
			t.Errorf("WaitIdle = %v, want nil", err)
		}
	})

	t.Run("becomes idle while waiting", func(t *testing.T) {
		g := newFake("GPU-w", "NVIDIA H100 80GB HBM3")
		g.memUsed, g.procs = 40<<30, []nvml.ProcessInfo{{Pid: 77, UsedGpuMemory: 40 << 30}}
		b := openMock(newMockLib(g))
		devs, _ := b.Devices()
		go func() {
			time.Sleep(30 * time.Millisecond)
			g.set(func(f *fakeGPU) { f.memUsed, f.procs = 0, nil })
		}()
		start := time.Now()
		if err := WaitIdle(t.Context(), b, devs, 1024*MiB, 5*time.Second, nil); err != nil {
			t.Fatalf("WaitIdle = %v, want nil once the process left", err)
		}
		if d := time.Since(start); d < 25*time.Millisecond || d > 2*time.Second {
			t.Errorf("WaitIdle returned after %s, want just after the GPU freed (~30ms)", d)
		}
	})

	t.Run("stays busy: names PIDs and command lines", func(t *testing.T) {
		g0, g1 := newFake("GPU-b0", "NVIDIA H100 80GB HBM3"), newFake("GPU-b1", "NVIDIA H100 80GB HBM3")
		g1.memUsed, g1.procs = 20<<30, []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 20 << 30}}
		b := openMock(newMockLib(g0, g1))
		b.procRoot = t.TempDir()
		os.MkdirAll(filepath.Join(b.procRoot, "4242"), 0o755)
		os.WriteFile(filepath.Join(b.procRoot, "4242", "cmdline"), []byte("python\x00-m\x00vllm.entrypoints.openai.api_server\x00"), 0o644)
		devs, _ := b.Devices()
		err := WaitIdle(t.Context(), b, devs, 1024*MiB, 20*time.Millisecond, nil)
		var busy *BusyError
		if !errors.As(err, &busy) {
			t.Fatalf("WaitIdle = %v, want a *BusyError", err)
		}
		if len(busy.Processes) != 1 || busy.Processes[0].PID != 4242 || busy.Used[1] != 20<<30 || len(busy.Used) != 1 {
			t.Errorf("BusyError = %+v, want pid 4242 on GPU 1 with 20 GiB", busy)
		}
		for _, s := range []string{"GPU 1 has 20.0 GiB in use", "pid 4242", "vllm.entrypoints.openai.api_server", "--gpu-wait"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q lacks %q", err, s)
			}
		}
	})

	t.Run("memory held by an invisible process", func(t *testing.T) {
		g := newFake("GPU-c", "NVIDIA H100 80GB HBM3")
		g.memUsed = 10 << 30
		b := openMock(newMockLib(g))
		devs, _ := b.Devices()
		err := WaitIdle(t.Context(), b, devs, 1024*MiB, 0, nil)
		if err == nil || !strings.Contains(err.Error(), "no compute process is visible") {
			t.Errorf("WaitIdle = %v, want an error explaining the memory has no visible owner", err)
		}
	})

	t.Run("context ends the wait", func(t *testing.T) {
		g := newFake("GPU-x", "NVIDIA H100 80GB HBM3")
		g.memUsed = 10 << 30
		b := openMock(newMockLib(g))
		devs, _ := b.Devices()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		err := WaitIdle(ctx, b, devs, 1024*MiB, time.Hour, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WaitIdle = %v, want the context's error", err)
		}
	})

	t.Run("null backend checks nothing", func(t *testing.T) {
		if err := WaitIdle(t.Context(), nullBackend{reason: "none"}, nil, 0, time.Hour, nil); err != nil {
			t.Errorf("WaitIdle on null = %v, want nil", err)
		}
	})
}

func TestWaitMemoryBaseline(t *testing.T) {
	fastPoll(t)
	g0, g1 := newFake("GPU-0", "NVIDIA H200"), newFake("GPU-1", "NVIDIA H200")
	g0.memUsed, g1.memUsed = 600<<20, 30<<30
	g1.procs = []nvml.ProcessInfo{{Pid: 31337, UsedGpuMemory: 29 << 30}}
	b := openMock(newMockLib(g0, g1))
	devs, _ := b.Devices()
	baseline := map[int]uint64{0: 500 << 20, 1: 500 << 20}

	go func() {
		time.Sleep(20 * time.Millisecond)
		g1.set(func(f *fakeGPU) { f.memUsed, f.procs = 510<<20, nil })
	}()
	procs, err := WaitMemoryBaseline(t.Context(), b, devs, baseline, 256<<20, 5*time.Second)
	if err != nil || procs != nil {
		t.Fatalf("WaitMemoryBaseline = %v, %v; want memory back within the threshold", procs, err)
	}

	g1.set(func(f *fakeGPU) {
		f.memUsed, f.procs = 30<<30, []nvml.ProcessInfo{{Pid: 31337, UsedGpuMemory: 29 << 30}}
	})
	procs, err = WaitMemoryBaseline(t.Context(), b, devs, baseline, 256<<20, 30*time.Millisecond)
	if err == nil || len(procs) != 1 || procs[0].PID != 31337 || procs[0].GPUIndex != 1 {
		t.Fatalf("WaitMemoryBaseline = %+v, %v; want pid 31337 on GPU 1 and an error", procs, err)
	}
	for _, s := range []string{"GPU 1 uses 30.0 GiB, baseline 500 MiB", "pid 31337", "kill"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "GPU 0 uses") {
		t.Errorf("error %q blames GPU 0, which is within the threshold", err)
	}
}
