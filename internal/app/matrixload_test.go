package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/matrix"
)

// A submitted one-cell job's load goes into its matrix as the group's keys, and from the
// matrix into the cell's config and id, whatever the values.
func TestOneCellMatrixLoad(t *testing.T) {
	bench, _ := filepath.Abs("../../configs/fixed_4k_1k_qwen1_5.yaml")
	tables, err := loadTables("../../configs", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []cell.Load{
		{},
		{RequestRate: 2.5, Burstiness: 0.5, MaxConcurrency: 8},
		{Rates: []float64{0.5, 1, 1e6}, SLO: "ttft=2s,tpot=50ms", FindMaxRate: true, MaxRateSteps: 3},
	} {
		b, err := OneCellMatrix(MatrixOptions{ConfigsDir: "../../configs"}, OneCell{Backend: "sim", Config: bench, BatchSize: 2, Load: l})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "m.yaml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		mx, err := matrix.Load(p, tables)
		if err != nil || len(mx.Cells) != 1 {
			t.Fatalf("%+v: %v\n%s", l, err, b)
		}
		c := mx.Cells[0]
		want, _ := cell.MakeID("qwen1_5", "1xH100", "4k-1k", 2, "sim", l)
		if c.ID != want || c.Load.IDPart() != l.IDPart() {
			t.Errorf("%+v: cell %s (load %+v), want %s\n%s", l, c.ID, c.Load, want, b)
		}
		cfg, err := matrixCellConfig(CellOptions{Results: t.TempDir(), ConfigsDir: "../../configs"}, nil, nil, c, nil)
		if err != nil || cfg.Load.IDPart() != l.IDPart() || cfg.Native.RequestRate != l.RequestRate {
			t.Fatalf("%+v: cell config %v %+v", l, err, cfg)
		}
	}
}

// A group's open loop that this run's client cannot send is refused before the plan runs
// anything (plan, run, slurm submit), naming the group's key; matrix status, which sends
// nothing, reads the same matrix.
func TestMatrixLoadNeedsNativeClient(t *testing.T) {
	dir := t.TempDir()
	bench, _ := filepath.Abs("../../configs/fixed_4k_1k_qwen1_5.yaml")
	body := "version: 1\ntasks:\n  4k-1k: {config: \"" + bench + "\"}\ndefaults: {backends: [sglang]}\ngroups:\n  sweep: {models: [qwen1_5], hardware: [1xH100], tasks: {4k-1k: [32]}, rates: [1, 2]}\n"
	p := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	o := MatrixOptions{Matrix: p, ConfigsDir: "../../configs", ResultsFlag: t.TempDir()}
	_, mx, err := loadMatrix(o)
	if err != nil {
		t.Fatal(err)
	}
	err = checkMatrixLoads(o.Cell, mx)
	if err == nil || !strings.Contains(err.Error(), `key "groups.sweep.rates"`) || !strings.Contains(err.Error(), "--client native") {
		t.Errorf("sglang sweep with the runner client: %v", err)
	}
	o.Cell.Client = cell.ClientNative
	if err := checkMatrixLoads(o.Cell, mx); err != nil {
		t.Errorf("with --client native: %v", err)
	}
	o.Cell.PromptStyle = "upstream"
	mx.Cells[0].Load.SLO = "ttft=1s"
	if err := checkMatrixLoads(o.Cell, mx); err == nil || !strings.Contains(err.Error(), `key "groups.sweep.slo"`) {
		t.Errorf("slo with upstream prompts: %v", err)
	}
	var out strings.Builder
	if err := MatrixStatus(MatrixStatusRequest{Matrix: MatrixOptions{Matrix: p, ConfigsDir: "../../configs", ResultsFlag: o.ResultsFlag, Format: "markdown"}, Out: &out}); err != nil {
		t.Errorf("matrix status of the sweep matrix: %v", err)
	}
	if !strings.Contains(out.String(), "sglang · rates1-2") {
		t.Errorf("status does not show the sweep's cells apart:\n%s", out.String())
	}
}
