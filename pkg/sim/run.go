package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/moecapd/moecapd/pkg/passcost"
)

// FaultError is what Run returns when an injected fault ends the server; the process
// should exit with status 1, as the real server would.
type FaultError struct {
	Fault string
	Msg   string
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("sim: injected fault %s (--sim-fault): %s", e.Fault, e.Msg)
}

// ErrAddrInUse is returned (wrapped) when the port is taken.
var ErrAddrInUse = errors.New("address already in use")

const oomText = `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB is free.`

// Run is the whole simulated server process: it starts the worker processes, plays the
// start-up (or the start-up fault), listens, announces readiness the way the real
// wrapper does, and serves until ctx is cancelled, then shuts down gracefully.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return err
	}
	out := cfg.Out
	logf := func(format string, a ...any) { fmt.Fprintf(out, format+"\n", a...) }

	workers, err := startWorkers(cfg)
	if err != nil {
		return err
	}
	// Workers are ended on a clean stop only: a server that dies of a fault leaves them
	// running, as a crashed vLLM leaves its workers, for the supervisor to find.
	defer func() {
		if err == nil {
			stopWorkers(workers)
		}
	}()

	switch cfg.Fault {
	case FaultExitOnStart:
		logf("Traceback (most recent call last):")
		logf(`  File "<frozen runpy>", line 198, in _run_module_as_main`)
		logf(`  File "moe_cap/systems/%s.py", line 1, in <module>`, cfg.Flavor)
		logf("RuntimeError: simulated start-up failure (--sim-fault %s)", cfg.Fault)
		return &FaultError{Fault: cfg.Fault, Msg: "exited before listening"}
	case FaultOOMOnStart:
		logf("Loading safetensors checkpoint shards:  60%% Completed | 3/5")
		logf("%s", oomText)
		return &FaultError{Fault: cfg.Fault, Msg: "CUDA out of memory while loading weights"}
	}

	if err := loading(ctx, cfg.Startup, logf); err != nil {
		return nil // cancelled while loading: a clean stop
	}
	// The weights must fit (passcost's memory model, the one the feasibility prediction
	// uses): a real server dies of CUDA out-of-memory while loading them.
	if cfg.Undescribed != "" {
		logf("sim: WARNING model %q cannot be described (%s): passes take a fixed %v (prefill) and %v (decode), without a memory model; its CAP numbers will be absent",
			cfg.ServedModel, cfg.Undescribed, cfg.TTFT, cfg.TPOT)
	} else if mem := passcost.MemoryOf(cfg.Model, cfg.Hardware, cfg.TP); mem.WeightsPerGPU > mem.UsablePerGPU {
		logf("torch.OutOfMemoryError: CUDA out of memory. %s needs %.1f GiB of weights per GPU on %d×%s, %.1f GiB usable.",
			cfg.Model.Key, mem.WeightsPerGPU/(1<<30), cfg.TP, cfg.Hardware.Family, mem.UsablePerGPU/(1<<30))
		return &FaultError{Fault: "memory", Msg: "CUDA out of memory while loading weights (the model does not fit)"}
	}

	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			logf("ERROR:    [Errno 98] error while attempting to bind on address ('%s', %d): address already in use", cfg.Host, cfg.Port)
			logf("OSError: [Errno 98] Address already in use")
			return fmt.Errorf("sim: listen on %s: %w; stop whatever holds the port or pick another with --port", addr, ErrAddrInUse)
		}
		return fmt.Errorf("sim: listen on %s: %w", addr, err)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	defer srv.Close()
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()

	port := ln.Addr().(*net.TCPAddr).Port
	logf("INFO:     Started server process [%d]", os.Getpid())
	logf("INFO:     Uvicorn running on http://%s (Press CTRL+C to quit)", net.JoinHostPort(cfg.Host, strconv.Itoa(port)))
	logf("sim: listening addr=%s flavor=%s model=%s tp=%d max_running=%d", ln.Addr(), cfg.Flavor, cfg.Model.Key, cfg.TP, cfg.MaxRunning)

	var stuck <-chan time.Time
	if cfg.Fault == FaultNeverReady {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		stuck = t.C
		logf("Capturing CUDA graphs: 0%% (--sim-fault never-ready: /health stays 503)")
	} else {
		srv.SetReady(true)
		if cfg.Flavor == FlavorSGLang {
			logf("The server is fired up and ready to roll!")
		} else {
			logf("INFO:     Application startup complete.")
		}
		logf("sim: ready unix_ns=%d", time.Now().UnixNano())
	}

	loaded := 0
	for {
		select {
		case <-stuck:
			loaded++
			logf("Capturing CUDA graphs: still at batch 1/%d after %ds", cfg.MaxRunning, loaded)
		case err := <-serveErr:
			return fmt.Errorf("sim: http server: %w", err)
		case <-srv.Crashed():
			hs.Close()
			return &FaultError{Fault: FaultCrashMidRun, Msg: "CUDA error: an illegal memory access was encountered"}
		case <-ctx.Done():
			logf("INFO:     Shutting down")
			srv.Close() // ends open streams so Shutdown need not wait for them
			// net/http counts a connection that never carried a request (a client's
			// pre-opened one) as busy for 5 s; a real server drops it at once, so give
			// Shutdown a moment and then close whatever is left.
			sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := hs.Shutdown(sctx)
			cancel()
			if err != nil {
				hs.Close()
			}
			logf("INFO:     Finished server process [%d]", os.Getpid())
			return nil
		}
	}
}

// loading prints weight-loading progress every tenth of d, like the tqdm bar of the real
// servers, so a supervisor's stall timer sees output while the server is not yet up.
func loading(ctx context.Context, d time.Duration, logf func(string, ...any)) error {
	if d <= 0 {
		return nil
	}
	step := d / 10
	start := time.Now()
	t := time.NewTimer(step)
	defer t.Stop()
	for i := 1; i <= 10; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		el := time.Since(start)
		logf("Loading safetensors checkpoint shards: %3d%% Completed | %d/10 [%s<%s]", i*10, i, clock(el), clock(d-el))
		// Absolute steps, so d is the total whatever the print costs.
		t.Reset(time.Until(start.Add(step * time.Duration(i+1))))
	}
	return nil
}

func clock(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int(d.Seconds())
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

type worker struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startWorkers re-executes the binary as worker processes, like the TP workers and
// detokenizer of vLLM and SGLang. They stay in our process group and never exit on their
// own, so a supervisor that kills only the leader leaves them behind: that is the test.
func startWorkers(cfg Config) ([]*worker, error) {
	if cfg.Workers <= 0 {
		return nil, nil
	}
	if len(cfg.WorkerCommand) == 0 {
		return nil, errors.New("sim: --sim-workers needs a worker command; cmd/moecapd sets it to its own executable")
	}
	var ws []*worker
	for i := 0; i < cfg.Workers; i++ {
		c := exec.Command(cfg.WorkerCommand[0], append(cfg.WorkerCommand[1:], "--sim-worker-rank", strconv.Itoa(i))...)
		c.Stdout = cfg.Out
		c.Stderr = cfg.Out
		if err := c.Start(); err != nil {
			stopWorkers(ws)
			return nil, fmt.Errorf("sim: start worker %d (%s): %w", i, cfg.WorkerCommand[0], err)
		}
		w := &worker{cmd: c, done: make(chan struct{})}
		go func() { c.Wait(); close(w.done) }()
		ws = append(ws, w)
		fmt.Fprintf(cfg.Out, "sim: worker rank=%d pid=%d\n", i, c.Process.Pid)
	}
	return ws, nil
}

// stopWorkers ends the workers on a clean shutdown, as the real servers do: SIGTERM, a
// short grace, SIGKILL.
func stopWorkers(ws []*worker) {
	for _, w := range ws {
		w.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(3 * time.Second)
	for _, w := range ws {
		select {
		case <-w.done:
		case <-deadline:
			w.cmd.Process.Kill()
			<-w.done
		}
	}
}

// RunWorker is the body of a worker process: it announces itself and sleeps until a
// signal ends it. It deliberately does not watch its parent.
func RunWorker(out io.Writer, rank int) {
	fmt.Fprintf(out, "sim: worker process rank=%d pid=%d pgid=%d\n", rank, os.Getpid(), pgid())
	for {
		time.Sleep(time.Hour)
	}
}

func pgid() int {
	g, err := syscall.Getpgid(0)
	if err != nil {
		return -1
	}
	return g
}
