package profile

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// baseURL is scheme://host of the API URL, where the control endpoints live.
func baseURL(apiURL string) string {
	u, _ := url.Parse(apiURL)
	return u.Scheme + "://" + u.Host
}

func (o *Options) httpClient() *http.Client {
	if o.HTTPClient != nil {
		return o.HTTPClient
	}
	conns := o.BatchSize*2 + 4 // waves can hold 1.5× the batch
	if o.RequestRate > 0 {
		// The open loop's in-flight count follows the server's latency, not the batch size;
		// keep enough idle connections that a busy second does not redial every request.
		conns = max(conns, 256)
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil, // a benchmark measures the server, not a proxy in between
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true, // gzip would batch SSE chunks and skew ITL
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      32 << 10,
	}}
}

// prewarm opens n keep-alive connections to the server before anything is timed, so the
// first wave's TTFT does not include n simultaneous TCP handshakes (at batch 128 that added
// ~10 ms to the mean TTFT on a 2-core client). Failures are ignored: the run reports them.
func prewarm(ctx context.Context, hc *http.Client, base string, n int) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
			if err != nil {
				return
			}
			if resp, err := hc.Do(req); err == nil {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}

// schedule sends body(i) into reqs[i], for every i of reqs, under o.Schedule and returns how
// many were sent. Sending stops when ctx is cancelled; requests already in flight get
// DrainTimeout more.
func schedule(ctx context.Context, o *Options, st *streamer, body func(i int) []byte, reqs []RequestResult, prog *progress) int {
	n := len(reqs)
	// In-flight requests must outlive ctx by the drain grace, so they hang off a context
	// that ctx's cancellation reaches only after DrainTimeout.
	reqBase, cancelReqs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelReqs()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(o.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelReqs()
		case <-reqBase.Done():
		}
	})
	defer stopDrain()

	arrivals := o.pacer().Arrivals(n)
	begin := time.Now()
	var wg sync.WaitGroup
	launch := func(i int, done func()) {
		wg.Add(1)
		if prog != nil {
			prog.inflight.Add(1)
		}
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeoutCause(reqBase, o.RequestTimeout,
				fail(KindRequestTimeout, "no complete response within %s (--request-timeout)", o.RequestTimeout))
			st.do(rctx, body(i), &reqs[i])
			cancel()
			reqs[i].StartS = reqs[i].start.Sub(begin).Seconds()
			if prog != nil {
				prog.inflight.Add(-1)
				if reqs[i].Success {
					prog.done.Add(1)
				} else {
					prog.failed.Add(1)
				}
			}
			done()
		}()
	}
	// waitArrival holds request i until its arrival time; false when ctx ended first.
	waitArrival := func(i int) bool {
		if arrivals == nil {
			return ctx.Err() == nil
		}
		d := time.Until(begin.Add(arrivals[i]))
		if d <= 0 {
			return ctx.Err() == nil
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}

	sent := 0
	switch o.Schedule {
	case ScheduleWaves:
	waves:
		for start := 0; start < n; start += o.BatchSize {
			end := min(start+o.BatchSize, n)
			finished := make(chan struct{}, end-start)
			for i := start; i < end; i++ {
				if !waitArrival(i) {
					break waves
				}
				launch(i, func() { finished <- struct{}{} })
				sent++
			}
			// The runner waits for half the wave, at least one (its batch-1 fix).
			for range max(1, (end-start)/2) {
				select {
				case <-finished:
				case <-ctx.Done():
					break waves
				}
			}
		}
	default:
		// The closed loop holds BatchSize in flight. The open loop sends on its timetable
		// whatever is in flight: a server that cannot keep up queues the requests itself,
		// and their TTFT shows the wait. Holding them back here would start their clocks
		// late and hide the overload (MaxConcurrency caps it only when asked).
		limit := o.BatchSize
		if arrivals != nil {
			limit = o.MaxConcurrency
			if limit <= 0 {
				limit = n
			}
		}
		slots := make(chan struct{}, max(limit, 1))
	loop:
		for i := range n {
			if !waitArrival(i) {
				break
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				break loop
			}
			if ctx.Err() != nil { // a free slot and a cancel at once: do not send
				<-slots
				break
			}
			launch(i, func() { <-slots })
			sent++
		}
	}
	wg.Wait()
	return sent
}
