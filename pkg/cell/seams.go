package cell

// The pipeline's consumer-side interfaces: what one cell's run asks of the inference server
// (spawn, ready, teardown), of the bench client (moecapd's native client, or the MoE-CAP
// runner it starts), of the telemetry that samples during the bench (the GPUs' sampler, the
// server's /metrics) and of the GPUs, each shaped by what run.go calls and no more. The
// real implementations are below (launcher, profile, gpu, servermetrics); a test of the
// pipeline's verdicts (pipeline_test.go) drives it through fakes, with no process started.

import (
	"context"
	"io"
	"time"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/profile"
	"github.com/moecapd/moecapd/pkg/servermetrics"
)

// RunningServer is one started inference server: its process group and the watch over its log.
type RunningServer interface {
	PID() int
	Token() string  // the token its processes carry (a client started for it carries it too)
	Members() []int // its live processes, for the telemetry's per-process memory
	Done() <-chan struct{}
	Exited() bool
	ExitDescription() string
	// Record keeps the state file's member list current until stop is called.
	Record(dir string, st launcher.State, every time.Duration) (stop func())
	// WaitReady returns once the server answers (launcher.ReadySpec); a *launcher.ReadyError
	// says why it did not.
	WaitReady(ctx context.Context, spec launcher.ReadySpec) error
	// Diagnosis reads what the log printed since the last look and names the failure it
	// shows (oom, crash, port_in_use, ...; "" when none) with the line that says so.
	Diagnosis() (exitcode.Failure, string)
	LogTail() string // the log's last lines, read up to now
	// Stop ends the server's process group (SIGTERM, the grace, SIGKILL) and the log watch.
	Stop(grace time.Duration) launcher.StopReport
}

// ServerLauncher starts servers and checks their port: free before launch, closed after teardown.
type ServerLauncher interface {
	Start(spec launcher.Spec) (RunningServer, error)
	PortFree(host string, port int) error
	PortClosed(host string, port int) bool
}

// BenchClient runs one repeat of the measured bench against the ready server and returns
// its metrics (also partial ones beside an error). Its two kinds are nativeClient and
// moecapRunner.
type BenchClient interface {
	Bench(ctx context.Context, repeat int) (*profile.Metrics, error)
}

// Telemetry samples the GPUs during the cell; MarkBenchStart and MarkBenchEnd bound the
// measured window its energy and utilisation are summarised over; MarkRepeatStart and
// MarkRepeatEnd bound each repeat's own energy window (Summary.Repeats).
type Telemetry interface {
	MarkBenchStart()
	MarkBenchEnd()
	MarkRepeatStart(k int)
	MarkRepeatEnd(k int)
	Stop() gpu.Summary
}

// MetricsScraper scrapes the server's /metrics during the bench; Mark takes a sample at
// once (at each edge of the measured window); StopWindow ends it with the summary over
// [from, to] (zero times: all it scraped).
type MetricsScraper interface {
	Mark()
	StopWindow(from, to time.Time) *servermetrics.Summary
}

// GPUs is the few GPU calls of one cell: idle before launch, the baseline, telemetry, and
// memory back to baseline after teardown.
type GPUs interface {
	Available() bool
	Reason() string
	DriverVersion() string
	MemoryUsed(devs []gpu.Device) (map[int]uint64, error)
	WaitIdle(ctx context.Context, devs []gpu.Device, slack uint64, wait time.Duration, note func(*gpu.BusyError)) error
	WaitBaseline(ctx context.Context, devs []gpu.Device, base map[int]uint64, slack uint64, timeout time.Duration) ([]gpu.Process, error)
	// Sample starts the telemetry of devs (pids: the server's processes) into csv.
	Sample(devs []gpu.Device, every time.Duration, pids func() []int, csv io.Writer) Telemetry
}

// seams are the interfaces one run uses; a nil field takes the real implementation.
type seams struct {
	servers ServerLauncher
	client  func(r *runner) BenchClient
	gpus    GPUs
	scrape  func(url string, every time.Duration, w io.Writer) MetricsScraper
	// writeManifest writes the manifest (WriteManifest).
	writeManifest func(dir string, m *Manifest) error
	// reapWait is how long a failed bench waits for a dying server's exit to be reaped, so
	// the cell blames the server, not the client (2 s).
	reapWait time.Duration
}

// withDefaults fills the real implementations in.
func (s seams) withDefaults(c *Config) seams {
	if s.servers == nil {
		s.servers = launcherServers{}
	}
	if s.client == nil {
		s.client = func(r *runner) BenchClient {
			if c.Client == ClientNative {
				return nativeClient{r}
			}
			return moecapRunner{r}
		}
	}
	if s.gpus == nil && c.GPUs != nil {
		s.gpus = nvmlGPUs{c.GPUs}
	}
	if s.scrape == nil {
		s.scrape = func(url string, every time.Duration, w io.Writer) MetricsScraper {
			return servermetrics.Start(url, every, w)
		}
	}
	if s.writeManifest == nil {
		s.writeManifest = WriteManifest
	}
	if s.reapWait == 0 {
		s.reapWait = 2 * time.Second
	}
	return s
}

// launcherServers starts servers with pkg/launcher.
type launcherServers struct{}

func (launcherServers) Start(spec launcher.Spec) (RunningServer, error) {
	p, err := launcher.Start(spec)
	if err != nil {
		return nil, err
	}
	return &launchedServer{Process: p, logw: launcher.WatchLog(spec.LogPath, 100*time.Millisecond)}, nil
}

func (launcherServers) PortFree(host string, port int) error  { return launcher.PortFree(host, port) }
func (launcherServers) PortClosed(host string, port int) bool { return launcher.PortClosed(host, port) }

// launchedServer is a launcher.Process with the watch over its log.
type launchedServer struct {
	*launcher.Process
	logw *launcher.LogWatch
}

func (s *launchedServer) WaitReady(ctx context.Context, spec launcher.ReadySpec) error {
	return launcher.WaitReady(ctx, s.Process, s.logw, spec)
}

func (s *launchedServer) Diagnosis() (exitcode.Failure, string) {
	s.logw.Poll()
	return s.logw.Diagnosis()
}

func (s *launchedServer) LogTail() string {
	s.logw.Poll()
	return s.logw.Tail()
}

func (s *launchedServer) Stop(grace time.Duration) launcher.StopReport {
	rep := s.Process.Stop(grace)
	s.logw.Close()
	return rep
}

// nvmlGPUs is GPUs over a gpu.Backend (NVML, or the null backend without one).
type nvmlGPUs struct{ b gpu.Backend }

func (g nvmlGPUs) Available() bool       { return g.b.Available() }
func (g nvmlGPUs) Reason() string        { return g.b.Reason() }
func (g nvmlGPUs) DriverVersion() string { return g.b.DriverVersion() }
func (g nvmlGPUs) MemoryUsed(devs []gpu.Device) (map[int]uint64, error) {
	return g.b.MemoryUsed(devs)
}

func (g nvmlGPUs) WaitIdle(ctx context.Context, devs []gpu.Device, slack uint64, wait time.Duration, note func(*gpu.BusyError)) error {
	return gpu.WaitIdle(ctx, g.b, devs, slack, wait, note)
}

func (g nvmlGPUs) WaitBaseline(ctx context.Context, devs []gpu.Device, base map[int]uint64, slack uint64, timeout time.Duration) ([]gpu.Process, error) {
	return gpu.WaitMemoryBaseline(ctx, g.b, devs, base, slack, timeout)
}

func (g nvmlGPUs) Sample(devs []gpu.Device, every time.Duration, pids func() []int, csv io.Writer) Telemetry {
	s := g.b.NewSampler(gpu.SamplerConfig{Devices: devs, Interval: every, PIDs: pids, CSV: csv})
	s.Start(context.Background())
	return s
}
