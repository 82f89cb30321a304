package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

// copyCell copies one fixture cell directory into root.
func copyCell(t *testing.T, root, id string) string {
	t.Helper()
	src := filepath.Join(fixtures, id)
	dst := filepath.Join(root, id)
	copyTree(t, src, dst)
	return dst
}

func editManifest(t *testing.T, dir string, f func(m *cell.Manifest)) {
	t.Helper()
	m, err := cell.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	f(m)
	if err := cell.WriteManifest(dir, m); err != nil {
		t.Fatal(err)
	}
}

func TestFlaggedValuesShowAsFlagged(t *testing.T) {
	root := t.TempDir()
	for _, id := range []string{"qwen1_5.1xH100.4k-1k.bs1.sglang", "qwen1_5.1xH100.4k-1k.bs32.sglang"} {
		copyCell(t, root, id)
	}
	// The CAP physics check's flags in the derived block, in each accepted shape.
	editManifest(t, filepath.Join(root, "qwen1_5.1xH100.4k-1k.bs32.sglang"), func(m *cell.Manifest) {
		m.Extra = map[string]json.RawMessage{cell.ExtraCAP: json.RawMessage(`{"flags":[
			{"metric":"s_mbu_decode","reason":"S-MBU 1.7 exceeds 1: faster than the HBM allows"},
			"tpot_over_floor: below the physical floor"],
			"errors":[{"field":"decode.s_mfu","value":1.3,"limit":1,"cause":"passes shorter than the work needs"}]}`)}
	})
	out := t.TempDir()
	if _, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t)}); err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(filepath.Join(out, IndexFile))
	for _, want := range []string{"flagged: S-MBU 1.7 exceeds 1", "flagged: below the physical floor"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
	// The physics check's errors list (field, value, limit, cause) on the cell's page.
	cp, _ := os.ReadFile(filepath.Join(out, cellPagePath("qwen1_5.1xH100.4k-1k.bs32.sglang")))
	if want := "flagged: s mfu decode 1.30 &gt; 1.00: passes shorter"; !strings.Contains(string(cp), want) {
		t.Errorf("cell page lacks %q", want)
	}
	// The unflagged cell's 75.3% would show for the flagged one; it must not.
	if strings.Contains(string(page), "75.3%") {
		t.Error("index.html shows the flagged S-MBU 75.3% as a result")
	}
	csvb, _ := os.ReadFile(filepath.Join(out, CSVFile))
	lines := strings.Split(string(csvb), "\n")
	head := strings.Split(lines[0], ",")
	col := map[string]int{}
	for i, h := range head {
		col[h] = i
	}
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, "qwen1_5.1xH100.4k-1k.bs32.sglang,") {
			continue
		}
		f := strings.Split(l, ",")
		if f[col["s_mbu_decode"]] != "" || f[col["tpot_over_floor"]] != "" {
			t.Errorf("CSV keeps flagged values: s_mbu_decode %q tpot_over_floor %q", f[col["s_mbu_decode"]], f[col["tpot_over_floor"]])
		}
		if !strings.Contains(l, "exceeds 1") {
			t.Errorf("CSV flags column lacks the reason: %s", l)
		}
	}
}

func TestTimeScaledSimIsFlagged(t *testing.T) {
	m := &cell.Manifest{Cell: cell.Identity{Backend: "sim"}, Server: cell.Server{Argv: []string{"moecapd", "sim-server", "--sim-time-scale", "0.02"}}}
	fs := flagsOf(m, nil)
	if len(fs) != 1 || fs[0].Metric != "cap" || !strings.Contains(fs[0].Reason, "×0.02") {
		t.Fatalf("flags %+v, want one cap flag naming ×0.02", fs)
	}
	r := &Row{Flags: fs}
	if r.FlagFor("s_mbu_decode") == "" || r.FlagFor("tpot_over_floor") == "" || r.FlagFor("output_throughput_tok_s") != "" {
		t.Errorf("a cap flag covers S-MBU and ×floor, not throughput")
	}
	// A CAP block that recorded the time scale compared only what stays physical: no flag
	// of the report's own then.
	if fs := flagsOf(m, json.RawMessage(`{"inputs":{"sim_time_scale":0.02}}`)); len(fs) != 0 {
		t.Errorf("flags %+v, want none when the CAP block accounts for the scale", fs)
	}
}

func TestOneCellReportIsTheCellPage(t *testing.T) {
	root := t.TempDir()
	copyCell(t, root, "qwen1_5.1xH100.4k-1k.bs1.sglang")
	out := t.TempDir()
	res, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t), ModelNames: map[string]string{"qwen1_5": "Qwen1.5-MoE"}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(res.Index)
	if !strings.Contains(string(page), "Qwen1.5-MoE · 4k-1k · 1xH100 · batch 1 · sglang") || !strings.Contains(string(page), "Latency (ms)") {
		t.Error("one-cell index.html is not the cell's page")
	}
	if n := checkSVGs(t, res.Index); n != 8 {
		t.Errorf("one-cell report shows %d figures, want the cell's 8 (no one-dot group figures)", n)
	}
	if strings.Contains(string(page), "vs batch size") {
		t.Error("one-cell report draws a vs-batch-size figure")
	}
}

func TestBackendPairsAndPalette(t *testing.T) {
	rows := []*Row{
		{ID: "a", Hardware: "1xH100", Backend: "sglang", BatchSize: 32},
		{ID: "b", Hardware: "1xH100", Backend: "vllm", BatchSize: 32},
		{ID: "c", Hardware: "1xH200", Backend: "vllm", BatchSize: 32},
	}
	ps := backendPairs(rows)
	if len(ps) != 1 || ps[0].Hardware != "1xH100" || ps[0].By["sglang"].ID != "a" || ps[0].By["vllm"].ID != "b" {
		t.Fatalf("pairs %+v, want one: 1xH100 bs32 sglang=a vllm=b", ps)
	}
	if got := pairBackends(ps); strings.Join(got, ",") != "sglang,vllm" {
		t.Errorf("backends %v", got)
	}
	// The palette is keyed by name: fixed for the guide's labels, a stable hash otherwise.
	if HardwareColor("1xH100") != rgb(0x4c8fd6) || HardwareColor("8xH200") != rgb(0x0f4a28) {
		t.Error("guide hardware colours changed")
	}
	first := HardwareColor("4xL40S")
	if HardwareColor("4xL40S") != first || first == HardwareColor("1xH100") {
		t.Error("colour of an unknown label is not stable or collides with a known one")
	}
}

func TestRound3AndGiB(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{16.23, "16.2"}, {0.1834, "0.183"}, {1234.4, "1,234"}, {9.504, "9.50"}, {250, "250"}, {0.00142, "0.00142"}} {
		if got := round3(c.v); got != c.want {
			t.Errorf("round3(%v) = %q, want %q", c.v, got, c.want)
		}
	}
	if got := showGiB(85899345920); got != "80.0 GiB" {
		t.Errorf("an A100 80GB is %s, want 80.0 GiB", got)
	}
}
