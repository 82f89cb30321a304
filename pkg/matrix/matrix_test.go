package matrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/launcher"
)

func tables(t *testing.T) *config.Tables {
	t.Helper()
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestGuideMatrix(t *testing.T) {
	mx, err := Load("../../configs/matrix.yaml", tables(t))
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	done := 0
	for _, c := range mx.Cells {
		count[c.Hardware]++
		if c.Done {
			done++
			if c.Hardware != "1xH100" {
				t.Errorf("%s marked done; the guide's completed cells are all on 1xH100", c.ID)
			}
		}
		if c.NumSamples < 2*c.Batch || c.NumSamples < 100 {
			t.Errorf("%s: num_samples %d; want max(100, 2×%d)", c.ID, c.NumSamples, c.Batch)
		}
		if c.TP != c.GPUs {
			t.Errorf("%s: tp %d, want %d (the label's GPU count)", c.ID, c.TP, c.GPUs)
		}
	}
	// Per backend: done 2 models × (2+1); 1xA100 2×3; 1xH200 2×7; each 8x: small 2×8,
	// mixtral 2×8; R1 8 on 8xH200.
	want := map[string]int{"1xH100": 12, "1xA100": 12, "1xH200": 28, "8xH100": 64, "8xA100": 64, "8xH200": 80}
	for hw, n := range want {
		if count[hw] != n {
			t.Errorf("%s: %d cells, want %d", hw, count[hw], n)
		}
	}
	if done != 12 {
		t.Errorf("%d done cells, want 12 (guide's Completed table × 2 backends)", done)
	}
	if c := mx.Cell("deepseek_r1.8xH200.13k-1k.bs128.vllm"); c == nil || c.NumSamples != 256 {
		t.Errorf("R1 bs128 cell %+v; want it present with 256 samples", c)
	}
}

func writeMatrix(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	for _, m := range []struct{ key, id string }{{"qwen1_5", "Qwen/Qwen1.5-MoE-A2.7B-Chat"}, {"dsv2_lite", "deepseek-ai/DeepSeek-V2-Lite-Chat"}} {
		b := "dataset_names: [gsm8k]\nmetrics: []\nmodel_id: " + m.id + "\nfixed_length_mode: true\ntarget_input_tokens: 32\ntarget_output_tokens: 8\nnum_samples: 4\n"
		if err := os.WriteFile(filepath.Join(dir, "tiny_"+m.key+".yaml"), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const head = "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sim]}\n"

func TestLoadErrors(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"typo in group", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, batchsize: 3}\n", `key "groups.g.batchsize": unknown key`},
		{"unknown model", head + "groups:\n  g: {models: [qwen2], hardware: [1xH100], tasks: {32-8: [1]}}\n", `unknown model "qwen2"`},
		{"bad hardware", head + "groups:\n  g: {models: [qwen1_5], hardware: [H100], tasks: {32-8: [1]}}\n", `expected <gpu count>x<family>`},
		{"unknown family", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xB200], tasks: {32-8: [1]}}\n", `unknown GPU family "B200"`},
		{"unknown task", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {4k-1k: [1]}}\n", `unknown task; defined tasks: 32-8`},
		{"task label mismatch", "version: 1\ntasks:\n  tiny: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sim]}\ngroups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {tiny: [1]}}\n", `rename the task to "32-8"`},
		{"duplicate cell", head + "groups:\n  a: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1, 2]}}\n  b: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [2]}}\n", `qwen1_5.1xH100.32-8.bs2.sim is also in group "a"`},
		{"bad fault", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, sim: {fault: melt}}\n", `key "groups.g.sim.fault": got "melt"`},
		{"sim knobs on a real backend", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, backends: [sglang], sim: {tpot: 1ms}}\n", `sim settings apply to the sim backend only`},
		{"tp beyond label", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, tp: 2}\n", `tp 2 is more than the 1 GPUs of 1xH100`},
		{"bad timeout", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, timeout: soon}\n", `key "groups.g.timeout": got "soon"`},
		{"wrong version", "version: 2\n", `key "version": got 2, expected 1`},
		{"models in defaults", "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {models: [qwen1_5]}\ngroups: {g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}}}\n", `may only hold settings`},
		{"zero batch", head + "groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [0]}}\n", `batch size 0`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeMatrix(t, c.body)
			_, err := Load(p, tables(t))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want it to contain %q", err, c.want)
			}
			if !strings.Contains(err.Error(), p) && !strings.Contains(err.Error(), "tiny_") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestOverridesAndOrder(t *testing.T) {
	p := writeMatrix(t, head+`groups:
  big:
    models: [qwen1_5]
    hardware: [1xH100]
    tasks: {32-8: [128, 1, 32]}
  pinned:
    models: [dsv2_lite]
    hardware: [1xH100]
    tasks: {32-8: [64]}
    num_samples: 10
    server_args: [--foo, bar]
    timeout: 90m
    sim: {fault: oom-on-start, tpot: 3ms, workers: 2}
`)
	mx, err := Load(p, tables(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range mx.Cells {
		ids = append(ids, c.ID)
	}
	want := "dsv2_lite.1xH100.32-8.bs64.sim qwen1_5.1xH100.32-8.bs1.sim qwen1_5.1xH100.32-8.bs32.sim qwen1_5.1xH100.32-8.bs128.sim"
	if got := strings.Join(ids, " "); got != want {
		t.Errorf("run order\n got %s\nwant %s", got, want)
	}
	if c := mx.Cell("qwen1_5.1xH100.32-8.bs128.sim"); c.NumSamples != 256 || c.Pinned {
		t.Errorf("bs128 num_samples %d pinned %v; want 256 (2×batch), not pinned", c.NumSamples, c.Pinned)
	}
	if c := mx.Cell("qwen1_5.1xH100.32-8.bs1.sim"); c.NumSamples != 4 {
		t.Errorf("bs1 num_samples %d; want the bench file's 4", c.NumSamples)
	}
	c := mx.Cell("dsv2_lite.1xH100.32-8.bs64.sim")
	if c.NumSamples != 10 || !c.Pinned || c.Timeout != 90*time.Minute || c.SimTPOT != 3*time.Millisecond {
		t.Errorf("pinned cell %+v", c)
	}
	if got := strings.Join(c.ServerArgs, " "); got != "--foo bar --sim-fault oom-on-start --sim-tpot 3ms --sim-workers 2" {
		t.Errorf("server args %q", got)
	}
}

func manifest(id string, st cell.Status, kind cell.Kind) *cell.Manifest {
	m := &cell.Manifest{Cell: cell.Identity{ID: id}, Status: st}
	if kind != "" {
		m.Failure = &cell.Failure{Phase: cell.PhaseReady, Kind: kind, Message: string(kind) + " happened"}
	}
	return m
}

func TestPlanActions(t *testing.T) {
	tb := tables(t)
	mx, err := Load("../../configs/matrix.yaml", tb)
	if err != nil {
		t.Fatal(err)
	}
	node, _ := ParseNode("8xH200")
	res := map[string]*cell.Manifest{
		"qwen1_5.1xH200.4k-1k.bs1.sglang":   manifest("qwen1_5.1xH200.4k-1k.bs1.sglang", cell.StatusOK, ""),
		"qwen1_5.1xH200.4k-1k.bs32.sglang":  manifest("qwen1_5.1xH200.4k-1k.bs32.sglang", cell.StatusFailed, exitcode.FailCrash),
		"qwen1_5.1xH200.4k-1k.bs64.sglang":  manifest("qwen1_5.1xH200.4k-1k.bs64.sglang", cell.StatusInfeasible, exitcode.FailOOM),
		"qwen1_5.1xH200.4k-1k.bs1.vllm":     manifest("qwen1_5.1xH200.4k-1k.bs1.vllm", cell.StatusRunning, ""),
		"qwen1_5.1xH200.4k-1k.bs32.vllm":    manifest("qwen1_5.1xH200.4k-1k.bs32.vllm", cell.StatusInterrupted, exitcode.FailInterrupted),
		"dsv2_lite.1xH200.4k-1k.bs1.sglang": manifest("dsv2_lite.1xH200.4k-1k.bs1.sglang", cell.StatusOK, ""),
	}
	byID := func(items []*Item) map[string]*Item {
		out := map[string]*Item{}
		for _, it := range items {
			out[it.Cell.ID] = it
		}
		return out
	}
	items := byID(Plan(mx, tb, node, res, Options{}))
	want := map[string]Action{
		"qwen1_5.1xH200.4k-1k.bs1.sglang":    ActKeep,
		"qwen1_5.1xH200.4k-1k.bs32.sglang":   ActKeep,
		"qwen1_5.1xH200.4k-1k.bs64.sglang":   ActKeep,
		"qwen1_5.1xH200.4k-1k.bs128.sglang":  ActSkip,
		"qwen1_5.1xH200.4k-1k.bs1.vllm":      ActRun,
		"qwen1_5.1xH200.4k-1k.bs32.vllm":     ActRun,
		"qwen1_5.1xH200.4k-1k.bs128.vllm":    ActRun,
		"qwen1_5.1xH100.4k-1k.bs1.sglang":    ActNotHere,
		"deepseek_r1.8xH200.4k-1k.bs1.vllm":  ActRun,
		"mixtral_8x7b.8xA100.4k-1k.bs1.vllm": ActNotHere,
	}
	for id, a := range want {
		if it := items[id]; it == nil || it.Action != a {
			t.Errorf("%s: %+v; want %s", id, it, a)
		}
	}
	// The Chat checkpoint's window is 32768: 13k-1k fits.
	if it := items["qwen1_5.8xH200.13k-1k.bs1.sglang"]; !it.Feasible || it.Verdict != "fits" {
		t.Errorf("qwen 13k-1k predicted %v (%s); want fits (32768-token window)", it.Feasible, it.FeasWhy)
	}
	// DeepSeek-R1 13k-1k at batch 128 on 8xH200 needs 210 GB per GPU: under-batched, not
	// infeasible.
	if it := items["deepseek_r1.8xH200.13k-1k.bs128.sglang"]; it == nil {
		t.Error("no deepseek_r1.8xH200.13k-1k.bs128.sglang in the guide's matrix")
	} else if !it.Feasible || it.Verdict != "under-batched" || it.Concurrent != 52 {
		t.Errorf("r1 13k-1k bs128: %v %s %d (%s); want under-batched to 52", it.Feasible, it.Verdict, it.Concurrent, it.FeasWhy)
	}
	if it := items["qwen1_5.1xH200.4k-1k.bs1.vllm"]; it.Estimate <= 0 {
		t.Errorf("no estimate for a pending cell")
	}
	items = byID(Plan(mx, tb, node, res, Options{NoSkip: true, RedoFailed: true, Only: func(id string) bool { return strings.HasPrefix(id, "qwen1_5.1xH200") }}))
	if a := items["qwen1_5.1xH200.4k-1k.bs128.sglang"].Action; a != ActRun {
		t.Errorf("--no-skip: bs128 %s, want run", a)
	}
	if a := items["qwen1_5.1xH200.4k-1k.bs32.sglang"].Action; a != ActRun {
		t.Errorf("--redo-failed: bs32 %s, want run", a)
	}
	if a := items["dsv2_lite.1xH200.4k-1k.bs32.sglang"].Action; a != ActFiltered {
		t.Errorf("--only: dsv2 %s, want filtered", a)
	}
	h100, _ := ParseNode("1xH100")
	items = byID(Plan(mx, tb, h100, nil, Options{}))
	if a := items["qwen1_5.1xH100.4k-1k.bs1.sglang"].Action; a != ActDone {
		t.Errorf("done cell on 1xH100: %s, want done", a)
	}
	if a := items["qwen1_5.8xH100.4k-1k.bs1.sglang"].Action; a != ActNotHere {
		t.Errorf("8-GPU cell on a 1-GPU node: %s, want not-here", a)
	}
}

// fakeExec stands in for cell.Run in scheduler tests: outcomes by cell id, and a record of
// which GPUs, ports and times each cell had.
type fakeExec struct {
	mu      sync.Mutex
	outcome map[string][]cell.Kind // per attempt; "" = ok
	calls   map[string]int
	spans   []span
	hold    time.Duration
}

type span struct {
	id         string
	gpus       string
	port       int
	start, end time.Time
}

func (f *fakeExec) exec(ctx context.Context, c *cell.Config, p *cell.Plan) (*cell.Manifest, error) {
	f.mu.Lock()
	n := f.calls[p.ID]
	f.calls[p.ID]++
	var kind cell.Kind
	if ks := f.outcome[p.ID]; n < len(ks) {
		kind = ks[n]
	}
	f.mu.Unlock()
	s := span{id: p.ID, gpus: c.CUDAVisibleDevices, port: c.Port, start: time.Now()}
	// As the pipeline does: the caller's notes are written with the manifest.
	m := &cell.Manifest{Cell: p.Identity, Status: cell.StatusOK, Extra: maps.Clone(c.Extra)}
	select {
	case <-time.After(f.hold):
	case <-ctx.Done():
		// As the pipeline does: interrupted, or failed/timeout at the cell's time limit.
		kind, msg := cell.Stopped(ctx, cell.PhaseBench)
		m.Status = cell.StatusOf(kind)
		m.Failure = &cell.Failure{Phase: cell.PhaseBench, Kind: kind, Message: msg}
	}
	s.end = time.Now()
	if kind != "" && m.Status == cell.StatusOK {
		m.Status = cell.StatusFailed
		if kind == exitcode.FailOOM {
			m.Status = cell.StatusInfeasible
		}
		m.Failure = &cell.Failure{Phase: cell.PhaseReady, Kind: kind, Message: string(kind)}
	}
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.spans = append(f.spans, s)
	f.mu.Unlock()
	return m, cell.WriteManifest(p.Dir, m)
}

func runner(t *testing.T, mx *Matrix, tb *config.Tables, results string, f *fakeExec) *Runner {
	node, _ := ParseNode("8xH100")
	res, _, _ := Results(results)
	return &Runner{Results: results, Items: Plan(mx, tb, node, res, Options{}), Exec: f.exec, Slots: 1, Backoff: time.Millisecond,
		Build: func(c *Cell) (*cell.Config, error) {
			return &cell.Config{Backend: c.Backend, Bench: c.Bench, Tables: tb, BatchSize: c.Batch, TP: c.TP, NumSamples: c.NumSamples,
				Host: "127.0.0.1", Results: results, Client: cell.ClientNative, Hardware: c.Hardware,
				Grace: time.Second, ReadyStall: time.Minute, ReadyHard: time.Minute, GPUInterval: 100 * time.Millisecond}, nil
		}}
}

func TestRunnerSkipRetryTimeout(t *testing.T) {
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1, 32, 64, 128]}}\n  slow: {models: [dsv2_lite], hardware: [1xH100], tasks: {32-8: [1, 2]}, timeout: 50ms}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	f := &fakeExec{calls: map[string]int{}, hold: 5 * time.Millisecond, outcome: map[string][]cell.Kind{
		"qwen1_5.1xH100.32-8.bs1.sglang":  {exitcode.FailCrash, exitcode.FailHealthTimeout}, // ok on the third attempt
		"qwen1_5.1xH100.32-8.bs32.sglang": {exitcode.FailCrash, exitcode.FailCrash, exitcode.FailCrash},
		"qwen1_5.1xH100.32-8.bs64.sglang": {exitcode.FailOOM},
	}}
	r := runner(t, mx, tb, results, f)
	r.Retries = 2
	// dsv2 bs1 holds past its group's 50ms timeout: failed/timeout, and bs2 still runs.
	r.Exec = func(ctx context.Context, c *cell.Config, p *cell.Plan) (*cell.Manifest, error) {
		if strings.HasPrefix(p.ID, "dsv2_lite") && c.BatchSize == 1 {
			return (&fakeExec{calls: map[string]int{}, hold: time.Second}).exec(ctx, c, p)
		}
		return f.exec(ctx, c, p)
	}
	out, err := r.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if out.OK != 2 || out.Failed != 2 || out.Infeasible != 1 || out.Skipped != 1 {
		t.Errorf("outcome %+v; want 2 ok (qwen bs1 after retries, dsv2 bs2), 2 failed, 1 infeasible, 1 skipped", out)
	}
	if f.calls["qwen1_5.1xH100.32-8.bs1.sglang"] != 3 || f.calls["qwen1_5.1xH100.32-8.bs32.sglang"] != 3 || f.calls["qwen1_5.1xH100.32-8.bs64.sglang"] != 1 {
		t.Errorf("attempts %v; want 3 for transient failures (1 + 2 retries), 1 for oom", f.calls)
	}
	if f.calls["qwen1_5.1xH100.32-8.bs128.sglang"] != 0 {
		t.Error("bs128 ran after bs64 ran out of memory")
	}
	m, err := cell.ReadManifest(filepath.Join(results, "qwen1_5.1xH100.32-8.bs128.sglang"))
	if err != nil || m.Status != cell.StatusInfeasible || NoteOf(m).SkippedBecause != "qwen1_5.1xH100.32-8.bs64.sglang" {
		t.Errorf("skip manifest %+v (%v); want infeasible, skipped because of bs64", m, err)
	}
	if m.Cell.NumSamples != 256 {
		t.Errorf("skipped cell records num_samples %d, want 256", m.Cell.NumSamples)
	}
	m, _ = cell.ReadManifest(filepath.Join(results, "qwen1_5.1xH100.32-8.bs1.sglang"))
	if NoteOf(m).Attempts != 3 {
		t.Errorf("attempts recorded %d, want 3", NoteOf(m).Attempts)
	}
	m, _ = cell.ReadManifest(filepath.Join(results, "dsv2_lite.1xH100.32-8.bs1.sglang"))
	if m.Status != cell.StatusFailed || m.Failure.Kind != exitcode.FailTimeout || !strings.Contains(m.Failure.Message, "50ms") {
		t.Errorf("timed-out cell: %s %+v; want failed/timeout naming the limit", m.Status, m.Failure)
	}
	if s := r.Progress.Snapshot(); s.Finished() != s.Total || s.Retry != 4 {
		t.Errorf("progress %+v; want all finished, 4 retries", s)
	}

	// Resume: nothing left to run except the --no-skip cell when asked.
	res, _, _ := Results(results)
	node, _ := ParseNode("8xH100")
	for _, it := range Plan(mx, tb, node, res, Options{}) {
		if it.Action == ActRun {
			t.Errorf("after the run, %s would run again (%s)", it.Cell.ID, it.Why)
		}
	}
}

func TestRunnerPackDisjoint(t *testing.T) {
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang, vllm]}\n"+
		"groups:\n  one: {models: [qwen1_5, dsv2_lite], hardware: [1xH100], tasks: {32-8: [1, 2, 4]}}\n  eight: {models: [qwen1_5], hardware: [8xH100], tasks: {32-8: [1]}}\n  two: {models: [qwen1_5], hardware: [2xH100], tasks: {32-8: [1, 2]}}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeExec{calls: map[string]int{}, hold: 30 * time.Millisecond}
	r := runner(t, mx, tb, t.TempDir(), f)
	r.Slots, r.GPUs, r.PortBase = 8, []string{"0", "1", "2", "3", "4", "5", "6", "7"}, 41000
	out, err := r.Run(t.Context())
	if err != nil || out.OK != 18 {
		t.Fatalf("outcome %+v err %v; want 18 ok", out, err)
	}
	overlap := 0
	for i, a := range f.spans {
		for _, b := range f.spans[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				overlap++
				ga, gb := strings.Split(a.gpus, ","), strings.Split(b.gpus, ",")
				for _, x := range ga {
					for _, y := range gb {
						if x == y {
							t.Errorf("%s and %s ran at once on GPU %s", a.id, b.id, x)
						}
					}
				}
				if a.port == b.port {
					t.Errorf("%s and %s ran at once on port %d", a.id, b.id, a.port)
				}
				if chain(a.id) == chain(b.id) {
					t.Errorf("%s and %s of one chain ran at once", a.id, b.id)
				}
			}
		}
		want := 1
		if strings.Contains(a.id, ".8xH100.") {
			want = 8
		} else if strings.Contains(a.id, ".2xH100.") {
			want = 2
		}
		if n := len(strings.Split(a.gpus, ",")); n != want {
			t.Errorf("%s got GPUs %q, want %d", a.id, a.gpus, want)
		}
	}
	if overlap == 0 {
		t.Error("--pack ran nothing side by side")
	}
}

func chain(id string) string {
	p := strings.Split(id, ".")
	return p[0] + p[1] + p[2] + p[4]
}

func TestLockExclusive(t *testing.T) {
	res, gdir := t.TempDir(), t.TempDir()
	l, err := Acquire(res, gdir, []string{"GPU-aaaa"})
	if err != nil {
		t.Fatal(err)
	}
	// flock conflicts between two open files of one process too: the second Acquire stands
	// for a second run, and the holder it names is this process.
	me := "is in use by PID " + strconv.Itoa(os.Getpid())
	if _, err := Acquire(t.TempDir(), gdir, []string{"GPU-aaaa"}); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "GPU GPU-aaaa "+me) {
		t.Errorf("second run on the same GPU: %v; want locked, naming the GPU and %s", err, me)
	}
	if _, err := Acquire(res, t.TempDir(), nil); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "results root "+res+" "+me) {
		t.Errorf("second run on the same results: %v; want locked, naming the root and %s", err, me)
	}
	l.Release()
	l2, err := Acquire(res, gdir, []string{"GPU-aaaa"})
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

func TestStatusReport(t *testing.T) {
	tb := tables(t)
	mx, err := Load("../../configs/matrix.yaml", tb)
	if err != nil {
		t.Fatal(err)
	}
	ok := manifest("qwen1_5.1xH200.4k-1k.bs1.sglang", cell.StatusOK, "")
	ok.Cell.NumSamples = 100
	ok.Metrics = nil
	res := map[string]*cell.Manifest{
		ok.Cell.ID:                         ok,
		"qwen1_5.1xH200.4k-1k.bs64.sglang": manifest("qwen1_5.1xH200.4k-1k.bs64.sglang", cell.StatusInfeasible, exitcode.FailOOM),
	}
	var b bytes.Buffer
	Report(&b, mx, Status(mx, res), true)
	s := b.String()
	for _, want := range []string{
		"| Qwen1.5-MoE | 1xH100 | 4k-1k | sglang | 1, 32 | ✅ Done (per matrix, no result here) |",
		"| Qwen1.5-MoE | 1xH200 | 4k-1k | sglang | 1 | ✅ Done |",
		"| Qwen1.5-MoE | 1xH200 | 4k-1k | sglang | 32, 128 | pending |",
		"| qwen1_5.1xH200.4k-1k.bs64.sglang | infeasible | ready/oom | oom happened |",
		"| DeepSeek-R1 | 8xH200 | 13k-1k | vllm | 1, 32, 64, 128 | pending |",
		"- qwen1_5.1xH200.4k-1k.bs1.sglang: no metrics recorded",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}

// A cell another runner holds (its lock taken elsewhere) is neither run nor archived nor
// written; the run goes on with the others and reports it. The exit code's source,
// FailedInResults, sees failures of the results root that this run did not make.
func TestRunnerHeldCellAndFailedInResults(t *testing.T) {
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1, 2]}}\n  h: {models: [dsv2_lite], hardware: [1xH100], tasks: {32-8: [1]}}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	const held, failed = "qwen1_5.1xH100.32-8.bs2.sglang", "dsv2_lite.1xH100.32-8.bs1.sglang"
	// An earlier run failed dsv2; another runner is running qwen bs2 right now.
	lay, _ := cell.OpenLayout(results)
	for _, id := range []string{held, failed} {
		st := cell.StatusRunning
		if id == failed {
			st = cell.StatusFailed
		}
		unlock, err := lay.Lock(id)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := lay.Create(id)
		cell.WriteManifest(d.Path, manifest(id, st, exitcode.FailCrash))
		unlock()
	}
	// The other runner is another process: this one holding the lock would be the runner.
	holdInChild(t, results, held)

	f := &fakeExec{calls: map[string]int{}, hold: time.Millisecond}
	r := runner(t, mx, tb, results, f)
	out, err := r.Run(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if out.OK != 1 || len(out.Held) != 1 || !errors.Is(out.Held[0], cell.ErrLocked) || !strings.Contains(out.Held[0].Error(), "cell "+held+" is in use by PID") {
		t.Errorf("outcome %+v; want 1 ok and %s held, naming its holder", out, held)
	}
	if f.calls[held] != 0 || f.calls[failed] != 0 {
		t.Errorf("calls %v; the held cell and the kept failed cell must not run", f.calls)
	}
	if m, _ := cell.ReadManifest(filepath.Join(results, held)); m == nil || m.Status != cell.StatusRunning {
		t.Errorf("held cell's manifest %+v; want it untouched (running)", m)
	}
	if a, _ := filepath.Glob(filepath.Join(results, cell.AttemptsDir, held+".*")); len(a) != 0 {
		t.Errorf("held cell archived: %v", a)
	}
	res, probs, err := Results(results)
	if err != nil || len(probs) != 0 {
		t.Fatal(err, probs)
	}
	got := FailedInResults(r.Items, res)
	if len(got) != 1 || got[0] != failed {
		t.Errorf("FailedInResults = %v; want [%s] (failed by an earlier run, kept by this one)", got, failed)
	}
}

// Out-of-range numbers and duplicate keys in a matrix file are errors naming the key; none
// reaches a panic (a GPU count that overflows used to become tp 0, a division by zero).
func TestMatrixFileBounds(t *testing.T) {
	tb := tables(t)
	head := "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sim]}\ngroups:\n"
	for _, c := range []struct{ body, want string }{
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [5000]}}\n", "batch size 5000; expected 1 to 4096"},
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, num_samples: 2000000}\n", `"groups.g.num_samples": got 2000000`},
		{"  g: {models: [qwen1_5], hardware: [99999999999999999999xH100], tasks: {32-8: [1]}}\n", "expected 1 to 64 GPUs"},
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, tp: 100}\n", `"groups.g.tp": got 100`},
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, timeout: 600}\n", "a duration with a unit"},
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}, sim: {time_scale: .nan}}\n", "time_scale 0 to 1000"},
		{"  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}}\n  g: {models: [dsv2_lite], hardware: [1xH100], tasks: {32-8: [1]}}\n", `"groups.g": duplicate key`},
	} {
		_, err := Load(writeMatrix(t, head+c.body), tb)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error containing %q", strings.TrimSpace(c.body), err, c.want)
		}
	}
}

// A caller holding a cell's lock (the Slurm task) runs it through the Runner: the lock this
// process holds is its own, not another runner's.
func TestRunnerKeepsCallersLock(t *testing.T) {
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1]}}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	lay, _ := cell.OpenLayout(results)
	unlock, err := lay.Lock("qwen1_5.1xH100.32-8.bs1.sglang")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeExec{calls: map[string]int{}, hold: time.Millisecond}
	out, err := runner(t, mx, tb, results, f).Run(t.Context())
	if err != nil || out.OK != 1 || len(out.Held) != 0 {
		t.Errorf("outcome %+v err %v; want the cell run under the caller's lock", out, err)
	}
	if !lay.Held("qwen1_5.1xH100.32-8.bs1.sglang") {
		t.Error("the Runner released a lock it did not take")
	}
	unlock()
}

const holdEnv = "MOECAPD_TEST_HOLD_CELL"

func TestMain(m *testing.M) {
	if spec := os.Getenv(holdEnv); spec != "" {
		root, id, _ := strings.Cut(spec, "|")
		lay, err := cell.OpenLayout(root)
		if err == nil {
			_, err = lay.Lock(id)
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		fmt.Println("locked")
		time.Sleep(time.Hour)
	}
	os.Exit(launcher.RunTests(m.Run))
}

// holdInChild holds cell id's lock in another process until the test ends.
func holdInChild(t *testing.T, root, id string) {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), holdEnv+"="+root+"|"+id)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	buf := make([]byte, 64)
	if n, _ := out.Read(buf); !strings.HasPrefix(string(buf[:n]), "locked") {
		t.Fatalf("child: %q", buf[:n])
	}
}

// A cell whose manifest says running is shown as interrupted at once when its recorded
// supervisor is gone (a real process that exited), and as running while the supervisor
// named by PID and start time lives (this test process).
func TestStatusDeadSupervisor(t *testing.T) {
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	self := launcher.Self()
	dead := self
	dead.PID = p.Pid // exited and reaped: no live process has this PID with our start time
	tests := []struct {
		name string
		sup  *launcher.ProcessID
		want State
	}{
		{"live supervisor", &self, StRunning},
		{"dead supervisor", &dead, StInterrupted},
		{"same PID, other start time", &launcher.ProcessID{PID: self.PID, StartTicks: self.StartTicks + 1, BootID: self.BootID}, StInterrupted},
		{"no supervisor recorded", nil, StRunning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := manifest("qwen1_5.1xH200.4k-1k.bs1.sglang", cell.StatusRunning, "")
			m.Supervisor = tt.sup
			es := Status(&Matrix{}, map[string]*cell.Manifest{m.Cell.ID: m})
			if len(es) != 1 || es[0].State != tt.want {
				t.Fatalf("state = %v, want %s", es[0].State, tt.want)
			}
			var b bytes.Buffer
			Report(&b, nil, es, false)
			if tt.want == StInterrupted && !strings.Contains(b.String(), "1 interrupted (supervisor gone)") {
				t.Errorf("report does not say interrupted:\n%s", b.String())
			}
		})
	}
}

func TestPackSlots(t *testing.T) {
	for _, c := range []struct {
		gpus, cpus, want int
		why              string
	}{
		{8, 64, 8, "one per GPU"},
		{1, 2, 1, "one per GPU"},
		{0, 2, 4, "two per CPU core (2 cores)"},
		{0, 1, 2, "two per CPU core"},
		{0, 32, 8, "at most 8"},
	} {
		n, why := PackSlots(c.gpus, c.cpus)
		if n != c.want || !strings.Contains(why, c.why) {
			t.Errorf("PackSlots(%d GPUs, %d cores) = %d, %q; want %d, saying %q", c.gpus, c.cpus, n, why, c.want, c.why)
		}
	}
}

// TestRunnerExtraNotes: a caller's notes (a Slurm task's extra.slurm) reach the manifest of
// every cell the runner runs, beside the matrix's own note, through the pipeline's config —
// the one manifest writer — and also the manifest of a cell skipped without running.
func TestRunnerExtraNotes(t *testing.T) {
	tb := tables(t)
	p := writeMatrix(t, "version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults: {backends: [sglang]}\n"+
		"groups:\n  g: {models: [qwen1_5], hardware: [1xH100], tasks: {32-8: [1, 32]}}\n")
	mx, err := Load(p, tb)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	f := &fakeExec{calls: map[string]int{}, outcome: map[string][]cell.Kind{"qwen1_5.1xH100.32-8.bs1.sglang": {exitcode.FailOOM}}}
	r := runner(t, mx, tb, results, f)
	note := json.RawMessage(`{"array_job_id":"42"}`)
	r.Extra = map[string]json.RawMessage{"slurm": note}
	if _, err := r.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"qwen1_5.1xH100.32-8.bs1.sglang", "qwen1_5.1xH100.32-8.bs32.sglang"} {
		m, err := cell.ReadManifest(filepath.Join(results, id))
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Job string `json:"array_job_id"`
		}
		if json.Unmarshal(m.Extra["slurm"], &got) != nil || got.Job != "42" || NoteOf(m).Group != "g" {
			t.Errorf("%s (%s): extra %q; want the caller's slurm note and the matrix's", id, m.Status, m.Extra)
		}
	}
}
