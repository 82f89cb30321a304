package app

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moecapd/moecapd/pkg/matrix"
)

// A submitted one-cell job carries --repeats into its matrix, and the matrix into the cell.
func TestOneCellMatrixRepeats(t *testing.T) {
	bench, _ := filepath.Abs("../../configs/fixed_4k_1k_qwen1_5.yaml")
	for _, n := range []int{0, 3} {
		b, err := OneCellMatrix(MatrixOptions{ConfigsDir: "../../configs"}, OneCell{Backend: "sim", Config: bench, BatchSize: 2, Repeats: n})
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "m.yaml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		tables, err := loadTables("../../configs", "")
		if err != nil {
			t.Fatal(err)
		}
		mx, err := matrix.Load(p, tables)
		if err != nil || len(mx.Cells) != 1 || mx.Cells[0].Repeats != n {
			t.Fatalf("repeats %d: %v, %+v\n%s", n, err, mx, b)
		}
		cfg, err := matrixCellConfig(CellOptions{Results: t.TempDir(), ConfigsDir: "../../configs"}, nil, nil, mx.Cells[0], nil)
		if err != nil || cfg.Repeats != n {
			t.Fatalf("cell config repeats: %v %+v", err, cfg)
		}
	}
}
