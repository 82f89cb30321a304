package matrix

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// State of a cell in the status report.
type State string

// States.
const (
	StDone       State = "done"       // ok in results
	StDoneGuide  State = "done-guide" // the matrix says done; no result here
	StPending    State = "pending"    // never run, or interrupted
	StFailed     State = "failed"
	StInfeasible State = "infeasible" // out of memory, or skipped after a smaller batch was
	StRunning    State = "running"
	// StInterrupted is a cell whose manifest still says running but whose supervisor is
	// gone (its recorded PID and start time name no live process): it will not finish, and
	// the next run sweeps it and runs it again.
	StInterrupted State = "interrupted"
)

// Entry is one cell of the status report.
type Entry struct {
	ID                             string
	Model, Hardware, Task, Backend string
	Batch                          int
	// Load is the open loop's id part (cell.Load.IDPart); "" for the closed loop.
	Load     string
	State    State
	Manifest *cell.Manifest
	InMatrix bool
}

// Status joins the matrix with what the results root holds. Results of cells the matrix
// does not list (single launch-and-bench runs) are included too: the tables describe the
// results, not only the plan.
func Status(mx *Matrix, results map[string]*cell.Manifest) []*Entry {
	var out []*Entry
	seen := map[string]bool{}
	for _, c := range mx.Cells {
		e := &Entry{ID: c.ID, Model: c.Model, Hardware: c.Hardware, Task: c.Task, Backend: c.Backend, Batch: c.Batch,
			Load: c.Load.IDPart(), Manifest: results[c.ID], InMatrix: true}
		e.State = stateOf(e.Manifest, c.Done)
		seen[c.ID] = true
		out = append(out, e)
	}
	var extra []string
	for id := range results {
		if !seen[id] {
			extra = append(extra, id)
		}
	}
	sort.Strings(extra)
	for _, id := range extra {
		m := results[id]
		out = append(out, &Entry{ID: id, Model: m.Cell.Model, Hardware: m.Cell.Hardware, Task: m.Cell.Task,
			Backend: m.Cell.Backend, Batch: m.Cell.BatchSize, Load: m.Cell.Load, State: stateOf(m, false), Manifest: m})
	}
	return out
}

func stateOf(m *cell.Manifest, done bool) State {
	switch {
	case m != nil && m.Status == cell.StatusOK:
		return StDone
	case m != nil && m.Status == cell.StatusInfeasible:
		return StInfeasible
	case done:
		return StDoneGuide
	case m == nil || m.Status == cell.StatusInterrupted:
		return StPending
	case m.SupervisorGone():
		return StInterrupted
	case m.Status == cell.StatusRunning:
		return StRunning
	}
	return StFailed
}

type row struct {
	model, hw, task, backend, status string
	sizes                            []int
}

func group(es []*Entry, keep func(*Entry) (bool, string)) []*row {
	var rows []*row
	idx := map[string]*row{}
	for _, e := range es {
		ok, status := keep(e)
		if !ok {
			continue
		}
		// An open loop's cells are rows of their own, its load beside the backend.
		backend := e.Backend
		if e.Load != "" {
			backend += " · " + e.Load
		}
		k := strings.Join([]string{e.Model, e.Hardware, e.Task, backend, status}, "|")
		r := idx[k]
		if r == nil {
			r = &row{model: e.Model, hw: e.Hardware, task: e.Task, backend: backend, status: status}
			idx[k] = r
			rows = append(rows, r)
		}
		r.sizes = append(r.sizes, e.Batch)
	}
	for _, r := range rows {
		sort.Ints(r.sizes)
	}
	return rows
}

func sizes(s []int) string {
	parts := make([]string, len(s))
	for i, n := range s {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ", ")
}

// Report renders the status as markdown (the guide's tables) or for a terminal.
func Report(w io.Writer, mx *Matrix, es []*Entry, markdown bool) {
	counts := map[State]int{}
	for _, e := range es {
		counts[e.State]++
	}
	name := func(k string) string {
		if mx != nil {
			return mx.ModelName(k)
		}
		return k
	}
	// The task label as cell ids, file names and the report spell it (4k-1k), one spelling.
	task := func(t string) string { return t }
	tb := newTable(w, markdown)

	head := fmt.Sprintf("%d cells: %d done (%d measured here, %d per the matrix), %d pending, %d running, %d failed, %d infeasible",
		len(es), counts[StDone]+counts[StDoneGuide], counts[StDone], counts[StDoneGuide], counts[StPending], counts[StRunning], counts[StFailed], counts[StInfeasible])
	if n := counts[StInterrupted]; n > 0 {
		head += fmt.Sprintf(", %d interrupted (supervisor gone)", n)
	}
	tb.heading(head, 0)

	tb.heading("✅ Completed Experiments", 3)
	done := group(es, func(e *Entry) (bool, string) {
		switch e.State {
		case StDone:
			return true, "✅ Done"
		case StDoneGuide:
			return true, "✅ Done (per matrix, no result here)"
		}
		return false, ""
	})
	tb.table([]string{"Model", "Hardware", "Task", "Backend", "Batch Sizes", "Status"}, func(add func(...string)) {
		for _, r := range done {
			add(name(r.model), r.hw, task(r.task), r.backend, sizes(r.sizes), r.status)
		}
	})

	tb.heading("📋 Pending Experiments", 3)
	pend := group(es, func(e *Entry) (bool, string) {
		switch e.State {
		case StPending:
			return true, "pending"
		case StRunning:
			return true, "running"
		case StInterrupted:
			return true, "interrupted (supervisor gone)"
		case StFailed:
			return true, "failed"
		}
		return false, ""
	})
	tb.table([]string{"Model", "Hardware", "Task", "Backend", "Batch Sizes", "State"}, func(add func(...string)) {
		for _, r := range pend {
			add(name(r.model), r.hw, task(r.task), r.backend, sizes(r.sizes), r.status)
		}
	})

	tb.heading("❌ Failed and infeasible", 3)
	tb.table([]string{"Cell", "Status", "Where", "Reason"}, func(add func(...string)) {
		for _, e := range es {
			if (e.State != StFailed && e.State != StInfeasible) || e.Manifest == nil {
				continue
			}
			m := e.Manifest
			where, why := "", string(m.Status)
			if m.Failure != nil {
				where = string(m.Failure.Phase) + "/" + string(m.Failure.Kind)
				why = firstLine(m.Failure.Message)
			}
			if n := NoteOf(m); n.SkippedBecause != "" {
				where = "skipped"
			}
			add(e.ID, string(m.Status), where, why)
		}
	})

	tb.heading("📈 Finished cells", 3)
	var lines []string
	for _, e := range es {
		if e.State == StDone {
			lines = append(lines, Summary(e.Manifest))
		}
	}
	tb.list(lines)
}

// Summary is one line of numbers for a finished cell: TTFT, TPOT, output throughput and
// joules per output token when the energy was measured.
func Summary(m *cell.Manifest) string {
	s := m.Cell.ID + ":"
	x := m.PhysicalMetrics()
	if x == nil {
		return s + " no metrics recorded"
	}
	h := x.Headline()
	ttft, tpot := h.TTFTMs, h.TPOTMs
	s += fmt.Sprintf(" TTFT %s ms, TPOT %s ms, %.1f output tok/s, %d samples", profile.FormatMs(ttft, 1), profile.FormatMs(tpot, 2), x.OutputThroughput, m.Cell.NumSamples)
	if l := profile.ScaleLabel(x.TimeScale); l != "" {
		s += " (" + l + ", un-scaled)"
	}
	if t := m.Telemetry; t != nil && t.JPerOutputToken != nil {
		s += fmt.Sprintf(", %.3f J/token", *t.JPerOutputToken)
	} else {
		s += ", energy not measured"
		if t != nil && t.Reason != "" {
			s += " (" + t.Reason + ")"
		}
	}
	return s
}

// table writes markdown tables or aligned terminal columns.
type table struct {
	w  io.Writer
	md bool
}

func newTable(w io.Writer, md bool) *table { return &table{w: w, md: md} }

func (t *table) heading(s string, level int) {
	switch {
	case level == 0:
		fmt.Fprintln(t.w, s)
	case t.md:
		fmt.Fprintf(t.w, "\n%s %s\n\n", strings.Repeat("#", level), s)
	default:
		fmt.Fprintf(t.w, "\n%s\n", s)
	}
}

func (t *table) table(head []string, rows func(add func(...string))) {
	var body [][]string
	rows(func(c ...string) { body = append(body, c) })
	if len(body) == 0 {
		if t.md {
			fmt.Fprintln(t.w, "_none_")
		} else {
			fmt.Fprintln(t.w, "  (none)")
		}
		return
	}
	if t.md {
		esc := func(cs []string) string {
			out := make([]string, len(cs))
			for i, c := range cs {
				out[i] = strings.ReplaceAll(c, "|", `\|`)
			}
			return "| " + strings.Join(out, " | ") + " |"
		}
		fmt.Fprintln(t.w, esc(head))
		sep := make([]string, len(head))
		for i := range sep {
			sep[i] = "---"
		}
		fmt.Fprintln(t.w, "|"+strings.Join(sep, "|")+"|")
		for _, r := range body {
			fmt.Fprintln(t.w, esc(r))
		}
		return
	}
	tw := tabwriter.NewWriter(t.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  "+strings.Join(head, "\t"))
	for _, r := range body {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	tw.Flush()
}

func (t *table) list(lines []string) {
	if len(lines) == 0 {
		if t.md {
			fmt.Fprintln(t.w, "_none_")
		} else {
			fmt.Fprintln(t.w, "  (none)")
		}
		return
	}
	for _, l := range lines {
		if t.md {
			fmt.Fprintln(t.w, "- "+l)
		} else {
			fmt.Fprintln(t.w, "  "+l)
		}
	}
}
