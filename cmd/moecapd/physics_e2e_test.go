package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/internal/app"
	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

func capOf(t *testing.T, m *cell.Manifest) capmath.Derived {
	t.Helper()
	var d capmath.Derived
	if err := json.Unmarshal(m.Extra["cap"], &d); err != nil {
		t.Fatalf("extra.cap: %v (%s)", err, m.Extra["cap"])
	}
	return d
}

// checkAtFloor: the sim's decode passes equal the floor of what ran and the binding
// resource is used at 1 in both phases, with nothing flagged.
func checkAtFloor(t *testing.T, d capmath.Derived) {
	t.Helper()
	if len(d.Errors) > 0 || d.Absent != "" {
		t.Fatalf("cap errors %+v absent %q", d.Errors, d.Absent)
	}
	if d.DecodePassOverFloor == nil || math.Abs(*d.DecodePassOverFloor-1) > 0.02 {
		t.Errorf("decode pass ÷ floor %v, want 1 within 2%%", d.DecodePassOverFloor)
	}
	for name, u := range map[string]*capmath.Util{"prefill": d.Prefill, "decode": d.Decode} {
		if u == nil || u.SMBU == nil || u.SMFU == nil {
			t.Fatalf("%s utilisation absent: %+v", name, u)
		}
		bind := *u.SMBU
		if u.Bound == "compute" {
			bind = *u.SMFU
		}
		if math.Abs(bind-1) > 0.05 {
			t.Errorf("%s %s-bound utilisation %.4f, want 1 within 5%%", name, u.Bound, bind)
		}
		if u.SMBUMoECAP == nil || u.SMFUMoECAP == nil {
			t.Errorf("%s: MoE-CAP values absent", name)
		}
	}
}

// TestSimModelFromHFCache: a model known only from a config.json in a Hugging Face cache
// (HF_HOME) runs on the sim, under a key derived from its id, at its floor.
func TestSimModelFromHFCache(t *testing.T) {
	home := t.TempDir()
	snap := filepath.Join(home, "hub", "models--acme--Tiny-MoE-1B", "snapshots", "0123abc")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "pkg", "config", "testdata", "olmoe_1b_7b.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snap, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	cfg := tinyConfig(t, "acme/Tiny-MoE-1B", 512, 16, 8)
	r := moecapd(t, []string{"HF_HOME=" + home, "HF_HUB_CACHE="}, simArgs(results, cfg, 4, "--", "--sim-time-scale", "0.1")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	if m.Cell.Model != "tiny-moe-1b" || m.Status != cell.StatusOK {
		t.Fatalf("cell %s status %s", m.Cell.ID, m.Status)
	}
	d := capOf(t, m)
	if d.Inputs.ModelFamily != "olmoe" || !strings.Contains(d.Inputs.ModelSource, snap) {
		t.Errorf("model %q from %q, want olmoe from the cache snapshot", d.Inputs.ModelFamily, d.Inputs.ModelSource)
	}
	checkAtFloor(t, d)
	if d.TPOTOverFloor != nil && d.Inputs.TPOTMeasured == "client" {
		t.Errorf("a scaled run's client TPOT compared with the floor: %v", *d.TPOTOverFloor)
	}
	if !strings.Contains(r.stdout, "S-MBU") || !strings.Contains(r.stdout, "MoE-CAP") || !strings.Contains(r.stdout, "floors") {
		t.Errorf("summary lacks the CAP lines:\n%s", r.stdout)
	}
}

// TestSimQwen13k: Qwen1.5-MoE's 13k-1k cell runs (its Chat checkpoint's window is 32768)
// and its records carry real pass latencies although the clock ran 100× fast.
func TestSimQwen13k(t *testing.T) {
	results := t.TempDir()
	r := moecapd(t, nil, simArgs(results, "../../configs/fixed_13k_1k_qwen1_5.yaml", 2, "--num-samples", "2", "--", "--sim-time-scale", "0.01")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	d := capOf(t, m)
	checkAtFloor(t, d)
	if d.Cost != nil || d.Inputs.SimTimeScale != 0.01 {
		t.Errorf("scaled run: cost %+v, time scale %v; want no cost and the scale recorded", d.Cost, d.Inputs.SimTimeScale)
	}
	// TPOT floor of what ran: 2 sequences near 13,500 positions each on one H100.
	if d.TPOTFloorMs == nil || *d.TPOTFloorMs < 2 || *d.TPOTFloorMs > 5 {
		t.Errorf("TPOT floor %v ms", d.TPOTFloorMs)
	}
}

// TestSimWeightsDoNotFit: DeepSeek-R1 on one H100 is infeasible exactly as predicted: the
// sim dies of out-of-memory loading the weights, the cell is infeasible (exit 4) with a
// prediction and no floors.
func TestSimWeightsDoNotFit(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, "deepseek-ai/DeepSeek-R1", 64, 8, 2)
	r := moecapd(t, nil, simArgs(results, cfg, 2)...)
	if r.code != 4 {
		t.Fatalf("exit %d, want 4 (infeasible)\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	if m.Status != cell.StatusInfeasible || m.Failure == nil || m.Failure.Kind != exitcode.FailOOM {
		t.Fatalf("status %s failure %+v", m.Status, m.Failure)
	}
	d := capOf(t, m)
	if d.TPOTFloorMs != nil || d.FitVerdict != "does-not-fit" || d.Prediction == nil || !strings.Contains(d.FeasibleReason, "weights alone") {
		t.Errorf("cap %+v: want the does-not-fit prediction (weights) and no floors", d)
	}
}

// TestSimModelConfigFlag: --model-config describes the cell's model; the sim gets the same
// file and serves it.
func TestSimModelConfigFlag(t *testing.T) {
	results := t.TempDir()
	empty := t.TempDir()
	cfg := tinyConfig(t, "acme/qwen3-moe-test", 256, 8, 4)
	fixture, _ := filepath.Abs(filepath.Join("..", "..", "pkg", "config", "testdata", "qwen3_30b_a3b.json"))
	r := moecapd(t, []string{"HF_HOME=" + empty, "HF_HUB_CACHE="}, simArgs(results, cfg, 4, "--model-config", fixture, "--", "--sim-time-scale", "0.1")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	d := capOf(t, m)
	if m.Cell.Model != "qwen3-moe-test" || d.Inputs.ModelFamily != "qwen3_moe" || d.Inputs.ModelSource != fixture {
		t.Errorf("cell %s: model %q from %q", m.Cell.ID, d.Inputs.ModelFamily, d.Inputs.ModelSource)
	}
	checkAtFloor(t, d)
}

// TestSummaryFlagsImpossibleValues: the summary prints a flagged physical value as an ERROR
// line with its cause, and never as a percentage.
func TestSummaryFlagsImpossibleValues(t *testing.T) {
	u := 0.5
	d := capmath.Derived{Version: capmath.DerivedVersion, Source: "records",
		Decode: &capmath.Util{SMFU: &u, Bound: "memory"},
		Errors: []capmath.Flag{{Field: "decode.s_mbu", Value: 9.1, Limit: capmath.PhysicalLimit, Cause: "records of a scaled sim"},
			{Field: "tpot_over_floor", Value: 0.6, Limit: capmath.FloorLimit, Cause: "ran short"}}}
	raw, _ := json.Marshal(d)
	m := &cell.Manifest{Cell: cell.Identity{ID: "x"}, Status: cell.StatusOK, Extra: map[string]json.RawMessage{"cap": raw}}
	var b strings.Builder
	app.WriteCellSummary(&b, "/tmp/x", m)
	out := b.String()
	if !strings.Contains(out, "ERROR    decode.s_mbu = 9.1 is impossible") || !strings.Contains(out, "records of a scaled sim") || strings.Contains(out, "910") {
		t.Errorf("summary:\n%s\nwant an ERROR line with the cause and no 910%%", out)
	}
	if !strings.Contains(out, "ERROR    tpot_over_floor = 0.6 is impossible (lower limit 0.98): ran short") {
		t.Errorf("summary:\n%s\nwant the ratio below the floor as an ERROR line", out)
	}
}

// TestSimFP8KVCache: a server told --kv-cache-dtype fp8 keeps one byte per KV element; the
// sim and the CAP numbers agree on it.
func TestSimFP8KVCache(t *testing.T) {
	results := t.TempDir()
	r := moecapd(t, nil, simArgs(results, "../../configs/fixed_13k_1k_qwen1_5.yaml", 2, "--num-samples", "2", "--", "--sim-time-scale", "0.01", "--kv-cache-dtype", "fp8")...)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	d := capOf(t, m)
	// 2·24 layers·16 KV heads·128·1 byte
	if d.Inputs.KVBytesPerToken != 98304 {
		t.Errorf("kv bytes per token %v, want 98304 (fp8)", d.Inputs.KVBytesPerToken)
	}
	checkAtFloor(t, d)
}

// TestPricesReachTheCost: prices are resolved once, in planning, and the cell's CAP block
// prices its cost with them: a price given on the command line wins over the hardware
// table's, the other stays the table's (sim family H200). No --sim-time-scale: a scaled
// sim has no cost.
func TestPricesReachTheCost(t *testing.T) {
	results := t.TempDir()
	cfg := tinyConfig(t, qwen, 64, 8, 4)
	r := moecapd(t, nil, simArgs(results, cfg, 2, "--sim-hardware", "H200", "--gpu-hour-usd", "7.25")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	_, m := onlyCell(t, results)
	d := capOf(t, m)
	tables, err := config.LoadTables("../../configs")
	if err != nil {
		t.Fatal(err)
	}
	hw, _ := tables.HardwareFamily("H200")
	if d.Cost == nil || d.Cost.Prices.GPUHourUSD != 7.25 || d.Cost.Prices.Source != "flags" ||
		d.Cost.Prices.ElectricityUSDPerKWh != hw.ElectricityUSDPerKWh {
		t.Fatalf("cost %+v, want $7.25/GPU-hour from the flags and the H200 table's $%g/kWh", d.Cost, hw.ElectricityUSDPerKWh)
	}
	if !strings.Contains(r.stdout, "$7.25/GPU-hour") {
		t.Errorf("summary does not show the given price:\n%s", r.stdout)
	}
}
