package gpu

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

const MiB = 1 << 20

// idleH200 is what an idle H200 reads on driver 570: v1 used 615 MiB (the reservation
// counted as used), v2 used 0 and reserved 615 MiB, which is what nvidia-smi shows.
func idleH200(uuid string) *fakeGPU {
	g := newFake(uuid, "NVIDIA H200")
	g.memTotal = 143771 * MiB
	g.memReserved = 615 * MiB
	return g
}

// withoutSymbol makes lib answer "not found" for the named NVML symbols, as an older driver's
// library does.
func withoutSymbol(lib *mock.Interface, names ...string) {
	lib.ExtensionsFunc = func() nvml.ExtendedInterface {
		return &mock.ExtendedInterface{LookupSymbolFunc: func(s string) error {
			for _, n := range names {
				if s == n {
					return errors.New("undefined symbol: " + s)
				}
			}
			return nil
		}}
	}
}

func TestMemoryV2OnIdleH200(t *testing.T) {
	fastPoll(t)
	cases := []struct {
		name     string
		setup    func(lib *mock.Interface, g *fakeGPU)
		api      string
		used     uint64
		reserved *uint64
		idle     bool // under the default 512 MiB limit
	}{
		{"v2 driver: used excludes the reservation", func(*mock.Interface, *fakeGPU) {}, MemAPIv2, 0, ptr(uint64(615 * MiB)), true},
		{"v2 symbol present but the GPU says not supported: v1", func(_ *mock.Interface, g *fakeGPU) { g.unsupported["memv2"] = true }, MemAPIv1, 615 * MiB, nil, false},
		{"library without the v2 symbol: v1, v2 never called", func(lib *mock.Interface, _ *fakeGPU) { withoutSymbol(lib, "nvmlDeviceGetMemoryInfo_v2") }, MemAPIv1, 615 * MiB, nil, false},
		{"old driver whose v1 used has no reservation in it", func(lib *mock.Interface, g *fakeGPU) {
			withoutSymbol(lib, "nvmlDeviceGetMemoryInfo_v2")
			g.memReserved, g.memUsed = 0, 3*MiB
		}, MemAPIv1, 3 * MiB, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := idleH200("GPU-h200")
			lib := newMockLib(g)
			c.setup(lib, g)
			b := openMock(lib)
			devs, err := b.Devices()
			if err != nil {
				t.Fatal(err)
			}
			mem, err := b.Memory(devs)
			if err != nil {
				t.Fatal(err)
			}
			mi := mem[0]
			if mi.API != c.api || mi.Used != c.used || (mi.Reserved == nil) != (c.reserved == nil) ||
				(c.reserved != nil && *mi.Reserved != *c.reserved) || mi.Total != 143771*MiB {
				t.Errorf("Memory = %+v, want api %s used %d reserved %v", mi, c.api, c.used, c.reserved)
			}
			if mi.V1Used == nil || *mi.V1Used != g.memUsed+g.memReserved {
				t.Errorf("v1 reading %v, want %d (what nvmlDeviceGetMemoryInfo says)", mi.V1Used, g.memUsed+g.memReserved)
			}
			if c.api == MemAPIv2 && (mi.V2Used == nil || *mi.V2Used != 0) {
				t.Errorf("v2 reading %v, want 0", mi.V2Used)
			}
			if c.api == MemAPIv1 && mi.V2Used != nil {
				t.Errorf("v2 reading %v on a driver without it, want absent", *mi.V2Used)
			}
			used, err := b.MemoryUsed(devs)
			if err != nil || used[0] != c.used {
				t.Errorf("MemoryUsed = %v, %v; want %d", used, err, c.used)
			}
			if rs, _ := b.Read(devs); rs[0].MemUsed == nil || *rs[0].MemUsed != c.used {
				t.Errorf("telemetry reading %v, want the same used %d as the checks", rs[0].MemUsed, c.used)
			}
			err = WaitIdle(t.Context(), b, devs, 512*MiB, 0, nil)
			if c.idle && err != nil {
				t.Errorf("idle GPU refused: %v", err)
			}
			if !c.idle {
				var busy *BusyError
				if !errors.As(err, &busy) {
					t.Fatalf("WaitIdle = %v, want a *BusyError", err)
				}
				for _, s := range []string{"615 MiB in use", "NVML v1", "idle limit of 512 MiB", "--gpu-idle-mib"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				// The limit is a setting: raising it accepts the same GPU.
				if err := WaitIdle(t.Context(), b, devs, 1024*MiB, 0, nil); err != nil {
					t.Errorf("with a 1 GiB limit: %v, want idle", err)
				}
			}
			if c.name == "library without the v2 symbol: v1, v2 never called" {
				h, _ := lib.DeviceGetHandleByIndex(0)
				if n := len(h.(*mock.Device).GetMemoryInfo_v2Calls()); n != 0 {
					t.Errorf("v2 called %d times on a library without the symbol (that would crash a real process)", n)
				}
			}
		})
	}
}

// A GPU really in use is still busy under v2, and the message says the reservation was not
// counted; --gpu-wait waits and tells the caller once.
func TestWaitIdleV2BusyThenFree(t *testing.T) {
	fastPoll(t)
	g := idleH200("GPU-busy")
	g.memUsed, g.procs = 70<<30, []nvml.ProcessInfo{{Pid: 4711, UsedGpuMemory: 70 << 30}}
	b := openMock(newMockLib(g))
	devs, _ := b.Devices()
	err := WaitIdle(t.Context(), b, devs, 512*MiB, 0, nil)
	if err == nil || !strings.Contains(err.Error(), "70.0 GiB in use (NVML v2, the driver's reservation of 615 MiB not counted)") {
		t.Fatalf("WaitIdle = %v, want busy with the v2 explanation", err)
	}
	notes := 0
	go func() {
		time.Sleep(50 * time.Millisecond)
		g.set(func(f *fakeGPU) { f.memUsed, f.procs = 0, nil })
	}()
	if err := WaitIdle(t.Context(), b, devs, 512*MiB, 10*time.Second, func(*BusyError) { notes++ }); err != nil {
		t.Fatalf("WaitIdle with a wait = %v, want idle once the process left", err)
	}
	if notes != 1 {
		t.Errorf("told about the wait %d times, want once (a 50 ms wait)", notes)
	}
	// A long wait is told again every noteEvery.
	old := noteEvery
	noteEvery = 20 * time.Millisecond
	defer func() { noteEvery = old }()
	g.set(func(f *fakeGPU) { f.memUsed = 70 << 30 })
	notes = 0
	if err := WaitIdle(t.Context(), b, devs, 512*MiB, 200*time.Millisecond, func(*BusyError) { notes++ }); err == nil {
		t.Fatal("WaitIdle = nil, want busy after the wait")
	}
	if notes < 3 {
		t.Errorf("told %d times over a 200 ms wait, want about every 20 ms", notes)
	}
}
