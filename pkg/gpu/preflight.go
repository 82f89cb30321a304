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

// noteEvery is how often a long wait for busy GPUs is told again.
var noteEvery = time.Minute

// BusyError says which GPUs were not idle and who was using them.
type BusyError struct {
	Waited      time.Duration
	MaxMemBytes uint64
	// Used is memory in use by GPU index, for the GPUs over the limit.
	Used map[int]uint64
	// Memory is the full reading of the GPUs over the limit (which NVML call, the driver's
	// reservation), by GPU index.
	Memory    map[int]MemoryInfo
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
		fmt.Fprintf(&b, " GPU %d has %s in use", i, bytesStr(e.Used[i]))
		if mi, ok := e.Memory[i]; ok {
			b.WriteString(" (" + mi.describe() + ")")
		}
		fmt.Fprintf(&b, ", over the idle limit of %s (--gpu-idle-mib);", bytesStr(e.MaxMemBytes))
	}
	b.WriteString(describeProcesses(e.Processes))
	b.WriteString(" end those processes, pick idle GPUs with CUDA_VISIBLE_DEVICES, wait longer with --gpu-wait, or raise --gpu-idle-mib")
	return b.String()
}

// describe says where a reading came from, for messages.
func (m MemoryInfo) describe() string {
	if m.API == MemAPIv2 {
		r := uint64(0)
		if m.Reserved != nil {
			r = *m.Reserved
		}
		return fmt.Sprintf("NVML v2, the driver's reservation of %s not counted", bytesStr(r))
	}
	return "NVML v1: this driver has no v2 memory info, so used may include the driver's reservation"
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

// WaitIdle waits until devs hold no compute process and each uses at most maxMemBytes above
// its own baseline, polling for up to wait. The baseline of an idle GPU is the memory its
// driver reserves; Backend.MemoryUsed excludes it where the driver has NVML v2 memory info
// (R510+: an idle H200 reads used 0, reserved 615 MiB) and includes it on older drivers
// (v1 only). When a look finds a GPU busy and wait > 0, note (may be nil) is told at once
// and then every noteEvery, so the user knows why nothing happens. It returns a *BusyError naming the PIDs and
// command lines when they stay busy. Without NVML it checks nothing and returns nil;
// b.Available() tells the caller so.
func WaitIdle(ctx context.Context, b Backend, devs []Device, maxMemBytes uint64, wait time.Duration, note func(*BusyError)) error {
	if !b.Available() {
		return nil
	}
	start := time.Now()
	deadline := start.Add(wait)
	var noted time.Time
	for {
		mem, err := b.Memory(devs)
		if err != nil {
			return fmt.Errorf("preflight GPU check: %w", err)
		}
		procs, err := b.ComputeProcesses(devs)
		if err != nil {
			return fmt.Errorf("preflight GPU check: %w", err)
		}
		busy := &BusyError{Waited: time.Since(start), MaxMemBytes: maxMemBytes, Used: map[int]uint64{}, Memory: map[int]MemoryInfo{}, Processes: procs}
		for _, d := range devs {
			if mi := mem[d.Index]; mi.Used > maxMemBytes {
				busy.Used[d.Index], busy.Memory[d.Index] = mi.Used, mi
			}
		}
		if len(busy.Used) == 0 && len(procs) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return busy
		}
		if note != nil && (noted.IsZero() || time.Since(noted) >= noteEvery) {
			note(busy)
			noted = time.Now()
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
