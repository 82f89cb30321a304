package matrix

import (
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
)

// TestEstimateUnknownIsZero: a cell that memory says cannot run has no estimate (0, shown
// as "–" by the plan), never a made-up duration; one that fits has a positive one.
func TestEstimateUnknownIsZero(t *testing.T) {
	tb := tables(t)
	for _, tt := range []struct {
		name     string
		model    string
		in       int
		positive bool
	}{
		{"fits", "qwen1_5", 4000, true},
		// DeepSeek-R1's 671 B fp8 weights alone exceed one H100.
		{"does not fit", "deepseek_r1", 4000, false},
		{"unknown model", "no-such-model", 4000, false},
	} {
		c := &Cell{Model: tt.model, Family: "H100", GPUs: 1, TP: 1, Batch: 1, NumSamples: 4, Backend: "sglang",
			Bench: &config.Bench{TargetInputTokens: tt.in, TargetOutputTokens: 100}}
		if got := Estimate(c, tb, nil); (got > 0) != tt.positive {
			t.Errorf("%s: estimate %v, want positive %v", tt.name, got, tt.positive)
		}
	}
}

// TestEstimateSimCPUBound: a sim cell scaled ×0.01 is paced by the sim's CPU cost per pass
// and token, not by its scaled passes, and the plan's wall shares sim cells over no more
// slots than cores (GPU cells over every slot).
func TestEstimateSimCPUBound(t *testing.T) {
	tb := tables(t)
	sim := func(batch int) *Cell {
		return &Cell{Model: "qwen1_5", Family: "H100", GPUs: 1, TP: 1, Batch: batch, NumSamples: 100, Backend: "sim",
			SimTimeScale: 0.01, Bench: &config.Bench{TargetInputTokens: 4000, TargetOutputTokens: 1000}}
	}
	one := Estimate(sim(1), tb, nil)
	// 100 waves of 1000 passes of one token each: at least the CPU cost of 100,000 passes.
	if floor := secs(simCellCPU + 100*1000*(simPassCPU+simTokenCPU)); one < floor {
		t.Errorf("bs1 estimate %v, want at least the sim's CPU cost %v", one, floor)
	}
	if big := Estimate(sim(32), tb, nil); big >= one {
		t.Errorf("bs32 estimate %v not below bs1's %v (32 requests share each pass)", big, one)
	}
	gpu := &Cell{Model: "qwen1_5", Family: "H100", GPUs: 1, TP: 1, Batch: 1, NumSamples: 4, Backend: "sglang",
		Bench: &config.Bench{TargetInputTokens: 4000, TargetOutputTokens: 100}}
	items := []*Item{
		{Cell: sim(1), Action: ActRun, Estimate: 40 * time.Second},
		{Cell: sim(1), Action: ActRun, Estimate: 40 * time.Second},
		{Cell: gpu, Action: ActKeep, Estimate: time.Hour}, // not run: not counted
	}
	if got := Wall(items, 4, 2); got != 40*time.Second {
		t.Errorf("two 40 s sim cells over 4 slots and 2 cores: %v, want 40s", got)
	}
	if got := Wall(items, 4, 1); got != 80*time.Second {
		t.Errorf("two 40 s sim cells over 4 slots and 1 core: %v, want 80s", got)
	}
	items[2].Action = ActRun
	if got := Wall(items, 4, 1); got != (time.Hour+80*time.Second)/4 {
		t.Errorf("with a GPU cell of an hour: %v, want the slots' share %v", got, (time.Hour+80*time.Second)/4)
	}
}

// TestETASharesAsWall: before any cell finishes, the run's ETA is the plan's Wall (sim
// cells over at most the cores, GPU cells over every slot); a finished sim cell that took
// what that sharing predicts leaves the ETA on the plan, and one that took 1.5× longer
// scales the rest by 1.5, not by the sharing again.
func TestETASharesAsWall(t *testing.T) {
	mk := func(id, backend string) *Item {
		return &Item{Cell: &Cell{ID: id, Backend: backend}, Action: ActRun, Estimate: 10 * time.Second}
	}
	ok := &cell.Manifest{Status: cell.StatusOK}
	for _, tt := range []struct {
		name    string
		backend string
		slots   int
		cpus    int
		took    time.Duration // of the first cell; 0: none finished
		want    time.Duration
	}{
		{"sim, 4 slots on 2 cores: two at a time", "sim", 4, 2, 0, 20 * time.Second},
		{"GPU cells: four at a time", "sglang", 4, 2, 0, 10 * time.Second},
		{"sim cell took what the sharing predicts", "sim", 4, 2, 20 * time.Second, 15 * time.Second},
		{"sim cell 1.5× slower than predicted", "sim", 4, 2, 30 * time.Second, 22500 * time.Millisecond},
		{"one slot: estimates add up", "sim", 1, 2, 10 * time.Second, 30 * time.Second},
	} {
		items := []*Item{mk("a", tt.backend), mk("b", tt.backend), mk("c", tt.backend), mk("d", tt.backend)}
		p := NewProgress()
		p.begin(items, tt.slots, tt.cpus)
		want := tt.want
		if tt.took == 0 {
			if w := Wall(items, tt.slots, tt.cpus); w != want {
				t.Fatalf("%s: Wall %v, test wants %v", tt.name, w, want)
			}
		} else {
			p.started(0, items[0])
			p.finished(0, items[0], ok, tt.took)
		}
		if got := p.Snapshot().ETA(); got != want {
			t.Errorf("%s: ETA %v, want %v", tt.name, got, want)
		}
	}
}
