package report

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
)

// Absent is how the markdown and HTML show a quantity that was not measured. In the CSV it
// is an empty field (what pandas and spreadsheets read as missing), never 0.
const Absent = "absent"

func f64(v float64) *float64 { return &v }

func (r *Row) ok() bool { return r.Status == "ok" && r.Metrics != nil }

func (r *Row) metric(f func(*profile.Metrics) float64) *float64 {
	if !r.ok() {
		return nil
	}
	v := f(r.Metrics)
	if v <= 0 {
		return nil
	}
	return &v
}

// metricP reads a metric that may be absent.
func (r *Row) metricP(f func(*profile.Metrics) *float64) *float64 {
	if r.Metrics == nil {
		return nil
	}
	return f(r.Metrics)
}

// TPOTMs is the mean TPOT in ms: the client's, or the runner's server-pass TPOT when only
// that exists; nil when the cell has neither.
func (r *Row) TPOTMs() *float64 {
	return r.metricP(func(m *profile.Metrics) *float64 { return m.Headline().TPOTMs })
}

// TTFTMs is the mean TTFT in ms, chosen as TPOTMs is.
func (r *Row) TTFTMs() *float64 {
	return r.metricP(func(m *profile.Metrics) *float64 { return m.Headline().TTFTMs })
}

// pctl reads a client latency percentile; absent for the runner, which measures none.
func (r *Row) pctl(f func(*profile.Metrics) *float64) *float64 {
	if !r.ok() {
		return nil
	}
	return r.metricP(f)
}

// TPOTP99Ms and the others below are the client-side percentiles (native client only).
func (r *Row) TPOTP99Ms() *float64 {
	return r.pctl(func(m *profile.Metrics) *float64 { return m.P99TPOTMs })
}

// TTFTP99Ms is the client-side p99 TTFT.
func (r *Row) TTFTP99Ms() *float64 {
	return r.pctl(func(m *profile.Metrics) *float64 { return m.P99TTFTMs })
}

// OutputThroughput is output tokens per second over the bench.
func (r *Row) OutputThroughput() *float64 {
	return r.metric(func(m *profile.Metrics) float64 { return m.OutputThroughput })
}

// ThroughputPerGPU is output tokens per second per GPU.
func (r *Row) ThroughputPerGPU() *float64 {
	t := r.OutputThroughput()
	if t == nil || r.GPUs <= 0 {
		return nil
	}
	return f64(*t / float64(r.GPUs))
}

// Interactivity is 1000/TPOT: the tokens per second one user sees while decoding.
func (r *Row) Interactivity() *float64 {
	t := r.TPOTMs()
	if t == nil || !(*t > 0) || math.IsInf(*t, 0) {
		return nil // 1000/0 is no speed; the cell's plot notes say why
	}
	return f64(1000 / *t)
}

func (r *Row) tel(f func(*gpu.Summary) *float64) *float64 {
	if r.Telemetry == nil {
		return nil
	}
	return f(r.Telemetry)
}

// JPerOutputToken is measured energy per output token (NVML); nil when absent.
func (r *Row) JPerOutputToken() *float64 {
	return r.tel(func(t *gpu.Summary) *float64 { return t.JPerOutputToken })
}

// CostPerMTok is the cost per million output tokens and where it came from: "measured"
// (GPU rental + metered electricity, from telemetry) or "rental" (GPU-hours only, from the
// hardware table's price and the bench duration).
func (r *Row) CostPerMTok() (*float64, string) {
	// One cost computation (capmath.ComputeCost, extra.cap.cost): the total when energy was
	// measured (or electricity is unpriced), else the rental part alone.
	if !r.ok() || r.Cap == nil || r.Cap.Cost == nil {
		return nil, ""
	}
	c := r.Cap.Cost
	if c.PerMillionOutputTokensUSD != nil && c.EnergyJ != nil {
		return c.PerMillionOutputTokensUSD, "measured"
	}
	if c.RentalPerMillionOutputTokensUSD != nil {
		return c.RentalPerMillionOutputTokensUSD, "rental"
	}
	return nil, ""
}

func (r *Row) capVal(f func(*Row) *float64) *float64 {
	if r.Cap == nil {
		return nil
	}
	return f(r)
}

// util is a derived utilisation (fraction): prefill or decode, S-MBU or S-MFU.
func (r *Row) util(pre bool, mbu bool) *float64 {
	if r.Cap == nil {
		return nil
	}
	u := r.Cap.Decode
	if pre {
		u = r.Cap.Prefill
	}
	if u == nil {
		return nil
	}
	if mbu {
		return u.SMBU
	}
	return u.SMFU
}

// column is one field of the CSV.
type column struct {
	name string
	get  func(*Row) string
}

func num(p *float64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(*p, 'g', -1, 64) // full precision: the shortest form that reads back exactly
}

// u64f widens a measured byte count for arithmetic; absent stays absent.
func u64f(p *uint64) *float64 {
	if p == nil {
		return nil
	}
	return f64(float64(*p))
}

func gib(p *float64) *float64 {
	if p == nil {
		return nil
	}
	return f64(GiB(*p))
}

// pcol is a CSV column of a client latency percentile.
func pcol(f func(*profile.Metrics) *float64) func(*Row) string {
	return func(r *Row) string { return num(r.pctl(f)) }
}

func intOK(r *Row, v int) string {
	if !r.ok() {
		return ""
	}
	return strconv.Itoa(v)
}

var csvColumns = []column{
	{"cell_id", func(r *Row) string { return r.ID }},
	{"model", func(r *Row) string { return r.Model }},
	{"model_name", func(r *Row) string { return r.ModelName }},
	{"hardware", func(r *Row) string { return r.Hardware }},
	{"gpus", func(r *Row) string { return strconv.Itoa(r.GPUs) }},
	{"task", func(r *Row) string { return r.Task }},
	{"input_tokens", func(r *Row) string { return strconv.Itoa(r.In) }},
	{"output_tokens", func(r *Row) string { return strconv.Itoa(r.Out) }},
	{"batch_size", func(r *Row) string { return strconv.Itoa(r.BatchSize) }},
	{"backend", func(r *Row) string { return r.Backend }},
	// load: an open loop's cell-id part (cell.Identity.Load); empty for the closed loop.
	{"load", func(r *Row) string { return r.Load }},
	// time_scale: the sim's --sim-time-scale when it ran time-scaled; its client latencies
	// and throughputs in this row are un-scaled to physical units (profile.Metrics.Unscaled).
	{"time_scale", func(r *Row) string {
		if s := r.timeScale(); s != 0 {
			return strconv.FormatFloat(s, 'g', -1, 64)
		}
		return ""
	}},
	{"status", func(r *Row) string { return r.Status }},
	{"reason", func(r *Row) string { return r.Reason }},
	{"completed", func(r *Row) string { return intOK(r, r.metricsOr().Completed) }},
	{"failed_requests", func(r *Row) string { return intOK(r, r.metricsOr().Failed) }},
	{"latency_kind", func(r *Row) string { return r.metricsOr().LatencyKind }},
	{"ttft_mean_ms", func(r *Row) string { return num(r.TTFTMs()) }},
	{"ttft_p50_ms", pcol(func(m *profile.Metrics) *float64 { return m.MedianTTFTMs })},
	{"ttft_p90_ms", pcol(func(m *profile.Metrics) *float64 { return m.P90TTFTMs })},
	{"ttft_p99_ms", pcol(func(m *profile.Metrics) *float64 { return m.P99TTFTMs })},
	{"tpot_mean_ms", func(r *Row) string { return num(r.TPOTMs()) }},
	{"tpot_p50_ms", pcol(func(m *profile.Metrics) *float64 { return m.MedianTPOTMs })},
	{"tpot_p90_ms", pcol(func(m *profile.Metrics) *float64 { return m.P90TPOTMs })},
	{"tpot_p99_ms", pcol(func(m *profile.Metrics) *float64 { return m.P99TPOTMs })},
	{"itl_mean_ms", pcol(func(m *profile.Metrics) *float64 { return m.MeanITLMs })},
	{"itl_p50_ms", pcol(func(m *profile.Metrics) *float64 { return m.MedianITLMs })},
	{"itl_p90_ms", pcol(func(m *profile.Metrics) *float64 { return m.P90ITLMs })},
	{"itl_p99_ms", pcol(func(m *profile.Metrics) *float64 { return m.P99ITLMs })},
	{"e2el_mean_ms", pcol(func(m *profile.Metrics) *float64 { return m.MeanE2ELMs })},
	{"e2el_p50_ms", pcol(func(m *profile.Metrics) *float64 { return m.MedianE2ELMs })},
	{"e2el_p90_ms", pcol(func(m *profile.Metrics) *float64 { return m.P90E2ELMs })},
	{"e2el_p99_ms", pcol(func(m *profile.Metrics) *float64 { return m.P99E2ELMs })},
	{"output_throughput_tok_s", func(r *Row) string { return num(r.OutputThroughput()) }},
	{"output_throughput_per_gpu_tok_s", func(r *Row) string { return num(r.ThroughputPerGPU()) }},
	{"interactivity_tok_s_per_user", func(r *Row) string { return num(r.Interactivity()) }},
	{"tpot_floor_ms", func(r *Row) string { return num(r.capVal(func(r *Row) *float64 { return r.Cap.TPOTFloorMs })) }},
	{"tpot_over_floor", func(r *Row) string { return num(r.capVal(func(r *Row) *float64 { return r.Cap.TPOTOverFloor })) }},
	{"ttft_floor_ms", func(r *Row) string { return num(r.capVal(func(r *Row) *float64 { return r.Cap.TTFTFloorMs })) }},
	{"ttft_over_floor", func(r *Row) string { return num(r.capVal(func(r *Row) *float64 { return r.Cap.TTFTOverFloor })) }},
	{"s_mbu_decode", func(r *Row) string { return num(r.util(false, true)) }},
	{"s_mfu_decode", func(r *Row) string { return num(r.util(false, false)) }},
	{"s_mbu_prefill", func(r *Row) string { return num(r.util(true, true)) }},
	{"s_mfu_prefill", func(r *Row) string { return num(r.util(true, false)) }},
	{"cap_source", func(r *Row) string {
		if r.Cap == nil {
			return ""
		}
		return r.Cap.Source
	}},
	// The load that ran next to the asked batch (batch_size) and K: a short load is flagged
	// in "flags" (metric batch) with its cause.
	{"feasible_k", func(r *Row) string {
		if r.Cap == nil || r.Cap.Load == nil || r.Cap.Load.FeasibleK == nil {
			return ""
		}
		return strconv.Itoa(*r.Cap.Load.FeasibleK)
	}},
	{"achieved_decode_batch_mean", func(r *Row) string {
		if r.Cap == nil || r.Cap.Load == nil {
			return ""
		}
		return num(r.Cap.Load.Achieved)
	}},
	{"predicted_feasible", func(r *Row) string {
		if r.Cap == nil {
			return ""
		}
		return strconv.FormatBool(r.Cap.Feasible)
	}},
	{"memory_need_gib", func(r *Row) string {
		return num(r.capVal(func(r *Row) *float64 { return f64(GiB(r.Cap.MemNeedBytes)) }))
	}},
	{"memory_usable_gib", func(r *Row) string {
		return num(r.capVal(func(r *Row) *float64 { return f64(GiB(r.Cap.MemHaveBytes)) }))
	}},
	{"energy_j", func(r *Row) string { return num(r.tel(func(t *gpu.Summary) *float64 { return t.EnergyJ })) }},
	{"j_per_output_token", func(r *Row) string { return num(r.JPerOutputToken()) }},
	{"avg_power_w", func(r *Row) string { return num(r.tel(func(t *gpu.Summary) *float64 { return t.AvgPowerW })) }},
	{"peak_power_w", func(r *Row) string { return num(r.tel(func(t *gpu.Summary) *float64 { return t.PeakPowerW })) }},
	{"mean_util_pct", func(r *Row) string { return num(r.tel(func(t *gpu.Summary) *float64 { return t.MeanUtilPct })) }},
	{"peak_memory_gib", func(r *Row) string {
		return num(gib(r.tel(func(t *gpu.Summary) *float64 { return u64f(t.PeakMemoryBytes) })))
	}},
	{"cost_per_million_output_tokens_usd", func(r *Row) string { v, _ := r.CostPerMTok(); return num(v) }},
	{"cost_source", func(r *Row) string { _, s := r.CostPerMTok(); return s }},
	{"flags", func(r *Row) string {
		var fs []string
		for _, f := range r.Flags {
			if f.Metric != "" {
				fs = append(fs, f.Metric+": "+f.Reason)
			} else {
				fs = append(fs, f.Reason)
			}
		}
		return strings.Join(fs, "; ")
	}},
	{"backend_version", func(r *Row) string { return r.BackendVersion }},
	{"driver", func(r *Row) string { return r.Driver }},
	{"moecapd", func(r *Row) string { return r.Moecapd }},
}

var emptyMetrics profile.Metrics

func (r *Row) metricsOr() *profile.Metrics {
	if r.Metrics == nil {
		return &emptyMetrics
	}
	return r.Metrics
}

// WriteCSV writes one line per cell, every column of csvColumns; unmeasured values are
// empty fields.
func WriteCSV(w io.Writer, rows []Row) error {
	cw := csv.NewWriter(w)
	head := make([]string, len(csvColumns))
	for i, c := range csvColumns {
		head[i] = c.name
	}
	if err := cw.Write(head); err != nil {
		return err
	}
	rec := make([]string, len(csvColumns))
	for i := range rows {
		for j, c := range csvColumns {
			// A flagged value is no result: its field stays empty and "flags" says why.
			if rows[i].FlagFor(c.name) != "" {
				rec[j] = ""
				continue
			}
			rec[j] = c.get(&rows[i])
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// show formats a value for people: fixed decimals, "absent" when not measured.
func show(p *float64, format string) string {
	if p == nil {
		return Absent
	}
	return fmt.Sprintf(format, *p)
}

func pct(p *float64) *float64 {
	if p == nil {
		return nil
	}
	return f64(*p * 100)
}

// Group is the cells of one model and task.
type Group struct {
	Model, Task string
	Rows        []*Row
}

// Groups splits sorted rows by model and task, keeping their order.
func Groups(rows []Row) []Group {
	var gs []Group
	idx := map[string]int{}
	for i := range rows {
		k := rows[i].Model + "\x00" + rows[i].Task
		j, ok := idx[k]
		if !ok {
			j = len(gs)
			idx[k] = j
			gs = append(gs, Group{Model: rows[i].Model, Task: rows[i].Task})
		}
		gs[j].Rows = append(gs[j].Rows, &rows[i])
	}
	return gs
}

// mdEscape makes text from results (ids, server log lines, failure messages) one inert
// table cell: HTML is escaped (a markdown renderer passes raw HTML through: <script>,
// <img onerror>), and the cell's own syntax (|, newlines) too.
func mdEscape(s string) string { return mdReplacer.Replace(s) }

var mdReplacer = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "|", `\|`, "\r", " ", "\n", " ")

// counts of cells by status, in a fixed order.
func statusCounts(rows []Row) []struct {
	Status string
	N      int
} {
	m := map[string]int{}
	for _, r := range rows {
		m[r.Status]++
	}
	order := []string{"ok", "failed", "infeasible", "interrupted", "running"}
	var out []struct {
		Status string
		N      int
	}
	seen := map[string]bool{}
	for _, s := range order {
		if m[s] > 0 {
			out = append(out, struct {
				Status string
				N      int
			}{s, m[s]})
		}
		seen[s] = true
	}
	var rest []string
	for s := range m {
		if !seen[s] {
			rest = append(rest, s)
		}
	}
	sort.Strings(rest)
	for _, s := range rest {
		out = append(out, struct {
			Status string
			N      int
		}{s, m[s]})
	}
	return out
}

// WriteMarkdown writes the summary: counts, one table per model and task, the cells that
// did not complete with their reasons, and the definitions. It holds no timestamps, so the
// same results give the same file.
func WriteMarkdown(w io.Writer, rows []Row, probs []Problem) error {
	var b strings.Builder
	b.WriteString("# moecapd results\n\n")
	var parts []string
	for _, c := range statusCounts(rows) {
		parts = append(parts, fmt.Sprintf("%d %s", c.N, c.Status))
	}
	fmt.Fprintf(&b, "%d cells: %s.", len(rows), strings.Join(parts, ", "))
	if len(probs) > 0 {
		fmt.Fprintf(&b, " %d directories could not be read (below).", len(probs))
	}
	b.WriteString("\n\n`absent` = not measured (no NVML, or the GPU does not report it); `—` = does not apply (the cell did not complete).\n")

	for _, g := range Groups(rows) {
		fmt.Fprintf(&b, "\n## %s · %s\n\n", mdEscape(g.Rows[0].ModelName), mdEscape(g.Task))
		b.WriteString("| cell | hardware | backend | batch | TTFT p50 / p99 ms | TPOT p50 / p99 ms | TPOT ×floor | tok/s/GPU | tok/s/user | S-MBU decode | J/tok | status |\n")
		b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
		for _, r := range g.Rows {
			v := viewOf(r)
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				mdEscape(r.ID), mdEscape(r.Hardware), mdEscape(r.BackendLabel()), r.BatchSize, mdEscape(v.TTFT), mdEscape(v.TPOT), mdEscape(v.Over),
				mdEscape(v.TputGPU), mdEscape(v.Interact), mdEscape(v.SMBU), mdEscape(v.JTok), mdEscape(v.StatusText))
		}
		if cmp := backendPairs(g.Rows); len(cmp) > 0 {
			b.WriteString("\nSame cell, different backend (TPOT p50 ms · output tok/s per GPU):\n\n| hardware | batch |")
			bk := pairBackends(cmp)
			for _, x := range bk {
				fmt.Fprintf(&b, " %s |", mdEscape(x))
			}
			b.WriteString("\n|---|--:|" + strings.Repeat("--:|", len(bk)) + "\n")
			for _, c := range cmp {
				fmt.Fprintf(&b, "| %s | %d |", mdEscape(c.Hardware), c.Batch)
				for _, x := range bk {
					fmt.Fprintf(&b, " %s |", mdEscape(c.cellText(x)))
				}
				b.WriteString("\n")
			}
		}
	}
	b.WriteString("\nEvery percentile (TTFT, TPOT, ITL, E2EL p50/p90/p99), S-MFU, floors, energy and cost per cell are in cells.csv.\n")

	var bad []*Row
	for i := range rows {
		if rows[i].Status != "ok" {
			bad = append(bad, &rows[i])
		}
	}
	if len(bad) > 0 || len(probs) > 0 {
		b.WriteString("\n## Cells that did not complete\n\n| cell | status | reason | predicted memory |\n|---|---|---|---|\n")
		for _, r := range bad {
			mem := "—"
			if r.Cap != nil {
				mem = mdEscape(memoryVerdict(r))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", mdEscape(r.ID), mdEscape(r.Status), mdEscape(r.Reason), mem)
		}
		for _, p := range probs {
			fmt.Fprintf(&b, "| %s | unreadable | %s | — |\n", mdEscape(p.Dir), mdEscape(p.Err))
		}
	}
	// Impossible CAP values (capmath moved them out of the results): each with its cause.
	var flagged []string
	for i := range rows {
		if c := rows[i].Cap; c != nil {
			for _, e := range c.Errors {
				flagged = append(flagged, fmt.Sprintf("| %s | %s | %.3g (limit %.2f) | %s |", mdEscape(rows[i].ID), mdEscape(e.Field), e.Value, e.Limit, mdEscape(e.Cause)))
			}
		}
	}
	if len(flagged) > 0 {
		b.WriteString("\n## ERROR: impossible CAP values (not shown as results)\n\n| cell | field | value | likely cause |\n|---|---|---|---|\n")
		b.WriteString(strings.Join(flagged, "\n") + "\n")
	}
	b.WriteString("\n## Definitions\n\n")
	for _, d := range definitions {
		fmt.Fprintf(&b, "- **%s** (%s): %s\n", d.Name, d.Unit, d.Text)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Definition of a metric on the page.
type Definition struct{ Name, Unit, Text string }

var definitions = []Definition{
	{"TTFT", "ms", "time to first token: request sent → first non-empty streamed chunk, mean over requests. With the MoE-CAP runner as client it is the server's prefill pass latency instead (latency_kind server_pass)."},
	{"TPOT", "ms", "time per output token: (E2E − TTFT) / (output tokens − 1) per request, mean over requests."},
	{"Output throughput", "tokens/s", "output tokens of all completed requests / bench duration; per GPU: divided by the cell's GPU count."},
	{"Interactivity", "tokens/s per user", "1000 / TPOT: the decode speed one user sees."},
	{"TPOT floor", "ms", "the time the hardware needs for one decode step of what ran (pkg/passcost, docs/DESIGN.md): the records' mean decode batch and context and measured expert activation; bytes per GPU = (attention + touched experts + shared + dense FFN + router + LM head weights)/N + the batch's KV cache (MLA latent whole on every GPU), over HBM bandwidth, or the step's FLOPs at peak if longer. Cells that did not run have a prediction, no floor. ×floor = measured / floor."},
	{"TTFT floor", "ms", "per request, the time to prefill the wave it was prefilled with (every prompt of its pass: causal attention per prompt, k experts per token) at peak FLOP/s (fp8 for an fp8 checkpoint's linear layers), or the pass's bytes at full bandwidth if slower; mean over requests."},
	{"S-MBU", "% of peak", "physical memory-bandwidth utilisation: bytes the passes had to move per GPU (pkg/passcost) / (pass time · peak HBM bandwidth), Σ over passes; above 101% is impossible and reported as an error, never as a value. MoE-CAP's own S-MBU (one expert per token, KV at the weights' width) is s_mbu_moecap in the CAP block."},
	{"S-MFU", "% of peak", "physical FLOP utilisation: compute time the passes need at peak (linear layers at their precision's peak, attention at bf16; k experts per token, causal per-prompt attention, LM head) / pass time. MoE-CAP's own S-MFU (one expert per token, the batch's whole context in every token's attention term; may exceed 100%) is s_mfu_moecap."},
	{"J/tok", "J per output token", "GPU energy over the bench window (NVML energy counter, else integrated power), summed over the cell's GPUs, / output tokens."},
	{"$/M tok", "USD per million output tokens", "one computation (extra.cap.cost): GPU rental for the bench window + metered electricity; (rental): GPUs × $/GPU-hour × bench hours only, when no energy was measured."},
	{"Predicted memory", "GiB", "per GPU: weights / N + KV cache for batch × (input + output) tokens (MLA latent whole on every GPU) against 90% of one GPU's memory; fits, under-batched (only K requests at once: the server runs K) or does not fit (the weights or one request)."},
}
