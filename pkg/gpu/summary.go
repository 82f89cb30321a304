package gpu

import (
	"fmt"
	"math/bits"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Summary is the telemetry record of one cell (manifest.json "telemetry"). Pointer fields
// are nil when the quantity was not measured (no NVML, metric not supported, no bench
// window), so "absent" never reads as 0.
type Summary struct {
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
	GPUs      int    `json:"gpus"`
	// IntervalMS is the configured sampling interval.
	IntervalMS float64 `json:"interval_ms,omitempty"`
	// Window says what the figures cover: "bench" (between MarkBenchStart and
	// MarkBenchEnd) or "sampling" (the whole run, when the bench was never marked).
	Window string `json:"window,omitempty"`
	// Samples counts sampling rounds (each reads every GPU once); Missed counts ticks that
	// passed while a slow round was still reading.
	Samples int `json:"samples"`
	Missed  int `json:"missed"`
	// ReadErrors counts metric and device reads that failed with something other than
	// "not supported"; LostGPUs lists GPUs that fell off the bus and were no longer read.
	ReadErrors          int      `json:"read_errors,omitempty"`
	LostGPUs            []int    `json:"lost_gpus,omitempty"`
	EnergyCounterResets int      `json:"energy_counter_resets,omitempty"`
	TickJitterP99MS     *float64 `json:"tick_jitter_p99_ms,omitempty"`

	BenchWindowS *float64 `json:"bench_window_s,omitempty"`
	// EnergyJ is the energy-counter delta over the window, summed over GPUs;
	// EnergyIntegratedJ integrates sampled power over the same window as a cross-check.
	EnergyJ               *float64 `json:"energy_j,omitempty"`
	EnergyIntegratedJ     *float64 `json:"energy_integrated_j,omitempty"`
	EnergyDisagreementPct *float64 `json:"energy_disagreement_pct,omitempty"`
	// AvgPowerW is the node's (all GPUs') average power; PeakPowerW the highest sum of the
	// GPUs' power in one sampling round.
	AvgPowerW  *float64 `json:"avg_power_w,omitempty"`
	PeakPowerW *float64 `json:"peak_power_w,omitempty"`
	// Utilization pooled over GPUs and samples.
	MeanUtilPct *float64 `json:"mean_util_pct,omitempty"`
	P95UtilPct  *float64 `json:"p95_util_pct,omitempty"`
	// PeakMemoryBytes is the highest memory used on any one GPU (memory limits are per
	// GPU); ServerPeakMemoryBytes the same for memory held by the server's processes.
	PeakMemoryBytes       *uint64 `json:"peak_memory_bytes,omitempty"`
	ServerPeakMemoryBytes *uint64 `json:"server_peak_memory_bytes,omitempty"`
	// ThrottleReasonsSeen is null when the GPUs do not report clock event reasons and []
	// when they do and none occurred.
	ThrottleReasonsSeen []string `json:"throttle_reasons_seen,omitzero"`
	// ForeignProcesses are the compute processes on the cell's GPUs during the window that
	// are not the server's process tree: null when that could not be checked (ProcessCheck
	// says why), [] when checked and there was none.
	ForeignProcesses []ForeignProcess `json:"foreign_processes,omitzero"`
	ProcessCheck     string           `json:"process_check,omitempty"`
	// XIDErrors are the NVML XID error events on the cell's GPUs during the window: null
	// when they could not be watched (XIDCheck says why), [] when watched and none came.
	XIDErrors []XIDEvent   `json:"xid_errors,omitzero"`
	XIDCheck  string       `json:"xid_check,omitempty"`
	PerGPU    []GPUSummary `json:"per_gpu,omitempty"`
	CSVError  string       `json:"csv_error,omitempty"`
	// Repeats is the energy of each repeat's own measured window (a repeated bench); the
	// figures above are the first repeat's.
	Repeats []RepeatEnergy `json:"repeats,omitempty"`

	// Filled by Finish.
	OutputTokens     *int     `json:"output_tokens,omitempty"`
	EnergySource     string   `json:"energy_source,omitempty"`
	JPerOutputToken  *float64 `json:"j_per_output_token,omitempty"`
	OutputTokensPerJ *float64 `json:"output_tokens_per_j,omitempty"`
	// No cost here: pkg/gpu measures, it does not price (capmath.ComputeCost does, from
	// these measurements; manifest extra.cap.cost).
}

// GPUSummary is one GPU's share of the Summary, over the same window.
type GPUSummary struct {
	Index                 int      `json:"index"`
	UUID                  string   `json:"uuid"`
	EnergyJ               *float64 `json:"energy_j,omitempty"`
	EnergyIntegratedJ     *float64 `json:"energy_integrated_j,omitempty"`
	AvgPowerW             *float64 `json:"avg_power_w,omitempty"`
	PeakPowerW            *float64 `json:"peak_power_w,omitempty"`
	MeanUtilPct           *float64 `json:"mean_util_pct,omitempty"`
	PeakMemoryBytes       *uint64  `json:"peak_memory_bytes,omitempty"`
	ServerPeakMemoryBytes *uint64  `json:"server_peak_memory_bytes,omitempty"`
	Lost                  bool     `json:"lost,omitempty"`
}

// RepeatEnergy is the GPUs' energy over one repeat's measured window, summed over GPUs
// (nil: not measured on every GPU).
type RepeatEnergy struct {
	Repeat            int      `json:"repeat"`
	WindowS           *float64 `json:"window_s,omitempty"`
	EnergyJ           *float64 `json:"energy_j,omitempty"`
	EnergyIntegratedJ *float64 `json:"energy_integrated_j,omitempty"`
}

// JPerOutputToken is the repeat's J per output token by Summary.Finish's rule (counter,
// else integrated power); nil when no energy was measured or no token came out.
func (e RepeatEnergy) JPerOutputToken(outputTokens int) *float64 {
	s := Summary{EnergyJ: e.EnergyJ, EnergyIntegratedJ: e.EnergyIntegratedJ}
	s.Finish(outputTokens)
	return s.JPerOutputToken
}

// Finish derives the per-token energy figures from the measured window and the server's
// output token count. It prefers the energy counter and falls back to integrated power.
func (s *Summary) Finish(outputTokens int) {
	s.OutputTokens = &outputTokens
	energy := s.EnergyJ
	s.EnergySource = "counter"
	if energy == nil {
		energy, s.EnergySource = s.EnergyIntegratedJ, "power"
	}
	if energy == nil {
		s.EnergySource = ""
	}
	s.JPerOutputToken, s.OutputTokensPerJ = nil, nil
	if energy != nil && outputTokens > 0 && *energy > 0 {
		s.JPerOutputToken = ptr(*energy / float64(outputTokens))
		s.OutputTokensPerJ = ptr(float64(outputTokens) / *energy)
	}
}

// Energy is the energy the figures use (the counter's, else integrated power) and its
// source; nil when none was measured.
func (s *Summary) Energy() (*float64, string) {
	if s.EnergyJ != nil {
		return s.EnergyJ, "counter"
	}
	if s.EnergyIntegratedJ != nil {
		return s.EnergyIntegratedJ, "power"
	}
	return nil, ""
}

// reasonNames decodes NVML clock event reason bits (nvml.h nvmlClocksEventReason*).
var reasonNames = []struct {
	bit  uint64
	name string
}{
	{nvml.ClocksEventReasonGpuIdle, "gpu_idle"},
	{nvml.ClocksEventReasonApplicationsClocksSetting, "applications_clocks_setting"},
	{nvml.ClocksEventReasonSwPowerCap, "sw_power_cap"},
	{nvml.ClocksThrottleReasonHwSlowdown, "hw_slowdown"},
	{nvml.ClocksEventReasonSyncBoost, "sync_boost"},
	{nvml.ClocksEventReasonSwThermalSlowdown, "sw_thermal_slowdown"},
	{nvml.ClocksThrottleReasonHwThermalSlowdown, "hw_thermal_slowdown"},
	{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, "hw_power_brake_slowdown"},
	{nvml.ClocksEventReasonDisplayClockSetting, "display_clock_setting"},
}

// ReasonNames decodes a clock event reason mask; unknown bits are kept as hex so a newer
// driver's reason is visible rather than dropped.
func ReasonNames(mask uint64) []string {
	out := []string{}
	for _, r := range reasonNames {
		if mask&r.bit != 0 {
			out = append(out, r.name)
			mask &^= r.bit
		}
	}
	for mask != 0 {
		b := uint64(1) << bits.TrailingZeros64(mask)
		out = append(out, fmt.Sprintf("0x%x", b))
		mask &^= b
	}
	return out
}

func ptr[T any](v T) *T { return &v }
