package gpu

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestOpenFallsBackToNullAndNoticesOnce(t *testing.T) {
	cases := []struct {
		name   string
		lib    *mock.Interface
		reason string
	}{
		{"no library", &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}, "libnvidia-ml.so.1"},
		{"driver not loaded", &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }}, "kernel driver is not loaded"},
		{"no GPU", &mock.Interface{
			InitFunc:           func() nvml.Return { return nvml.SUCCESS },
			ShutdownFunc:       func() nvml.Return { return nvml.SUCCESS },
			DeviceGetCountFunc: func() (int, nvml.Return) { return 0, nvml.SUCCESS },
		}, "sees no GPU"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			b, err := OpenWith(c.lib, zap.New(core), false)
			if err != nil {
				t.Fatalf("OpenWith(require=false) error = %v, want a null backend", err)
			}
			if b.Available() {
				t.Fatalf("Available() = true, want false")
			}
			if !strings.Contains(b.Reason(), c.reason) {
				t.Errorf("Reason() = %q, want it to mention %q", b.Reason(), c.reason)
			}
			if n := logs.Len(); n != 0 {
				t.Fatalf("Open logged %d entries, want none (the notice is NoticeUnavailable's, where GPUs are sampled)", n)
			}
			noticeOnce = sync.Once{} // a fresh process
			NoticeUnavailable(zap.New(core), b)
			NoticeUnavailable(zap.New(core), b)
			if n := logs.Len(); n != 1 {
				t.Fatalf("NoticeUnavailable twice logged %d entries, want exactly one warning", n)
			}
			e := logs.All()[0]
			if e.Level != zapcore.WarnLevel || !strings.Contains(e.Message, "--require-gpu") || e.ContextMap()["reason"] != b.Reason() {
				t.Errorf("log = %v %q %v, want a warning that mentions --require-gpu with the reason", e.Level, e.Message, e.ContextMap())
			}
			if _, err := b.Devices(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Devices() error = %v, want ErrUnavailable", err)
			}
			// The null sampler still works: no rows, a summary saying why.
			var csv strings.Builder
			s := b.NewSampler(SamplerConfig{CSV: &csv})
			s.Start(t.Context())
			s.MarkBenchStart()
			s.MarkBenchEnd()
			sum := s.Stop()
			if sum.Available || sum.Reason != b.Reason() || sum.EnergyJ != nil || sum.BenchWindowS == nil {
				t.Errorf("null summary = %+v, want unavailable with the reason and a bench window only", sum)
			}
			if csv.String() != CSVHeader+"\n" {
				t.Errorf("null CSV = %q, want the header only", csv.String())
			}

			_, err = OpenWith(c.lib, zap.NewNop(), true)
			if err == nil || !strings.Contains(err.Error(), "GPUs required") || !strings.Contains(err.Error(), "nvidia-smi") {
				t.Errorf("OpenWith(require=true) error = %v, want one that says GPUs are required and how to check", err)
			}
		})
	}
}

func TestDevicesAndLabel(t *testing.T) {
	lib := newMockLib(newFake("GPU-aaaa-1111", "NVIDIA H100 80GB HBM3"), newFake("GPU-bbbb-2222", "NVIDIA H100 80GB HBM3"))
	b := openMock(lib)
	devs, err := b.Devices()
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{Index: 0, UUID: "GPU-aaaa-1111", Name: "NVIDIA H100 80GB HBM3", MemoryTotal: 80 << 30, Family: "H100"},
		{Index: 1, UUID: "GPU-bbbb-2222", Name: "NVIDIA H100 80GB HBM3", MemoryTotal: 80 << 30, Family: "H100"},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Fatalf("Devices() = %+v, want %+v", devs, want)
	}
	if got := Label(devs); got != "2xH100" {
		t.Errorf("Label = %q, want 2xH100", got)
	}
	if got := b.DriverVersion(); got != "570.86.15" {
		t.Errorf("DriverVersion = %q", got)
	}
}

func TestFamilyAndLabel(t *testing.T) {
	fam := []struct{ name, want string }{
		{"NVIDIA H100 80GB HBM3", "H100"},
		{"NVIDIA H100 NVL", "H100"},
		{"NVIDIA H100 PCIe", "H100"},
		{"NVIDIA H200", "H200"},
		{"NVIDIA H200 NVL", "H200"},
		{"NVIDIA A100-SXM4-80GB", "A100"},
		{"NVIDIA A100 80GB PCIe", "A100"},
		{"NVIDIA GH200 480GB", "GH200-480GB"},
		{"Tesla V100-SXM2-16GB", "Tesla-V100-SXM2-16GB"},
		{"NVIDIA GeForce RTX 4090", "GeForce-RTX-4090"},
		{"NVIDIA L40S", "L40S"},
		{"???", "GPU"},
	}
	for _, c := range fam {
		if got := Family(c.name); got != c.want {
			t.Errorf("Family(%q) = %q, want %q", c.name, got, c.want)
		}
	}
	n := func(k int, name string) []Device {
		var ds []Device
		for range k {
			ds = append(ds, Device{Name: name, Family: Family(name)})
		}
		return ds
	}
	labels := []struct {
		devs []Device
		want string
	}{
		{n(1, "NVIDIA H100 80GB HBM3"), "1xH100"},
		{n(8, "NVIDIA H200"), "8xH200"},
		{n(2, "NVIDIA A100-SXM4-80GB"), "2xA100"},
		{append(n(2, "NVIDIA H100 PCIe"), n(1, "NVIDIA A100 80GB PCIe")...), "2xH100+1xA100"},
		{[]Device{{Name: "NVIDIA H200"}}, "1xH200"}, // family derived when the caller left it empty
		{nil, ""},
	}
	for _, c := range labels {
		if got := Label(c.devs); got != c.want {
			t.Errorf("Label(%d devices) = %q, want %q", len(c.devs), got, c.want)
		}
	}
}

func TestResolveCUDAVisibleDevices(t *testing.T) {
	lib := newMockLib(
		newFake("GPU-1a2b3c4d-0000-1111-2222-333344445555", "NVIDIA H100 80GB HBM3"),
		newFake("GPU-1a2bffff-0000-1111-2222-333344445555", "NVIDIA H100 80GB HBM3"),
		newFake("GPU-9f8e7d6c-0000-1111-2222-333344445555", "NVIDIA H100 80GB HBM3"),
		newFake("GPU-77777777-0000-1111-2222-333344445555", "NVIDIA H100 80GB HBM3"),
	)
	b := openMock(lib)
	ok := []struct {
		spec string
		want []int
	}{
		{"", []int{0, 1, 2, 3}},
		{"  ", []int{0, 1, 2, 3}},
		{"2", []int{2}},
		{"3,1", []int{3, 1}},
		{" 0 , 2 ", []int{0, 2}},
		{"GPU-9f8e7d6c-0000-1111-2222-333344445555", []int{2}},
		{"GPU-9f8e", []int{2}},
		{"gpu-77777777", []int{3}},
		{"GPU-1a2b3,1", []int{0, 1}},
	}
	for _, c := range ok {
		devs, err := b.Resolve(c.spec)
		if err != nil {
			t.Errorf("Resolve(%q) error = %v, want GPUs %v", c.spec, err, c.want)
			continue
		}
		var got []int
		for _, d := range devs {
			got = append(got, d.Index)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Resolve(%q) = %v, want %v", c.spec, got, c.want)
		}
	}
	bad := []struct{ spec, msg string }{
		{"4", "no GPU with index 4"},
		{"-1", "no GPU with index -1"},
		{"0,,1", "empty entry"},
		{"GPU-1a2b", "matches 2 GPUs"},
		{"GPU-deadbeef", "no GPU has a UUID starting with"},
		{"MIG-1234", "MIG instance"},
		{"foo", "neither a GPU index nor a GPU-UUID"},
		{"1,GPU-1a2bf", "GPU 1 is listed twice"},
	}
	for _, c := range bad {
		_, err := b.Resolve(c.spec)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Resolve(%q) error = %v, want one containing %q", c.spec, err, c.msg)
		}
		if err != nil && !strings.Contains(err.Error(), "CUDA_VISIBLE_DEVICES") {
			t.Errorf("Resolve(%q) error = %v, want it to name CUDA_VISIBLE_DEVICES", c.spec, err)
		}
	}
}

func TestComputeProcessesReadsCmdline(t *testing.T) {
	g0, g1 := newFake("GPU-a", "NVIDIA H200"), newFake("GPU-b", "NVIDIA H200")
	g0.procs = []nvml.ProcessInfo{{Pid: 4321, UsedGpuMemory: 3 << 30}, {Pid: 99, UsedGpuMemory: ^uint64(0)}}
	g1.procs = []nvml.ProcessInfo{{Pid: 4322, UsedGpuMemory: 1 << 30}}
	b := openMock(newMockLib(g0, g1))
	b.procRoot = t.TempDir()
	for pid, cmd := range map[string]string{"4321": "python\x00-m\x00sglang.launch_server\x00", "4322": "python\x00worker\x00"} {
		if err := os.MkdirAll(filepath.Join(b.procRoot, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(b.procRoot, pid, "cmdline"), []byte(cmd), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	devs, _ := b.Devices()
	ps, err := b.ComputeProcesses(devs)
	if err != nil {
		t.Fatal(err)
	}
	u := func(v uint64) *uint64 { return &v }
	want := []Process{
		{PID: 99, GPUIndex: 0}, // memory unknown to the driver, process not visible
		{PID: 4321, GPUIndex: 0, UsedBytes: u(3 << 30), Cmdline: "python -m sglang.launch_server"},
		{PID: 4322, GPUIndex: 1, UsedBytes: u(1 << 30), Cmdline: "python worker"},
	}
	if !reflect.DeepEqual(ps, want) {
		t.Errorf("ComputeProcesses = %+v, want %+v", ps, want)
	}
	used, err := b.MemoryUsed(devs)
	if err != nil {
		t.Fatal(err)
	}
	if used[0] != 0 || len(used) != 2 {
		t.Errorf("MemoryUsed = %v, want two GPUs", used)
	}
}

func TestReasonNames(t *testing.T) {
	got := ReasonNames(nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwThermalSlowdown | 1<<20)
	want := []string{"sw_power_cap", "hw_thermal_slowdown", "0x100000"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReasonNames = %v, want %v", got, want)
	}
	if got := ReasonNames(0); got == nil || len(got) != 0 {
		t.Errorf("ReasonNames(0) = %#v, want an empty non-nil list", got)
	}
}
