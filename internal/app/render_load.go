package app

import (
	"fmt"
	"io"
	"strconv"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/profile"
)

// printLoad is WriteCellSummary's open-loop part: the asked rate and goodput of a single
// bench, or one line per rate of a sweep and what --find-max-rate found.
func printLoad(w io.Writer, m *cell.Manifest) {
	line := func(head string, x *profile.Metrics) {
		fmt.Fprintf(w, "%s  %s req/s achieved  TTFT mean %s ms  TPOT mean %s ms%s\n", head,
			strconv.FormatFloat(RoundHuman(x.RequestThroughput), 'f', -1, 64),
			profile.FormatMs(x.MeanTTFTMs, 1), profile.FormatMs(x.MeanTPOTMs, 2), goodputText(x.Goodput))
	}
	if len(m.Rates) == 0 {
		if x := m.Metrics; x != nil && (x.RequestRate != nil || x.Goodput != nil) {
			head := "load     closed loop"
			if x.RequestRate != nil {
				head = "load     open loop at " + strconv.FormatFloat(*x.RequestRate, 'g', 4, 64) + " req/s"
			}
			line(head, x)
		}
		return
	}
	for _, p := range m.Rates {
		head := fmt.Sprintf("rate %-8s", strconv.FormatFloat(p.Rate, 'g', 4, 64))
		if p.Search {
			head += " (search)"
		}
		if p.Metrics == nil {
			fmt.Fprintf(w, "%s  no result\n", head)
			continue
		}
		line(head, p.Metrics)
	}
	if mr := m.MaxRate; mr != nil {
		found := "none met"
		if mr.Rate != nil {
			found = strconv.FormatFloat(*mr.Rate, 'g', 4, 64) + " req/s"
		}
		note := ""
		if mr.Note != "" {
			note = " (" + mr.Note + ")"
		}
		fmt.Fprintf(w, "max rate meeting %s: %s after %d searched benches%s\n", mr.SLO, found, len(mr.Steps), note)
	}
}

func goodputText(g *profile.Goodput) string {
	if g == nil {
		return ""
	}
	verdict := "meets SLO"
	if !g.Met {
		verdict = "misses SLO"
	}
	return fmt.Sprintf("  goodput %d/%d (%.0f%%, %s good req/s) %s", g.Good, g.Sent, 100*g.Share, profile.FormatMs(g.RequestsPerS, 2), verdict)
}
