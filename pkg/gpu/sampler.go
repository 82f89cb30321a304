package gpu

import (
	"bufio"
	"context"
	"errors"
	"github.com/moecapd/moecapd/pkg/records"
	"io"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"
)

// DefaultInterval is the sampling interval when SamplerConfig.Interval is zero.
const DefaultInterval = 100 * time.Millisecond

// DefaultEnergyInterval is how often the energy counter is read between the window's
// edges. One read costs about 4 ms of CPU on an H100 (driver 580, measured by
// BenchmarkNVMLCalls) where every other metric together costs under 0.1 ms, so reading it
// every 100 ms on 8 GPUs would take a third of a core. The counter is cumulative: reading
// it at Start, at both bench marks and at Stop already gives the exact window delta; the
// periodic reads only bound how long a stretch a counter reset or a lost GPU can blur
// (integrated power still covers it).
const DefaultEnergyInterval = 30 * time.Second

// CSVHeader is the first line of telemetry.csv: one row per GPU per sampling round, the
// columns of DESIGN.md. An empty cell is a metric the GPU does not report; energy_mj is
// also empty on the rounds that do not read the counter (see DefaultEnergyInterval).
const CSVHeader = "timestamp,gpu_index,uuid,util_gpu_pct,util_mem_pct,mem_used_bytes,power_mw,energy_mj,sm_clock_mhz,mem_clock_mhz,temp_c,clock_event_reasons,server_mem_bytes"

// SamplerConfig says what to sample and where the rows go.
type SamplerConfig struct {
	Devices  []Device
	Interval time.Duration
	// EnergyInterval is how often the energy counter is read besides the window's edges
	// (default DefaultEnergyInterval; at most every round).
	EnergyInterval time.Duration
	// PIDs returns the server's process tree; the memory those PIDs hold is a column.
	// It runs on the sampling goroutine once per round. Nil leaves the column empty.
	PIDs func() []int
	// CSV receives telemetry.csv; nil writes no rows.
	CSV io.Writer
}

// Sampler reads the configured GPUs on its own goroutine at a fixed interval, writes one CSV
// row per GPU per round and keeps the running sums the Summary needs (nothing per sample is
// kept but utilization, for the p95). The caller's methods never wait for NVML.
type Sampler struct {
	b      Backend
	rd     roundReader
	log    *zap.Logger
	cfg    SamplerConfig
	avail  bool
	reason string
	now    func() time.Time

	mu         sync.Mutex
	roundsSeen int // samples, readable while sampling runs
	started    bool
	benchStart time.Time
	benchEnd   time.Time

	// xid watches NVML's XID events from Start on its own goroutine.
	xid      *xidWatch
	procRoot string         // where foreign processes' command lines are read
	cmdlines map[int]string // by PID, read once

	poke     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	summary  Summary

	// Owned by the sampling goroutine, then by Stop once it has ended.
	w        *bufio.Writer
	csvErr   error
	row      []byte
	first    time.Time
	last     time.Time
	samples  int
	lastE    time.Time // when the energy counter was last read
	wantE    bool      // a mark asked for the counter in the next round
	missed   int
	readErrs int
	jitter   []time.Duration
	gpus     []gpuState
	lostList []int
	bench    window
	whole    window

	// repeats are the measured windows of a repeated bench (MarkRepeatStart/End): their
	// bounds under mu, their sums owned like bench's.
	repeats []*repeatWindow
}

// repeatWindow is one repeat's measured window; only its energy is summed.
type repeatWindow struct {
	k      int
	lo, hi time.Time
	w      window
}

// gpuState is what one GPU's next sample is compared with.
type gpuState struct {
	dev    Device
	lost   bool
	resets int
	// last reading carrying an energy counter / a power value; a read that fails in between
	// is bridged rather than losing the energy of that stretch.
	eT, pT time.Time
	eMJ    uint64
	pMW    float64
	// integMJ is power integrated since sampling began; integAtE its value at the last
	// counter reading, so a counter reset can be bridged by what power says.
	integMJ  float64
	integAtE float64
	eOK      bool
	pOK      bool
}

// window accumulates the summary over a time range.
type window struct {
	per       []gpuAcc
	utils     []uint32
	peakTick  float64 // mW, highest sum over GPUs in one round
	tickSeen  bool
	reasons   uint64
	reasonsOK bool
	procs     procWatch
}

type gpuAcc struct {
	energyMJ   float64
	energyOK   bool
	integMJ    float64
	integOK    bool
	peakPowMW  float64
	peakPowOK  bool
	utilSum    float64
	utilN      int
	peakMem    uint64
	peakMemOK  bool
	serverPeak uint64
	serverOK   bool
}

var farFuture = time.Unix(1<<40, 0)

// roundReader is what the sampler needs from a backend: a Read that can skip the costly
// metrics it does not need this round.
type roundReader interface {
	readRound(devs []Device, what readWhat) []Reading
}

// readAdapter lets a Backend implemented elsewhere (a test fake) drive the sampler through
// its exported Read.
type readAdapter struct{ b Backend }

func (a readAdapter) readRound(devs []Device, _ readWhat) []Reading {
	rs, err := a.b.Read(devs)
	if err != nil {
		return nil
	}
	return rs
}

func newSampler(b Backend, log *zap.Logger, cfg SamplerConfig) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.EnergyInterval <= 0 {
		cfg.EnergyInterval = DefaultEnergyInterval
	}
	rd, ok := b.(roundReader)
	if !ok {
		rd = readAdapter{b}
	}
	s := &Sampler{
		b: b, rd: rd, log: log, cfg: cfg, avail: b.Available(), reason: b.Reason(), now: time.Now,
		poke: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if cfg.CSV != nil {
		s.w = bufio.NewWriter(cfg.CSV)
	}
	s.procRoot, s.cmdlines = "/proc", map[int]string{}
	if nb, ok := b.(*nvmlBackend); ok {
		s.procRoot = nb.procRoot
	}
	s.gpus = make([]gpuState, len(cfg.Devices))
	for i, d := range cfg.Devices {
		s.gpus[i].dev = d
	}
	s.bench.per = make([]gpuAcc, len(cfg.Devices))
	s.whole.per = make([]gpuAcc, len(cfg.Devices))
	return s
}

// Start begins sampling on its own goroutine; it ends at Stop or when ctx ends. The first
// round is taken at once so the baseline is known before the bench starts.
func (s *Sampler) Start(ctx context.Context) {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return
	}
	s.started = true
	s.mu.Unlock()
	s.writeLine([]byte(CSVHeader + "\n"))
	s.flush()
	if !s.avail || len(s.gpus) == 0 {
		close(s.done)
		return
	}
	s.startXID(ctx)
	go s.run(ctx)
}

// startXID starts watching the GPUs' XID events, or records why it cannot.
func (s *Sampler) startXID(ctx context.Context) {
	src, ok := s.b.(xidSource)
	if !ok {
		s.xid = &xidWatch{reason: "the GPU backend cannot watch XID events"}
		return
	}
	w, err := src.watchXID(s.cfg.Devices)
	if err != nil {
		s.xid = &xidWatch{reason: err.Error()}
		return
	}
	s.xid = &xidWatch{w: w, done: make(chan struct{})}
	now := s.now
	go s.xid.run(s.stop, ctx.Done(), now)
}

// cmdline is a foreign process's command line, read from /proc once.
func (s *Sampler) cmdline(pid int) string {
	if c, ok := s.cmdlines[pid]; ok {
		return c
	}
	c := readCmdline(s.procRoot, pid)
	s.cmdlines[pid] = c
	return c
}

// MarkBenchStart opens the window the summary covers. Only the first call counts.
func (s *Sampler) MarkBenchStart() {
	s.mu.Lock()
	if s.benchStart.IsZero() {
		s.benchStart = s.now()
		s.wantE = true
	}
	s.mu.Unlock()
	s.nudge()
}

// MarkBenchEnd closes the window. Only the first call counts.
func (s *Sampler) MarkBenchEnd() {
	s.mu.Lock()
	if s.benchEnd.IsZero() && !s.benchStart.IsZero() {
		s.benchEnd = s.now()
		s.wantE = true
	}
	s.mu.Unlock()
	s.nudge()
}

// MarkRepeatStart opens repeat k's own energy window (a repeated bench: each repeat's
// J/token over its own measured requests). Only the first call per k counts.
func (s *Sampler) MarkRepeatStart(k int) {
	s.mu.Lock()
	for _, rw := range s.repeats {
		if rw.k == k {
			s.mu.Unlock()
			return
		}
	}
	s.repeats = append(s.repeats, &repeatWindow{k: k, lo: s.now(), w: window{per: make([]gpuAcc, len(s.cfg.Devices))}})
	s.wantE = true
	s.mu.Unlock()
	s.nudge()
}

// MarkRepeatEnd closes repeat k's window. Only the first call counts.
func (s *Sampler) MarkRepeatEnd(k int) {
	s.mu.Lock()
	for _, rw := range s.repeats {
		if rw.k == k && rw.hi.IsZero() {
			rw.hi = s.now()
			s.wantE = true
		}
	}
	s.mu.Unlock()
	s.nudge()
}

// nudge asks for an extra round right away, so the window's edges fall next to a sample
// instead of up to one interval away. It never blocks: a pending nudge is enough.
func (s *Sampler) nudge() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Stop ends sampling, takes a last round, flushes the CSV and returns the summary. It may be
// called more than once, and without Start.
func (s *Sampler) Stop() Summary {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		if started {
			close(s.stop)
			<-s.done
			if s.avail && len(s.gpus) > 0 {
				s.round(true)
			}
		}
		s.flush()
		s.summary = s.summarize()
	})
	return s.summary
}

func (s *Sampler) run(ctx context.Context) {
	defer close(s.done)
	iv := s.cfg.Interval
	// t0 is taken before the ticker exists, so every tick is at or after t0+k·iv and the
	// floor below names the tick it belongs to.
	t0 := time.Now()
	t := time.NewTicker(iv)
	defer t.Stop()
	s.round(true)
	lastK := int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-s.poke:
			s.round(false)
		case <-t.C:
			now := time.Now()
			k := int64(now.Sub(t0) / iv)
			if k <= lastK {
				k = lastK + 1
			}
			// time.Ticker drops ticks a slow receiver did not take; those are the missed ones.
			s.missed += int(k - lastK - 1)
			lastK = k
			s.jitter = append(s.jitter, now.Sub(t0.Add(time.Duration(k)*iv)).Abs())
			s.round(false)
		}
	}
}

// round reads every GPU still present once, writes the rows and updates the windows.
// The energy counter is read when energy is set, when a mark asked for it, or when
// EnergyInterval has passed since the last read.
func (s *Sampler) round(energy bool) {
	var pids map[int]bool
	if s.cfg.PIDs != nil {
		list := s.cfg.PIDs()
		pids = make(map[int]bool, len(list))
		for _, p := range list {
			pids[p] = true
		}
	}
	devs := make([]Device, 0, len(s.gpus))
	pos := make([]int, 0, len(s.gpus))
	for i := range s.gpus {
		if !s.gpus[i].lost {
			devs = append(devs, s.gpus[i].dev)
			pos = append(pos, i)
		}
	}
	if len(devs) == 0 {
		return
	}
	s.mu.Lock()
	energy = energy || s.wantE
	s.wantE = false
	s.roundsSeen++
	s.mu.Unlock()
	if !energy && (s.lastE.IsZero() || time.Since(s.lastE) >= s.cfg.EnergyInterval) {
		energy = true
	}
	if energy {
		s.lastE = time.Now()
	}
	rs := s.rd.readRound(devs, readWhat{energy: energy, processes: pids != nil})
	if len(rs) != len(devs) {
		s.readErrs++
		return
	}
	// Read the window after the sample's timestamps exist: a mark taken later than this
	// lock has a later time than every reading of this round.
	s.mu.Lock()
	bs, be := s.benchStart, s.benchEnd
	type repSpan struct {
		w      *window
		lo, hi time.Time
	}
	reps := make([]repSpan, 0, len(s.repeats))
	for _, rw := range s.repeats {
		hi := rw.hi
		if hi.IsZero() {
			hi = farFuture
		}
		reps = append(reps, repSpan{&rw.w, rw.lo, hi})
	}
	s.mu.Unlock()
	benchLo, benchHi := bs, be
	if benchHi.IsZero() {
		benchHi = farFuture
	}
	benchOn := !bs.IsZero()

	s.samples++
	var tickMW float64
	tickOK := false
	var tickT time.Time
	for j, r := range rs {
		i := pos[j]
		g := &s.gpus[i]
		if r.Err != nil {
			s.readErrs++
			if errors.Is(r.Err, nvml.ERROR_GPU_IS_LOST) {
				g.lost = true
				s.lostList = append(s.lostList, g.dev.Index)
				s.log.Warn("GPU fell off the bus during sampling; telemetry goes on with the other GPUs and this cell's numbers are suspect (check dmesg for Xid errors)",
					zap.Int("gpu", g.dev.Index), zap.String("uuid", g.dev.UUID), zap.Error(r.Err))
			}
			continue
		}
		s.readErrs += r.MetricErrors
		if s.first.IsZero() {
			s.first = r.Time
		}
		s.last = r.Time
		if tickT.IsZero() {
			tickT = r.Time
		}
		server := serverMemory(r, pids)
		s.writeRow(r, server)

		t := r.Time
		if r.PowerMW != nil {
			p := float64(*r.PowerMW)
			if g.pOK && t.After(g.pT) {
				g.integMJ += (g.pMW + p) / 2 * t.Sub(g.pT).Seconds()
				s.whole.addPower(i, g.pT, t, g.pMW, p, time.Time{}, farFuture)
				if benchOn {
					s.bench.addPower(i, g.pT, t, g.pMW, p, benchLo, benchHi)
				}
				for _, rp := range reps {
					rp.w.addPower(i, g.pT, t, g.pMW, p, rp.lo, rp.hi)
				}
			}
			g.pT, g.pMW, g.pOK = t, p, true
			tickMW += p
			tickOK = true
		}
		// Energy counter: the delta since the last counter reading.
		if r.EnergyMJ != nil {
			e := *r.EnergyMJ
			if g.eOK && t.After(g.eT) {
				var d float64
				if e >= g.eMJ {
					d = float64(e - g.eMJ)
				} else {
					// The counter went backwards: a driver reload or GPU reset restarted
					// it. Bridge the stretch with integrated power instead of counting a
					// huge or negative delta.
					g.resets++
					d = g.integMJ - g.integAtE
				}
				s.whole.addEnergy(i, g.eT, t, d, time.Time{}, farFuture)
				if benchOn {
					s.bench.addEnergy(i, g.eT, t, d, benchLo, benchHi)
				}
				for _, rp := range reps {
					rp.w.addEnergy(i, g.eT, t, d, rp.lo, rp.hi)
				}
			}
			g.eT, g.eMJ, g.eOK, g.integAtE = t, e, true, g.integMJ
		}
		s.whole.addPoint(i, r, server)
		s.whole.procs.addProcesses(r, pids, s.cmdline)
		if benchOn && !t.Before(benchLo) && !t.After(benchHi) {
			s.bench.addPoint(i, r, server)
			s.bench.procs.addProcesses(r, pids, s.cmdline)
		}
	}
	if tickOK {
		s.whole.addTick(tickMW)
		if benchOn && !tickT.Before(benchLo) && !tickT.After(benchHi) {
			s.bench.addTick(tickMW)
		}
	}
	s.flush()
}

// serverMemory sums the memory the server's PIDs hold on this GPU; nil when it cannot be
// known (no PID source, process list not supported, or a server process whose usage the
// driver does not report).
func serverMemory(r Reading, pids map[int]bool) *uint64 {
	if pids == nil || r.Processes == nil {
		return nil
	}
	var sum uint64
	for _, p := range r.Processes {
		if !pids[p.PID] {
			continue
		}
		if p.UsedBytes == nil {
			return nil
		}
		sum += *p.UsedBytes
	}
	return &sum
}

// overlap clips [t0,t1] to [lo,hi]; ok is false when they do not overlap.
func overlap(t0, t1, lo, hi time.Time) (a, b time.Time, ok bool) {
	a, b = t0, t1
	if lo.After(a) {
		a = lo
	}
	if hi.Before(b) {
		b = hi
	}
	return a, b, b.After(a)
}

// addEnergy adds the part of a counter delta d (mJ over [t0,t1]) that falls in the window,
// assuming even consumption within one interval.
func (w *window) addEnergy(i int, t0, t1 time.Time, d float64, lo, hi time.Time) {
	a, b, ok := overlap(t0, t1, lo, hi)
	if !ok {
		return
	}
	g := &w.per[i]
	g.energyMJ += d * float64(b.Sub(a)) / float64(t1.Sub(t0))
	g.energyOK = true
}

// addPower integrates power (trapezoid, linear between samples) over the part of [t0,t1]
// in the window; mW·s = mJ.
func (w *window) addPower(i int, t0, t1 time.Time, p0, p1 float64, lo, hi time.Time) {
	a, b, ok := overlap(t0, t1, lo, hi)
	if !ok {
		return
	}
	span := float64(t1.Sub(t0))
	pa := p0 + (p1-p0)*float64(a.Sub(t0))/span
	pb := p0 + (p1-p0)*float64(b.Sub(t0))/span
	g := &w.per[i]
	g.integMJ += (pa + pb) / 2 * b.Sub(a).Seconds()
	g.integOK = true
}

func (w *window) addPoint(i int, r Reading, server *uint64) {
	g := &w.per[i]
	if r.UtilGPU != nil {
		w.utils = append(w.utils, *r.UtilGPU)
		g.utilSum += float64(*r.UtilGPU)
		g.utilN++
	}
	if r.PowerMW != nil && (!g.peakPowOK || float64(*r.PowerMW) > g.peakPowMW) {
		g.peakPowMW, g.peakPowOK = float64(*r.PowerMW), true
	}
	if r.MemUsed != nil && (!g.peakMemOK || *r.MemUsed > g.peakMem) {
		g.peakMem, g.peakMemOK = *r.MemUsed, true
	}
	if server != nil && (!g.serverOK || *server > g.serverPeak) {
		g.serverPeak, g.serverOK = *server, true
	}
	if r.ClockReasons != nil {
		w.reasons |= *r.ClockReasons
		w.reasonsOK = true
	}
}

func (w *window) addTick(mw float64) {
	if !w.tickSeen || mw > w.peakTick {
		w.peakTick, w.tickSeen = mw, true
	}
}

func (s *Sampler) summarize() Summary {
	sum := Summary{
		Available:  s.avail,
		Reason:     s.reason,
		GPUs:       len(s.cfg.Devices),
		IntervalMS: float64(s.cfg.Interval) / float64(time.Millisecond),
		Samples:    s.samples,
		Missed:     s.missed,
		ReadErrors: s.readErrs,
		LostGPUs:   s.lostList,
	}
	if s.csvErr != nil {
		sum.CSVError = s.csvErr.Error()
	}
	s.mu.Lock()
	bs, be := s.benchStart, s.benchEnd
	s.mu.Unlock()

	// The window's length does not need NVML, so it is reported even without it (the cost's
	// GPU-hour part needs only this).
	w := &s.whole
	lo, hi := s.first, s.last
	sum.Window = "sampling"
	if !bs.IsZero() {
		w, lo, hi, sum.Window = &s.bench, bs, be, "bench"
		if hi.IsZero() {
			hi = s.last
			if !s.avail || hi.Before(lo) {
				hi = s.now()
			}
		}
	}
	if !s.avail {
		if !bs.IsZero() {
			sum.BenchWindowS = ptr(hi.Sub(lo).Seconds())
		}
		sum.Window = ""
		sum.IntervalMS = 0
		return sum
	}
	if hi.After(lo) {
		sum.BenchWindowS = ptr(hi.Sub(lo).Seconds())
	}
	for _, g := range s.gpus {
		sum.EnergyCounterResets += g.resets
	}
	if len(s.jitter) > 0 {
		j := make([]float64, len(s.jitter))
		for i, d := range s.jitter {
			j[i] = float64(d) / float64(time.Millisecond)
		}
		sum.TickJitterP99MS = ptr(records.Percentile(j, 99))
	}

	var energy, integ float64
	energyAll, integAll := len(s.gpus) > 0, len(s.gpus) > 0
	var peakMem, serverPeak uint64
	peakMemOK, serverOK := false, false
	for i, g := range s.gpus {
		a := w.per[i]
		gs := GPUSummary{Index: g.dev.Index, UUID: g.dev.UUID, Lost: g.lost}
		if a.energyOK {
			gs.EnergyJ = ptr(a.energyMJ / 1000)
			energy += a.energyMJ / 1000
		} else {
			energyAll = false
		}
		if a.integOK {
			gs.EnergyIntegratedJ = ptr(a.integMJ / 1000)
			integ += a.integMJ / 1000
			if sum.BenchWindowS != nil && *sum.BenchWindowS > 0 {
				gs.AvgPowerW = ptr(a.integMJ / 1000 / *sum.BenchWindowS)
			}
		} else {
			integAll = false
		}
		if a.peakPowOK {
			gs.PeakPowerW = ptr(a.peakPowMW / 1000)
		}
		if a.utilN > 0 {
			gs.MeanUtilPct = ptr(a.utilSum / float64(a.utilN))
		}
		if a.peakMemOK {
			gs.PeakMemoryBytes = ptr(a.peakMem)
			if !peakMemOK || a.peakMem > peakMem {
				peakMem, peakMemOK = a.peakMem, true
			}
		}
		if a.serverOK {
			gs.ServerPeakMemoryBytes = ptr(a.serverPeak)
			if !serverOK || a.serverPeak > serverPeak {
				serverPeak, serverOK = a.serverPeak, true
			}
		}
		sum.PerGPU = append(sum.PerGPU, gs)
	}
	// A node total is reported only when every GPU contributed: a sum missing a GPU looks
	// like a plausible, wrong number.
	if energyAll {
		sum.EnergyJ = ptr(energy)
	}
	if integAll {
		sum.EnergyIntegratedJ = ptr(integ)
		if sum.BenchWindowS != nil && *sum.BenchWindowS > 0 {
			sum.AvgPowerW = ptr(integ / *sum.BenchWindowS)
		}
		if w.tickSeen {
			sum.PeakPowerW = ptr(w.peakTick / 1000)
		}
	}
	if energyAll && integAll && energy > 0 {
		sum.EnergyDisagreementPct = ptr(math.Abs(energy-integ) / energy * 100)
	}
	if len(w.utils) > 0 {
		u := make([]float64, len(w.utils))
		var tot float64
		for i, v := range w.utils {
			u[i] = float64(v)
			tot += u[i]
		}
		sum.MeanUtilPct = ptr(tot / float64(len(u)))
		sum.P95UtilPct = ptr(records.Percentile(u, 95))
	}
	if peakMemOK {
		sum.PeakMemoryBytes = ptr(peakMem)
	}
	if serverOK {
		sum.ServerPeakMemoryBytes = ptr(serverPeak)
	}
	if w.reasonsOK {
		sum.ThrottleReasonsSeen = ReasonNames(w.reasons)
	}
	sum.Repeats = s.repeatEnergies()
	sum.ForeignProcesses, sum.ProcessCheck = w.procs.result(s.cfg.PIDs != nil)
	sum.XIDErrors, sum.XIDCheck = s.xid.result(lo, hi)
	return sum
}

// repeatEnergies is each marked repeat's energy (node totals only when every GPU
// contributed, as for the bench window).
func (s *Sampler) repeatEnergies() []RepeatEnergy {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []RepeatEnergy
	for _, rw := range s.repeats {
		re := RepeatEnergy{Repeat: rw.k}
		hi := rw.hi
		if hi.IsZero() {
			hi = s.last
		}
		if hi.After(rw.lo) {
			re.WindowS = ptr(hi.Sub(rw.lo).Seconds())
		}
		var e, in float64
		eAll, inAll := len(rw.w.per) > 0, len(rw.w.per) > 0
		for _, a := range rw.w.per {
			eAll = eAll && a.energyOK
			inAll = inAll && a.integOK
			e += a.energyMJ / 1000
			in += a.integMJ / 1000
		}
		if eAll {
			re.EnergyJ = ptr(e)
		}
		if inAll {
			re.EnergyIntegratedJ = ptr(in)
		}
		out = append(out, re)
	}
	return out
}

func (s *Sampler) writeRow(r Reading, server *uint64) {
	if s.w == nil || s.csvErr != nil {
		return
	}
	b := s.row[:0]
	b = r.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(r.Index), 10)
	b = append(b, ',')
	b = append(b, r.UUID...)
	b = appendU32(b, r.UtilGPU)
	b = appendU32(b, r.UtilMem)
	b = appendU64(b, r.MemUsed)
	b = appendU32(b, r.PowerMW)
	b = appendU64(b, r.EnergyMJ)
	b = appendU32(b, r.SMClock)
	b = appendU32(b, r.MemClock)
	b = appendU32(b, r.TempC)
	b = appendU64(b, r.ClockReasons)
	b = appendU64(b, server)
	b = append(b, '\n')
	s.row = b
	s.writeLine(b)
}

func appendU32(b []byte, v *uint32) []byte {
	b = append(b, ',')
	if v == nil {
		return b
	}
	return strconv.AppendUint(b, uint64(*v), 10)
}

func appendU64(b []byte, v *uint64) []byte {
	b = append(b, ',')
	if v == nil {
		return b
	}
	return strconv.AppendUint(b, *v, 10)
}

func (s *Sampler) writeLine(b []byte) {
	if s.w == nil || s.csvErr != nil {
		return
	}
	if _, err := s.w.Write(b); err != nil {
		s.csvFailed(err)
	}
}

// flush pushes each round out so telemetry.csv can be followed live and survives a crash of
// the supervisor.
func (s *Sampler) flush() {
	if s.w == nil || s.csvErr != nil {
		return
	}
	if err := s.w.Flush(); err != nil {
		s.csvFailed(err)
	}
}

func (s *Sampler) csvFailed(err error) {
	s.csvErr = err
	s.log.Warn("writing telemetry.csv failed; sampling goes on for the summary but no more rows are written (check disk space)", zap.Error(err))
}
