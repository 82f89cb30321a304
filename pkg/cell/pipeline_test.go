package cell

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// The pipeline's verdicts, driven through fakes of its interfaces (seams.go): no process,
// no port, no sleep. Each row is one way a cell ends; the test checks the phase the cell
// reached, the failure kind and status it records, and the exit code it maps to.

// fakeServer is a RunningServer whose behaviour each row sets.
type fakeServer struct {
	done     chan struct{}
	exited   bool
	readyErr error
	diag     exitcode.Failure
	diagLine string
	stop     launcher.StopReport
	stopped  bool
	logPath  string // server.log, once started
}

func newFakeServer() *fakeServer {
	return &fakeServer{done: make(chan struct{}), diag: exitcode.FailCrash}
}

// die ends the server as a crash would.
func (s *fakeServer) die() {
	if !s.exited {
		s.exited = true
		close(s.done)
	}
}

func (s *fakeServer) PID() int                                            { return 4242 }
func (s *fakeServer) Token() string                                       { return "token" }
func (s *fakeServer) Members() []int                                      { return nil }
func (s *fakeServer) Done() <-chan struct{}                               { return s.done }
func (s *fakeServer) Exited() bool                                        { return s.exited }
func (s *fakeServer) ExitDescription() string                             { return "exit status 1" }
func (s *fakeServer) Record(string, launcher.State, time.Duration) func() { return func() {} }
func (s *fakeServer) WaitReady(context.Context, launcher.ReadySpec) error { return s.readyErr }
func (s *fakeServer) Diagnosis() (exitcode.Failure, string)               { return s.diag, s.diagLine }
func (s *fakeServer) LogTail() string                                     { return "last lines of server.log" }
func (s *fakeServer) Stop(time.Duration) launcher.StopReport {
	s.stopped = true
	s.die()
	return s.stop
}

// fakeServers starts the row's fakeServer (writing its log, as a server does).
type fakeServers struct {
	srv        *fakeServer
	startErr   error
	portClosed bool
}

func (f *fakeServers) Start(spec launcher.Spec) (RunningServer, error) {
	if f.startErr != nil {
		return nil, f.startErr
	}
	if err := os.WriteFile(spec.LogPath, []byte("sim: ready\n"), 0o644); err != nil {
		return nil, err
	}
	f.srv.logPath = spec.LogPath
	return f.srv, nil
}
func (f *fakeServers) PortFree(string, int) error  { return nil }
func (f *fakeServers) PortClosed(string, int) bool { return f.portClosed }

// fakeClient is a BenchClient that runs the row's bench.
type fakeClient func(ctx context.Context, repeat int) (*profile.Metrics, error)

func (f fakeClient) Bench(ctx context.Context, repeat int) (*profile.Metrics, error) {
	return f(ctx, repeat)
}

// noScrape is a server without /metrics.
type noScrape struct{}

func (noScrape) Mark() {}

func (noScrape) StopWindow(time.Time, time.Time) *servermetrics.Summary {
	return &servermetrics.Summary{}
}

// pipeGPUs is one GPU whose memory a row can leave held after teardown.
type pipeGPUs struct{ leftover bool }

func (g *pipeGPUs) Available() bool       { return true }
func (g *pipeGPUs) Reason() string        { return "" }
func (g *pipeGPUs) DriverVersion() string { return "570.0" }
func (g *pipeGPUs) MemoryUsed([]gpu.Device) (map[int]uint64, error) {
	return map[int]uint64{0: 1 << 20}, nil
}
func (g *pipeGPUs) WaitIdle(context.Context, []gpu.Device, uint64, time.Duration, func(*gpu.BusyError)) error {
	return nil
}
func (g *pipeGPUs) WaitBaseline(context.Context, []gpu.Device, map[int]uint64, uint64, time.Duration) ([]gpu.Process, error) {
	if g.leftover {
		return []gpu.Process{{PID: 777, Cmdline: "python -m sglang.launch_server"}}, errors.New("GPU 0 holds 40 GiB over its baseline")
	}
	return nil, nil
}
func (g *pipeGPUs) Sample([]gpu.Device, time.Duration, func() []int, io.Writer) Telemetry {
	return fakeTelemetry{}
}

type fakeTelemetry struct{}

func (fakeTelemetry) MarkBenchStart()     {}
func (fakeTelemetry) MarkBenchEnd()       {}
func (fakeTelemetry) MarkRepeatStart(int) {}
func (fakeTelemetry) MarkRepeatEnd(int)   {}
func (fakeTelemetry) Stop() gpu.Summary {
	return gpu.Summary{Available: true, GPUs: 1}
}

func okMetrics() *profile.Metrics {
	return &profile.Metrics{Completed: 4, TotalOutputTokens: 32, OutputThroughput: 100}
}

func TestPipelineVerdicts(t *testing.T) {
	errWrite := errors.New("no space left on device")
	cases := []struct {
		name string
		// set arranges the row: the server, its launcher, the GPUs, the config and seams;
		// cancel ends the cell's context with a cause (a signal, the time limit).
		set    func(s *fakeServer, l *fakeServers, g *pipeGPUs, c *Config, sm *seams)
		client func(s *fakeServer, cancel context.CancelCauseFunc) fakeClient
		// want: status, the phase of the failure ("" none), its kind, the exit code, and
		// whether Run's own error is set (the final manifest not written).
		status  Status
		phase   Phase
		kind    Kind
		code    exitcode.Kind
		runErr  bool
		noStart bool // the server never started (preflight failed)
	}{
		{name: "ok", status: StatusOK, code: exitcode.OK},
		{name: "server fails to spawn",
			set: func(_ *fakeServer, l *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				l.startErr = errors.New("fork/exec python: permission denied")
			},
			status: StatusFailed, phase: PhaseLaunch, kind: exitcode.FailCrash, code: exitcode.Launch, noStart: true},
		{name: "server binary missing",
			set: func(_ *fakeServer, l *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				l.startErr = fmt.Errorf("python: %w", launcher.ErrNotFound)
			},
			status: StatusFailed, phase: PhaseLaunch, kind: exitcode.FailEnvMissing, code: exitcode.Launch, noStart: true},
		{name: "never ready",
			set: func(s *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				s.readyErr = &launcher.ReadyError{Timeout: true, Msg: "not ready after 10m0s"}
			},
			status: StatusFailed, phase: PhaseReady, kind: exitcode.FailHealthTimeout, code: exitcode.Launch},
		{name: "dies while loading",
			set: func(s *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				s.readyErr = &launcher.ReadyError{Exited: true, Msg: "the server exited before it was ready"}
				s.die()
			},
			status: StatusFailed, phase: PhaseReady, kind: exitcode.FailCrash, code: exitcode.Launch},
		{name: "oom while loading",
			set: func(s *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				s.readyErr = &launcher.ReadyError{Exited: true, Msg: "the server exited before it was ready"}
				s.diag, s.diagLine = exitcode.FailOOM, "torch.OutOfMemoryError: CUDA out of memory"
				s.die()
			},
			status: StatusInfeasible, phase: PhaseReady, kind: exitcode.FailOOM, code: exitcode.Infeasible},
		{name: "dies mid-bench",
			client: func(s *fakeServer, _ context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					s.die()
					return nil, errors.New("connection refused")
				}
			},
			status: StatusFailed, phase: PhaseBench, kind: exitcode.FailCrash, code: exitcode.Bench},
		{name: "bench error",
			client: func(*fakeServer, context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					return nil, errors.New("HTTP 500 from the server")
				}
			},
			status: StatusFailed, phase: PhaseBench, kind: exitcode.FailClientError, code: exitcode.Bench},
		{name: "bench timeout",
			client: func(*fakeServer, context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					return okMetrics(), fmt.Errorf("%w: the bench ran for 1m0s (--bench-timeout)", profile.ErrBenchDeadline)
				}
			},
			status: StatusFailed, phase: PhaseBench, kind: exitcode.FailClientError, code: exitcode.Bench},
		{name: "bad result",
			client: func(*fakeServer, context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					return okMetrics(), badResult{fmt.Errorf("%w: 4 of 4 requests failed", profile.ErrNoSuccess)}
				}
			},
			status: StatusFailed, phase: PhaseBench, kind: exitcode.FailBadResult, code: exitcode.Bench},
		{name: "oom during the bench",
			set: func(s *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				s.diag, s.diagLine = exitcode.FailOOM, "ValueError: not enough KV cache blocks"
			},
			client: func(*fakeServer, context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					return nil, errors.New("HTTP 400: prompt too long for the KV cache")
				}
			},
			status: StatusInfeasible, phase: PhaseBench, kind: exitcode.FailOOM, code: exitcode.Infeasible},
		{name: "teardown leaves a process",
			set: func(s *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) {
				s.stop = launcher.StopReport{Left: []int{31337}}
			},
			status: StatusFailed, phase: PhaseTeardown, kind: exitcode.FailOrphans, code: exitcode.Teardown},
		{name: "teardown leaves the port open",
			set:    func(_ *fakeServer, l *fakeServers, _ *pipeGPUs, _ *Config, _ *seams) { l.portClosed = false },
			status: StatusFailed, phase: PhaseTeardown, kind: exitcode.FailOrphans, code: exitcode.Teardown},
		{name: "teardown leaves GPU memory",
			set:    func(_ *fakeServer, _ *fakeServers, g *pipeGPUs, _ *Config, _ *seams) { g.leftover = true },
			status: StatusFailed, phase: PhaseTeardown, kind: exitcode.FailOrphans, code: exitcode.Teardown},
		{name: "final manifest not written",
			set: func(_ *fakeServer, _ *fakeServers, _ *pipeGPUs, _ *Config, sm *seams) {
				sm.writeManifest = func(dir string, m *Manifest) error {
					if m.Status != StatusRunning {
						return errWrite
					}
					return WriteManifest(dir, m)
				}
			},
			status: StatusFailed, phase: PhaseRecord, kind: exitcode.FailManifestWrite, code: exitcode.Usage, runErr: true},
		{name: "a named file deleted",
			client: func(s *fakeServer, _ context.CancelCauseFunc) fakeClient {
				return func(context.Context, int) (*profile.Metrics, error) {
					return okMetrics(), os.Remove(s.logPath) // server.log, which the manifest names
				}
			},
			status: StatusFailed, phase: PhaseRecord, kind: exitcode.FailMissingFile, code: exitcode.Bench},
		{name: "dataset missing",
			set: func(_ *fakeServer, _ *fakeServers, _ *pipeGPUs, c *Config, _ *seams) {
				c.Client = ClientNative
				c.Native.Dataset = "gsm8k"
				c.Native.DatasetFile = filepath.Join(os.TempDir(), "moecapd-no-such-dataset.jsonl")
			},
			status: StatusFailed, phase: PhasePreflight, kind: exitcode.FailEnvMissing, code: exitcode.Usage, noStart: true},
		{name: "time limit during the bench",
			client: func(_ *fakeServer, cancel context.CancelCauseFunc) fakeClient {
				return func(ctx context.Context, _ int) (*profile.Metrics, error) {
					cancel(&TimeLimit{Limit: 90 * time.Second})
					return nil, ctx.Err()
				}
			},
			status: StatusFailed, phase: PhaseBench, kind: exitcode.FailTimeout, code: exitcode.Bench},
		{name: "signal during the bench",
			client: func(_ *fakeServer, cancel context.CancelCauseFunc) fakeClient {
				return func(ctx context.Context, _ int) (*profile.Metrics, error) {
					cancel(errors.New("SIGTERM"))
					return nil, ctx.Err()
				}
			},
			status: StatusInterrupted, phase: PhaseBench, kind: exitcode.FailInterrupted, code: exitcode.Interrupted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			id := ID("qwen1_5", "1xH100", "32-8", 4, "sim")
			srv := newFakeServer()
			l := &fakeServers{srv: srv, portClosed: true}
			g := &pipeGPUs{}
			ctx, cancel := context.WithCancelCause(t.Context())
			defer cancel(nil)
			client := fakeClient(func(context.Context, int) (*profile.Metrics, error) { return okMetrics(), nil })
			if tc.client != nil {
				client = tc.client(srv, cancel)
			}
			c := &Config{Backend: launcher.BackendSim, Client: ClientMoECAP, Bench: &config.Bench{Raw: []byte("model_id: m\n")},
				BatchSize: 4, NumSamples: 4, Grace: time.Second}
			sm := seams{servers: l, gpus: g, client: func(*runner) BenchClient { return client },
				scrape:   func(string, time.Duration, io.Writer) MetricsScraper { return noScrape{} },
				reapWait: time.Nanosecond}
			if tc.set != nil {
				tc.set(srv, l, g, c, &sm)
			}
			c.seams = sm
			p := &Plan{ID: id, Dir: filepath.Join(root, id), Identity: Identity{ID: id, GPUCount: 1},
				Devices: []gpu.Device{{Index: 0, UUID: "GPU-0"}},
				Spec:    launcher.ServerSpec{Host: "127.0.0.1", Port: 1}, BaseURL: "http://127.0.0.1:1"}

			m, err := Run(ctx, c, p)
			if m == nil {
				t.Fatalf("Run returned no manifest: %v", err)
			}
			if (err != nil) != tc.runErr {
				t.Fatalf("Run error = %v, want one: %v", err, tc.runErr)
			}
			if m.Status != tc.status {
				t.Errorf("status %s, want %s (failure %+v)", m.Status, tc.status, m.Failure)
			}
			got := exitOf(m, err)
			if got != tc.code {
				t.Errorf("exit code %d, want %d (failure %+v)", got, tc.code, m.Failure)
			}
			if tc.phase == "" {
				if m.Failure != nil {
					t.Fatalf("failure %+v, want none", m.Failure)
				}
			} else {
				if m.Failure == nil {
					t.Fatalf("no failure, want %s in %s", tc.kind, tc.phase)
				}
				if m.Failure.Phase != tc.phase || m.Failure.Kind != tc.kind {
					t.Errorf("failure %s/%s (%s), want %s/%s", m.Failure.Phase, m.Failure.Kind, m.Failure.Message, tc.phase, tc.kind)
				}
			}
			// Every row that started a server tore it down; one that did not, started none.
			if srv.stopped == tc.noStart {
				t.Errorf("server stopped: %v; want %v", srv.stopped, !tc.noStart)
			}
			// The manifest on disk is the one Run returned (the pipeline is its one writer),
			// except where the write itself failed: there the disk still says running.
			disk, derr := ReadManifest(p.Dir)
			if derr != nil {
				t.Fatal(derr)
			}
			want := m.Status
			if tc.runErr {
				want = StatusRunning
			}
			if disk.Status != want || (!tc.runErr && tc.phase != "" && (disk.Failure == nil || disk.Failure.Kind != tc.kind)) {
				t.Errorf("manifest on disk: %s %+v; want %s with kind %s", disk.Status, disk.Failure, want, tc.kind)
			}
			if tc.kind == exitcode.FailTimeout && !strings.Contains(m.Failure.Message, "1m30s") {
				t.Errorf("timeout message %q does not name the limit", m.Failure.Message)
			}
		})
	}
}

// exitOf is the exit code of a cell Run returned: Run's own error where it has one (the
// outcome was not recorded), else the manifest's.
func exitOf(m *Manifest, err error) exitcode.Kind {
	if err != nil {
		return exitcode.Kind(exitcode.Of(err))
	}
	return m.Outcome()
}
