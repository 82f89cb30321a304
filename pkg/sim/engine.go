package sim

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/moecapd/moecapd/pkg/passcost"
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
	admitted bool // holds KV cache reservation (engine.reserve)
}

func (r *request) publish(n int64) {
	r.generated.Store(n)
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// timing is the pass-cost model (pkg/passcost, the one the floors use) applied to the
// simulated model and hardware. Each pass has a model duration, what the real hardware
// needs at peak (or the --sim-tpot/--sim-ttft override), which is what the records carry,
// and a wall duration, the model duration times TimeScale, which is how long the sim
// really waits. Scaling the clock never changes the recorded latencies.
type timing struct {
	cfg   Config
	peaks passcost.Peaks
}

func newTiming(cfg Config) timing {
	return timing{cfg: cfg, peaks: passcost.PeaksOf(cfg.Model, cfg.Hardware)}
}

func (t timing) wall(model time.Duration) time.Duration {
	return time.Duration(float64(model) * t.cfg.TimeScale)
}

// activation is the routed experts per MoE layer a pass over tokens touches (uniform routing).
func (t timing) activation(tokens float64) float64 {
	return passcost.TouchedExperts(t.cfg.Model.Experts, t.cfg.Model.TopK, tokens)
}

// prefill is the model duration of one prefill pass over whole prompts.
func (t timing) prefill(prompts []int) time.Duration {
	if t.cfg.TTFT > 0 {
		return t.cfg.TTFT
	}
	tokens := 0
	for _, p := range prompts {
		tokens += p
	}
	w := passcost.Prefill(t.cfg.Model, t.cfg.TP, passcost.Prompts(prompts...), t.activation(float64(tokens)))
	return seconds(passcost.TimeOf(w, t.peaks).Seconds)
}

// decode is the model duration of one decode step of batch sequences whose contexts sum
// to ctxSum positions.
func (t timing) decode(batch, ctxSum int) time.Duration {
	if t.cfg.TPOT > 0 {
		return t.cfg.TPOT
	}
	w := passcost.Decode(t.cfg.Model, t.cfg.TP, float64(batch), float64(ctxSum), t.activation(float64(batch)))
	return seconds(passcost.TimeOf(w, t.peaks).Seconds)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// emitSlack groups first tokens whose deadlines are this close into one wake-up, taken at
// the latest of them: a token is never published before its deadline.
const emitSlack = 100 * time.Microsecond

// prefillPass is a prefill in flight.
type prefillPass struct {
	start   time.Time
	members []*request
	prompts []int
	model   time.Duration // model duration of the pass over all members' prompts (recorded)
	dur     time.Duration // wall duration (model × time scale)
	out     int           // members whose first token is out
}

// engine is the continuous-batching scheduler: one goroutine runs prefill and decode
// passes back to back. A pass starts when the scheduler gets to it and lasts at least its
// roofline time: a pass that starts late ends late (the scheduling overhead adds to the
// wall time), never short to catch up, so no client latency beats the floor.
type engine struct {
	cfg    Config
	tm     timing
	rec    *recorder
	gpuRaw string
	submit chan *request
	passID int
	// kvCap is the KV cache that fits beside the weights (passcost.MemoryOf), per GPU;
	// reserved is what admitted requests hold: prompt + max_tokens each, as a server that
	// never preempts must reserve. A request is admitted only while it fits, so a batch
	// the memory cannot hold runs under-batched, exactly as passcost.Feasibility predicts.
	kvCap    float64 // bytes per GPU
	reserved float64
	admitted int // requests holding a reservation
	// stats are what /metrics serves, written by the engine loop, read by handlers.
	stats engineStats
}

// engineStats are the engine's gauges and counters for /metrics.
type engineStats struct {
	running, waiting atomic.Int64
	kvUsage          atomic.Uint64 // math.Float64bits of reserved/kvCap
	promptTokens     atomic.Int64
	genTokens        atomic.Int64
	admitted         atomic.Int64 // requests admitted to a prefill (the metrics-lie fault's "preemptions")
}

// gauges publishes the scheduler's state: requests in a pass or decoding, queued, and the
// share of the KV cache reserved.
func (e *engine) gauges(waiting, running int) {
	e.stats.waiting.Store(int64(waiting))
	e.stats.running.Store(int64(running))
	u := 0.0
	if e.kvCap > 0 && !math.IsInf(e.kvCap, 1) {
		u = e.reserved / e.kvCap
	}
	e.stats.kvUsage.Store(math.Float64bits(u))
}

func newEngine(cfg Config, rec *recorder) *engine {
	return &engine{
		cfg:    cfg,
		tm:     newTiming(cfg),
		rec:    rec,
		kvCap:  kvCapacity(cfg),
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
		passEnd          time.Time
		decodeCtx        int           // context positions of the decode pass in flight
		decodeModel      time.Duration // its model duration (recorded)
	)
	for {
		if pf == nil && !decoding {
			waiting = e.dropGone(waiting)
			running = e.dropGone(running)
			start := time.Now()
			switch {
			case len(waiting) > 0 && len(running) < e.cfg.MaxRunning && e.fits(waiting[0]):
				n := 0
				for n < len(waiting) && len(running)+n < e.cfg.MaxRunning && e.fits(waiting[n]) {
					e.reserve(waiting[n])
					n++
				}
				pf = &prefillPass{start: start}
				for _, r := range waiting[:n] {
					pf.members = append(pf.members, r)
					pf.prompts = append(pf.prompts, r.prompt)
					e.stats.promptTokens.Add(int64(r.prompt))
					e.stats.admitted.Add(1)
				}
				waiting = append(waiting[:0], waiting[n:]...)
				pf.model = e.tm.prefill(pf.prompts)
				pf.dur = e.tm.wall(pf.model)
				for _, r := range pf.members {
					r.deadline = start.Add(pf.dur)
				}
				timer.Reset(time.Until(start.Add(pf.dur)))
			case len(running) > 0:
				// Each sequence attends to its prompt and every token generated so far, the
				// one being fed in included (SGLang's seq_lens).
				decodeCtx = 0
				for _, r := range running {
					decodeCtx += r.prompt + int(r.generated.Load())
				}
				decoding = true
				decodeModel = e.tm.decode(len(running), decodeCtx)
				passEnd = start.Add(e.tm.wall(decodeModel))
				timer.Reset(time.Until(passEnd))
			}
		}
		inPass := len(running)
		if pf != nil {
			inPass += len(pf.members)
		}
		e.gauges(len(waiting), inPass)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case r := <-e.submit:
			// A prefill whose first token is not out yet takes late arrivals: the pass is
			// planned again as if it had started with all of them now, and every member gets
			// its first token when the whole wave is prefilled (a request waits for the
			// others of its pass, as the TTFT floor says). A real engine would make a late
			// arrival wait for the next pass, but then client send jitter at batch 32 would
			// show up as up to twice the TTFT, and this server is meant to show the floor.
			if pf != nil && pf.out == 0 && len(waiting) == 0 && len(running)+len(pf.members) < e.cfg.MaxRunning && e.fits(r) {
				e.reserve(r)
				pf.members = append(pf.members, r)
				pf.prompts = append(pf.prompts, r.prompt)
				e.stats.promptTokens.Add(int64(r.prompt))
				e.stats.admitted.Add(1)
				pf.model = e.tm.prefill(pf.prompts)
				pf.dur = e.tm.wall(pf.model)
				pf.start = time.Now()
				for _, m := range pf.members {
					m.deadline = pf.start.Add(pf.dur)
				}
				timer.Reset(time.Until(pf.start.Add(pf.dur)))
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
					if !r.deadline.After(now) {
						r.emitted = true
						pf.out++
						// Counted before the client can see it: a scrape right after the
						// client's last token has every token (as the real servers count).
						e.stats.genTokens.Add(1)
						r.publish(1)
						continue
					}
					if next.IsZero() || r.deadline.Before(next) {
						next = r.deadline
					}
				}
				if !next.IsZero() {
					// Wake at the latest deadline within emitSlack of the next one.
					wake := next
					for _, r := range pf.members {
						if !r.emitted && r.deadline.After(wake) && !r.deadline.After(next.Add(emitSlack)) {
							wake = r.deadline
						}
					}
					timer.Reset(time.Until(wake))
					continue
				}
				for _, r := range pf.members {
					if r.maxTokens > 1 && !r.gone.Load() {
						running = append(running, r)
					} else {
						e.release(r)
					}
				}
				e.recordPrefill(pf)
				pf = nil
				continue
			}
			if decoding {
				var ids []string
				recOn := e.rec.on()
				for _, r := range running {
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
						Latency:          decodeModel.Seconds(),
						SeqLensSum:       decodeCtx,
						ForwardMode:      "decode",
						ExpertActivation: e.tm.activation(float64(b)),
						GPUNum:           e.cfg.TP,
						GPURawType:       e.gpuRaw,
						ScheduledTokens:  b,
						ReqIDs:           ids,
					})
				} else {
					e.passID++
				}
				// Tokens go out only after the pass is recorded and counted: a client that
				// sees its last token may stop the recording or scrape /metrics at once, and
				// the pass must already be in both.
				e.stats.genTokens.Add(int64(len(running)))
				for _, r := range running {
					r.publish(r.generated.Load() + 1)
				}
				keep := running[:0]
				for _, r := range running {
					if int(r.generated.Load()) < r.maxTokens && !r.gone.Load() {
						keep = append(keep, r)
					} else {
						e.release(r)
					}
				}
				clear(running[len(keep):])
				running = keep
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
		Latency:          pf.model.Seconds(),
		SeqLensSum:       tokens,
		ForwardMode:      "prefill",
		ExpertActivation: e.tm.activation(float64(tokens)),
		GPUNum:           e.cfg.TP,
		GPURawType:       e.gpuRaw,
		ScheduledTokens:  tokens,
		PerReqInfo:       info,
	})
}

// kvCapacity is the KV cache's bytes per GPU; a model without a description has no memory
// model.
func kvCapacity(cfg Config) float64 {
	if cfg.Undescribed != "" {
		return math.Inf(1)
	}
	return passcost.MemoryOf(cfg.Model, cfg.Hardware, cfg.TP).KVFreeBytes
}

// kvNeed is the KV cache a request holds at its longest: prompt + max_tokens positions.
func (e *engine) kvNeed(prompt, maxTokens int) float64 {
	if e.cfg.Undescribed != "" {
		return 0
	}
	return passcost.KVBytesPerSeqPerGPU(e.cfg.Model, e.cfg.TP, prompt+maxTokens)
}

// fits reports whether r's KV cache (prompt + max_tokens) fits beside what admitted
// requests hold.
func (e *engine) fits(r *request) bool {
	return e.reserved+e.kvNeed(r.prompt, r.maxTokens) <= e.kvCap
}

func (e *engine) reserve(r *request) {
	e.reserved += e.kvNeed(r.prompt, r.maxTokens)
	e.admitted++
	r.admitted = true
}

func (e *engine) release(r *request) {
	if r.admitted {
		e.reserved -= e.kvNeed(r.prompt, r.maxTokens)
		r.admitted = false
		if e.admitted--; e.admitted == 0 {
			e.reserved = 0 // no drift from float sums once nothing is admitted
		}
	}
}

// Admissible reports why a request of prompt tokens and maxTokens can never be served:
// its KV cache alone does not fit beside the weights (passcost.Feasibility's "does not
// fit at all"). The message carries vLLM's wording, which log watchers read as
// out-of-memory.
func (e *engine) admissible(prompt, maxTokens int) error {
	if need := e.kvNeed(prompt, maxTokens); need > e.kvCap {
		return fmt.Errorf("the request needs %d tokens of KV cache (%.2f GB per GPU), which is larger than the maximum number of tokens that can be stored in KV cache (%.2f GB per GPU beside the weights of %s on %d×%s): not enough GPU memory for one request",
			prompt+maxTokens, need/1e9, max(e.kvCap, 0)/1e9, e.cfg.Model.Key, e.cfg.TP, e.cfg.Hardware.Family)
	}
	return nil
}

func (e *engine) dropGone(rs []*request) []*request {
	keep := rs[:0]
	for _, r := range rs {
		if !r.gone.Load() {
			keep = append(keep, r)
		} else {
			e.release(r)
		}
	}
	clear(rs[len(keep):])
	return keep
}
