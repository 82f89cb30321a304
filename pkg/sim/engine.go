package sim

import (
	"context"
	"sync/atomic"
	"time"
)

// request is one prompt being served. The scheduler goroutine owns every field except
// generated and gone, which the HTTP handler reads and sets.
type request struct {
	id        string
	seq       uint64
	prompt    int
	maxTokens int
	// notify is shared by the prompts of one HTTP request; the scheduler never blocks on it.
	notify chan struct{}

	generated atomic.Int64 // tokens produced so far
	gone      atomic.Bool  // the client went away; drop at the next pass boundary

	deadline time.Time // first-token time while in a prefill pass
	emitted  bool
}

func (r *request) publish(n int64) {
	r.generated.Store(n)
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// timing turns a pass into its wall duration: the roofline (or the --sim-tpot/--sim-ttft
// override) times TimeScale.
type timing struct {
	cfg Config
}

func (t timing) scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * t.cfg.TimeScale)
}

func (t timing) prefill(prompts []int) time.Duration {
	if t.cfg.TTFT > 0 {
		return t.scale(t.cfg.TTFT)
	}
	return t.scale(PrefillCost(t.cfg.Model, prompts).Duration(t.cfg.Model, t.cfg.Hardware, t.cfg.TP))
}

func (t timing) decode(batch int, kvTokens int) time.Duration {
	if t.cfg.TPOT > 0 {
		return t.scale(t.cfg.TPOT)
	}
	return t.scale(DecodeCost(t.cfg.Model, batch, float64(kvTokens)).Duration(t.cfg.Model, t.cfg.Hardware, t.cfg.TP))
}

// maxLag is how far the scheduler may fall behind its absolute deadlines before it gives
// up catching up: beyond this (a stopped process, an overloaded machine) it re-bases on
// the clock instead of firing a burst of back-to-back passes.
const maxLag = 20 * time.Millisecond

// emitSlack groups first tokens whose deadlines are this close into one wake-up.
const emitSlack = 100 * time.Microsecond

// prefillPass is a prefill in flight.
type prefillPass struct {
	start   time.Time
	members []*request
	prompts []int
	dur     time.Duration // modelled duration for all members' tokens
	out     int           // members whose first token is out
}

// engine is the continuous-batching scheduler: one goroutine runs prefill and decode
// passes back to back on absolute deadlines, so the timing does not drift by the
// scheduling overhead of each pass.
type engine struct {
	cfg    Config
	tm     timing
	rec    *recorder
	gpuRaw string
	submit chan *request
	passID int
}

func newEngine(cfg Config, rec *recorder) *engine {
	return &engine{
		cfg:    cfg,
		tm:     timing{cfg},
		rec:    rec,
		gpuRaw: GPURawType(cfg.Hardware),
		submit: make(chan *request, 256),
	}
}

func (e *engine) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var (
		waiting, running []*request
		pf               *prefillPass
		decoding         bool
		passStart        time.Time
		passEnd          time.Time
		lastEnd          time.Time // planned end of the previous pass; zero when idle
	)
	for {
		if pf == nil && !decoding {
			waiting = dropGone(waiting)
			running = dropGone(running)
			now := time.Now()
			start := now
			if !lastEnd.IsZero() && now.Sub(lastEnd) < maxLag {
				start = lastEnd
			}
			switch {
			case len(waiting) > 0 && len(running) < e.cfg.MaxRunning:
				n := min(len(waiting), e.cfg.MaxRunning-len(running))
				pf = &prefillPass{start: start}
				for _, r := range waiting[:n] {
					pf.members = append(pf.members, r)
					pf.prompts = append(pf.prompts, r.prompt)
				}
				waiting = append(waiting[:0], waiting[n:]...)
				pf.dur = e.tm.prefill(pf.prompts)
				for _, r := range pf.members {
					r.deadline = start.Add(pf.dur)
				}
				timer.Reset(time.Until(start.Add(pf.dur)))
			case len(running) > 0:
				kv := 0
				for _, r := range running {
					kv += r.prompt + int(r.generated.Load())
				}
				decoding = true
				passStart = start
				passEnd = start.Add(e.tm.decode(len(running), kv))
				timer.Reset(time.Until(passEnd))
			default:
				lastEnd = time.Time{}
			}
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case r := <-e.submit:
			// A prefill whose first token is not out yet takes late arrivals and times
			// each from its own arrival. A real engine would make them wait for the next
			// pass, but then client send jitter at batch 32 would show up as up to twice
			// the TTFT, and this server is meant to show the floor.
			if pf != nil && pf.out == 0 && len(waiting) == 0 && len(running)+len(pf.members) < e.cfg.MaxRunning {
				pf.members = append(pf.members, r)
				pf.prompts = append(pf.prompts, r.prompt)
				pf.dur = e.tm.prefill(pf.prompts)
				r.deadline = time.Now().Add(pf.dur)
			} else {
				waiting = append(waiting, r)
			}
		case <-timer.C:
			now := time.Now()
			if pf != nil {
				next := time.Time{}
				for _, r := range pf.members {
					if r.emitted {
						continue
					}
					if !r.deadline.After(now.Add(emitSlack)) {
						r.emitted = true
						pf.out++
						r.publish(1)
						continue
					}
					if next.IsZero() || r.deadline.Before(next) {
						next = r.deadline
					}
				}
				if !next.IsZero() {
					timer.Reset(time.Until(next))
					continue
				}
				end := pf.start
				for _, r := range pf.members {
					if r.deadline.After(end) {
						end = r.deadline
					}
					if r.maxTokens > 1 && !r.gone.Load() {
						running = append(running, r)
					}
				}
				e.recordPrefill(pf)
				lastEnd = end
				pf = nil
				continue
			}
			if decoding {
				var ids []string
				recOn := e.rec.on()
				seqSum := 0
				for _, r := range running {
					seqSum += r.prompt + int(r.generated.Load()) + 1
					if recOn {
						ids = append(ids, r.id)
					}
				}
				if recOn {
					e.passID++
					b := len(running)
					e.rec.add(Record{
						ForwardPassID:    e.passID,
						BatchSize:        b,
						Latency:          passEnd.Sub(passStart).Seconds(),
						SeqLensSum:       seqSum,
						ForwardMode:      "decode",
						ExpertActivation: ExpectedActiveExperts(e.cfg.Model.Experts, e.cfg.Model.TopK, float64(b)),
						GPUNum:           e.cfg.TP,
						GPURawType:       e.gpuRaw,
						ScheduledTokens:  b,
						ReqIDs:           ids,
					})
				} else {
					e.passID++
				}
				// Tokens go out only after the pass is recorded: a client that sees its last
				// token may stop the recording at once, and the pass must already be in.
				for _, r := range running {
					r.publish(r.generated.Load() + 1)
				}
				keep := running[:0]
				for _, r := range running {
					if int(r.generated.Load()) < r.maxTokens && !r.gone.Load() {
						keep = append(keep, r)
					}
				}
				clear(running[len(keep):])
				running = keep
				lastEnd = passEnd
				decoding = false
			}
		}
	}
}

func (e *engine) recordPrefill(pf *prefillPass) {
	e.passID++
	if !e.rec.on() {
		return
	}
	tokens := 0
	info := make([]ReqInfo, len(pf.members))
	for i, r := range pf.members {
		tokens += r.prompt
		info[i] = ReqInfo{ReqID: r.id, ExtendLen: r.prompt, TotalLen: r.prompt, PromptLen: r.prompt, IsLastChunk: true}
	}
	e.rec.add(Record{
		ForwardPassID:    e.passID,
		BatchSize:        len(pf.members),
		Latency:          pf.dur.Seconds(),
		SeqLensSum:       tokens,
		ForwardMode:      "prefill",
		ExpertActivation: ExpectedActiveExperts(e.cfg.Model.Experts, e.cfg.Model.TopK, float64(tokens)),
		GPUNum:           e.cfg.TP,
		GPURawType:       e.gpuRaw,
		ScheduledTokens:  tokens,
		PerReqInfo:       info,
	})
}

func dropGone(rs []*request) []*request {
	keep := rs[:0]
	for _, r := range rs {
		if !r.gone.Load() {
			keep = append(keep, r)
		}
	}
	clear(rs[len(keep):])
	return keep
}
