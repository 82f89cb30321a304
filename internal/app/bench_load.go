package app

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// benchRatesDir holds bench's per-rate output dirs: <output_dir>/rates/<k>/ for the k-th
// rate of a sweep, each with the runner's files and moecapd's bench file.
const benchRatesDir = "rates"

// ratePoint is one rate of a sweep and what it measured.
type ratePoint struct {
	rate float64
	m    *profile.Metrics
}

// benchLoad runs one dataset's bench: once (the closed loop, or --request-rate), or a rate
// sweep (--rates) and then --find-max-rate's search, every rate a full bench against the
// same server with its files under <output_dir>/rates/<k>/, and a table of rate against
// latency and goodput at the end.
func benchLoad(ctx context.Context, req BenchRequest, o profile.Options) error {
	l := req.Load
	if len(l.Rates) == 0 && !l.FindMaxRate {
		_, err := benchOnce(ctx, req.Out, o)
		return err
	}
	var pts []ratePoint
	probe := func(rate float64) (bool, error) {
		ro := o
		ro.RequestRate = rate
		ro.OutputDir = filepath.Join(o.OutputDir, benchRatesDir, strconv.Itoa(len(pts)+1))
		if len(pts) > 0 {
			ro.Warmup = 0 // the first rate warmed the server
		}
		res, err := benchOnce(ctx, req.Out, ro)
		if res != nil {
			pts = append(pts, ratePoint{rate, &res.Metrics})
		}
		if err != nil {
			return false, err
		}
		return res.Metrics.Goodput != nil && res.Metrics.Goodput.Met, nil
	}
	defer func() { printRateTable(req.Out, o.Dataset, pts) }()
	var known []profile.RateStep
	for _, r := range l.Rates {
		met, err := probe(r)
		if err != nil {
			return err
		}
		known = append(known, profile.RateStep{Rate: r, Met: met})
	}
	if !l.FindMaxRate {
		return nil
	}
	start := l.RequestRate
	if start <= 0 {
		start = cell.DefaultFindStart
	}
	best, steps, err := profile.FindMaxRate(profile.MaxRateSearch{Start: start, Steps: l.MaxRateSteps, Known: known}, probe)
	if err != nil {
		return err
	}
	if best > 0 {
		fmt.Fprintf(req.Out, "Highest rate meeting the SLO (%s): %g req/s after %d benches\n", o.SLO, best, len(steps))
	} else {
		fmt.Fprintf(req.Out, "No rate tried met the SLO (%s) in %d benches\n", o.SLO, len(steps))
	}
	return nil
}

// printRateTable prints one line per rate: mean TTFT and TPOT, and goodput when an SLO was
// given.
func printRateTable(w io.Writer, dataset string, pts []ratePoint) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "=== Rate sweep: %s ===\n", dataset)
	fmt.Fprintln(tw, "rate (req/s)\tachieved (req/s)\tmean TTFT (ms)\tmean TPOT (ms)\tgood share\tgoodput (req/s)\tmeets SLO")
	for _, p := range pts {
		m := p.m
		share, gp, met := "-", "-", "-"
		if g := m.Goodput; g != nil {
			share = strconv.FormatFloat(g.Share, 'f', 3, 64)
			gp = profile.FormatMs(g.RequestsPerS, 2)
			met = strconv.FormatBool(g.Met)
		}
		fmt.Fprintf(tw, "%g\t%.2f\t%s\t%s\t%s\t%s\t%s\n", p.rate, m.RequestThroughput, profile.FormatMs(m.MeanTTFTMs, 1), profile.FormatMs(m.MeanTPOTMs, 2), share, gp, met)
	}
	tw.Flush()
}
