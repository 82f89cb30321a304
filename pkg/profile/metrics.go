// Package profile is the profiling client: the native Go client, running and reading the
// MoE-CAP runner, and the metric math. Metric names follow vLLM's `bench serve` so numbers
// compare across tools.
package profile

import (
	"encoding/json"
	"strconv"

	"github.com/moecapd/moecapd/pkg/records"
)

// ServerPass is what the server's pass records say about latency (milliseconds), never
// under the client-latency keys.
type ServerPass struct {
	// TTFTMoECAPMs, TPOTMoECAPMs, MeanPrefillPassMs and MeanDecodePassMs are what the cell's
	// MoE-CAP-format metrics file says (performance.ttft, .tpot, .prefill_pass_latency_s):
	// the runner's own figures for a runner cell, which apply MoE-CAP's definitions to every
	// record the server returned (for SGLang that includes passes before the run); moecapd's
	// for a native cell, computed from the recording window. TTFT: per request, the sum of
	// its prefill chunk pass latencies (warm-up passes with seq_lens_sum <= 10 dropped),
	// averaged over requests. TPOT: the mean decode pass latency. MeanPrefillPassMs: the mean
	// latency of one prefill pass (one chunk). MeanDecodePassMs equals TPOTMoECAPMs.
	TTFTMoECAPMs      *float64 `json:"ttft_moecap_ms,omitempty"`
	TPOTMoECAPMs      *float64 `json:"tpot_moecap_ms,omitempty"`
	MeanPrefillPassMs *float64 `json:"mean_prefill_pass_ms,omitempty"`
	MeanDecodePassMs  *float64 `json:"mean_decode_pass_ms,omitempty"`
	// WindowTTFTMs and WindowTPOTMs are the same definitions applied by moecapd to the passes
	// of the recording window only (each pass once), for every cell that has records.
	WindowTTFTMs *float64 `json:"window_ttft_ms,omitempty"`
	WindowTPOTMs *float64 `json:"window_tpot_ms,omitempty"`
	// Source says where the figures came from ("runner metrics file", "recording window: N
	// passes", or both).
	Source string `json:"source,omitempty"`
}

// Dist is one latency metric's distribution as the manifest stores it; all nil when there
// were no samples.
type Dist struct{ Mean, Median, P90, P99, Std *float64 }

// FormatMs prints an optional value with prec decimals, "n/a" when absent.
func FormatMs(p *float64, prec int) string {
	if p == nil {
		return "n/a"
	}
	return strconv.FormatFloat(*p, 'f', prec, 64)
}

// DistOf summarises xs (milliseconds); an empty xs gives the absent Dist.
func DistOf(xs []float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	s := Summarize(xs)
	return Dist{&s.Mean, &s.Median, &s.P90, &s.P99, &s.Std}
}

// Metrics is a cell's benchmark result, stored under "metrics" in manifest.json.
// Latencies are in milliseconds. TTFT = send → first non-empty streamed chunk; E2EL = send →
// last byte; TPOT = (E2EL − TTFT)/(output_tokens − 1) per request with more than one output
// token; ITL = every gap between chunks, pooled over requests.
type Metrics struct {
	// Source is "native" (client-side latencies) or "moe-cap" (the MoE-CAP runner: TTFT/TPOT
	// are server forward-pass latencies, not what a user sees; see LatencyKind).
	Source      string `json:"source"`
	LatencyKind string `json:"latency_kind"` // "client", "client_e2e" (non-streaming: E2EL only) or "server_pass"
	// PromptStyle is "upstream" (the runner's chat-templated text, non-streaming) or
	// "exact-ids" (exact token ids, streaming).
	PromptStyle string `json:"prompt_style,omitempty"`

	Completed         int `json:"completed"`
	Failed            int `json:"failed"`
	TotalInputTokens  int `json:"total_input_tokens"`
	TotalOutputTokens int `json:"total_output_tokens"`
	// DurationS and the throughputs are absent (omitted) when no clock measured the run (a
	// runner cell with no duration source, which then fails bad_result), never 0.
	DurationS            float64 `json:"duration_s,omitempty"`
	RequestThroughput    float64 `json:"request_throughput,omitempty"`
	OutputThroughput     float64 `json:"output_throughput,omitempty"`
	TotalTokenThroughput float64 `json:"total_token_throughput,omitempty"`

	// Client-side latency distributions (native client only). Absent (nil, omitted) when the
	// source did not measure them: a runner that reports only server pass times leaves them out,
	// and a metric with no samples is absent, never 0.
	MeanTTFTMs   *float64 `json:"mean_ttft_ms,omitempty"`
	MedianTTFTMs *float64 `json:"median_ttft_ms,omitempty"`
	P90TTFTMs    *float64 `json:"p90_ttft_ms,omitempty"`
	P99TTFTMs    *float64 `json:"p99_ttft_ms,omitempty"`
	StdTTFTMs    *float64 `json:"std_ttft_ms,omitempty"`

	MeanTPOTMs   *float64 `json:"mean_tpot_ms,omitempty"`
	MedianTPOTMs *float64 `json:"median_tpot_ms,omitempty"`
	P90TPOTMs    *float64 `json:"p90_tpot_ms,omitempty"`
	P99TPOTMs    *float64 `json:"p99_tpot_ms,omitempty"`
	StdTPOTMs    *float64 `json:"std_tpot_ms,omitempty"`

	MeanITLMs   *float64 `json:"mean_itl_ms,omitempty"`
	MedianITLMs *float64 `json:"median_itl_ms,omitempty"`
	P90ITLMs    *float64 `json:"p90_itl_ms,omitempty"`
	P99ITLMs    *float64 `json:"p99_itl_ms,omitempty"`
	StdITLMs    *float64 `json:"std_itl_ms,omitempty"`

	MeanE2ELMs   *float64 `json:"mean_e2el_ms,omitempty"`
	MedianE2ELMs *float64 `json:"median_e2el_ms,omitempty"`
	P90E2ELMs    *float64 `json:"p90_e2el_ms,omitempty"`
	P99E2ELMs    *float64 `json:"p99_e2el_ms,omitempty"`
	StdE2ELMs    *float64 `json:"std_e2el_ms,omitempty"`

	// ServerPass holds latencies of the server's own forward passes (GPU time, no queueing),
	// from the MoE-CAP runner or the pass records. They never share a key with the client-side
	// latencies above.
	ServerPass *ServerPass `json:"server_pass,omitempty"`

	// Errors counts failed requests by reason ("http 500", "timeout", "connection reset"…).
	Errors map[string]int `json:"errors,omitempty"`
	// Partial is true when the run was cut short (Ctrl-C) and these are the numbers so far.
	Partial bool `json:"partial,omitempty"`

	// Expert activation and batch profile from the server's pass records, when it wrote any.
	AvgExpertActivationPrefill *float64 `json:"avg_expert_activation_prefill,omitempty"`
	AvgExpertActivationDecode  *float64 `json:"avg_expert_activation_decode,omitempty"`
	AvgDecodeBatchSize         *float64 `json:"avg_decode_batch_size,omitempty"`
	AvgPrefillBatchSize        *float64 `json:"avg_prefill_batch_size,omitempty"`

	// Records says where the expert/batch numbers above came from, or why they are absent
	// ("absent: …"); absent numbers are never approximated from client timings.
	Records string `json:"records,omitempty"`
	// LengthMismatches counts successful requests whose usage token counts differ from the
	// targets (prompt ≠ target_input_tokens or completion ≠ target_output_tokens).
	LengthMismatches int `json:"length_mismatches,omitempty"`
	// UsageMissing counts successful requests whose reply carried no usage; their output count
	// is the number of non-empty chunks instead.
	UsageMissing int `json:"usage_missing,omitempty"`
	// UsageStreamMismatches counts successful requests whose usage claims more than 10% (+1)
	// more tokens than chunks were streamed, or fewer than chunks carried text.
	UsageStreamMismatches int `json:"usage_stream_mismatches,omitempty"`
	// ShortOutputs counts successful requests that generated fewer tokens than asked for
	// although ignore_eos was set.
	ShortOutputs int `json:"short_outputs,omitempty"`
	// BadRequests = Failed + successful requests with any of the three problems above;
	// AllowedBadRequests is the tolerance the run was held to (native client; 0 unless
	// --allow-bad-requests). InvalidReasons is set when BadRequests > AllowedBadRequests: the
	// result is invalid (exit 5, bad_result).
	BadRequests        int      `json:"bad_requests,omitempty"`
	AllowedBadRequests *int     `json:"allowed_bad_requests,omitempty"`
	InvalidReasons     []string `json:"invalid_reasons,omitempty"`

	// AvgDecodeContextTokens is the mean total context (prompt + generated so far, over the
	// batch) of the decode passes in the recording window. SGLang's seq_lens_sum; rebuilt
	// from per_req_info and req_ids for vLLM, whose seq_lens_sum is scheduled tokens.
	AvgDecodeContextTokens *float64 `json:"avg_decode_context_tokens,omitempty"`

	// ClockCheck (MoE-CAP runner only) compares moecapd's clock of the run with the
	// runner's e2e_s × N and N ÷ request/s; DurationS is moecapd's clock.
	ClockCheck *ClockCheck `json:"clock_check,omitempty"`

	// MoECAP is the runner's own metrics_<ds>_<ts>.json, verbatim, when it was the client.
	MoECAP json.RawMessage `json:"moe_cap,omitempty"`

	// ClientInFlightMean is the client's mean number of requests in flight over the run
	// (Σ send → end ÷ duration; native client). ClientCPUFraction is the CPU time the client's
	// process used during the run ÷ (wall time × usable cores): near 1 the client, not the
	// server, set the pace. Both absent when not measured.
	ClientInFlightMean *float64 `json:"client_in_flight_mean,omitempty"`
	ClientCPUFraction  *float64 `json:"client_cpu_fraction,omitempty"`

	// RequestRate is the open loop's asked mean requests per second (--request-rate, a
	// --rates entry) and Burstiness its gamma shape when not 1 (Poisson); both absent for
	// the closed loop.
	RequestRate *float64 `json:"request_rate,omitempty"`
	Burstiness  *float64 `json:"burstiness,omitempty"`
	// Goodput judges the requests against --slo; absent without one.
	Goodput *Goodput `json:"goodput,omitempty"`

	// TimeScale is set when the numbers above come from a time-scaled simulator
	// (--sim-time-scale S, S ≠ 1) and were un-scaled to physical units (Unscaled): client
	// times (duration, TTFT, TPOT, ITL, E2EL) are wall time ÷ S, rates (throughputs) wall
	// rate × S. Absent: the numbers are the wall clock's as measured.
	TimeScale float64 `json:"time_scale,omitempty"`
}

// Unscaled is the one conversion of a time-scaled simulator's client numbers to physical
// units: a copy with every client time divided by scale and every rate multiplied by it,
// TimeScale set. Server pass latencies (ServerPass) and the runner's verbatim file are left
// as they are: the sim's pass records already carry model time. m itself is returned when
// there is nothing to do: nil metrics, scale 0 or 1 (real time), or numbers already
// un-scaled.
func (m *Metrics) Unscaled(scale float64) *Metrics {
	if m == nil || scale <= 0 || scale == 1 || m.TimeScale != 0 {
		return m
	}
	u := *m
	div := func(p *float64) *float64 {
		if p == nil {
			return nil
		}
		v := *p / scale
		return &v
	}
	for _, f := range []**float64{
		&u.MeanTTFTMs, &u.MedianTTFTMs, &u.P90TTFTMs, &u.P99TTFTMs, &u.StdTTFTMs,
		&u.MeanTPOTMs, &u.MedianTPOTMs, &u.P90TPOTMs, &u.P99TPOTMs, &u.StdTPOTMs,
		&u.MeanITLMs, &u.MedianITLMs, &u.P90ITLMs, &u.P99ITLMs, &u.StdITLMs,
		&u.MeanE2ELMs, &u.MedianE2ELMs, &u.P90E2ELMs, &u.P99E2ELMs, &u.StdE2ELMs,
	} {
		*f = div(*f)
	}
	if u.RequestRate != nil {
		v := *u.RequestRate * scale
		u.RequestRate = &v
	}
	if g := u.Goodput; g != nil {
		gc := *g
		gc.TTFTMs, gc.TPOTMs = div(g.TTFTMs), div(g.TPOTMs)
		if g.RequestsPerS != nil {
			v := *g.RequestsPerS * scale
			gc.RequestsPerS = &v
		}
		u.Goodput = &gc
	}
	u.DurationS /= scale
	u.RequestThroughput *= scale
	u.OutputThroughput *= scale
	u.TotalTokenThroughput *= scale
	u.TimeScale = scale
	return &u
}

// ScaleLabel is how every page, row and summary names a time-scaled simulator's cell:
// "sim, time ×S"; "" for real time.
func ScaleLabel(scale float64) string {
	if scale <= 0 || scale == 1 {
		return ""
	}
	return "sim, time ×" + strconv.FormatFloat(scale, 'g', -1, 64)
}

// Headline is the TPOT and TTFT a cell is summed up by (tables, summaries, the matrix's
// progress and results, capmath's measured ÷ floor), in milliseconds: each picked by
// records.PickLatency from the client's mean (when the client measured it) and the
// server's pass latency by MoE-CAP's definition (ServerPass.TPOTMoECAPMs, .TTFTMoECAPMs:
// the runner's, which measures no client latency), both kept beside the pick for a
// consumer that needs either. Nil when neither exists. Source names each pick's clock:
// "client" or "server_pass".
type Headline struct {
	TPOTMs, TTFTMs         *float64
	TPOTSource, TTFTSource string
	// The candidates: the client's means and the server's pass latencies.
	ClientTPOTMs, ClientTTFTMs *float64
	ServerTPOTMs, ServerTTFTMs *float64
}

// Headline picks the cell's headline TPOT and TTFT (the one rule; see the type).
func (m *Metrics) Headline() Headline {
	var h Headline
	if m == nil {
		return h
	}
	h.ClientTPOTMs, h.ClientTTFTMs = m.MeanTPOTMs, m.MeanTTFTMs
	if sp := m.ServerPass; sp != nil {
		h.ServerTPOTMs, h.ServerTTFTMs = sp.TPOTMoECAPMs, sp.TTFTMoECAPMs
	}
	h.TPOTMs, h.TPOTSource = records.PickLatency(h.ClientTPOTMs, h.ServerTPOTMs)
	h.TTFTMs, h.TTFTSource = records.PickLatency(h.ClientTTFTMs, h.ServerTTFTMs)
	return h
}
