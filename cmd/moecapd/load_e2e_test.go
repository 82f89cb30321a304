package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/profile"
)

// A rate sweep on the sim with imposed timings (10 ms passes, 8 output tokens: about
// 80 ms a request, one at a time at batch 1, so about 12 req/s at most): 3 req/s keeps
// TTFT near one request's time and meets a 400 ms TTFT bound for 3 of 4 requests with
// room to spare; 500 req/s queues all 12 at once, and only the first ~5 can start within
// 400 ms. --find-max-rate then bisects between them. The margins are wide: scheduling
// noise only makes the low rate slower, and the sim cannot serve faster than it is told.
func TestRateSweepAndFindMaxRate(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 12)
	results := t.TempDir()
	r := moecapd(t, nil, simArgs(results, cfg, 1, "--rates", "3,500", "--slo", "ttft=400ms,share=0.75",
		"--find-max-rate", "--max-rate-steps", "3", "--", "--sim-tpot", "10ms", "--sim-ttft", "10ms")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	dir, m := onlyCell(t, results)
	if len(m.Rates) < 3 || len(m.Rates) > 5 {
		t.Fatalf("%d rates in the manifest, want the 2 listed and 1 to 3 searched", len(m.Rates))
	}
	low, high := m.Rates[0], m.Rates[1]
	if low.Rate != 3 || low.Search || low.MetSLO == nil || !*low.MetSLO {
		t.Errorf("3 req/s: %+v (goodput %+v), want it to meet the SLO", low, low.Metrics.Goodput)
	}
	if high.Rate != 500 || high.MetSLO == nil || *high.MetSLO {
		t.Errorf("500 req/s: %+v (goodput %+v), want it to miss the SLO", high, high.Metrics.Goodput)
	}
	for _, p := range m.Rates {
		g := p.Metrics.Goodput
		if p.Metrics.Completed != 12 || g == nil || g.Sent != 12 || p.Metrics.RequestRate == nil || *p.Metrics.RequestRate != p.Rate {
			t.Errorf("rate %g: %d completed, goodput %+v, asked rate %v", p.Rate, p.Metrics.Completed, g, p.Metrics.RequestRate)
		}
	}
	if m.Versions.Backend != "0.5.8 (moecapd sim)" {
		t.Errorf("backend version %q, want what the sim's /get_server_info says", m.Versions.Backend)
	}
	if *m.Metrics.MeanTTFTMs != *low.Metrics.MeanTTFTMs {
		t.Error("the cell's metrics are not the first rate's")
	}
	mr := m.MaxRate
	if mr == nil || mr.Rate == nil || *mr.Rate < 3 || *mr.Rate >= 500 || !mr.Bracketed || len(mr.Steps) == 0 || len(mr.Steps) > 3 {
		t.Fatalf("max rate %+v: want a rate in [3, 500) after 1 to 3 probes, bracketed", mr)
	}
	// Each rate's requests are kept: the first in the cell's client/, the others under
	// rates/<k>/client/.
	for k := 1; k <= len(m.Rates); k++ {
		d := filepath.Join(dir, "client")
		if k > 1 {
			d = filepath.Join(dir, "rates", strconv.Itoa(k), "client")
		}
		if reqs, err := profile.ReadBenchRequests(profile.FindBenchFile(d)); err != nil || len(reqs) != 12 {
			t.Errorf("rate %d: bench file in %s: %v, %d rows", k, d, err, len(reqs))
		}
	}
	if !strings.Contains(r.stdout+r.stderr, "max rate meeting ttft=400ms,share=0.75") {
		t.Error("the cell summary does not say what --find-max-rate found")
	}
	if _, err := os.Stat(filepath.Join(dir, "rates", "2")); err != nil {
		t.Error(err)
	}
}

// Load settings that cannot run are refused before any server starts, with the fix.
func TestLoadFlagsRefusedBeforeLaunch(t *testing.T) {
	cfg := tinyConfig(t, qwen, 32, 8, 4)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--find-max-rate"}, "--find-max-rate needs an SLO"},
		{[]string{"--slo", "ttft=fast"}, "neither a duration"},
		{[]string{"--rates", "2,-1"}, "--rates"},
		{[]string{"--burstiness", "0.5"}, "give --request-rate R, --rates or --find-max-rate too"},
		{[]string{"--rates", "2", "--repeats", "2"}, "--repeats with --rates"},
		{[]string{"--request-rate", "5", "--client", "moe-cap"}, "need the native client"},
		{[]string{"--slo", "tpot=20ms", "--prompt-style", "upstream"}, "--slo needs streamed TTFT"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			results := t.TempDir()
			r := moecapd(t, nil, simArgs(results, cfg, 1, tc.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, want 2 with %q:\n%s", r.code, tc.want, r.stderr)
			}
			if ms, _ := filepath.Glob(filepath.Join(results, "*", "server.log")); len(ms) > 0 {
				t.Errorf("a server was started: %v", ms)
			}
		})
	}
}

// `moecapd bench --rates` against a running sim (one request at a time, 10 ms passes):
// one bench per rate, each rate's files under <output_dir>/rates/<k>/, and a table of rate
// against goodput in which 3 req/s meets the SLO and 500 req/s does not (the margins of
// TestRateSweepAndFindMaxRate).
func TestBenchRateSweep(t *testing.T) {
	rec := t.TempDir()
	base := startSimServer(t, "vllm", rec, "--sim-tpot", "10ms", "--sim-ttft", "10ms", "--max-num-seqs", "1")
	out := t.TempDir()
	r := moecapd(t, nil, benchArgs(base+"/v1/completions", out, "--datasets", "random", "--prompt-style", "exact-ids",
		"--num-samples", "12", "--target-output-tokens", "8", "--no-records", "--rates", "3,500", "--slo", "ttft=400ms,share=0.75")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	_, table, ok := strings.Cut(r.stdout, "=== Rate sweep: random ===")
	if !ok {
		t.Fatalf("no rate table:\n%s", r.stdout)
	}
	met := map[string]string{}
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) == 7 {
			met[f[0]] = f[6]
		}
	}
	if met["3"] != "true" || met["500"] != "false" {
		t.Errorf("meets SLO by rate %v, want 3 true and 500 false:\n%s", met, table)
	}
	for k := 1; k <= 2; k++ {
		d := filepath.Join(out, "rates", strconv.Itoa(k))
		if reqs, err := profile.ReadBenchRequests(profile.FindBenchFile(d)); err != nil || len(reqs) != 12 {
			t.Errorf("rate %d: bench file in %s: %v, %d rows", k, d, err, len(reqs))
		}
	}
}
