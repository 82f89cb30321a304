package profile

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Progress is where a bench's measured requests stand: Done counts the finished ones
// (failed included), ETA is absent (0) until a rate is known.
type Progress struct {
	Done, Failed, InFlight, Total int
	TokensPerS                    float64
	Elapsed, ETA                  time.Duration
}

// progressTick is how often OnProgress hears from a running bench.
const progressTick = time.Second

// progress reports a running bench: a line redrawn in place on a terminal, or a log line
// every interval otherwise (a log file full of carriage returns helps nobody at 3 a.m.).
type progress struct {
	done, failed, inflight atomic.Int64
	chunks                 *atomic.Int64
	total                  int
	start                  time.Time
	stopCh                 chan struct{}
	wg                     sync.WaitGroup
	o                      *Options
}

func startProgress(o *Options, chunks *atomic.Int64) *progress {
	p := &progress{chunks: chunks, total: o.NumSamples, start: time.Now(), stopCh: make(chan struct{}), o: o}
	every := o.ProgressInterval
	if every <= 0 {
		every = 10 * time.Second
		if o.Progress != nil {
			every = 250 * time.Millisecond
		}
	}
	tick := every
	if o.OnProgress != nil && tick > progressTick {
		tick = progressTick
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(tick)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case now := <-t.C:
				// The display or log line keeps its own interval; OnProgress hears every tick.
				show := now.Sub(last) >= every-tick/2
				if show {
					last = now
				}
				p.report(false, show)
			case <-p.stopCh:
				p.report(true, true)
				return
			}
		}
	}()
	return p
}

func (p *progress) stop() {
	if p == nil {
		return
	}
	close(p.stopCh)
	p.wg.Wait()
}

func (p *progress) report(final, show bool) {
	el := time.Since(p.start)
	done, failed, inflight, chunks := p.done.Load(), p.failed.Load(), p.inflight.Load(), p.chunks.Load()
	rate := 0.0
	if el > 0 {
		rate = float64(chunks) / el.Seconds()
	}
	// ETA from the token rate so far against the tokens the bench will stream (every
	// request's target output); without a target, from the pace of finished requests.
	eta := "ETA –"
	var etaD time.Duration
	n := done + failed
	switch want := float64(p.total) * float64(p.o.OutputTokens); {
	case int(n) >= p.total:
		eta = "done"
	case want > 0 && rate > 0 && float64(chunks) < want:
		etaD = time.Duration((want - float64(chunks)) / rate * float64(time.Second)).Round(time.Second)
	case n > 0:
		etaD = time.Duration(float64(el) / float64(n) * float64(int64(p.total)-n)).Round(time.Second)
	}
	if etaD > 0 {
		eta = "ETA " + etaD.String()
	}
	if f := p.o.OnProgress; f != nil {
		f(Progress{Done: int(n), Failed: int(failed), InFlight: int(inflight), Total: p.total, TokensPerS: rate, Elapsed: el, ETA: etaD})
	}
	if !show {
		return
	}
	if w := p.o.Progress; w != nil {
		end := ""
		if final {
			end = "\n"
		}
		fmt.Fprintf(w, "\r\x1b[Kbench: %d/%d requests done (%d failed), %d in flight, %.0f tok/s, %s elapsed, %s%s",
			done+failed, p.total, failed, inflight, rate, el.Round(time.Second), eta, end)
		return
	}
	if final {
		return // Run logs the outcome itself
	}
	etaF := zap.Skip()
	if etaD > 0 {
		etaF = zap.Duration("eta", etaD)
	}
	p.o.log().Info("bench progress", zap.Int64("done", done+failed), zap.Int("total", p.total),
		zap.Int64("failed", failed), zap.Int64("in_flight", inflight), zap.Float64("tok_s", rate),
		zap.Duration("elapsed", el.Round(time.Second)), etaF)
}
