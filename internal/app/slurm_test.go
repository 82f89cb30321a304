package app

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/slurm"
)

func TestSlurmTime(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"", "", false},
		{"8h", "8:00:00", false},
		{"90m", "1:30:00", false},
		{"36h30m5s", "36:30:05", false},
		{"1500ms", "0:00:02", false}, // rounded up: a limit never shrinks
		{"2-12:00:00", "2-12:00:00", false},
		{"30", "30", false},
		{"-1h", "", true},
		{"soon", "", true},
	}
	for _, tc := range tests {
		got, err := slurmTime(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("slurmTime(%q) = %q, %v; want %q (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestDescribeTask(t *testing.T) {
	for _, tc := range []struct {
		t    slurm.Task
		want string
	}{
		{slurm.Task{State: "PENDING", Reason: "Resources"}, "queued (Resources)"},
		{slurm.Task{State: "RUNNING", Node: "gpu12", Elapsed: "1:02:03"}, "running on gpu12 for 1:02:03"},
		{slurm.Task{State: "COMPLETED"}, "finished"},
		{slurm.Task{State: "CANCELLED"}, "cancelled"},
		{slurm.Task{State: "TIMEOUT"}, "timed out"},
		{slurm.Task{State: "FAILED", ExitCode: "5:0"}, "failed (exit 5:0)"},
		{slurm.Task{State: "NODE_FAIL"}, "node failed"},
		{slurm.Task{State: "BOOT_FAIL"}, "boot_fail"},
	} {
		if got := describeTask(tc.t); got != tc.want {
			t.Errorf("describeTask(%+v) = %q, want %q", tc.t, got, tc.want)
		}
	}
}

// A task whose cell's manifest could not be written (a full disk) exits 2 with the disk's
// message, as matrix run does, not 1; an unclassified runner error stays a bug (1).
func TestTaskVerdictStorage(t *testing.T) {
	dir := t.TempDir()
	full := fmt.Errorf("cell c: %w", &fs.PathError{Op: "write", Path: dir + "/manifest.json", Err: syscall.ENOSPC})
	if err := taskVerdict(dir, full, zap.NewNop()); exitcode.Of(err) != int(exitcode.Usage) || !strings.Contains(err.Error(), "disk of the results directory is full") {
		t.Errorf("full disk: %v (exit %d), want 2 with the disk's message", err, exitcode.Of(err))
	}
	unrecorded := exitcode.New(exitcode.Usage, errors.New("the final manifest could not be written"))
	if err := taskVerdict(dir, unrecorded, zap.NewNop()); exitcode.Of(err) != int(exitcode.Usage) {
		t.Errorf("unrecorded: exit %d, want 2", exitcode.Of(err))
	}
	if err := taskVerdict(dir, errors.New("boom"), zap.NewNop()); exitcode.Of(err) != int(exitcode.Internal) {
		t.Errorf("other: exit %d, want 1", exitcode.Of(err))
	}
}
