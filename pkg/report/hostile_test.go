package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/records"
)

// copyTree copies the fixture results into a temporary root the test may change.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// hostileCell writes a copy of the fixture cell from under the id id, edit changing its
// manifest (as a generic JSON object) first.
func hostileCell(t *testing.T, root, from, id string, edit func(m map[string]any)) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, from, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["cell"].(map[string]any)["id"] = id
	edit(m)
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The report survives hand-edited, corrupt and hostile results: values no figure can
// show are left out and the cell page says why, nothing panics, summary.md carries no raw
// HTML, ids differing only by +/- get their own pages and figures, and --out deletes only
// files an earlier report wrote.
func TestHostileResults(t *testing.T) {
	root, out := t.TempDir(), t.TempDir()
	copyTree(t, fixtures, root)
	const ok32 = "qwen1_5.1xH100.4k-1k.bs32.sglang"
	const ok1 = "qwen1_5.1xH100.4k-1k.bs1.sglang"
	metrics := func(m map[string]any) map[string]any { return m["metrics"].(map[string]any) }
	// ids differing only by + / -: their own pages and figures.
	plus := hostileCell(t, root, ok32, "qwen1_5.1xH100.4k+1k.bs32.sglang", func(m map[string]any) {})
	_ = plus
	hostileCell(t, root, ok32, "qwen1_5.1xH100.4k-1k.bs0.sglang", func(m map[string]any) {
		m["cell"].(map[string]any)["batch_size"] = 0
	})
	hostileCell(t, root, ok32, "qwen1_5.1xH100.4k-1k.bs-3.sglang", func(m map[string]any) {
		m["cell"].(map[string]any)["batch_size"] = -3
		metrics(m)["mean_ttft_ms"] = -5.0
	})
	hostileCell(t, root, ok32, "qwen1_5.1xH100.4k-1k.bs48.sglang", func(m map[string]any) {
		m["cell"].(map[string]any)["batch_size"] = 48
		metrics(m)["mean_tpot_ms"] = 0.0
		metrics(m)["median_tpot_ms"] = 0.0
	})
	hostileCell(t, root, ok32, "qwen1_5.1xH100.4k-1k.bs96.sglang", func(m map[string]any) {
		m["cell"].(map[string]any)["batch_size"] = 96
		m["status"] = "failed"
		m["failure"] = map[string]any{"phase": "bench", "kind": "crash",
			"message": "server said <script>alert(1)</script> and <img src=x onerror=alert(2)>"}
	})
	// NaN/Inf telemetry samples and per-request rows with negative times.
	tel := filepath.Join(root, ok1, "telemetry.csv")
	f, err := os.OpenFile(tel, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("2026-08-14T01:00:25.000Z,0,GPU-fixture-0,NaN,64,+Inf,-Inf,6553680,1980,2619,60,0,69000000000\n")
	f.Close()
	bdir := filepath.Join(root, ok1, "client", ".moecapd")
	os.MkdirAll(bdir, 0o755)
	os.WriteFile(filepath.Join(bdir, "bench_random_20260814_010000.json"), []byte(`{"requests":[
		{"index":0,"success":true,"output_tokens":4,"start_s":-1,"ttft_ms":-3,"tpot_ms":2,"e2el_ms":10,"itl_ms":[1,2,3]},
		{"index":1,"success":true,"output_tokens":4,"start_s":0.5,"ttft_ms":3,"tpot_ms":-2,"e2el_ms":10,"itl_ms":[1,-2,3]},
		{"index":2,"success":true,"output_tokens":4,"start_s":0.1,"ttft_ms":3,"tpot_ms":2,"e2el_ms":10,"itl_ms":[1,2,3]},
		{"index":3,"success":true,"output_tokens":4,"start_s":0.2,"ttft_ms":4,"tpot_ms":2,"e2el_ms":11,"itl_ms":[1,2,3]}]}`), 0o644)

	// The user's own files in the output directory.
	for _, p := range []string{"plots/mine.svg", "cells/mine.html", "notes.html"} {
		os.MkdirAll(filepath.Join(out, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(out, p), []byte("mine"), 0o644)
	}

	res, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t)})
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	md, _ := os.ReadFile(res.Markdown)
	for _, bad := range []string{"<script", "<img"} {
		if strings.Contains(string(md), bad) {
			t.Errorf("summary.md holds raw %s", bad)
		}
	}
	if !strings.Contains(string(md), "&lt;script&gt;") {
		t.Error("summary.md lost the server's message instead of escaping it")
	}
	pages, _ := filepath.Glob(filepath.Join(out, "cells", "*.html"))
	if want := res.Cells + 1; len(pages) != want { // + the user's mine.html
		t.Errorf("%d pages for %d cells (+1 of the user's): ids collide", len(pages), res.Cells)
	}
	if a, b := anchor(ok32), anchor("qwen1_5.1xH100.4k+1k.bs32.sglang"); a == b {
		t.Errorf("anchor(%q) == anchor(+ variant) == %q", ok32, a)
	}
	page := func(id string) string {
		b, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(cellPagePath(id))))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for id, want := range map[string]string{
		"qwen1_5.1xH100.4k-1k.bs0.sglang":  "batch_size 0 is not a batch size",
		"qwen1_5.1xH100.4k-1k.bs-3.sglang": "ttft_mean_ms is -5",
		"qwen1_5.1xH100.4k-1k.bs48.sglang": "tpot_mean_ms is 0",
		ok1:                                "2 successful requests with negative or non-finite times left out",
	} {
		if p := page(id); !strings.Contains(p, want) {
			t.Errorf("page of %s does not say %q", id, want)
		}
	}
	if p := page(ok1); !strings.Contains(p, "NaN/Inf or out-of-range values left out") {
		t.Errorf("page of %s does not say its NaN/Inf telemetry was left out", ok1)
	}

	// A second report after a cell is gone: its page goes, the user's files stay.
	if err := os.RemoveAll(filepath.Join(root, "qwen1_5.1xH100.4k-1k.bs0.sglang")); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(Options{ResultsDir: root, OutDir: out, Tables: loadTables(t)}); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, filepath.FromSlash(cellPagePath("qwen1_5.1xH100.4k-1k.bs0.sglang")))); !os.IsNotExist(err) {
		t.Errorf("the page of a cell gone since was kept: %v", err)
	}
	for _, p := range []string{"plots/mine.svg", "cells/mine.html", "notes.html"} {
		if _, err := os.Stat(filepath.Join(out, p)); err != nil {
			t.Errorf("the user's %s was deleted: %v", p, err)
		}
	}
}

// TestTelemetryCSVTornRowsAndHugeValues: a row shorter than the header (a torn last line, a
// hand-edited file whose timestamp column comes late) is skipped, not indexed past its end;
// values far beyond any GPU's (1e308 mW) are left out and said, so the downsampled figures
// stay finite instead of summing to +Inf.
func TestTelemetryCSVTornRowsAndHugeValues(t *testing.T) {
	var b strings.Builder
	b.WriteString("gpu_index,power_mw,timestamp\n1\n0,5\n")
	for i := range 4*timelineBins + 10 {
		fmt.Fprintf(&b, "0,1e308,2026-08-14T01:00:%02d.%03dZ\n", i/1000, i%1000)
		fmt.Fprintf(&b, "0,300000,2026-08-14T01:00:%02d.%03dZ\n", i/1000, i%1000)
	}
	p := filepath.Join(t.TempDir(), "telemetry.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var d CellData
	if !readTelemetryCSV(p, &d) {
		t.Fatal("the readable rows were not read")
	}
	if len(d.Power[0]) == 0 {
		t.Fatal("no power series from the plausible samples")
	}
	for _, xy := range d.Power[0] {
		if !finite(xy.X, xy.Y) || xy.Y != 300 {
			t.Fatalf("power point %v: want 300 W from the plausible samples only", xy)
		}
	}
	if len(d.Notes) != 1 || !strings.Contains(d.Notes[0], fmt.Sprintf("%d NaN/Inf or out-of-range values left out", 4*timelineBins+10)) {
		t.Errorf("notes %q do not say the out-of-range samples were left out", d.Notes)
	}
}

// A pass record whose batch is past any server's (1e308) is left out of the decode-batch
// timeline: its bin would sum to +Inf.
func TestDecodeTimelineHugeBatch(t *testing.T) {
	var passes []records.Pass
	for i, b := range []string{"4", "1e308", "1e308", "6"} {
		p, err := records.Parse([]byte(fmt.Sprintf(`{"forward_mode":"decode","latency":0.01,"batch_size":%s,"forward_pass_id":%d}`, b, i)))
		if err != nil {
			t.Fatal(err)
		}
		passes = append(passes, p)
	}
	var d CellData
	if !decodeTimeline(passes, &d) || len(d.DecodeBatch) == 0 {
		t.Fatal("no timeline from the usable passes")
	}
	for _, xy := range d.DecodeBatch {
		if !finite(xy.X, xy.Y) || xy.Y > 6 {
			t.Errorf("timeline point %v: want the usable batches (4, 6) only", xy)
		}
	}
}
