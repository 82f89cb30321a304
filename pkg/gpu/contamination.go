package gpu

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ForeignProcess is a compute process seen on one of the cell's GPUs during the window that
// is not in the server's process tree: another job sharing the GPU, whose work the cell's
// latencies and energy include.
type ForeignProcess struct {
	PID      int    `json:"pid"`
	GPUIndex int    `json:"gpu_index"`
	Cmdline  string `json:"cmdline,omitempty"` // empty when /proc does not show it
	// Rounds counts the sampling rounds that saw it; FirstSeen is the first.
	Rounds    int       `json:"rounds"`
	FirstSeen time.Time `json:"first_seen"`
	// PeakUsedBytes is nil when the driver does not report the process's memory.
	PeakUsedBytes *uint64 `json:"peak_used_bytes,omitempty"`
}

// XIDEvent is one NVML XID error event (nvmlEventTypeXidCriticalError: every Xid the driver
// reports on the GPU) as the sampler received it.
type XIDEvent struct {
	Time     time.Time `json:"time"`
	GPUIndex int       `json:"gpu_index"` // -1 when the event's device is not one of the cell's
	XID      uint64    `json:"xid"`
}

// procKey names one process on one GPU.
type procKey struct{ pid, gpu int }

// procWatch is what one window saw of the GPUs' compute processes.
type procWatch struct {
	rounds     int  // readings in the window that listed processes against a known server tree
	serverSeen bool // a server PID was among them
	foreign    map[procKey]*ForeignProcess
}

// addProcesses records one reading's process list against the server's PIDs; pids nil or a
// reading without a list (not supported) adds nothing.
func (w *procWatch) addProcesses(r Reading, pids map[int]bool, cmdline func(int) string) {
	if pids == nil || r.Processes == nil {
		return
	}
	w.rounds++
	for _, p := range r.Processes {
		if pids[p.PID] {
			w.serverSeen = true
			continue
		}
		if w.foreign == nil {
			w.foreign = map[procKey]*ForeignProcess{}
		}
		k := procKey{p.PID, r.Index}
		f := w.foreign[k]
		if f == nil {
			f = &ForeignProcess{PID: p.PID, GPUIndex: r.Index, FirstSeen: r.Time, Cmdline: cmdline(p.PID)}
			w.foreign[k] = f
		}
		f.Rounds++
		if p.UsedBytes != nil && (f.PeakUsedBytes == nil || *p.UsedBytes > *f.PeakUsedBytes) {
			f.PeakUsedBytes = ptr(*p.UsedBytes)
		}
	}
}

// result is the window's foreign processes ([] when checked and none) or, when the check
// cannot be made, nil and why.
func (w *procWatch) result(havePIDs bool) ([]ForeignProcess, string) {
	switch {
	case !havePIDs:
		return nil, "the sampler was not given the server's process tree"
	case w.rounds == 0:
		return nil, "NVML listed no compute processes on these GPUs during the window (not supported)"
	case !w.serverSeen:
		// The server holds a CUDA context on its GPUs all through the bench; a list without
		// it is one whose PIDs are not this PID namespace's (NVML reports host PIDs, a
		// container without the host PID namespace sees its own) or is incomplete.
		return nil, "NVML's process lists never showed the server's processes during the window (PIDs of another PID namespace, as in a container without the host's?), so another process cannot be told from the server"
	}
	out := make([]ForeignProcess, 0, len(w.foreign))
	for _, f := range w.foreign {
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GPUIndex != out[j].GPUIndex {
			return out[i].GPUIndex < out[j].GPUIndex
		}
		return out[i].PID < out[j].PID
	})
	return out, ""
}

// xidSource is a backend that can watch XID events (NVML's event sets).
type xidSource interface {
	watchXID(devs []Device) (xidWaiter, error)
}

// xidWaiter delivers XID events; wait returns ok false on a timeout.
type xidWaiter interface {
	wait(timeout time.Duration) (gpuIndex int, xid uint64, ok bool, err error)
	close()
}

// nvmlXID is an NVML event set registered for XID errors on the cell's GPUs.
type nvmlXID struct {
	set   nvml.EventSet
	index map[string]int // by UUID
}

// watchXID registers every device of devs for XID error events; an error says why the
// watch cannot cover all of them (a partial watch would read as "no XID" where it is blind).
func (b *nvmlBackend) watchXID(devs []Device) (xidWaiter, error) {
	set, ret := b.lib.EventSetCreate()
	if !errors.Is(ret, nvml.SUCCESS) {
		return nil, fmt.Errorf("NVML cannot create an event set: %w", ret)
	}
	w := &nvmlXID{set: set, index: map[string]int{}}
	for _, d := range devs {
		h, err := b.handle(d)
		if err != nil {
			w.close()
			return nil, err
		}
		if ret := h.RegisterEvents(uint64(nvml.EventTypeXidCriticalError), set); !errors.Is(ret, nvml.SUCCESS) {
			w.close()
			return nil, fmt.Errorf("GPU %d does not report XID events to NVML: %w", d.Index, ret)
		}
		w.index[d.UUID] = d.Index
	}
	return w, nil
}

func (w *nvmlXID) wait(timeout time.Duration) (int, uint64, bool, error) {
	ev, ret := w.set.Wait(uint32(timeout / time.Millisecond))
	switch {
	case errors.Is(ret, nvml.ERROR_TIMEOUT):
		return 0, 0, false, nil
	case !errors.Is(ret, nvml.SUCCESS):
		return 0, 0, false, ret
	}
	idx := -1
	if ev.Device != nil {
		if u, ret := ev.Device.GetUUID(); errors.Is(ret, nvml.SUCCESS) {
			if i, ok := w.index[u]; ok {
				idx = i
			}
		}
	}
	return idx, ev.EventData, true, nil
}

func (w *nvmlXID) close() { _ = w.set.Free() }

// xidWatch is the sampler's XID watcher: its own goroutine waits on the event set until Stop
// and keeps every event with its time.
type xidWatch struct {
	w      xidWaiter
	reason string // why there is no watch
	done   chan struct{}

	mu     sync.Mutex
	events []XIDEvent
	err    string // why the watch ended early
}

// xidPoll is how long one wait blocks; Stop waits at most this long for the watcher.
const xidPoll = 200 * time.Millisecond

func (x *xidWatch) run(stop <-chan struct{}, ctxDone <-chan struct{}, now func() time.Time) {
	defer close(x.done)
	defer x.w.close()
	for {
		select {
		case <-stop:
			x.drain(now)
			return
		case <-ctxDone:
			return
		default:
		}
		if !x.one(xidPoll, now) {
			return
		}
	}
}

// drain takes the events already queued when sampling stops.
func (x *xidWatch) drain(now func() time.Time) {
	for range 64 {
		if !x.one(0, now) {
			return
		}
	}
}

// one waits for one event; false when the watch must end (an error, or nothing queued on a
// zero-timeout drain).
func (x *xidWatch) one(timeout time.Duration, now func() time.Time) bool {
	idx, xid, ok, err := x.w.wait(timeout)
	if err != nil {
		x.mu.Lock()
		x.err = "XID watch ended early: " + err.Error()
		x.mu.Unlock()
		return false
	}
	if !ok {
		return timeout > 0
	}
	x.mu.Lock()
	x.events = append(x.events, XIDEvent{Time: now(), GPUIndex: idx, XID: xid})
	x.mu.Unlock()
	return true
}

// result is the events within [lo, hi] ([] when watched and none) or nil and why not
// watched.
func (x *xidWatch) result(lo, hi time.Time) ([]XIDEvent, string) {
	if x == nil {
		return nil, "the backend cannot watch XID events"
	}
	if x.w == nil {
		return nil, x.reason
	}
	<-x.done
	x.mu.Lock()
	defer x.mu.Unlock()
	out := []XIDEvent{}
	for _, e := range x.events {
		if !e.Time.Before(lo) && !e.Time.After(hi) {
			out = append(out, e)
		}
	}
	if len(out) == 0 && x.err != "" {
		return nil, x.err
	}
	return out, ""
}
