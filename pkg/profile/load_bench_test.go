package profile

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// instantServer answers every completion at once with one streamed token and its usage:
// in process, so what a benchmark measures is the client's pacing and sending.
func instantServer(b *testing.B) string {
	b.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"text\":\" tok\",\"finish_reason\":null}]}\n\n"+
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":16,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n")
	})
	srv := httptest.NewServer(mux)
	b.Cleanup(srv.Close)
	return srv.URL + "/v1/completions"
}

// sendRate is the achieved sending rate of a run: requests after the first over the time
// from the first send to the last.
func sendRate(reqs []RequestResult) float64 {
	st := make([]float64, 0, len(reqs))
	for _, r := range reqs {
		st = append(st, r.StartS)
	}
	sort.Float64s(st)
	if len(st) < 2 || st[len(st)-1] <= st[0] {
		return 0
	}
	return float64(len(st)-1) / (st[len(st)-1] - st[0])
}

// BenchmarkOpenLoopPacer asks for 500 to 4,000 requests/s of evenly spaced arrivals (gamma
// shape 10⁴: gaps' CV 1%) for two seconds each against an in-process server that answers
// at once, and reports the sending rate achieved over the rate asked. The Poisson rows
// report it over the timetable's own rate (a Poisson sample's rate itself strays from the
// asked one by about 1/√n). Run with:
//
//	go test -run '^$' -bench OpenLoopPacer -benchtime 1x ./pkg/profile/
func BenchmarkOpenLoopPacer(b *testing.B) {
	url := instantServer(b)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "arrivals\tasked req/s\tscheduled req/s\tachieved req/s\tachieved/asked\tachieved/scheduled\tsend lateness p99 ms\tCPU µs/request (client+server)\tfailed\t")
	worst := 1.0
	for range b.N {
		for _, shape := range []float64{1e4, 1} {
			for _, rate := range []float64{500, 1000, 2000, 4000} {
				n := int(2 * rate)
				o := Options{APIURL: url, Model: "bench/model", Backend: "vllm", NoRecords: true,
					BatchSize: 1, NumSamples: n, InputTokens: 16, OutputTokens: 1, IgnoreEOS: true,
					Dataset: "random", ProgressInterval: time.Hour, RequestRate: rate, Burstiness: shape, Seed: 1,
					AllowedBadRequests: n} // a failed send is still a send: the table counts them
				c0 := cpuTime()
				res, err := Run(b.Context(), o)
				cpu := cpuTime() - c0
				if err != nil {
					b.Fatalf("%g req/s: %v", rate, err)
				}
				arr := o.pacer().Arrivals(n)
				late := make([]float64, 0, n)
				for i, r := range res.Requests {
					late = append(late, (r.StartS-arr[i].Seconds())*1000)
				}
				sched := float64(n-1) / arr[n-1].Seconds()
				got := sendRate(res.Requests)
				kind := "even (shape 1e4)"
				if shape == 1 {
					kind = "Poisson"
				} else if rate <= 2000 {
					worst = min(worst, got/rate)
				}
				fmt.Fprintf(tw, "%s\t%.0f\t%.1f\t%.1f\t%.4f\t%.4f\t%.2f\t%.0f\t%d\t\n", kind, rate, sched, got, got/rate, got/sched,
					Percentile(late, 99), float64(cpu.Microseconds())/float64(n), res.Metrics.Failed)
			}
		}
	}
	tw.Flush()
	b.ReportMetric(worst, "achieved/asked_min_to_2000")
}

// turnaround is the closed loop's own cost away from the run's edges: between the last of
// the first batch's sends and the last send every slot holds a request or is turning
// around (reading the end, freeing the slot, sending the next); the slots' idle time in
// that span (batch × span − the requests' time in flight inside it) over the sends in it
// is the mean time a slot spends between a request's end and its next send. steady is the
// rate that turnaround allows: batch ÷ (mean E2E latency + turnaround).
func turnaround(reqs []RequestResult, batch int) (turnMs, steady float64) {
	from, to := 0.0, 0.0
	for _, r := range reqs {
		if r.Index < batch {
			from = max(from, r.StartS)
		}
		to = max(to, r.StartS)
	}
	if to <= from {
		return 0, 0
	}
	var busy, e2el float64
	sends := 0
	for _, r := range reqs {
		end := r.StartS + r.E2ELMs/1000
		busy += max(0, min(end, to)-max(r.StartS, from))
		if r.StartS > from {
			sends++
		}
		e2el += r.E2ELMs
	}
	if sends == 0 {
		return 0, 0
	}
	turnMs = (float64(batch)*(to-from) - busy) / float64(sends) * 1000
	return turnMs, float64(batch) / ((e2el/float64(len(reqs)) + turnMs) / 1000)
}

// serverPace is the paced server's mean time per request (handler start to [DONE]
// flushed) since the last reset, and resets it; 0 when it served none.
func serverPace(b *testing.B, completionsURL string) time.Duration {
	b.Helper()
	resp, err := http.Get(strings.TrimSuffix(completionsURL, "/v1/completions") + "/stats?reset=1")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var n, ns int64
	if _, err := fmt.Fscan(resp.Body, &n, &ns); err != nil {
		b.Fatal(err)
	}
	if n == 0 {
		return 0
	}
	return time.Duration(ns / n)
}

// BenchmarkClosedLoopSaturation runs the closed loop against the paced SSE server (a child
// process: TTFT 10 ms, TPOT 2 ms, 32 tokens, so 72 ms a request whatever the batch), 50
// requests a slot, and reports the request rate achieved over the ideal batch ÷ 72 ms: what
// the client's own turnaround (read the end, free the slot, build and send the next
// request) costs the load. The server's own time per request is measured in the server
// (its timers' lateness is the server's, not the client's), and achieved/server-pace is the
// rate over batch ÷ that time: the client's share of the loss. The last columns split the
// loss further: the turnaround itself (turnaround, above) and the rate it and the measured
// E2E latency allow away from the run's ramp-up and drain. Run with:
//
//	go test -run '^$' -bench ClosedLoopSaturation -benchtime 1x ./pkg/profile/
func BenchmarkClosedLoopSaturation(b *testing.B) {
	const out, perSlot = 32, 50
	ttft, tpot := 10*time.Millisecond, 2*time.Millisecond
	per := ttft + (out-1)*tpot
	url, stop := startPacedServer(b, ttft, tpot)
	defer stop()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "batch\trequests\tideal req/s\tachieved req/s\tachieved/ideal\tserver ms/request\tachieved/server-pace\tmean E2EL ms\tturnaround ms\tsteady/ideal\t")
	last := 0.0
	for range b.N {
		for _, batch := range []int{8, 32, 128} {
			n := batch * perSlot
			o := Options{APIURL: url, Model: "bench/model", Backend: "vllm", NoRecords: true,
				BatchSize: batch, NumSamples: n, InputTokens: 16, OutputTokens: out, IgnoreEOS: true,
				Dataset: "random", ProgressInterval: time.Hour}
			serverPace(b, url)
			res, err := Run(b.Context(), o)
			if err != nil {
				b.Fatalf("batch %d: %v", batch, err)
			}
			pace := serverPace(b, url)
			m := res.Metrics
			ideal := float64(batch) / per.Seconds()
			last = m.RequestThroughput / ideal
			turn, steady := turnaround(res.Requests, batch)
			fmt.Fprintf(tw, "%d\t%d\t%.1f\t%.1f\t%.4f\t%.3f\t%.4f\t%.2f\t%.3f\t%.4f\t\n", batch, n, ideal, m.RequestThroughput, last,
				float64(pace.Microseconds())/1000, m.RequestThroughput/(float64(batch)/pace.Seconds()), deref(m.MeanE2ELMs),
				turn, steady/ideal)
		}
	}
	tw.Flush()
	b.ReportMetric(last, "achieved/ideal_bs128")
}
