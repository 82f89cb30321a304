package main

import (
	"strings"
	"testing"
)

// Flag errors a person fixes in one try, through the real binary (no server starts): the
// servers' own spellings of our flags are answered with ours, a mistyped flag, hardware
// label or --only selector gets the nearest valid one.
func TestFlagErrorsAnsweredWithOurs(t *testing.T) {
	cfg := "../../configs/fixed_4k_1k_qwen1_5.yaml"
	launch := []string{"launch-and-bench", "--backend", "sim", "--config", cfg, "--dry-run"}
	plan := []string{"matrix", "plan", "--matrix", "../../configs/matrix-sim.yaml", "--results", t.TempDir()}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(launch, "--batch-size", "2", "--tensor-parallel-size", "2"), "--tensor-parallel-size is vLLM's spelling; moecapd's flag is --tp"},
		{append(launch, "--batch-size", "2", "--tp-size=2"), "--tp-size is SGLang's spelling; moecapd's flag is --tp"},
		{append(launch, "--max-num-seqs", "8"), "--max-num-seqs is vLLM's spelling; moecapd's flag is --batch-size"},
		{append(launch, "--max-running-requests", "8"), "--max-running-requests is SGLang's spelling; moecapd's flag is --batch-size"},
		{append(launch, "--batch-szie", "8"), "did you mean --batch-size?"},
		{append(launch, "--batch-size", "2", "--hardware", "H10O"), `--hardware "H10O": did you mean 1xH100?`},
		{append(launch, "--batch-size", "2", "--hardware", "2xH10O"), `did you mean 2xH100?`},
		{append(plan, "--hardware", "1xA10O"), `--hardware "1xA10O": did you mean 1xA100?`},
		{append(plan, "--only", "qwen15"), `did you mean "qwen1_5"?`},
		{append(plan, "--only", `qwen1_5.1xH100.4k-1k.bs33.sim`), `did you mean "qwen1_5.1xH100.4k-1k.bs32.sim"?`},
	} {
		r := moecapd(t, nil, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, want 2 with %q\n%s", strings.Join(tc.args[len(tc.args)-2:], " "), r.code, tc.want, r.stderr)
		}
	}
	// A label of a family near none (an NVML name) is a label like any other.
	if r := moecapd(t, nil, append(launch, "--batch-size", "2", "--hardware", "1xL40S")...); r.code != 0 {
		t.Errorf("--hardware 1xL40S: exit %d\n%s", r.code, r.stderr)
	}
}
