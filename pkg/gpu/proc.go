package gpu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// readCmdline returns the command line of pid with arguments joined by spaces, or "" when
// the process is gone or not visible (NVML reports host PIDs, which a container without the
// host PID namespace cannot see).
func readCmdline(procRoot string, pid int) string {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	s := strings.TrimRight(string(b), "\x00")
	return strings.ReplaceAll(s, "\x00", " ")
}
