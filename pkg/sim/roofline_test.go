package sim

import (
	"math"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/config"
)

func tables(t *testing.T) *config.Tables {
	t.Helper()
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatalf("load built-in tables: %v", err)
	}
	return tb
}

func TestDecodeRooflineQwenH100Batch1(t *testing.T) {
	tb := tables(t)
	m, hw := tb.Models["qwen1_5"], tb.Hardware["H100"]
	// Qwen1.5-MoE-A2.7B, bf16, one H100 (3.35e12 B/s), batch 1, empty KV cache:
	//   attention per layer  2048·(16·128 + 2·16·128) + 16·128·2048 = 16,777,216
	//   shared expert        3·5632·2048                           = 34,603,008
	//   router               60·2048                               =    122,880
	//   4 routed experts     4·3·1408·2048                         = 34,603,008
	//   per layer                                                  = 86,106,112
	//   24 layers                                                  = 2,066,546,688
	//   lm head              151936·2048                           =   311,164,928
	//   total read                                                 = 2,377,711,616 params
	//   × 2 bytes = 4.755e9 B / 3.35e12 B/s                        = 1.4195 ms
	// The published "2.7B active" also counts the input embedding (0.31B), which decode
	// only gathers row by row, so the step is a bit under 2.7e9·2/3.35e12 = 1.61 ms.
	want := 2377711616.0 * 2 / 3.35e12
	got := DecodeCost(m, 1, 0).Duration(m, hw, 1).Seconds()
	if math.Abs(got-want)/want > 0.001 {
		t.Errorf("decode step = %.4f ms, want %.4f ms", got*1e3, want*1e3)
	}
	if upper := 2.7e9 * 2 / 3.35e12; got > upper {
		t.Errorf("decode step %.4f ms is above the active-weights bound %.4f ms", got*1e3, upper*1e3)
	}
}

func TestRooflineShape(t *testing.T) {
	tb := tables(t)
	m, h100, h200 := tb.Models["qwen1_5"], tb.Hardware["H100"], tb.Hardware["H200"]
	_, d1 := StepTimes(m, h100, 1, 1, 5000)
	_, d32 := StepTimes(m, h100, 1, 32, 5000)
	_, d32h200 := StepTimes(m, h200, 1, 32, 5000)
	_, d32tp8 := StepTimes(m, h100, 8, 32, 5000)
	if !(d32 > d1) {
		t.Errorf("decode at batch 32 (%v) should take longer than at batch 1 (%v): more experts and KV", d32, d1)
	}
	if !(d32h200 < d32) || !(d32tp8 < d32) {
		t.Errorf("more bandwidth should be faster: H100 %v, H200 %v, 8xH100 %v", d32, d32h200, d32tp8)
	}
	pre, _ := StepTimes(m, h100, 1, 1, 4000)
	if pre <= 0 || pre > time.Millisecond {
		t.Errorf("prefill per token = %v, want a few µs", pre)
	}
	// Prefill of 4000 tokens is compute bound: ≥ 2·(active params)·tokens / peak.
	c := PrefillCost(m, []int{4000})
	if c.FLOPs/989e12 < c.Bytes/3.35e12 {
		t.Errorf("4000-token prefill should be compute bound: %.3g FLOPs vs %.3g bytes", c.FLOPs, c.Bytes)
	}
}

func TestExpectedActiveExperts(t *testing.T) {
	for _, tc := range []struct {
		e, k   int
		tokens float64
		want   float64
	}{
		{60, 4, 0, 0},
		{60, 4, 1, 4},
		{8, 2, 1, 2},
		{8, 2, 2, 8 * (1 - 0.75*0.75)},
		{64, 6, 10000, 64},
	} {
		if got := ExpectedActiveExperts(tc.e, tc.k, tc.tokens); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("ExpectedActiveExperts(%d, %d, %v) = %v, want %v", tc.e, tc.k, tc.tokens, got, tc.want)
		}
	}
}

func TestGPURawType(t *testing.T) {
	tb := tables(t)
	// The keys of MoE-CAP's MEM_BW_DICT.
	for fam, want := range map[string]string{
		"H100": "NVIDIA-H100-HBM3-80GB",
		"H200": "NVIDIA-H200-140GB",
		"A100": "NVIDIA-A100-SXM4-80GB",
	} {
		if got := GPURawType(tb.Hardware[fam]); got != want {
			t.Errorf("GPURawType(%s) = %q, want %q", fam, got, want)
		}
	}
}
