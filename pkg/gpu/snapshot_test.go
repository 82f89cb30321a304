package gpu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestSnapshot(t *testing.T) {
	g0, g1 := newFake("GPU-aaaa", "NVIDIA H100 80GB HBM3"), newFake("GPU-bbbb", "NVIDIA H100 80GB HBM3")
	g0.set(func(f *fakeGPU) {
		f.memUsed, f.util, f.powerMW, f.temp = 40<<30, 87, 612_345, 64
		f.procs = []nvml.ProcessInfo{{Pid: 555, UsedGpuMemory: 39 << 30}}
	})
	g1.unsupported["power"] = true
	b := openMock(newMockLib(g0, g1))
	b.procRoot = t.TempDir()
	os.MkdirAll(filepath.Join(b.procRoot, "555"), 0o755)
	os.WriteFile(filepath.Join(b.procRoot, "555", "cmdline"), []byte("python3\x00tools/gpuserver/server.py\x00"), 0o644)

	s, err := TakeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{
		"driver 570.86.15, 2 GPU(s): 2xH100",
		"40.0 GiB / 80.0 GiB", "87%", "612 W", "64 C",
		"GPU 0  pid 555", "39.0 GiB  python3 tools/gpuserver/server.py",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text snapshot lacks %q:\n%s", want, out)
		}
	}
	// GPU 1 reports no power: a dash, not "0 W".
	lines := strings.Split(out, "\n")
	var row1 string
	for _, l := range lines {
		if strings.HasPrefix(l, "1 ") {
			row1 = l
		}
	}
	if !strings.Contains(row1, " - ") || strings.Contains(row1, "0 W") {
		t.Errorf("GPU 1 row = %q, want '-' for the unsupported power", row1)
	}

	var js strings.Builder
	if err := s.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal([]byte(js.String()), &back); err != nil {
		t.Fatal(err)
	}
	if back.Label != "2xH100" || len(back.GPUs) != 2 || back.GPUs[0].UUID != "GPU-aaaa" ||
		back.GPUs[0].Metrics == nil || *back.GPUs[0].Metrics.PowerMW != 612_345 || back.GPUs[1].Metrics.PowerMW != nil ||
		len(back.GPUs[0].Processes) != 1 || back.GPUs[0].Processes[0].Cmdline != "python3 tools/gpuserver/server.py" {
		t.Errorf("JSON snapshot round trip = %+v\n%s", back, js.String())
	}

	null, err := TakeSnapshot(nullBackend{reason: "NVML (libnvidia-ml.so.1) was not found"})
	if err != nil || null.Available {
		t.Fatalf("null snapshot = %+v, %v", null, err)
	}
	text.Reset()
	null.WriteText(&text)
	if !strings.Contains(text.String(), "no NVIDIA GPU telemetry on this machine: NVML (libnvidia-ml.so.1) was not found") {
		t.Errorf("null text = %q", text.String())
	}
}

// `moecapd gpus --json` carries both NVML readings, so they can be set beside nvidia-smi's.
func TestSnapshotShowsV1AndV2(t *testing.T) {
	b := openMock(newMockLib(idleH200("GPU-h200")))
	s, err := TakeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	var js strings.Builder
	if err := s.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var raw struct {
		GPUs []struct {
			Memory map[string]any `json:"memory"`
		} `json:"gpus"`
	}
	if err := json.Unmarshal([]byte(js.String()), &raw); err != nil {
		t.Fatal(err)
	}
	m := raw.GPUs[0].Memory
	want := map[string]any{"api": "v2", "used_bytes": 0.0, "reserved_bytes": float64(615 * MiB), "v1_used_bytes": float64(615 * MiB), "v2_used_bytes": 0.0}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("memory.%s = %v, want %v\n%s", k, m[k], v, js.String())
		}
	}
	var text strings.Builder
	s.WriteText(&text)
	if !strings.Contains(text.String(), "0 B / 140.4 GiB (v2, reserved 615 MiB, v1 used 615 MiB)") {
		t.Errorf("text snapshot lacks both readings:\n%s", text.String())
	}
}
