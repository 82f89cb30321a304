package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

// During the bench the cell scrapes the server's /metrics (vLLM's; SGLang's with
// --enable-metrics, which the launcher adds) into server_metrics.csv; the manifest's
// counters over the measured window equal what the client sent and received.
func TestServerMetricsScraped(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 20, 12)
	for _, flavor := range []string{"sglang", "vllm"} {
		t.Run(flavor, func(t *testing.T) {
			results := t.TempDir()
			r := moecapd(t, nil, simArgs(results, cfg, 4, "--sim-flavor", flavor, "--", "--sim-tpot", "5ms", "--sim-ttft", "5ms")...)
			if r.code != 0 {
				t.Fatalf("exit %d\n%s", r.code, r.stderr)
			}
			dir, m := onlyCell(t, results)
			sm := m.ServerMetrics
			if sm == nil || sm.Samples < 2 || sm.PromptTokens == nil || sm.GenerationTokens == nil || sm.PeakRunning == nil || sm.PeakKVUsage == nil {
				t.Fatalf("server metrics %+v", sm)
			}
			if int(*sm.PromptTokens) != m.Metrics.TotalInputTokens || int(*sm.GenerationTokens) != m.Metrics.TotalOutputTokens {
				t.Errorf("server counted %v prompt / %v generated tokens, the client %d / %d", *sm.PromptTokens, *sm.GenerationTokens, m.Metrics.TotalInputTokens, m.Metrics.TotalOutputTokens)
			}
			if *sm.PeakRunning < 1 || *sm.PeakRunning > 4 || *sm.PeakKVUsage <= 0 || *sm.PeakKVUsage > 1 {
				t.Errorf("gauges: running %v, KV %v", *sm.PeakRunning, *sm.PeakKVUsage)
			}
			// SGLang exports no preemption counter: absent, not 0.
			if (sm.Preemptions != nil) != (flavor == "vllm") || sm.Preempted {
				t.Errorf("preemptions %v, preempted %v", sm.Preemptions, sm.Preempted)
			}
			// The truth verdict triangulates the client's tokens against the server's counter,
			// and holds vLLM's preemption counter to 0.
			if c := truthCheck(t, m, "output_tokens_server_metrics_vs_client"); c == nil || !c.Pass || c.Value != 1 {
				t.Errorf("truth check of the server's tokens %+v; want present, passed, ratio 1", c)
			}
			if c := truthCheck(t, m, "server_preemptions"); (c != nil) != (flavor == "vllm") || (c != nil && !c.Pass) {
				t.Errorf("truth check of preemptions %+v; want a passed check for vLLM only", c)
			}
			if flavor == "sglang" && !strings.Contains(strings.Join(m.Server.Argv, " "), "--enable-metrics") {
				t.Errorf("SGLang argv lacks --enable-metrics: %v", m.Server.Argv)
			}
			b, err := os.ReadFile(filepath.Join(dir, cell.ServerMetricsFile))
			if err != nil || strings.Count(string(b), "\n") < sm.Samples+1 {
				t.Errorf("%s: %v, %d lines for %d samples", cell.ServerMetricsFile, err, strings.Count(string(b), "\n"), sm.Samples)
			}
			if rr := moecapd(t, nil, "report", "--results", results); rr.code != 0 {
				t.Fatalf("report: exit %d\n%s", rr.code, rr.stderr)
			}
			page, _ := os.ReadFile(filepath.Join(results, "report", "cells", filepath.Base(dir)+".html"))
			if !strings.Contains(string(page), "server: peak KV-cache usage") {
				t.Error("the cell page does not show the server metrics")
			}
		})
	}
}

// truthCheck is the cell's truth check named name, nil when it is absent.
func truthCheck(t *testing.T, m *cell.Manifest, name string) *cell.Check {
	t.Helper()
	tr, ok := m.Truth()
	if !ok {
		t.Fatalf("no truth verdict in the manifest")
	}
	for i := range tr.Checks {
		if tr.Checks[i].Name == name {
			return &tr.Checks[i]
		}
	}
	return nil
}

// TestServerMetricsLieFlagged: a server whose /metrics claims twice the tokens it served and
// preemptions it never made (--sim-fault metrics-lie) leaves an ok cell whose truth verdict
// is not clean: the server-token triangulation and the preemption check fail, with their
// values.
func TestServerMetricsLieFlagged(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 32, 20, 8)
	r := moecapd(t, nil, simArgs(results, cfg, 4, "--sim-flavor", "vllm", "--", "--sim-fault", "metrics-lie", "--sim-tpot", "5ms", "--sim-ttft", "5ms")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	_, m := onlyCell(t, results)
	tr, _ := m.Truth()
	if tr == nil || tr.Verdict == cell.TruthClean {
		t.Fatalf("verdict %+v; want not clean", tr)
	}
	if c := truthCheck(t, m, "output_tokens_server_metrics_vs_client"); c == nil || c.Pass || c.Value != 2 {
		t.Errorf("server-token check %+v; want failed at ratio 2", c)
	}
	if c := truthCheck(t, m, "server_preemptions"); c == nil || c.Pass || c.Value != 8 {
		t.Errorf("preemption check %+v; want failed with 8 (one per request)", c)
	}
}
