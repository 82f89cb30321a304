package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
)

// A server without /tokenize and /detokenize (the sim's no-tokenize fault): right after
// readiness the cell probes what its prompts need and fails at once, server_lacks in ready,
// exit 2, naming the endpoint and what to do; the server is torn down and nothing was sent
// to be measured. Prompts that need neither (exact ids, random dataset) run on that server.
func TestProbeServerLacksTokenize(t *testing.T) {
	t.Run("upstream prompts", func(t *testing.T) {
		results := t.TempDir()
		r := moecapd(t, nil, simArgs(results, tinyConfig(t, qwen, 32, 8, 4), 2, "--prompt-style", "upstream",
			"--", "--sim-fault", "no-tokenize")...)
		if r.code != exitUsage {
			t.Fatalf("exit %d, want 2\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		dir, m := onlyCell(t, results)
		f := m.Failure
		if f == nil || f.Phase != cell.PhaseReady || f.Kind != exitcode.FailServerLacks ||
			!strings.Contains(f.Message, "/tokenize") || !strings.Contains(f.Message, "--prompt-style exact-ids") {
			t.Fatalf("failure %+v, want server_lacks in ready naming /tokenize and --prompt-style exact-ids", f)
		}
		if m.Server.ExitCode == nil || m.Metrics != nil || m.Timings.Bench != 0 {
			t.Errorf("server exit %v, metrics %v, bench %gs: want torn down before any bench", m.Server.ExitCode, m.Metrics, m.Timings.Bench)
		}
		if _, err := os.Stat(filepath.Join(dir, launcher.StateFile)); !os.IsNotExist(err) {
			t.Errorf("server state file left: %v", err)
		}
		if !strings.Contains(r.stdout, "server_lacks") {
			t.Errorf("summary does not say what the server lacks:\n%s", r.stdout)
		}
	})
	t.Run("exact ids need nothing", func(t *testing.T) {
		results := t.TempDir()
		r := moecapd(t, nil, simArgs(results, tinyConfig(t, qwen, 32, 8, 4), 2, "--prompt-style", "exact-ids",
			"--", "--sim-fault", "no-tokenize")...)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0\n%s", r.code, r.stderr)
		}
	})
}

// moecapd bench against a running server without /tokenize: the default (upstream) prompts
// need it, so the probe names it with the fix and bench exits 2; --prompt-style exact-ids on
// random ids runs.
func TestBenchProbeServerLacksTokenize(t *testing.T) {
	rec := t.TempDir()
	base := startSimServer(t, "vllm", rec, "--sim-fault", "no-tokenize")
	r := moecapd(t, nil, benchArgs(base+"/v1/completions", t.TempDir(), "--datasets", "random", "--no-records")...)
	if r.code != exitUsage || !strings.Contains(r.stderr, base+"/tokenize") || !strings.Contains(r.stderr, "--prompt-style exact-ids") ||
		strings.Contains(r.stderr, "--use-chat-api") {
		t.Fatalf("exit %d, want 2 naming %s/tokenize and --prompt-style exact-ids (not --use-chat-api)\n%s", r.code, base, r.stderr)
	}
	r = moecapd(t, nil, benchArgs(base+"/v1/completions", t.TempDir(), "--datasets", "random", "--no-records", "--prompt-style", "exact-ids")...)
	if r.code != 0 {
		t.Fatalf("exact ids: exit %d\n%s", r.code, r.stderr)
	}
}
