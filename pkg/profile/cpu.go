package profile

import (
	"runtime"
	"syscall"
	"time"
)

// processCPU is the CPU time (user + system) this process has used so far; 0 when the
// kernel does not say.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuFraction is the CPU the process used between two processCPU readings over wall, as a
// fraction of the cores it may use (GOMAXPROCS); nil when there is nothing to divide.
func cpuFraction(before, after, wall time.Duration) *float64 {
	if wall <= 0 || after <= 0 || after < before {
		return nil
	}
	v := float64(after-before) / (float64(wall) * float64(runtime.GOMAXPROCS(0)))
	return &v
}
