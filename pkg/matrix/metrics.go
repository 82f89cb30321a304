package matrix

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/moecapd/moecapd/pkg/gpu"
)

// GPUReader is what the metrics need of the node's GPUs (gpu.Backend satisfies it).
type GPUReader interface {
	Available() bool
	Read(devs []gpu.Device) ([]gpu.Reading, error)
}

// Collector exports a run's progress and, when NVML is there, per-GPU telemetry. It reads
// at scrape time, so the numbers are never staler than the scrape and nothing is sampled
// when nobody is looking.
type Collector struct {
	P    *Progress
	GPUs GPUReader
	Devs []gpu.Device
	// Version is moecapd's, for moecapd_build_info.
	Version string
}

var (
	descCells   = prometheus.NewDesc("moecapd_matrix_cells", "Cells of this run by state; the states sum to moecapd_matrix_cells_planned.", []string{"state"}, nil)
	descPlanned = prometheus.NewDesc("moecapd_matrix_cells_planned", "Cells this run takes on (ok + failed + infeasible + skipped + interrupted + running + pending).", nil, nil)
	descBuild   = prometheus.NewDesc("moecapd_build_info", "moecapd's version and Go version; always 1.", []string{"version", "goversion"}, nil)
	resLabels   = []string{"cell", "model", "hardware", "task", "batch", "backend"}
	descResTPOT = prometheus.NewDesc("moecapd_cell_tpot_seconds", "Mean time per output token of a cell that finished ok in this run (client-side, or the runner's server-pass TPOT).", resLabels, nil)
	descResTput = prometheus.NewDesc("moecapd_cell_output_tokens_per_second", "Output throughput of a cell that finished ok in this run.", resLabels, nil)
	descResJTok = prometheus.NewDesc("moecapd_cell_joules_per_output_token", "Measured GPU energy per output token of a cell that finished ok in this run (NVML).", resLabels, nil)
	descRetries = prometheus.NewDesc("moecapd_matrix_retries_total", "Attempts repeated after a transient failure (crash, health timeout).", nil, nil)
	descETA     = prometheus.NewDesc("moecapd_matrix_eta_seconds", "Estimated time until every cell of this run has finished.", nil, nil)
	descElapsed = prometheus.NewDesc("moecapd_matrix_elapsed_seconds", "Time since this run started.", nil, nil)
	descCurrent = prometheus.NewDesc("moecapd_matrix_cell_running", "1 for each cell running now, with its slot and pipeline phase.", []string{"slot", "cell", "phase"}, nil)
	descCellEl  = prometheus.NewDesc("moecapd_matrix_cell_elapsed_seconds", "Time the running cell of a slot has taken so far.", []string{"slot", "cell"}, nil)
	descPower   = prometheus.NewDesc("moecapd_gpu_power_watts", "GPU power draw.", []string{"gpu", "uuid"}, nil)
	descEnergy  = prometheus.NewDesc("moecapd_gpu_energy_joules_total", "GPU energy counter since the driver loaded.", []string{"gpu", "uuid"}, nil)
	descUtil    = prometheus.NewDesc("moecapd_gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU over the last sample period.", []string{"gpu", "uuid"}, nil)
	descMem     = prometheus.NewDesc("moecapd_gpu_memory_used_bytes", "GPU memory in use.", []string{"gpu", "uuid"}, nil)
	descTemp    = prometheus.NewDesc("moecapd_gpu_temperature_celsius", "GPU core temperature.", []string{"gpu", "uuid"}, nil)
	descSM      = prometheus.NewDesc("moecapd_gpu_sm_clock_hertz", "GPU SM clock.", []string{"gpu", "uuid"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCells, descPlanned, descBuild, descResTPOT, descResTput, descResJTok, descRetries, descETA, descElapsed, descCurrent, descCellEl, descPower, descEnergy, descUtil, descMem, descTemp, descSM} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.P.Snapshot()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	for state, n := range map[string]int{"ok": s.OK, "failed": s.Failed, "infeasible": s.Infeasible,
		"skipped": s.Skipped, "interrupted": s.Interrupted, "running": len(s.Running), "pending": s.Pending()} {
		g(descCells, float64(n), state)
	}
	g(descPlanned, float64(s.Total))
	v := c.Version
	if v == "" {
		v = "unknown"
	}
	g(descBuild, 1, v, runtime.Version())
	for _, r := range s.Results {
		l := []string{r.Cell, r.Model, r.Hardware, r.Task, strconv.Itoa(r.Batch), r.Backend}
		if r.TPOTSeconds != nil {
			g(descResTPOT, *r.TPOTSeconds, l...)
		}
		if r.OutputTokensPerS != nil {
			g(descResTput, *r.OutputTokensPerS, l...)
		}
		if r.JPerTok != nil {
			g(descResJTok, *r.JPerTok, l...)
		}
	}
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(s.Retry))
	if !s.Start.IsZero() {
		g(descETA, s.ETA().Seconds())
		g(descElapsed, time.Since(s.Start).Seconds())
	}
	for _, r := range s.Running {
		slot := strconv.Itoa(r.Slot)
		g(descCurrent, 1, slot, r.Cell, string(r.Phase))
		g(descCellEl, time.Since(r.Started).Seconds(), slot, r.Cell)
	}
	if c.GPUs == nil || !c.GPUs.Available() || len(c.Devs) == 0 {
		return
	}
	rs, err := c.GPUs.Read(c.Devs)
	if err != nil {
		return
	}
	for _, r := range rs {
		if r.Err != nil {
			continue
		}
		l := []string{strconv.Itoa(r.Index), r.UUID}
		// A metric the GPU does not support is left out, never exported as 0.
		if r.PowerMW != nil {
			g(descPower, float64(*r.PowerMW)/1e3, l...)
		}
		if r.EnergyMJ != nil {
			ch <- prometheus.MustNewConstMetric(descEnergy, prometheus.CounterValue, float64(*r.EnergyMJ)/1e3, l...)
		}
		if r.UtilGPU != nil {
			g(descUtil, float64(*r.UtilGPU)/100, l...)
		}
		if r.MemUsed != nil {
			g(descMem, float64(*r.MemUsed), l...)
		}
		if r.TempC != nil {
			g(descTemp, float64(*r.TempC), l...)
		}
		if r.SMClock != nil {
			g(descSM, float64(*r.SMClock)*1e6, l...)
		}
	}
}

// ServeMetrics serves /metrics on addr until ctx ends; it returns the address it listens
// on (useful with port 0) once listening.
func ServeMetrics(ctx context.Context, addr string, c *Collector) (string, <-chan error, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), errc, nil
}
