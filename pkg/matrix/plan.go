package matrix

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/launcher"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// Node is what this machine offers: its GPU count and family (from NVML or --hardware).
// A node with no GPUs (Count 0) runs only sim cells.
type Node struct {
	Label  string
	Count  int
	Family string
}

// ParseNode reads a node label ("8xH100"); "" is a node without GPUs.
func ParseNode(label string) (Node, error) {
	if label == "" {
		return Node{}, nil
	}
	n, fam, err := ParseHardware(label)
	if err != nil {
		return Node{}, err
	}
	return Node{Label: label, Count: n, Family: fam}, nil
}

// Applies reports whether a cell can run on the node, and why not. The sim uses no GPU, so
// sim cells run anywhere; a real cell needs the node's family and at least its GPU count
// (a 1xH100 cell runs on one GPU of an 8xH100 node).
func (n Node) Applies(c *Cell) (bool, string) {
	if c.Backend == launcher.BackendSim {
		return true, ""
	}
	if n.Count == 0 {
		return false, "this node has no GPUs NVML can see (pass --hardware if it does)"
	}
	if c.Family != n.Family {
		return false, fmt.Sprintf("needs %s, this node is %s", c.Family, n.Label)
	}
	if c.GPUs > n.Count {
		return false, fmt.Sprintf("needs %d GPUs, this node has %d", c.GPUs, n.Count)
	}
	return true, ""
}

// Extra key of manifest.json where the matrix records its own facts about a cell.
const ExtraKey = "matrix"

// Note is manifest.extra.matrix.
type Note struct {
	Group    string `json:"group,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	// SkippedBecause names the smaller batch of the same chain that ran out of memory when
	// this cell was not run at all.
	SkippedBecause string `json:"skipped_because,omitempty"`
	PinnedSamples  bool   `json:"pinned_num_samples,omitempty"`
	// ContaminatedRetry says why the cell ran once more: an earlier attempt's truth
	// verdict was contaminated.
	ContaminatedRetry string `json:"contaminated_retry,omitempty"`
}

// NoteOf reads manifest.extra.matrix (zero when absent).
func NoteOf(m *cell.Manifest) Note {
	var n Note
	if raw, ok := m.Extra[ExtraKey]; ok {
		_ = json.Unmarshal(raw, &n)
	}
	return n
}

// SetNote writes manifest.extra.matrix.
func SetNote(m *cell.Manifest, n Note) {
	if m.Extra == nil {
		m.Extra = map[string]json.RawMessage{}
	}
	m.Extra[ExtraKey] = noteJSON(n)
}

func noteJSON(n Note) json.RawMessage {
	b, _ := json.Marshal(n) // plain strings, numbers and bools always marshal
	return b
}

// Results reads every cell of the results root (cell.Layout.Cells), keyed by directory
// name, which is the cell id the directory's manifest must carry. Unreadable manifests and
// directories holding another cell's manifest (copied or renamed) come back as problems:
// they count as no result for any cell, so a copy never decides another cell's status. A
// missing root is empty.
func Results(root string) (map[string]*cell.Manifest, []cell.Problem, error) {
	lay, err := cell.OpenLayout(root)
	if err != nil {
		return nil, nil, err
	}
	ents, probs, err := lay.Cells()
	if err != nil {
		return nil, nil, err
	}
	out := make(map[string]*cell.Manifest, len(ents))
	for _, e := range ents {
		out[e.Dir.ID] = e.Manifest
	}
	return out, probs, nil
}

// FailedInResults lists the cells of a plan, on this node and not filtered out, whose result
// in the results root is failed: what the matrix's exit code reports (8), whether this run
// or an earlier one failed them.
func FailedInResults(items []*Item, results map[string]*cell.Manifest) []string {
	var out []string
	for _, it := range items {
		if it.Action == ActNotHere || it.Action == ActFiltered {
			continue
		}
		if m := results[it.Cell.ID]; m != nil && m.Status == cell.StatusFailed {
			out = append(out, it.Cell.ID)
		}
	}
	return out
}

// Action says what a run does with a cell.
type Action string

// Actions.
const (
	ActRun      Action = "run"
	ActKeep     Action = "keep"     // finished earlier (ok, infeasible, or failed without --redo-failed)
	ActDone     Action = "done"     // the matrix says done elsewhere
	ActSkip     Action = "skip"     // a smaller batch of its chain ran out of memory
	ActNotHere  Action = "not-here" // does not apply to this node
	ActFiltered Action = "filtered" // excluded by --only
)

// Options steer which cells a run takes on.
type Options struct {
	IncludeDone bool
	NoSkip      bool
	RedoFailed  bool
	// Only keeps cells whose id matches (nil: all).
	Only func(id string) bool
}

// Item is one cell of a plan: what happens to it and why.
// PackSlots is how many cells --pack runs at once when --slots is not given, and why: one
// per GPU of the node; on a node without GPUs (sim cells only, which mostly wait on their
// paced passes) two per CPU core, at most 8.
func PackSlots(gpus, cpus int) (int, string) {
	if gpus > 0 {
		return gpus, fmt.Sprintf("one per GPU of this node (%d)", gpus)
	}
	n := min(max(2*cpus, 1), 8)
	return n, fmt.Sprintf("no GPUs here: two per CPU core (%d cores), at most 8", cpus)
}

// Selected counts the items --only kept: all of them without --only. A selector that
// keeps none is a usage error (exit 2), not an empty run.
func Selected(items []*Item) int {
	n := 0
	for _, it := range items {
		if it.Action != ActFiltered {
			n++
		}
	}
	return n
}

type Item struct {
	Cell   *Cell
	Action Action
	Why    string
	Prev   *cell.Manifest // what the results root holds for it
	// Extra are notes for this run's manifest "extra" beside the config's (the daemon's
	// lease reconciliation proof).
	Extra map[string]json.RawMessage
	// Feasible is the pass-cost model's memory verdict (false only when the cell does not
	// fit at all); Verdict says "fits", "under-batched" (Concurrent < batch requests at
	// once) or "does-not-fit"; Need/Have are bytes per GPU.
	Feasible   bool
	Verdict    string
	Concurrent int
	Need, Have float64
	FeasWhy    string
	Estimate   time.Duration
}

// Plan decides, for every cell, what a run on node with results will do.
func Plan(mx *Matrix, tables *config.Tables, node Node, results map[string]*cell.Manifest, o Options) []*Item {
	var items []*Item
	oomAt := map[string]*Cell{} // chain → smallest batch already out of memory
	for _, c := range mx.Cells {
		it := &Item{Cell: c, Prev: results[c.ID]}
		if pr, ok := predict(c, tables); ok {
			f := pr.Fit
			it.Feasible, it.Verdict, it.Concurrent = f.Verdict != passcost.DoesNotFit, f.Verdict, f.Concurrent
			it.Need, it.Have, it.FeasWhy = f.NeedPerGPU, f.Memory.UsablePerGPU, f.Reason
		} else {
			it.Feasible, it.FeasWhy = true, "model or hardware not described: no prediction"
		}
		it.Estimate = Estimate(c, tables, it.Prev)
		items = append(items, it)
		if it.Prev != nil && it.Prev.Status == cell.StatusInfeasible && NoteOf(it.Prev).SkippedBecause == "" {
			if o := oomAt[c.Chain()]; o == nil || c.Batch < o.Batch {
				oomAt[c.Chain()] = c
			}
		}
	}
	for _, it := range items {
		c, prev := it.Cell, it.Prev
		ok, why := node.Applies(c)
		switch {
		case o.Only != nil && !o.Only(c.ID):
			it.Action, it.Why = ActFiltered, "not matched by --only"
		case !ok:
			it.Action, it.Why = ActNotHere, why
		case prev != nil && prev.Status == cell.StatusOK:
			it.Action, it.Why = ActKeep, "ok in results"
		case prev != nil && prev.Status == cell.StatusInfeasible && NoteOf(prev).SkippedBecause == "":
			it.Action, it.Why = ActKeep, "infeasible in results: "+failureText(prev)
		case prev != nil && prev.Status == cell.StatusFailed && !o.RedoFailed:
			it.Action, it.Why = ActKeep, "failed in results (--redo-failed reruns it): "+failureText(prev)
		case c.Done && !o.IncludeDone:
			it.Action, it.Why = ActDone, "done per the matrix (--include-done reruns it)"
		case !o.NoSkip && oomAt[c.Chain()] != nil && oomAt[c.Chain()].Batch < c.Batch:
			it.Action, it.Why = ActSkip, fmt.Sprintf("skipped-infeasible: batch %d of the same model, hardware, task and backend ran out of memory (--no-skip runs it)", oomAt[c.Chain()].Batch)
		default:
			it.Action = ActRun
			switch {
			case prev == nil:
				it.Why = "pending"
			case prev.InterruptedWhy() != "":
				it.Why = "redo: earlier attempt " + prev.InterruptedWhy()
			default:
				it.Why = "redo: earlier attempt " + string(prev.Status)
			}
		}
	}
	return items
}

func failureText(m *cell.Manifest) string {
	if m.Failure == nil {
		return string(m.Status)
	}
	return fmt.Sprintf("%s/%s: %s", m.Failure.Phase, m.Failure.Kind, firstLine(m.Failure.Message))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

// predict is the pass-cost model's prediction of a cell (capmath.Predict).
func predict(c *Cell, t *config.Tables) (capmath.Prediction, bool) {
	m, ok := t.Models[c.Model]
	hw, ok2 := t.HardwareFamily(c.Family)
	if !ok || !ok2 {
		return capmath.Prediction{}, false
	}
	if b, ok := config.KVCacheBytes(c.ServerArgs); ok {
		m.KVElemBytes = b
	}
	return capmath.Predict(m, hw, c.TP, c.Batch, c.Bench.TargetInputTokens, c.Bench.TargetOutputTokens, c.NumSamples), true
}

// The sim's own cost on the machine's CPUs, which sets the pace of a time-scaled sim cell
// far more than its scaled passes: per cell (spawn, readiness, teardown, manifest,
// compaction), per decode pass (the server's step and the client's wake-ups) and per streamed
// token (one SSE event written, read and parsed). Fitted on the 95 ok cells of
// configs/matrix-sim.yaml run with --pack --slots 4 on a 2-core machine (wall per cell
// 1.82 s + 196 µs per pass + 46 µs per token, four cells sharing two cores; halved here to
// the cost of one cell with a core of its own). Within 0.5-1.7x per cell (p10-p90) and
// exact in total on that run; Wall divides them by the cores, not the slots.
const (
	simCellCPU  = 0.9
	simPassCPU  = 98e-6
	simTokenCPU = 23e-6
)

// Estimate is how long a cell should take. A finished earlier run of the same cell is the
// best guess; otherwise the pass-cost model's prediction (capmath.Predict, the model the
// sim and the floors use): every wave of the batch that memory admits prefills together and
// then decodes out tokens, plus a start-up guess (weights read from disk at ~2 GB/s plus a
// minute of server initialisation). Sim cells scale by their time scale and use fixed pass
// times where set, but a pass never takes less than the sim's CPU cost of it (simPassCPU,
// simTokenCPU). 0 means unknown (a cell that cannot run, a model not described).
func Estimate(c *Cell, t *config.Tables, prev *cell.Manifest) time.Duration {
	if prev != nil && prev.Status == cell.StatusOK && prev.Timings.Total > 0 {
		return secs(prev.Timings.Total)
	}
	pr, ok := predict(c, t)
	if !ok || pr.Batch <= 0 || pr.TPOTMs == nil || pr.TTFTMs == nil {
		return 0 // unknown: the plan shows no estimate
	}
	m := t.Models[c.Model]
	out := c.Bench.TargetOutputTokens
	waves := math.Ceil(float64(c.NumSamples) / float64(pr.Batch))
	prefill, step := *pr.TTFTMs/1000, *pr.TPOTMs/1000
	startup := 60 + passcost.WeightBytes(m)/2e9
	if c.Backend == launcher.BackendSim {
		scale := c.SimTimeScale
		if scale == 0 {
			scale = 1
		}
		prefill, step = prefill*scale, step*scale
		if c.SimTTFT > 0 {
			prefill = c.SimTTFT.Seconds() * scale
		}
		if c.SimTPOT > 0 {
			step = c.SimTPOT.Seconds() * scale
		}
		perWave := float64(min(c.Batch, pr.Batch, c.NumSamples))
		step = max(step, simPassCPU+perWave*simTokenCPU)
		startup = simCellCPU + c.SimStartup.Seconds()
	}
	scale := 1.0
	if c.Backend == launcher.BackendSim && c.SimTimeScale > 0 {
		scale = c.SimTimeScale
	}
	one := prefill + float64(out)*step
	return secs(startup + benchesTime(c, waves*one, one, scale))
}

// benchesTime is how long a cell's measured benches take, given one closed-loop bench
// (closed) and one request alone (one), in wall seconds: repeats run the bench that many
// times; an open loop at rate R cannot end before its last arrival (num_samples/R
// physical seconds, × the sim's time scale on its wall clock) and its request, nor before
// the closed loop would (the server is no faster); a sweep is one such bench per listed
// rate, and each of --find-max-rate's probes (their rates unknown here) counts as a bench
// at the rate the search starts from (request_rate, else the highest listed rate, else
// cell.DefaultFindStart): it doubles up from there or halves down.
func benchesTime(c *Cell, closed, one, scale float64) float64 {
	l := c.Load
	at := func(rate float64) float64 {
		return max(float64(c.NumSamples)/rate*scale+one, closed)
	}
	switch {
	case len(l.Rates) > 0 || l.FindMaxRate:
		t := 0.0
		start := l.RequestRate
		for _, r := range l.Rates {
			t += at(r)
			if l.RequestRate <= 0 {
				start = max(start, r)
			}
		}
		if start <= 0 {
			start = cell.DefaultFindStart
		}
		return t + float64(l.Benches()-len(l.Rates))*at(start)
	case l.RequestRate > 0:
		return at(l.RequestRate) * float64(max(c.Repeats, 1))
	}
	return closed * float64(max(c.Repeats, 1))
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Wall is how long the cells to run should take over the slots: their estimates shared by
// the slots, but sim cells, which are bound by the machine's CPUs (server and client of
// each), shared by no more slots than there are cores. Unknown estimates (0) add nothing.
func Wall(items []*Item, slots, cpus int) time.Duration {
	var all, sim time.Duration
	for _, it := range items {
		if it.Action != ActRun {
			continue
		}
		all += it.Estimate
		if it.Cell.Backend == launcher.BackendSim {
			sim += it.Estimate
		}
	}
	return share(all, sim, slots, cpus)
}

// share is the wall time of work estimated at all (sim of it on the built-in simulated
// backend) run over slots at once on cpus cores: the slots divide all, and sim cells,
// whose servers and clients are this machine's CPU, go no faster than min(slots, cpus)
// at once. Wall, the plan's total, and Snapshot.ETA, the time left, both share this way.
func share(all, sim time.Duration, slots, cpus int) time.Duration {
	slots = max(slots, 1)
	return max(all/time.Duration(slots), sim/time.Duration(min(slots, max(cpus, 1))))
}

// contention is how much longer than its estimate a sim cell runs when slots sim cells
// share cpus cores (the estimate is the cell alone): slots/cpus, at least 1. Progress
// scales a finished sim cell's estimate by it before comparing it with how long the cell
// took, so the ETA's correction ratio measures the estimates' error only, not the sharing
// share() already counts.
func contention(sim bool, slots, cpus int) float64 {
	if !sim {
		return 1
	}
	return max(1, float64(max(slots, 1))/float64(max(cpus, 1)))
}
