package matrix

import (
	"testing"

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
