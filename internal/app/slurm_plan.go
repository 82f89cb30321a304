package app

import (
	"context"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// PlanSlurmCells is slurm submit's plan for another front end (moecapd serve --executor
// slurm, which then calls SubmitArrays): the cells of o.Matrix (o.Only, o.IncludeDone,
// o.NoSkip) to run, each planned as on a node of its own hardware, less those the results
// root holds as ok or infeasible and those Slurm holds queued or running for this root. A
// failed result is planned again, as slurm submit does.
func PlanSlurmCells(ctx context.Context, o MatrixOptions, cli *slurm.CLI, log *zap.Logger) ([]*matrix.Cell, error) {
	tables, mx, err := loadMatrix(o)
	if err != nil {
		return nil, err
	}
	if err := checkMatrixLoads(o.Cell, mx); err != nil {
		return nil, err
	}
	s := &slurmSubmit{tables: tables, mx: mx, arrays: SlurmArrayOptions{CLI: cli}}
	if s.plan, err = slurmPlanOptions(o.IncludeDone, o.NoSkip, o.Only); err != nil {
		return nil, err
	}
	results, _, err := readResults(o.ResultsFlag, log)
	if err != nil {
		return nil, err
	}
	rec, err := slurm.ReadRecord(o.ResultsFlag)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	pick, err := pickSlurmCells(ctx, s, planPerHardware(mx, tables, results, s.plan), rec, log)
	return pick.cells, err
}
