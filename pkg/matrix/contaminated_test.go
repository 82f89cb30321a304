package matrix

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
)

// TestRunnerRetriesContaminatedOnce: an ok cell whose truth verdict is contaminated runs
// once more (with --retries 0), the second run's manifest records why; a second
// contaminated run is kept, not retried again.
func TestRunnerRetriesContaminatedOnce(t *testing.T) {
	r, f, results := contaminatedRun(t, cell.Check{Name: "client_cpu_fraction", Kind: cell.CheckContamination, Value: 0.97, Bound: "< 0.9"})
	if _, err := r.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f.calls[once] != 2 || f.calls[always] != 2 {
		t.Fatalf("attempts %v; want 2 each (one retry of a contaminated run, never more)", f.calls)
	}
	m, err := cell.ReadManifest(filepath.Join(results, once))
	if err != nil {
		t.Fatal(err)
	}
	n := NoteOf(m)
	if tr, _ := m.Truth(); tr == nil || tr.Verdict != cell.TruthClean || n.Attempts != 2 || !strings.Contains(n.ContaminatedRetry, "attempt 1 was contaminated (client_cpu_fraction 0.97") {
		t.Errorf("kept manifest: truth %+v, note %+v; want the clean second run recording why it ran", tr, n)
	}
}

// TestRunCellRetriesContaminatedOnce: the daemon's entry, RunCell, runs a contaminated cell
// once more through the same loop as matrix run, and RetryReason (the daemon's cell reason)
// says so; a rerun contaminated too is named as such.
func TestRunCellRetriesContaminatedOnce(t *testing.T) {
	r, f, _ := contaminatedRun(t, cell.Check{Name: "foreign_gpu_processes", Kind: cell.CheckContamination, Value: 1, Bound: "0"})
	if err := r.Open(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{once, always} {
		var it *Item
		for _, x := range r.Items {
			if x.Cell.ID == id {
				it = x
			}
		}
		if it == nil {
			t.Fatalf("no item %s", id)
		}
		m, err := r.RunCell(t.Context(), it, nil, 0, CellHooks{})
		if err != nil || m == nil {
			t.Fatalf("RunCell %s: %v", id, err)
		}
		why := RetryReason(m)
		if f.calls[id] != 2 || !strings.Contains(why, "attempt 1 was contaminated (foreign_gpu_processes 1, bound 0)") {
			t.Errorf("%s: %d attempts, reason %q; want 2 and the contaminated attempt named", id, f.calls[id], why)
		}
		if again := strings.Contains(why, "the rerun was contaminated too"); again != (id == always) {
			t.Errorf("%s: reason %q says the rerun was contaminated: %v", id, why, again)
		}
	}
	if RetryReason(&cell.Manifest{Status: cell.StatusOK}) != "" {
		t.Error("a cell that ran once has a retry reason")
	}
}

// The two cells of contaminatedRun: the first attempt of once is contaminated, every
// attempt of always is.
const once, always = "qwen1_5.1xH100.32-8.bs1.sglang", "qwen1_5.1xH100.32-8.bs2.sglang"

// contaminatedRun is a runner over two fake cells whose truth verdict names check as
// contamination: once on its first attempt only, always on every attempt.
func contaminatedRun(t *testing.T, check cell.Check) (*Runner, *fakeExec, string) {
	t.Helper()
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1, 2]}}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	f := &fakeExec{calls: map[string]int{}, hold: time.Millisecond}
	r := runner(t, mx, tb, results, f)
	r.Exec = func(ctx context.Context, c *cell.Config, pl *cell.Plan) (*cell.Manifest, error) {
		m, err := f.exec(ctx, c, pl)
		if err != nil {
			return m, err
		}
		if pl.ID == always || f.calls[pl.ID] == 1 {
			m.SetTruth(&cell.Truth{Verdict: cell.TruthContaminated, Checks: []cell.Check{check}})
		} else {
			m.SetTruth(&cell.Truth{Verdict: cell.TruthClean, Checks: []cell.Check{}})
		}
		return m, cell.WriteManifest(pl.Dir, m)
	}
	return r, f, results
}
