package capmath

import (
	"fmt"
	"strings"

	"github.com/moecapd/moecapd/pkg/passcost"
)

// LoadShortFraction: a cell whose mean decode batch is below this fraction of what it could
// reach (min(batch, K)) did not run at the load its label says, and is flagged.
const LoadShortFraction = 0.9

// Load is the load a cell achieved next to the load it asked for (extra.cap.load): the
// asked batch, the concurrency memory admits (K, the prediction's max_concurrent_requests),
// the requests sent, and the mean decode batch the server's records show. Short is true when
// the achieved batch is below LoadShortFraction × Reachable; Causes then names what the cell
// can tell (several may hold), and Flag is the one-line flag the report shows.
type Load struct {
	AskedBatch int  `json:"asked_batch"`
	FeasibleK  *int `json:"feasible_k,omitempty"`
	NumSamples int  `json:"num_samples,omitempty"`
	// Reachable is min(batch, K): the decode batch the cell could run at.
	Reachable int `json:"reachable_batch"`
	// Achieved is the mean decode batch of the recorded passes (absent: no records).
	Achieved    *float64 `json:"achieved_decode_batch_mean,omitempty"`
	AchievedMax *float64 `json:"achieved_decode_batch_max,omitempty"`
	// Ratio = Achieved ÷ Reachable.
	Ratio *float64 `json:"ratio,omitempty"`
	// What the client saw: mean requests in flight, CPU used (fraction of its cores).
	ClientInFlightMean *float64 `json:"client_in_flight_mean,omitempty"`
	ClientCPUFraction  *float64 `json:"client_cpu_fraction,omitempty"`
	Short              bool     `json:"short"`
	Causes             []string `json:"causes,omitempty"`
}

// Load causes (stable words first, details after a colon).
const (
	CauseTooFewRequests = "too few requests"
	CauseClientCPU      = "client-bound: client CPU saturated"
	CauseNotInFlight    = "client-bound: requests not in flight"
	CauseKVBound        = "KV-bound"
	CauseServerSide     = "server-side: requests in flight but not decoding together"
	CauseUnknown        = "cause unknown"
)

// clientCPUSaturated is the client CPU fraction above which the client is taken to set the
// pace.
const clientCPUSaturated = 0.9

// achievedLoad compares what ran with what the cell asked for. achieved may be nil (no
// records): the load is then recorded without a verdict.
func achievedLoad(c Cell, pr Prediction, achieved, achievedMax *float64) *Load {
	if c.BatchSize <= 0 {
		return nil
	}
	l := &Load{AskedBatch: c.BatchSize, NumSamples: c.NumSamples, Reachable: c.BatchSize,
		Achieved: achieved, AchievedMax: achievedMax, ClientInFlightMean: c.ClientInFlightMean, ClientCPUFraction: c.ClientCPUFraction}
	if pr.Fit.Verdict != passcost.DoesNotFit && pr.Fit.Concurrent > 0 {
		k := pr.Fit.Concurrent
		l.FeasibleK = &k
		l.Reachable = min(l.Reachable, k)
	}
	if achieved == nil || l.Reachable <= 0 {
		return l
	}
	ratio := *achieved / float64(l.Reachable)
	l.Ratio = &ratio
	if ratio >= LoadShortFraction {
		return l
	}
	l.Short = true
	want := LoadShortFraction * float64(l.Reachable)
	if c.NumSamples > 0 && c.NumSamples < c.BatchSize {
		l.Causes = append(l.Causes, fmt.Sprintf("%s: num_samples %d < batch %d", CauseTooFewRequests, c.NumSamples, c.BatchSize))
	}
	if f := c.ClientCPUFraction; f != nil && *f >= clientCPUSaturated {
		l.Causes = append(l.Causes, fmt.Sprintf("%s (%.0f%% of its cores over the run)", CauseClientCPU, *f*100))
	}
	inFlight := c.ClientInFlightMean
	if inFlight != nil && *inFlight < want {
		l.Causes = append(l.Causes, fmt.Sprintf("%s (the client kept %.3g in flight on average)", CauseNotInFlight, *inFlight))
	}
	if pr.Fit.Verdict == passcost.UnderBatched && achievedMax != nil && *achievedMax <= float64(l.Reachable) {
		l.Causes = append(l.Causes, fmt.Sprintf("%s: memory holds %d of %d requests at once", CauseKVBound, pr.Fit.Concurrent, c.BatchSize))
	}
	if len(l.Causes) == 0 && inFlight != nil && *inFlight >= want {
		l.Causes = append(l.Causes, fmt.Sprintf("%s (the client kept %.3g in flight; the server decoded %.3g at once on average: queued, in prefill or preempted)", CauseServerSide, *inFlight, *achieved))
	}
	if len(l.Causes) == 0 {
		l.Causes = append(l.Causes, CauseUnknown+" (no client concurrency measured)")
	}
	return l
}

// Flag is the load's one-line flag ("batch: …"), "" when the load is not short.
func (l *Load) Flag() string {
	if l == nil || !l.Short || l.Achieved == nil {
		return ""
	}
	k := ""
	if l.FeasibleK != nil && *l.FeasibleK < l.AskedBatch {
		k = fmt.Sprintf(", K %d", *l.FeasibleK)
	}
	return fmt.Sprintf("batch: mean decode batch %.3g is below %.0f%% of %d (asked %d%s); S-MBU, S-MFU and floors describe the batch that ran; %s",
		*l.Achieved, LoadShortFraction*100, l.Reachable, l.AskedBatch, k, strings.Join(l.Causes, "; "))
}
