package app

import (
	"context"
	"fmt"
	"regexp"

	"go.uber.org/zap"

	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/matrix"
	"github.com/moecapd/moecapd/pkg/slurm"
)

// PlanSlurmCells is slurm submit's plan for another front end (moecapd serve --executor
// slurm): the cells of o.Matrix (o.Only, o.IncludeDone, o.NoSkip) to run, each planned as
// on a node of its own hardware, less those the results root holds as ok or infeasible and
// those Slurm holds queued or running for this root. A failed result is planned again, as
// slurm submit does.
func PlanSlurmCells(ctx context.Context, o MatrixOptions, cli *slurm.CLI, log *zap.Logger) ([]*matrix.Cell, error) {
	tables, mx, err := loadMatrix(o)
	if err != nil {
		return nil, err
	}
	opts := matrix.Options{IncludeDone: o.IncludeDone, NoSkip: o.NoSkip, RedoFailed: true}
	if re := o.Only; re != "" {
		rx, err := regexp.Compile(re)
		if err != nil {
			return nil, exitcode.Usagef("--only %q: %v", re, err)
		}
		opts.Only = rx.MatchString
	}
	results, _, err := readResults(o.ResultsFlag, log)
	if err != nil {
		return nil, err
	}
	rec, err := slurm.ReadRecord(o.ResultsFlag)
	if err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	queue, err := cli.Queue(ctx, rec.JobIDs())
	if err != nil {
		return nil, slurmErr(fmt.Errorf("ask Slurm which of this root's tasks are queued: %w", err))
	}
	latest := rec.Latest()
	planned := map[string]bool{}
	run := map[string]bool{}
	for _, c := range mx.Cells {
		if planned[c.Hardware] {
			continue
		}
		planned[c.Hardware] = true
		node, _ := matrix.ParseNode(c.Hardware)
		for _, it := range matrix.Plan(mx, tables, node, results, opts) {
			if it.Cell.Hardware == c.Hardware && it.Action == matrix.ActRun {
				run[it.Cell.ID] = true
			}
		}
	}
	var out []*matrix.Cell
	for _, c := range mx.Cells {
		if !run[c.ID] {
			continue
		}
		if a, ok := latest[c.ID]; ok {
			if t, ok := queue[a.Key()]; ok && t.Active() {
				continue
			}
		}
		out = append(out, c)
	}
	return out, nil
}
