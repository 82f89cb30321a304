package app

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// WriteCellSummary writes one cell's summary for people: status, failure, timings,
// latencies, telemetry and the CAP numbers, from its manifest.
func WriteCellSummary(w io.Writer, dir string, m *cell.Manifest) {
	fmt.Fprintf(w, "cell     %s\nstatus   %s\nresults  %s\n", m.Cell.ID, m.Status, dir)
	if m.Failure != nil {
		fmt.Fprintf(w, "failure  %s/%s: %s\n", m.Failure.Phase, m.Failure.Kind, m.Failure.Message)
		if m.Failure.Phase != cell.PhaseTeardown {
			for _, p := range m.Failure.Teardown {
				fmt.Fprintf(w, "teardown %s; kill it by hand before the next cell\n", p)
			}
		}
	}
	t := m.Timings
	sec := func(s float64) string { return HumanDuration(time.Duration(s * float64(time.Second))) }
	// Three significant digits: what a reader compares (16.2 ms, 463 ms, 0.0334 ms).
	f := func(p *float64) string {
		if p == nil {
			return profile.FormatMs(p, 0)
		}
		return strconv.FormatFloat(RoundHuman(*p), 'f', -1, 64)
	}
	fmt.Fprintf(w, "timings  preflight %s  launch→ready %s  bench %s  teardown %s  total %s\n",
		sec(t.Preflight), sec(t.LaunchToReady), sec(t.Bench), sec(t.Teardown), sec(t.Total))
	if x := m.PhysicalMetrics(); x != nil {
		fmt.Fprintf(w, "requests %d completed, %d failed  (%s latencies)\n", x.Completed, x.Failed, x.LatencyKind)
		if l := profile.ScaleLabel(x.TimeScale); l != "" {
			fmt.Fprintf(w, "time     %s: the client latencies and throughputs below are un-scaled to physical units (wall time ÷ %g, rates × %g)\n", l, x.TimeScale, x.TimeScale)
		}
		// moecap helper: how the prompts were built, and any doubt about the result.
		if x.PromptStyle != "" {
			fmt.Fprintf(w, "prompts  %s\n", x.PromptStyle)
		}
		if len(x.InvalidReasons) > 0 {
			fmt.Fprintf(w, "INVALID  %s\n", strings.Join(x.InvalidReasons, "; "))
		}
		if cc := x.ClockCheck; cc != nil && cc.Note != "" {
			fmt.Fprintf(w, "clock    %s\n", cc.Note)
		}
		if sp := x.ServerPass; sp != nil {
			// Server forward-pass times (GPU time, no queueing), under their own names.
			fmt.Fprintf(w, "server passes  TTFT (MoE-CAP) %s ms  TPOT (MoE-CAP) %s ms\n", f(sp.TTFTMoECAPMs), f(sp.TPOTMoECAPMs))
		}
		if x.MeanTTFTMs != nil || x.MeanTPOTMs != nil {
			fmt.Fprintf(w, "TTFT ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanTTFTMs), f(x.MedianTTFTMs), f(x.P90TTFTMs), f(x.P99TTFTMs))
			fmt.Fprintf(w, "TPOT ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanTPOTMs), f(x.MedianTPOTMs), f(x.P90TPOTMs), f(x.P99TPOTMs))
			fmt.Fprintf(w, "ITL ms   mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanITLMs), f(x.MedianITLMs), f(x.P90ITLMs), f(x.P99ITLMs))
		}
		fmt.Fprintf(w, "E2EL ms  mean %s  median %s  p90 %s  p99 %s\n", f(x.MeanE2ELMs), f(x.MedianE2ELMs), f(x.P90E2ELMs), f(x.P99E2ELMs))
		fmt.Fprintf(w, "throughput  %s output tok/s  %s total tok/s  %s req/s over %s\n", f(&x.OutputThroughput), f(&x.TotalTokenThroughput), f(&x.RequestThroughput), sec(x.DurationS))
	}
	printLoad(w, m)
	printTelemetry(w, m, f)
	printCAP(w, m)
	printTruth(w, m)
}

// printTelemetry is the summary's GPU line: what NVML sampled, or why nothing was.
func printTelemetry(w io.Writer, m *cell.Manifest, f func(*float64) string) {
	if tm := m.Telemetry; tm != nil {
		if !tm.Available {
			fmt.Fprintf(w, "telemetry unavailable: %s\n", tm.Reason)
		} else {
			fmt.Fprintf(w, "gpus     %d sampled, %d samples, %d missed", tm.GPUs, tm.Samples, tm.Missed)
			if tm.EnergyJ != nil {
				fmt.Fprintf(w, "; energy %.0f J", *tm.EnergyJ)
			}
			if tm.JPerOutputToken != nil {
				fmt.Fprintf(w, ", %s J/output token", f(tm.JPerOutputToken))
			}
			if tm.AvgPowerW != nil {
				fmt.Fprintf(w, ", avg power %.0f W", *tm.AvgPowerW)
			}
			if tm.PeakMemoryBytes != nil {
				fmt.Fprintf(w, ", peak memory %.1f GiB", float64(*tm.PeakMemoryBytes)/(1<<30))
			}
			fmt.Fprintln(w)
		}
	}
}

// printTruth is the summary's truth line: the verdict and the checks that failed.
func printTruth(w io.Writer, m *cell.Manifest) {
	if t, ok := m.Truth(); ok {
		var failed []string
		for _, c := range t.Checks {
			if !c.Pass {
				failed = append(failed, fmt.Sprintf("%s %.3g (bound %s)", c.Name, c.Value, c.Bound))
			}
		}
		line := fmt.Sprintf("truth    %s: %d checks", t.Verdict, len(t.Checks))
		if len(failed) > 0 {
			line += "; failed: " + strings.Join(failed, ", ")
		}
		fmt.Fprintln(w, line)
	}
}

// WriteCellSummary's CAP part: physical utilisations (an impossible one is an ERROR line
// with its likely cause, never a number), MoE-CAP's values under their own name, floors,
// the memory verdict and the cost, all from manifest extra.cap.
func printCAP(w io.Writer, m *cell.Manifest) {
	d, ok := m.CAP()
	if !ok {
		return
	}
	if d.Absent != "" {
		fmt.Fprintf(w, "CAP      absent: %s\n", d.Absent)
		return
	}
	pct := func(p *float64) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f%%", *p*100)
	}
	for _, ph := range []struct {
		name string
		u    *capmath.Util
	}{{"prefill", d.Prefill}, {"decode", d.Decode}} {
		if ph.u == nil {
			continue
		}
		fmt.Fprintf(w, "%-8s S-MBU %s  S-MFU %s (physical, %s-bound)  MoE-CAP: S-MBU %s  S-MFU %s\n",
			ph.name, pct(ph.u.SMBU), pct(ph.u.SMFU), ph.u.Bound, pct(ph.u.SMBUMoECAP), pct(ph.u.SMFUMoECAP))
	}
	for _, e := range d.Errors {
		limit := "physical limit"
		if e.Value < e.Limit {
			limit = "lower limit" // a measured ÷ floor ratio below capmath.FloorLimit
		}
		fmt.Fprintf(w, "ERROR    %s = %.3g is impossible (%s %.2f): %s\n", e.Field, e.Value, limit, e.Limit, e.Cause)
	}
	ms := func(p *float64) string { return profile.FormatMs(p, 2) }
	if sc := d.Inputs.SimTimeScale; sc != 0 {
		fmt.Fprintf(w, "note     %s: pass records and CAP numbers are in model time; the client numbers above were un-scaled to it\n", profile.ScaleLabel(sc))
	}
	if l := d.Load; l != nil && l.Achieved != nil {
		k := "no memory limit below it"
		if l.FeasibleK != nil {
			k = fmt.Sprintf("K %d", *l.FeasibleK)
		}
		fmt.Fprintf(w, "load     mean decode batch %.3g of %d reachable (asked %d, %s)\n", *l.Achieved, l.Reachable, l.AskedBatch, k)
	}
	for _, f := range d.Flags {
		fmt.Fprintf(w, "FLAG     %s\n", f)
	}
	if d.FitVerdict == "under-batched" && d.Inputs.DecodeBatchMax != nil {
		fmt.Fprintf(w, "batch    under-batched: memory holds %d of %d requests at once; the server ran at most %.0f (mean %.1f)\n",
			d.MaxConcurrent, m.Cell.BatchSize, *d.Inputs.DecodeBatchMax, *d.Inputs.DecodeBatch)
	}
	if d.TPOTFloorMs != nil || d.TTFTFloorMs != nil {
		fmt.Fprintf(w, "floors   TPOT %s ms (× %s; decode passes × %s)  TTFT %s ms (× %s), from %s\n", ms(d.TPOTFloorMs), ratio(d.TPOTOverFloor),
			ratio(d.DecodePassOverFloor), ms(d.TTFTFloorMs), ratio(d.TTFTOverFloor), d.Inputs.FloorSource)
	} else if p := d.Prediction; p != nil && p.Batch > 0 && p.TPOTMs != nil && p.TTFTMs != nil {
		fmt.Fprintf(w, "predicted TPOT %.2f ms  TTFT %.2f ms at batch %d (the cell did not run: no floors)\n", *p.TPOTMs, *p.TTFTMs, p.Batch)
	}
	if d.FitVerdict != "" && d.FitVerdict != "fits" {
		fmt.Fprintf(w, "memory   %s\n", d.FeasibleReason)
	}
	if c := d.Cost; c != nil {
		switch {
		case c.PerMillionOutputTokensUSD != nil && c.EnergyJ != nil:
			fmt.Fprintf(w, "cost     $%.2f per million output tokens ($%.2f/GPU-hour, $%.2f/kWh, %s)\n", *c.PerMillionOutputTokensUSD, c.Prices.GPUHourUSD, c.Prices.ElectricityUSDPerKWh, c.Window)
		case c.RentalPerMillionOutputTokensUSD != nil:
			fmt.Fprintf(w, "cost     $%.2f per million output tokens, GPU rental only (no energy measured; $%.2f/GPU-hour, %s)\n", *c.RentalPerMillionOutputTokensUSD, c.Prices.GPUHourUSD, c.Window)
		}
	}
}

func ratio(p *float64) string {
	if p == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *p)
}
