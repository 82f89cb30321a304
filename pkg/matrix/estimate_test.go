package matrix

import (
	"testing"
	"time"

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
