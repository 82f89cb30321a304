package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// A misbehaving server (the sim's fault injection) ends the cell within the client's
// limits: the server is torn down, the cell failed in bench (exit 5) with the reason and
// what the server said.
func TestNativeCellMisbehavingServer(t *testing.T) {
	tests := []struct{ fault, want string }{
		{"stall-mid-stream", "idle timeout"},
		{"no-headers", "idle timeout"},
		{"ignore-max-tokens", "ignores max_tokens"},
		{"endless-line", "without a newline"},
		{"error-200", "the engine rejected the request"},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			results := t.TempDir()
			cfg := tinyConfig(t, qwen, 32, 8, 4)
			r := moecapd(t, nil, simArgs(results, cfg, 2, "--idle-timeout", "1s", "--request-timeout", "1m",
				"--", "--sim-fault", tt.fault, "--sim-tpot", "1ms")...)
			if r.code != 5 {
				t.Fatalf("exit %d, want 5\n%s", r.code, r.stderr)
			}
			dir, m := onlyCell(t, results)
			if m.Failure == nil || m.Failure.Phase != cell.PhaseBench || !strings.Contains(m.Failure.Message, tt.want) {
				t.Fatalf("failure %+v, want bench with %q", m.Failure, tt.want)
			}
			if m.Server.ExitCode == nil || len(m.Failure.Teardown) != 0 {
				t.Errorf("server exit %v, teardown problems %q: want torn down cleanly", m.Server.ExitCode, m.Failure.Teardown)
			}
			if _, err := os.Stat(filepath.Join(dir, launcher.StateFile)); !os.IsNotExist(err) {
				t.Errorf("server state file left: %v", err)
			}
			if !strings.Contains(r.stdout, tt.want) {
				t.Errorf("summary does not carry the reason %q:\n%s", tt.want, r.stdout)
			}
		})
	}
}

// A dataset that cannot be had (--offline, no cache; a missing --dataset-file) is found
// before the server starts: exit 2, failed in preflight, no server launched.
func TestDatasetCheckedBeforeLaunch(t *testing.T) {
	for name, extra := range map[string][]string{
		"offline without cache": {"--dataset", "gsm8k", "--offline", "--dataset-cache-dir", t.TempDir()},
		"missing dataset file":  {"--dataset-file", filepath.Join(t.TempDir(), "nope.jsonl")},
	} {
		t.Run(name, func(t *testing.T) {
			results := t.TempDir()
			r := moecapd(t, nil, simArgs(results, tinyConfig(t, qwen, 32, 8, 4), 2, extra...)...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			_, m := onlyCell(t, results)
			if m.Failure == nil || m.Failure.Phase != cell.PhasePreflight || m.Server.PID != 0 {
				t.Fatalf("failure %+v, server pid %d: want preflight, no server", m.Failure, m.Server.PID)
			}
		})
	}
}
