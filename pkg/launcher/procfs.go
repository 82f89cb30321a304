package launcher

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// procInfo is what /proc/<pid>/stat and cmdline tell about one process.
type procInfo struct {
	PID, PPID, PGID int
	State           byte
	StartTicks      uint64 // field 22: start time in clock ticks since boot; with PID, a unique identity
	Cmdline         []string
}

func readProc(pid int) (procInfo, bool) {
	p, ok := readStat(pid)
	if ok {
		if c, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline")); err == nil {
			c = bytes.TrimRight(c, "\x00")
			if len(c) > 0 {
				p.Cmdline = strings.Split(string(c), "\x00")
			}
		}
	}
	return p, ok
}

// readStat is readProc without the command line (half the reads, for whole-/proc scans).
func readStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, false
	}
	// comm may hold spaces and parentheses: the fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procInfo{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return procInfo{}, false
	}
	p := procInfo{PID: pid, State: f[0][0]}
	p.PPID, _ = strconv.Atoi(f[1])
	p.PGID, _ = strconv.Atoi(f[2])
	p.StartTicks, _ = strconv.ParseUint(f[19], 10, 64)
	return p, true
}

func allProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := make([]procInfo, 0, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// alive reports whether pid is a live process. A zombie has exited (only its parent's
// wait is pending), so it counts as gone.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return false
	}
	p, ok := readStat(pid)
	if !ok {
		return false
	}
	return p.State != 'Z' && p.State != 'X'
}

// Cmdline returns a process's command line, or nil when it is gone.
func Cmdline(pid int) []string {
	p, ok := readProc(pid)
	if !ok {
		return nil
	}
	return p.Cmdline
}

// groupMembers lists the live members of process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	if pgid <= 1 {
		return nil // 0 is the kernel's threads, 1 is init's group: never ours
	}
	for _, p := range allProcs() {
		if p.PGID == pgid && p.State != 'Z' && p.State != 'X' {
			out = append(out, p.PID)
		}
	}
	return out
}
