package matrix

import (
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

// A group with a load and a closed-loop group of the same configuration are distinct
// cells: the closed loop keeps the guide's id, the open loop's id names its load.
func TestMatrixLoadGroups(t *testing.T) {
	p := writeMatrix(t, head+`groups:
  closed:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [2]}
    slo: "ttft=1s"
  sweep:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [2]}
    rates: [1, 2.5]
    slo: "ttft=1s,tpot=50ms"
  search:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [2]}
    request_rate: 4
    burstiness: 0.5
    max_concurrency: 16
    find_max_rate: true
    max_rate_steps: 3
    slo: "ttft=1s"
`)
	mx, err := Load(p, tables(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range mx.Cells {
		ids = append(ids, c.ID)
	}
	for _, id := range []string{"qwen1_5.1xH100.32-8.bs2.sim", "qwen1_5.1xH100.32-8.bs2.sim.rates1-2_5", "qwen1_5.1xH100.32-8.bs2.sim.rate4-maxrate-s3-ttft1s-b0_5-c16"} {
		if mx.Cell(id) == nil {
			t.Errorf("no cell %s in %v", id, ids)
		}
	}
	if c := mx.Cell("qwen1_5.1xH100.32-8.bs2.sim"); c == nil || c.Load.SLO != "ttft=1s" || c.Load.OpenLoop() {
		t.Errorf("closed-loop cell with an SLO: %+v", c)
	}
	if c := mx.Cell("qwen1_5.1xH100.32-8.bs2.sim.rates1-2_5"); c == nil || len(c.Load.Rates) != 2 || c.LoadKeys.Prefix != "groups.sweep." {
		t.Errorf("sweep cell: %+v", c)
	}
}

// A bad load key is a config error of the matrix (exit 2 from the caller) naming file, group key and
// the fix, with the flags' own checks.
func TestMatrixLoadErrors(t *testing.T) {
	g := "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, "
	for _, c := range []struct{ body, want string }{
		{g + "rates: [2, -1]}\n", `key "groups.g.rates": got -1`},
		{g + "request_rate: 0.5e7}\n", `key "groups.g.request_rate": got 5e+06`},
		{g + "find_max_rate: true}\n", `key "groups.g.find_max_rate": groups.g.find_max_rate needs an SLO to meet: add slo: "ttft=500ms,tpot=50ms"`},
		{g + "slo: \"ttft=fast\"}\n", `key "groups.g.slo"`},
		{g + "burstiness: 0.5}\n", `give request_rate: R, groups.g.rates or groups.g.find_max_rate too`},
		{g + "rates: [1], repeats: 3}\n", `key "groups.g.rates": groups.g.repeats with groups.g.rates`},
		{g + "rates: one}\n", `key "groups.g.rates": got "one", expected a list of numbers`},
		{g + "max_rate_steps: 99}\n", `key "groups.g.max_rate_steps": got 99`},
		{"defaults: {rates: [1]}\n" + g + "}\n", `key "defaults": may not hold request_rate`},
	} {
		body := head + c.body
		if strings.HasPrefix(c.body, "defaults") {
			body = "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\n" + strings.Replace(c.body, "defaults: {", "defaults: {backends: [sim], ", 1)
		}
		p := writeMatrix(t, body)
		_, err := Load(p, tables(t))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v; want an error naming %s and containing %q", strings.TrimSpace(c.body), err, p, c.want)
			continue
		}
		if !config.IsConfigError(err) {
			t.Errorf("%s: %v is not a config error", c.body, err)
		}
	}
}

// A sweep is several benches: its estimate is above the closed loop's, and a slow listed
// rate (num_samples requests at 0.1 req/s cannot end before their last arrival) adds its
// arrival span; repeats multiply the bench; the max-rate search's probes count at the rate
// it starts from.
func TestEstimateLoad(t *testing.T) {
	p := writeMatrix(t, head+`groups:
  closed: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}}
  rep: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}, repeats: 3, request_rate: 1000}
  sweep: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}, rates: [1000, 2000]}
  slow: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}, rates: [0.1]}
  search: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}, find_max_rate: true, slo: "ttft=1s"}
`)
	tb := tables(t)
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	est := map[string]float64{}
	for _, c := range mx.Cells {
		est[c.Group] = Estimate(c, tb, nil).Seconds()
	}
	closed := est["closed"]
	if closed <= 0 {
		t.Fatalf("closed-loop estimate %v", closed)
	}
	bench := closed - simCellCPU // one bench of the sim cell (no start-up set)
	for g, want := range map[string]float64{"rep": 3 * bench, "sweep": 2 * bench} {
		if got := est[g] - simCellCPU; got < want*0.99 || got > want*1.01 {
			t.Errorf("%s: benches take %.4g s, want %.4g s (%.4g s a bench)", g, got, want, bench)
		}
	}
	// 4 requests (2×batch) at 0.1 req/s: the last arrives after 40 s.
	if est["slow"] < 40 {
		t.Errorf("0.1 req/s sweep of 4 requests estimated %.3g s, want at least their 40 s of arrivals", est["slow"])
	}
	// The search's 8 probes from 1 req/s (no rate given): each 4 requests over 4 s.
	if est["search"] < 8*4 {
		t.Errorf("find_max_rate from 1 req/s estimated %.3g s, want at least 8 probes of 4 s of arrivals", est["search"])
	}
}
