package matrix

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// Current is a cell running now.
type Current struct {
	Slot     int
	Cell     string
	Phase    cell.Phase
	Started  time.Time
	Estimate time.Duration
	// Sim is whether the cell runs on the built-in simulated backend (its estimate shares
	// this machine's cores).
	Sim bool
}

// Result is what a finished ok cell measured, for the metrics; a nil field was not measured.
type Result struct {
	Cell                                   string
	Model, Hardware, Task, Backend         string
	Batch                                  int
	TPOTSeconds, OutputTokensPerS, JPerTok *float64
}

// Snapshot is the state of a run at one instant; displays and metrics read it.
type Snapshot struct {
	Start                                                      time.Time
	Running                                                    []Current
	Total, OK, Failed, Infeasible, Skipped, Interrupted, Retry int
	Slots                                                      int
	Ended                                                      bool
	// Results of the cells that finished ok in this run, in finishing order.
	Results []Result
	// CPUs is the cores sim cells share (Runner.CPUs).
	CPUs int
	// The estimates not yet spent, all cells' and the sim cells' of them (pending cells'
	// whole estimates, running cells' remainders are added at ETA time), and how far this
	// run's finished cells were off theirs.
	pendingEst, pendingSim time.Duration
	ratio                  float64
}

// Finished counts cells with an outcome (skipped ones included).
func (s Snapshot) Finished() int {
	return s.OK + s.Failed + s.Infeasible + s.Skipped + s.Interrupted
}

// Pending counts cells not started yet.
func (s Snapshot) Pending() int { return s.Total - s.Finished() - len(s.Running) }

// ETA is the estimated time left: the estimates of pending cells and the rest of running
// ones, shared over the slots as the plan's Wall shares them (sim cells over at most the
// cores), corrected by how far this run's finished cells were off their estimates.
func (s Snapshot) ETA() time.Duration {
	all, sim := s.pendingEst, s.pendingSim
	for _, c := range s.Running {
		left := max(c.Estimate-time.Since(c.Started), 0)
		all += left
		if c.Sim {
			sim += left
		}
	}
	r := s.ratio
	if r == 0 {
		r = 1
	}
	return time.Duration(float64(share(all, sim, s.Slots, s.CPUs)) * r)
}

// Progress tracks a run for displays and metrics. Safe for concurrent use.
type Progress struct {
	mu      sync.Mutex
	s       Snapshot
	est     map[string]time.Duration // pending cell → estimate
	sim     map[string]bool          // pending cell → on the sim backend
	running map[int]*Current
	results []Result
	actual  time.Duration // of cells finished this run
	planned time.Duration // their estimates
}

// NewProgress returns an empty tracker.
func NewProgress() *Progress {
	return &Progress{est: map[string]time.Duration{}, sim: map[string]bool{}, running: map[int]*Current{}}
}

func (p *Progress) begin(items []*Item, slots, cpus int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.s.Start, p.s.Total, p.s.Slots, p.s.CPUs = time.Now(), len(items), slots, cpus
	for _, it := range items {
		p.est[it.Cell.ID] = it.Estimate
		p.sim[it.Cell.ID] = it.Cell.Backend == launcher.BackendSim
	}
}

func (p *Progress) started(slot int, it *Item) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.est, it.Cell.ID)
	p.running[slot] = &Current{Slot: slot, Cell: it.Cell.ID, Phase: cell.PhasePreflight, Started: time.Now(), Estimate: it.Estimate,
		Sim: p.sim[it.Cell.ID]}
}

func (p *Progress) phase(slot int, ph cell.Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.running[slot]; c != nil {
		c.Phase = ph
	}
}

func (p *Progress) finished(slot int, it *Item, m *cell.Manifest, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.running, slot)
	delete(p.est, it.Cell.ID)
	switch m.Status {
	case cell.StatusOK:
		p.s.OK++
	case cell.StatusInfeasible:
		p.s.Infeasible++
	case cell.StatusInterrupted:
		p.s.Interrupted++
	default:
		p.s.Failed++
	}
	if it.Estimate > 0 {
		p.actual += took
		p.planned += time.Duration(float64(it.Estimate) * contention(p.sim[it.Cell.ID], p.s.Slots, p.s.CPUs))
	}
	if m.Status == cell.StatusOK {
		p.results = append(p.results, resultOf(it, m))
	}
}

func resultOf(it *Item, m *cell.Manifest) Result {
	r := Result{Cell: it.Cell.ID, Model: m.Cell.Model, Hardware: m.Cell.Hardware, Task: m.Cell.Task,
		Backend: m.Cell.Backend, Batch: m.Cell.BatchSize}
	if mt := m.PhysicalMetrics(); mt != nil {
		if tpot := mt.Headline().TPOTMs; tpot != nil {
			r.TPOTSeconds = ptr(*tpot / 1e3)
		}
		if mt.OutputThroughput > 0 {
			r.OutputTokensPerS = ptr(mt.OutputThroughput)
		}
	}
	if t := m.Telemetry; t != nil && t.JPerOutputToken != nil {
		r.JPerTok = ptr(*t.JPerOutputToken)
	}
	return r
}

func ptr(v float64) *float64 { return &v }

func (p *Progress) skipped(it *Item) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.est, it.Cell.ID)
	p.s.Skipped++
}

func (p *Progress) retried() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.s.Retry++
}

func (p *Progress) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.s.Ended = true
}

// Snapshot copies the current state.
func (p *Progress) Snapshot() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.s
	s.Results = append([]Result(nil), p.results...)
	s.Running = nil
	for _, c := range p.running {
		s.Running = append(s.Running, *c)
	}
	sort.Slice(s.Running, func(i, j int) bool { return s.Running[i].Slot < s.Running[j].Slot })
	for id, d := range p.est {
		s.pendingEst += d
		if p.sim[id] {
			s.pendingSim += d
		}
	}
	if p.planned > 0 {
		// One slow or fast cell should not swing the ETA by orders of magnitude.
		s.ratio = min(max(float64(p.actual)/float64(p.planned), 0.1), 10)
	}
	return s
}

// Line renders a one-line progress report: counts, the running cells with their phase
// and elapsed time, and the ETA.
func (s Snapshot) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%d/%d] ok %d", s.Finished(), s.Total, s.OK)
	if s.Failed > 0 {
		fmt.Fprintf(&b, " failed %d", s.Failed)
	}
	if s.Infeasible+s.Skipped > 0 {
		fmt.Fprintf(&b, " infeasible %d", s.Infeasible+s.Skipped)
	}
	if s.Retry > 0 {
		fmt.Fprintf(&b, " retries %d", s.Retry)
	}
	for _, c := range s.Running {
		fmt.Fprintf(&b, " | %s %s %s", c.Cell, c.Phase, clock(time.Since(c.Started)))
	}
	fmt.Fprintf(&b, " | elapsed %s ETA %s", clock(time.Since(s.Start)), clock(s.ETA()))
	return b.String()
}

func clock(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, sec := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, sec)
	}
	return fmt.Sprintf("%d:%02d", m, sec)
}

// Terminal redraws the progress line in place on a terminal and lets log lines through
// above it: Write (the logger's sink) clears the line, writes the log, and redraws.
type Terminal struct {
	mu   sync.Mutex
	w    io.Writer
	p    *Progress
	line string
	stop chan struct{}
	done chan struct{}
}

// NewTerminal starts redrawing p on w every interval until Close.
func NewTerminal(w io.Writer, p *Progress, interval time.Duration) *Terminal {
	t := &Terminal{w: w, p: p, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(t.done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
				t.redraw()
			}
		}
	}()
	return t
}

func (t *Terminal) redraw() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.line = t.p.Snapshot().Line()
	fmt.Fprint(t.w, "\r\033[K"+t.line)
}

// Write passes a log line through above the progress line.
func (t *Terminal) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprint(t.w, "\r\033[K")
	n, err := t.w.Write(b)
	if t.line != "" {
		fmt.Fprint(t.w, t.line)
	}
	return n, err
}

// Sync satisfies zapcore.WriteSyncer.
func (t *Terminal) Sync() error { return nil }

// Close stops redrawing and leaves the last line on screen.
func (t *Terminal) Close() {
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprint(t.w, "\r\033[K"+t.p.Snapshot().Line()+"\n")
	t.line = ""
}
