package compare

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

const id = "qwen3-30b-a3b.1xH100.32-20.bs4.sim"

func f(v float64) *float64 { return &v }

// runMetrics is one run's metrics with the given means.
func runMetrics(ttft, tpot, tput float64) *profile.Metrics {
	return &profile.Metrics{Source: "native", LatencyKind: "client", Completed: 40, DurationS: 1,
		MeanTTFTMs: f(ttft), MeanTPOTMs: f(tpot), MeanE2ELMs: f(ttft + 19*tpot), OutputThroughput: tput}
}

// writeCell writes a cell directory under root: a manifest (repeats when tpots has more
// than one value) and, when reqTPOT is given, a bench file with one request per value.
func writeCell(t *testing.T, root, cellID string, tpots []float64, reqTPOT []float64, edit func(*cell.Manifest)) string {
	t.Helper()
	dir := filepath.Join(root, cellID)
	if err := os.MkdirAll(filepath.Join(dir, cell.ClientDir, profile.BenchDir), 0o755); err != nil {
		t.Fatal(err)
	}
	m := &cell.Manifest{SchemaVersion: cell.SchemaVersion, Status: cell.StatusOK,
		Cell:   cell.Identity{ID: cellID, Model: "qwen3-30b-a3b", Backend: "sim", GPUCount: 1, Hardware: "1xH100", BatchSize: 4},
		Server: cell.Server{Argv: []string{"sim-server", "--port", "4711", "--dir", dir + "/records"}}}
	for i, tp := range tpots {
		m.Metrics = runMetrics(5, tp, 1000/tp)
		if len(tpots) > 1 {
			m.Repeats = append(m.Repeats, cell.Repeat{Index: i, Metrics: runMetrics(5, tp, 1000/tp)})
		}
	}
	if edit != nil {
		edit(m)
	}
	if err := cell.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	if reqTPOT != nil {
		var reqs []profile.RequestResult
		for i, tp := range reqTPOT {
			reqs = append(reqs, profile.RequestResult{Index: i, Success: true, OutputTokens: 20, TTFTMs: 5, TPOTMs: tp, E2ELMs: 5 + 19*tp})
		}
		reqs = append(reqs, profile.RequestResult{Index: len(reqs), Success: false, TPOTMs: 1e6}) // failures are not values
		b, _ := json.Marshal(map[string]any{"requests": reqs})
		if err := os.WriteFile(filepath.Join(dir, cell.ClientDir, profile.BenchDir, "bench_gsm8k_2026.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func metric(t *testing.T, c Cell, key string) Metric {
	t.Helper()
	for _, m := range c.Metrics {
		if m.Key == key {
			return m
		}
	}
	t.Fatalf("no metric %s in %+v", key, c.Metrics)
	return Metric{}
}

func spread(center float64, n int) []float64 {
	var xs []float64
	for i := range n {
		xs = append(xs, center*(1+0.02*float64(i%5-2)))
	}
	return xs
}

func TestCompareVerdicts(t *testing.T) {
	req := Request{Level: 0.95, MinChange: 1, Threshold: 5}
	for _, tc := range []struct {
		name                 string
		base, nw             []float64 // per-repeat TPOT
		baseReq, newReq      []float64 // per-request TPOT (one run)
		key                  string
		verdict, word        string
		regression, interval bool
		method               string
	}{
		{"repeats, 20% slower", []float64{10, 10.2, 9.9}, []float64{12, 12.1, 11.9}, nil, nil, "tpot_ms", Worse, "slower", true, true, "Welch t over 3 and 3 repeats"},
		{"repeats, throughput down", []float64{10, 10.2, 9.9}, []float64{12, 12.1, 11.9}, nil, nil, "output_throughput", Worse, "slower", true, true, "Welch"},
		{"repeats, 20% faster", []float64{12, 12.1, 11.9}, []float64{10, 10.2, 9.9}, nil, nil, "tpot_ms", Better, "faster", false, true, "Welch"},
		{"repeats, same", []float64{10, 10.4, 9.8}, []float64{10.1, 9.9, 10.2}, nil, nil, "tpot_ms", NoChange, "no change", false, true, "Welch"},
		{"repeats, 3% slower: significant, under the threshold", []float64{10, 10.01, 9.99}, []float64{10.3, 10.31, 10.29}, nil, nil, "tpot_ms", Worse, "slower", false, true, "Welch"},
		{"repeats, 0.5% slower: under min change", []float64{10, 10.001, 9.999}, []float64{10.05, 10.051, 10.049}, nil, nil, "tpot_ms", NoChange, "no change", false, true, "Welch"},
		{"one run, requests 10% slower", []float64{10}, []float64{11}, spread(10, 200), spread(11, 200), "tpot_ms", Worse, "slower", true, true, "bootstrap over 200 and 200 requests"},
		{"one run, same requests", []float64{10}, []float64{10}, spread(10, 200), spread(10, 200), "tpot_ms", NoChange, "no change", false, true, "bootstrap"},
		{"one run, throughput has no interval", []float64{10}, []float64{11}, spread(10, 200), spread(11, 200), "output_throughput", Unknown, "unknown", false, false, "one value per run"},
		{"one run, no bench file", []float64{10}, []float64{11}, nil, nil, "tpot_ms", Unknown, "unknown", false, false, "no per-request values"},
		{"energy absent", []float64{10}, []float64{11}, nil, nil, "j_per_output_token", Unknown, "unknown", false, false, "absent on base"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, n := t.TempDir(), t.TempDir()
			writeCell(t, b, id, tc.base, tc.baseReq, nil)
			writeCell(t, n, id, tc.nw, tc.newReq, nil)
			r := req
			r.Base, r.New = b, n
			rep, err := Compare(r)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Cells) != 1 || rep.Cells[0].BaseID != id {
				t.Fatalf("cells %+v", rep.Cells)
			}
			m := metric(t, rep.Cells[0], tc.key)
			if m.Verdict != tc.verdict || m.Word != tc.word || m.Regression != tc.regression || (m.Lo != nil) != tc.interval || !strings.Contains(m.Method, tc.method) {
				t.Errorf("got %s/%s regression %v interval %s method %q; want %s/%s %v %v %q", m.Verdict, m.Word, m.Regression, m.Interval(), m.Method,
					tc.verdict, tc.word, tc.regression, tc.interval, tc.method)
			}
			if m.Lo != nil && m.ChangePct != nil && (*m.Lo > *m.ChangePct || *m.Hi < *m.ChangePct) {
				t.Errorf("change %v outside its interval %s", *m.ChangePct, m.Interval())
			}
			if got := len(rep.Regressions) > 0; got != (tc.regression || anyRegression(rep)) {
				t.Errorf("regressions %v", rep.Regressions)
			}
		})
	}
}

func anyRegression(r *Report) bool {
	for _, c := range r.Cells {
		for _, m := range c.Metrics {
			if m.Regression {
				return true
			}
		}
	}
	return false
}

// A results root is paired by cell id; cells on one side only are listed; cells that are
// not ok are not compared; the environments show what differs, without the cell's own
// directory and port counting as a difference; a client-latency cell is not compared with
// a server-pass one.
func TestCompareRoots(t *testing.T) {
	b, n := t.TempDir(), t.TempDir()
	writeCell(t, b, id, []float64{10, 10.1}, nil, nil)
	writeCell(t, n, id, []float64{10, 10.1}, nil, func(m *cell.Manifest) {
		m.Versions.Backend = "0.5.9"
		m.Versions.MoECAP = "0.4.2"
		m.Metrics.LatencyKind = "server_pass"
		m.Repeats[0].Metrics.LatencyKind = "server_pass"
		m.Repeats[1].Metrics.LatencyKind = "server_pass"
	})
	other := "qwen3-30b-a3b.1xH100.32-20.bs8.sim"
	writeCell(t, b, other, []float64{10}, nil, nil)
	writeCell(t, n, other, []float64{10}, nil, func(m *cell.Manifest) { m.Status = cell.StatusFailed })
	writeCell(t, b, "qwen3-30b-a3b.1xH100.32-20.bs16.sim", []float64{10}, nil, nil)
	writeCell(t, n, "qwen3-30b-a3b.1xH100.32-20.bs32.sim", []float64{10}, nil, nil)
	rep, err := Compare(Request{Base: b, New: n, Level: 0.95, Threshold: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cells) != 2 || strings.Join(rep.OnlyBase, ",") != "qwen3-30b-a3b.1xH100.32-20.bs16.sim" || strings.Join(rep.OnlyNew, ",") != "qwen3-30b-a3b.1xH100.32-20.bs32.sim" {
		t.Fatalf("pairs %d, only base %v, only new %v", len(rep.Cells), rep.OnlyBase, rep.OnlyNew)
	}
	var main, failed Cell
	for _, c := range rep.Cells {
		if c.BaseID == id {
			main = c
		} else {
			failed = c
		}
	}
	if failed.Note == "" || len(failed.Metrics) != 0 || !strings.Contains(failed.Note, "failed") {
		t.Errorf("a failed cell was compared: %+v", failed)
	}
	diffs := map[string]bool{}
	for _, e := range main.Env {
		diffs[e.Key] = e.Differs
		if e.Key == "MoE-CAP version" && (e.Base != "not recorded" || e.New != "0.4.2") {
			t.Errorf("MoE-CAP version %q vs %q, want not recorded vs 0.4.2 (versions.moecap)", e.Base, e.New)
		}
		if e.Key == "server flags" && (strings.Contains(e.Base, "4711") || !strings.Contains(e.Base, "<port> --dir <cell>/records")) {
			t.Errorf("server flags not normalised: %q", e.Base)
		}
	}
	if !diffs["backend version"] || !diffs["MoE-CAP version"] || !diffs["client"] || diffs["server flags"] || diffs["model"] {
		t.Errorf("differences %v", diffs)
	}
	if m := metric(t, main, "tpot_ms"); m.Verdict != Unknown || !strings.Contains(m.Method, "not comparable") {
		t.Errorf("client vs server_pass latencies compared: %+v", m)
	}
	if m := metric(t, main, "output_throughput"); m.Verdict != NoChange {
		t.Errorf("throughput of identical repeats: %+v", m)
	}
}

func TestCompareBadInput(t *testing.T) {
	root := t.TempDir()
	cellDir := writeCell(t, root, id, []float64{10}, nil, nil)
	other := t.TempDir()
	writeCell(t, other, "qwen3-30b-a3b.1xH100.32-20.bs8.sim", []float64{10}, nil, nil)
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		name      string
		req       Request
		wantInErr string
	}{
		{"missing", Request{Base: filepath.Join(root, "nope"), New: root, Level: 0.95}, "is not a directory"},
		{"a file", Request{Base: root, New: file, Level: 0.95}, "NEW"},
		{"empty root", Request{Base: t.TempDir(), New: root, Level: 0.95}, "holds no cell"},
		{"root and cell", Request{Base: root, New: cellDir, Level: 0.95}, "not one of each"},
		{"no shared id", Request{Base: root, New: other, Level: 0.95}, "share no cell id"},
		{"level", Request{Base: root, New: root, Level: 95}, "--level"},
		{"threshold", Request{Base: root, New: root, Level: 0.95, Threshold: -1}, "--threshold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compare(tc.req)
			var ie *InputError
			if err == nil || !errorsAs(err, &ie) || !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("err %v, want an InputError with %q", err, tc.wantInErr)
			}
		})
	}
	// Two cell directories pair whatever their ids.
	rep, err := Compare(Request{Base: cellDir, New: filepath.Join(other, "qwen3-30b-a3b.1xH100.32-20.bs8.sim"), Level: 0.95})
	if err != nil || len(rep.Cells) != 1 || rep.Cells[0].Pair() != id+" → qwen3-30b-a3b.1xH100.32-20.bs8.sim" {
		t.Fatalf("two cells: %v %+v", err, rep)
	}
}

func errorsAs(err error, target **InputError) bool {
	ie, ok := err.(*InputError)
	*target = ie
	return ok
}

// Every format carries the verdicts; markdown and HTML escape what the manifests say.
func TestRender(t *testing.T) {
	b, n := t.TempDir(), t.TempDir()
	evil := func(m *cell.Manifest) {
		m.Server.Argv = []string{"sim-server", "--name", "<script>alert(1)</script>|x*y_"}
		m.Versions.Backend = "0.5.9 <b>"
	}
	writeCell(t, b, id, []float64{10, 10.2, 9.9}, nil, evil)
	writeCell(t, n, id, []float64{12, 12.1, 11.9}, nil, evil)
	rep, err := Compare(Request{Base: b, New: n, Level: 0.95, Threshold: 5, MinChange: 1})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range Formats {
		var buf bytes.Buffer
		if err := rep.Write(&buf, f); err != nil {
			t.Fatal(f, err)
		}
		out[f] = buf.String()
	}
	if !strings.Contains(out["text"], "slower REGRESSION") || !strings.Contains(out["text"], "regression: "+id+": TPOT mean +19.6%") {
		t.Errorf("text:\n%s", out["text"])
	}
	md := out["markdown"]
	if !strings.Contains(md, `\<script\>alert\(1\)\</script\>\|x\*y\_`) || strings.Contains(md, "<script>") || !strings.Contains(md, "**slower (regression)**") {
		t.Errorf("markdown:\n%s", md)
	}
	h := out["html"]
	if strings.Contains(h, "<script>") || strings.Contains(h, "0.5.9 <b>") || !strings.Contains(h, "&lt;script&gt;") || !strings.Contains(h, `class="worse">slower (regression)`) {
		t.Errorf("html:\n%s", h)
	}
	var back Report
	if err := json.Unmarshal([]byte(out["json"]), &back); err != nil || len(back.Regressions) != 3 || back.Cells[0].Metrics[1].Key != "tpot_ms" || back.Cells[0].Metrics[1].Lo == nil {
		t.Errorf("json: %v\n%s", err, out["json"])
	}
	var buf bytes.Buffer
	if err := rep.Write(&buf, "yaml"); err == nil {
		t.Error("an unknown format was accepted")
	}
}

// Hand-edited manifests with values at the edge of the float range (1.5e308 twice: a mean
// of +Inf; 1e-308 against 1e308: a change of +Inf) compare to a report --json can write:
// values past any measurement are left out, a change past the float range is no change.
func TestCompareExtremeValues(t *testing.T) {
	root := t.TempDir()
	edge := func(v float64) func(*cell.Manifest) {
		return func(m *cell.Manifest) {
			for _, mm := range append([]*profile.Metrics{m.Metrics}, m.Repeats[0].Metrics, m.Repeats[1].Metrics) {
				mm.MeanTPOTMs, mm.MeanE2ELMs, mm.MeanTTFTMs = f(v), f(1), f(v)
			}
		}
	}
	base := writeCell(t, filepath.Join(root, "a"), "c", []float64{2, 2}, nil, edge(1.5e308))
	nw := writeCell(t, filepath.Join(root, "b"), "c", []float64{2, 2}, nil, edge(1e-308))
	rep, err := Compare(Request{Base: base, New: nw, Level: 0.95})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatalf("compare --json cannot write the report: %v", err)
	}
	for _, m := range rep.Cells[0].Metrics {
		for _, p := range []*float64{m.Base, m.New, m.ChangePct, m.Lo, m.Hi} {
			if p != nil && (math.IsInf(*p, 0) || math.IsNaN(*p)) {
				t.Errorf("%s: a non-finite value %v", m.Key, *p)
			}
		}
	}
}
