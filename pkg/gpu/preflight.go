package gpu

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// pollInterval is how often the preflight and teardown checks look again. Memory is freed a
// moment after a process exits, so a tight loop buys nothing.
var pollInterval = 500 * time.Millisecond

// BusyError says which GPUs were not idle and who was using them.
type BusyError struct {
	Waited      time.Duration
	MaxMemBytes uint64
	// Used is memory in use by GPU index, for the GPUs over the limit.
	Used      map[int]uint64
	Processes []Process
}

func (e *BusyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "GPUs not idle after waiting %s:", e.Waited.Round(time.Second))
	idx := make([]int, 0, len(e.Used))
	for i := range e.Used {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		fmt.Fprintf(&b, " GPU %d has %s in use (limit %s);", i, bytesStr(e.Used[i]), bytesStr(e.MaxMemBytes))
	}
	b.WriteString(describeProcesses(e.Processes))
	b.WriteString(" end those processes, pick idle GPUs with CUDA_VISIBLE_DEVICES, or wait longer with --gpu-wait")
	return b.String()
}

// describeProcesses lists PIDs and command lines for an error message.
func describeProcesses(ps []Process) string {
	if len(ps) == 0 {
		return " no compute process is visible from here (another container or user holds the memory; nvidia-smi on the host shows it);"
	}
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, " GPU %d pid %d", p.GPUIndex, p.PID)
		if p.UsedBytes != nil {
			fmt.Fprintf(&b, " (%s)", bytesStr(*p.UsedBytes))
		}
		if p.Cmdline != "" {
			cmd := p.Cmdline
			if len(cmd) > 200 {
				cmd = cmd[:200] + "…"
			}
			fmt.Fprintf(&b, " %q", cmd)
		} else {
			b.WriteString(" (command line not visible)")
		}
		b.WriteByte(';')
	}
	return b.String()
}

// WaitIdle waits until devs hold no compute process and at most maxMemBytes each (the
// driver's own reservation is a few hundred MiB), polling for up to wait. It returns a
// *BusyError naming the PIDs and command lines when they stay busy. Without NVML it checks
// nothing and returns nil; b.Available() tells the caller so.
func WaitIdle(ctx context.Context, b Backend, devs []Device, maxMemBytes uint64, wait time.Duration) error {
	if !b.Available() {
		return nil
	}
	start := time.Now()
	deadline := start.Add(wait)
	for {
		used, err := b.MemoryUsed(devs)
		if err != nil {
			return fmt.Errorf("preflight GPU check: %w", err)
		}
		procs, err := b.ComputeProcesses(devs)
		if err != nil {
			return fmt.Errorf("preflight GPU check: %w", err)
		}
		over := map[int]uint64{}
		for _, d := range devs {
			if used[d.Index] > maxMemBytes {
				over[d.Index] = used[d.Index]
			}
		}
		if len(over) == 0 && len(procs) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return &BusyError{Waited: time.Since(start), MaxMemBytes: maxMemBytes, Used: over, Processes: procs}
		}
		if err := sleepCtx(ctx, min(pollInterval, time.Until(deadline))); err != nil {
			return fmt.Errorf("waiting for idle GPUs: %w", err)
		}
	}
}

// WaitMemoryBaseline waits, after teardown, until each of devs uses at most its baseline
// (from before launch) plus threshold. On timeout it returns the compute processes still on
// those GPUs and an error naming them; the caller decides which are orphans of its server.
// Without NVML it checks nothing.
func WaitMemoryBaseline(ctx context.Context, b Backend, devs []Device, baseline map[int]uint64, threshold uint64, timeout time.Duration) ([]Process, error) {
	if !b.Available() {
		return nil, nil
	}
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		used, err := b.MemoryUsed(devs)
		if err != nil {
			return nil, fmt.Errorf("GPU memory check after teardown: %w", err)
		}
		var over []string
		for _, d := range devs {
			if used[d.Index] > baseline[d.Index]+threshold {
				over = append(over, fmt.Sprintf("GPU %d uses %s, baseline %s", d.Index, bytesStr(used[d.Index]), bytesStr(baseline[d.Index])))
			}
		}
		if len(over) == 0 {
			return nil, nil
		}
		if !time.Now().Before(deadline) {
			procs, err := b.ComputeProcesses(devs)
			if err != nil {
				return nil, fmt.Errorf("GPU memory not back to baseline after %s (%s), and listing processes failed: %w",
					time.Since(start).Round(time.Second), strings.Join(over, "; "), err)
			}
			return procs, fmt.Errorf("GPU memory not back to baseline (+%s) after %s: %s;%s kill them (kill -9 PID) before the next cell",
				bytesStr(threshold), time.Since(start).Round(time.Second), strings.Join(over, "; "), describeProcesses(procs))
		}
		if err := sleepCtx(ctx, min(pollInterval, time.Until(deadline))); err != nil {
			return nil, fmt.Errorf("waiting for GPU memory to return to baseline: %w", err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func bytesStr(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
