package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
)

type doctor struct {
	w        io.Writer
	problems int
}

func (d *doctor) ok(what, detail string) { fmt.Fprintf(d.w, "  ok   %-22s %s\n", what, detail) }
func (d *doctor) bad(what, detail, fix string) {
	d.problems++
	fmt.Fprintf(d.w, "  FAIL %-22s %s\n       fix: %s\n", what, detail, fix)
}

// DoctorRequest is moecapd doctor: what to check.
type DoctorRequest struct {
	CondaRoot, SGLangEnv, VLLMEnv string
	Ports                         []int
	Host                          string
	GPUIdleMiB                    int
	Timeout                       time.Duration // each python check
	Log                           *zap.Logger
	Out                           io.Writer
}

// Doctor checks the conda root and envs, moe_cap and the backends in each env, ports and
// GPUs, writing each problem with its fix; problems make a usage error (exit 2).
func Doctor(ctx context.Context, req DoctorRequest) error {
	d := &doctor{w: req.Out}
	d.conda(ctx, req)
	d.ports(req.Host, req.Ports)
	d.gpus(req.Log, req.GPUIdleMiB)
	if d.problems > 0 {
		return exitcode.New(exitcode.Usage, fmt.Errorf("%d problem(s) found; fixes are listed above", d.problems)) // problems of the setup, not of moecapd
	}
	fmt.Fprintln(d.w, "all checks passed")
	return nil
}

// conda checks the conda root, then each backend's env: python, moe_cap and the backend.
func (d *doctor) conda(ctx context.Context, req DoctorRequest) {
	search := launcher.CondaSearch{Flag: req.CondaRoot, CondaExe: os.Getenv("CONDA_EXE"),
		MambaRootPrefix: os.Getenv("MAMBA_ROOT_PREFIX"), Home: os.Getenv("HOME")}
	fmt.Fprintln(d.w, "conda")
	root, err := launcher.ResolveCondaRoot(search)
	if err != nil {
		d.bad("conda root", err.Error(), "install Miniforge (https://conda-forge.org/download) or pass --conda-root DIR")
		return
	}
	d.ok("conda root", root)
	for _, b := range []struct{ backend, env, module, pin string }{
		{launcher.BackendSGLang, req.SGLangEnv, "sglang", "sglang==0.5.8"},
		{launcher.BackendVLLM, req.VLLMEnv, "vllm", "vllm==0.11.0"},
	} {
		fmt.Fprintf(d.w, "%s\n", b.backend)
		prefix, err := launcher.ResolveEnv(root, b.env, b.backend)
		if err != nil {
			d.bad("env "+b.env, err.Error(), fmt.Sprintf("conda env create -f envs/%s.yml", b.backend))
			continue
		}
		d.ok("env "+b.env, prefix)
		to := req.Timeout
		if out, err := launcher.RunInEnv(ctx, root, b.env, []string{"python", "-c", "import sys; print(sys.executable, sys.version.split()[0])"}, to); err != nil {
			d.bad("python", fmt.Sprintf("%v: %s", err, lastLine(out)), fmt.Sprintf("recreate the env: conda env create -f envs/%s.yml --force", b.backend))
		} else {
			d.ok("python", out)
		}
		if out, err := launcher.RunInEnv(ctx, root, b.env, []string{"python", "-c", "import moe_cap, os; print(os.path.dirname(moe_cap.__file__))"}, to); err != nil {
			d.bad("moe_cap", "does not import: "+lastLine(out), fmt.Sprintf("conda activate %s && pip install git+https://github.com/Auto-CAP/MoE-CAP.git", b.env))
		} else {
			d.ok("moe_cap", out)
		}
		if out, err := launcher.RunInEnv(ctx, root, b.env, []string{"python", "-c", "import " + b.module + "; print(" + b.module + ".__version__)"}, to); err != nil {
			d.bad(b.module, "does not import: "+lastLine(out), fmt.Sprintf("conda activate %s && pip install %s", b.env, b.pin))
		} else {
			d.ok(b.module+" version", out)
		}
	}
}

// ports checks that the server ports are free on host.
func (d *doctor) ports(host string, ports []int) {
	fmt.Fprintln(d.w, "ports")
	for _, p := range ports {
		if err := launcher.PortFree(host, p); err != nil {
			d.bad(fmt.Sprintf("port %d", p), err.Error(), fmt.Sprintf("find the holder with `ss -ltnp 'sport = :%d'` and stop it, or run cells with --port 0", p))
		} else {
			d.ok(fmt.Sprintf("port %d", p), "free on "+host)
		}
	}
}

// gpus checks NVML, each GPU's memory against the idle limit and the GPUs' processes.
func (d *doctor) gpus(log *zap.Logger, idleMiB int) {
	fmt.Fprintln(d.w, "gpus")
	gb, _ := gpu.Open(log, false)
	defer gb.Close()
	if !gb.Available() {
		d.bad("nvml", gb.Reason(), "install the NVIDIA driver (nvidia-smi must work); --backend sim runs without a GPU")
		return
	}
	devs, err := gb.Devices()
	if err != nil {
		d.bad("nvml", err.Error(), "check nvidia-smi")
		return
	}
	d.ok("gpus", fmt.Sprintf("%s, driver %s", gpu.Label(devs), gb.DriverVersion()))
	// Both NVML readings, to set beside nvidia-smi: the idle check uses v2's used.
	if mem, err := gb.Memory(devs); err == nil {
		limit := uint64(max(idleMiB, 0)) << 20
		for _, dv := range devs {
			m := mem[dv.Index]
			txt := fmt.Sprintf("NVML %s: used %d MiB", m.API, m.Used>>20)
			if m.Reserved != nil {
				txt += fmt.Sprintf(", reserved %d MiB", *m.Reserved>>20)
			}
			if m.API == gpu.MemAPIv2 && m.V1Used != nil {
				txt += fmt.Sprintf(" (v1 used %d MiB)", *m.V1Used>>20)
			}
			what := fmt.Sprintf("gpu %d memory", dv.Index)
			if m.Used > limit {
				d.bad(what, txt, fmt.Sprintf("over the idle limit of %d MiB: end what holds it, or raise --gpu-idle-mib", limit>>20))
			} else {
				d.ok(what, txt+fmt.Sprintf("; idle (limit %d MiB)", limit>>20))
			}
		}
	}
	if ps, err := gb.ComputeProcesses(devs); err == nil && len(ps) > 0 {
		var s []string
		for _, p := range ps {
			s = append(s, fmt.Sprintf("pid %d on GPU %d (%s)", p.PID, p.GPUIndex, p.Cmdline))
		}
		d.bad("gpu processes", strings.Join(s, "; "), "stop them before benchmarking; a busy GPU skews every number")
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
