package report

import (
	"fmt"
	"image/color"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot/plotter"

	"github.com/moecapd/moecapd/pkg/cell"
	"github.com/moecapd/moecapd/pkg/gpu"
	"github.com/moecapd/moecapd/pkg/profile"
)

type kv struct{ K, V string }

type latRow struct{ Name, Mean, P50, P90, P99, Std string }

// cellPage is one cell's page: its manifest in readable form and its timelines.
type cellPage struct {
	ID, Title, Status, Reason, Up, CSS string
	Flags, Notes                       []string
	Identity, Run, Throughput, CAP     []kv
	Telemetry, Server, Client, Vers    []kv
	Latency                            []latRow
	LatencyNote                        string
	ServerPass                         []kv
	Failure                            *kv
	LogTail                            string
	ServerArgv, ClientArgv             string
	Plots                              []htmlPlot
	NoPlots                            string
	// Files are the entries the cell directory holds (cell.Dir.Present).
	Files []string
}

// shellQuote shows an argv for reading; moecapd itself passes argv as a list, never
// through a shell.
func shellQuote(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteString(" ")
		}
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?[]{}!#~") {
			b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

func fmtP(p *float64) string {
	if p == nil {
		return Absent
	}
	return round3(*p)
}

func secs(s float64) string {
	if s <= 0 {
		return "—"
	}
	return human(time.Duration(s * float64(time.Second)))
}

// clockLabel is the x axis of the GPU and server timelines, which share one clock.
const clockLabel = "seconds since the first GPU or server sample"

// cellPlots are the figures of one cell page.
func cellPlots(r *Row) []*Plot {
	d := r.Data
	if d == nil || !r.ok() {
		return nil
	}
	base := "cell." + anchor(r.ID) + "."
	c := HardwareColor(r.Hardware)
	var out []*Plot
	add := func(kind, title string, s *plotSpec) {
		n := 0
		for _, se := range s.series {
			n += len(se.pts)
		}
		if n >= 2 {
			out = append(out, &Plot{Name: base + kind + ".svg", Title: title, spec: s})
		}
	}
	add("tokens", "Output tokens/s over the bench (client token arrivals)", &plotSpec{xlabel: "seconds since the bench started", ylabel: "output tokens/s",
		series: []series{{name: "tokens/s", pts: d.TokensPerS, color: c, plain: true}}})
	add("batch", fmt.Sprintf("Running decode batch over the run (server pass records; limit %d)", r.BatchSize), &plotSpec{
		xlabel: "cumulative server pass time (s)", ylabel: "decode batch (requests)", yMax: float64(r.BatchSize) * 1.15,
		series: []series{{name: "decode batch", pts: d.DecodeBatch, color: c, plain: true}}})
	server := func(kind, title, ylabel string, yMax float64, ss ...series) {
		var keep []series
		for _, se := range ss {
			if len(se.pts) > 0 {
				keep = append(keep, se)
			}
		}
		add(kind, title, &plotSpec{xlabel: clockLabel, ylabel: ylabel, series: keep, yMax: yMax, xFromData: true})
	}
	server("server-requests", "Server: running and waiting requests (its Prometheus metrics)", "requests",
		0, series{name: "running", pts: d.Running, color: c, plain: true}, series{name: "waiting", pts: d.Waiting, color: gpuColor(1), plain: true})
	perGPU := func(kind, title, ylabel string, m map[int]plotter.XYs, yMax float64) {
		var idx []int
		for g := range m {
			idx = append(idx, g)
		}
		sort.Ints(idx)
		var ss []series
		for i, g := range idx {
			ss = append(ss, series{name: "GPU " + strconv.Itoa(g), pts: m[g], color: gpuColor(i), plain: true})
		}
		add(kind, title, &plotSpec{xlabel: clockLabel, ylabel: ylabel, series: ss, yMax: yMax, xFromData: true})
	}
	perGPU("power", "GPU power (NVML)", "power (W)", d.Power, 0)
	server("server-kv", "Server: KV-cache usage", "KV cache in use (%)", 105, series{name: "KV cache", pts: d.KVPct, color: c, plain: true})
	if n := len(d.Preempted); n > 0 && d.Preempted[n-1].Y > 0 {
		server("server-preempt", "Server: requests preempted since the first scrape", "preemptions", 0, series{name: "preemptions", pts: d.Preempted, color: gpuColor(1), plain: true})
	}
	perGPU("util", "GPU utilisation (NVML)", "utilisation (%)", d.Util, 110)
	perGPU("memory", "GPU memory used (NVML)", "memory used (GiB)", d.MemGiB, 0)
	cdf := func(kind, what string, xs []float64) {
		if len(xs) < 2 {
			return
		}
		v := append([]float64(nil), xs...)
		sort.Float64s(v)
		pts := make(plotter.XYs, len(v))
		for i, x := range v {
			pts[i] = plotter.XY{X: x, Y: float64(i+1) / float64(len(v))}
		}
		add(kind, what+" per request: cumulative distribution", &plotSpec{xlabel: what + " (ms)", ylabel: "fraction of requests", yMax: 1.02, xFromData: true,
			series: []series{{name: what, pts: pts, color: c, plain: true}}})
	}
	cdf("ttft-cdf", "TTFT", d.TTFT)
	cdf("tpot-cdf", "TPOT", d.TPOT)
	cdf("e2el-cdf", "E2EL", d.E2EL)
	return append(out, ratePlots(r.Manifest, base, c)...)
}

var gpuPalette = []color.RGBA{rgb(0x4c8fd6), rgb(0xe15759), rgb(0x59a14f), rgb(0xf28e2b), rgb(0xb07aa1), rgb(0x76b7b2), rgb(0xedc948), rgb(0x9c755f)}

func gpuColor(i int) color.RGBA { return gpuPalette[i%len(gpuPalette)] }

func buildCellPage(r *Row, plots []*Plot, up, plotDir string) *cellPage {
	m := r.Manifest
	cp := &cellPage{ID: r.ID, Status: r.Status, Reason: r.Reason, Up: up,
		Title: fmt.Sprintf("%s · %s · %s · batch %d · %s", r.ModelName, r.Task, r.Hardware, r.BatchSize, r.BackendLabel())}
	if r.Dir != "" {
		cp.Files = cell.Dir{ID: r.ID, Path: r.Dir}.Present()
	}
	if r.Cap != nil {
		cp.Notes = append(cp.Notes, r.Cap.Notes...)
	} else if strings.HasPrefix(r.CapNote, "absent: ") {
		cp.Notes = append(cp.Notes, "No CAP numbers (S-MBU, S-MFU, floors, memory verdict): "+strings.TrimPrefix(r.CapNote, "absent: "))
	}
	if m != nil && m.Cell.AllowUnknownModel {
		cp.Notes = append(cp.Notes, "Run with --allow-unknown-model: moecapd could not describe this model.")
	}
	if m != nil {
		if t, ok := m.Truth(); ok {
			cp.Notes = append(cp.Notes, truthLines(t)...)
		}
	}
	cp.Notes = append(cp.Notes, r.PlotNotes()...)
	if sc := r.timeScale(); sc != 0 && !strings.Contains(strings.Join(cp.Notes, " "), "time-scale") {
		cp.Notes = append(cp.Notes, fmt.Sprintf("%s: the simulator's clock ran ×%g; the client's latencies and throughputs shown here are un-scaled to physical units (wall time ÷ %g, wall rates × %g), and include the client's own time un-scaled with them.", profile.ScaleLabel(sc), sc, sc, sc))
	}
	for _, f := range r.Flags {
		what := "the cell"
		if f.Metric != "" {
			what = f.Metric
		}
		cp.Flags = append(cp.Flags, what+": "+f.Reason)
	}
	for _, mk := range r.marks() {
		cp.Flags = append(cp.Flags, mk.Name+": "+mk.Why)
	}
	for _, p := range plots {
		cp.Plots = append(cp.Plots, htmlPlot{Title: p.Title, Src: plotDir + p.Name, Name: p.Name})
	}
	if len(cp.Plots) == 0 {
		cp.NoPlots = "No timelines: the cell kept no per-request rows (client/**/bench.json), pass records, telemetry.csv or server_metrics.csv, or it did not complete."
	}
	if m == nil {
		return cp
	}
	id := m.Cell
	cp.Identity = []kv{{"model", fmt.Sprintf("%s (%s, key %s)", r.ModelName, id.ModelID, id.Model)}, {"hardware", fmt.Sprintf("%s (%s)", id.Hardware, orAbsent(id.GPUName))},
		{"GPUs", fmt.Sprintf("%d, indices %v, TP %d", id.GPUCount, id.GPUIndices, id.TP)},
		{"task", fmt.Sprintf("%s: %d input + %d output tokens, dataset %s", id.Task, id.InputTokens, id.OutputTokens, orAbsent(id.Dataset))},
		{"requests", fmt.Sprintf("%d at batch %d", id.NumSamples, id.BatchSize)}, {"backend", id.Backend}, {"benchmark file", orAbsent(id.ConfigFile)}}
	cp.Run = []kv{{"status", string(m.Status)}, {"started", m.StartedAt.UTC().Format(time.RFC3339)}}
	if m.FinishedAt != nil {
		cp.Run = append(cp.Run, kv{"finished", m.FinishedAt.UTC().Format(time.RFC3339)})
	}
	t := m.Timings
	cp.Run = append(cp.Run, kv{"timings", fmt.Sprintf("preflight %s · launch to ready %s · bench %s · teardown %s · total %s",
		secs(t.Preflight), secs(t.LaunchToReady), secs(t.Bench), secs(t.Teardown), secs(t.Total))})
	if f := m.Failure; f != nil {
		cp.Failure = &kv{fmt.Sprintf("%s in %s", f.Kind, f.Phase), f.Message}
		cp.LogTail = f.LogTail
	}
	if mt := m.PhysicalMetrics(); mt != nil {
		lat := func(name string, mean, p50, p90, p99, std *float64) {
			if mean == nil && p50 == nil {
				return
			}
			cp.Latency = append(cp.Latency, latRow{name, fmtP(mean), fmtP(p50), fmtP(p90), fmtP(p99), fmtP(std)})
		}
		lat("TTFT", mt.MeanTTFTMs, mt.MedianTTFTMs, mt.P90TTFTMs, mt.P99TTFTMs, mt.StdTTFTMs)
		lat("TPOT", mt.MeanTPOTMs, mt.MedianTPOTMs, mt.P90TPOTMs, mt.P99TPOTMs, mt.StdTPOTMs)
		lat("ITL", mt.MeanITLMs, mt.MedianITLMs, mt.P90ITLMs, mt.P99ITLMs, mt.StdITLMs)
		lat("E2EL", mt.MeanE2ELMs, mt.MedianE2ELMs, mt.P90E2ELMs, mt.P99E2ELMs, mt.StdE2ELMs)
		cp.LatencyNote = fmt.Sprintf("client %s, latency kind %s", orAbsent(mt.Source), orAbsent(mt.LatencyKind))
		if sp := mt.ServerPass; sp != nil {
			cp.ServerPass = []kv{{"TTFT (MoE-CAP: sum of a request's prefill passes)", fmtP(sp.TTFTMoECAPMs) + " ms"},
				{"TPOT (MoE-CAP: mean decode pass)", fmtP(sp.TPOTMoECAPMs) + " ms"},
				{"mean prefill pass", fmtP(sp.MeanPrefillPassMs) + " ms"}, {"mean decode pass", fmtP(sp.MeanDecodePassMs) + " ms"}}
		}
		cp.Throughput = []kv{{"requests", fmt.Sprintf("%d completed, %d failed", mt.Completed, mt.Failed)},
			{"tokens", fmt.Sprintf("%s in, %s out", thousands(float64(mt.TotalInputTokens)), thousands(float64(mt.TotalOutputTokens)))},
			{"bench duration", secs(mt.DurationS)},
			{"output throughput", fmtVal(r, "output_throughput_tok_s", r.OutputThroughput(), " tokens/s")},
			{"per GPU", fmtVal(r, "output_throughput_per_gpu_tok_s", r.ThroughputPerGPU(), " tokens/s")},
			{"per user (1000 / mean TPOT)", fmtVal(r, "interactivity_tok_s_per_user", r.Interactivity(), " tokens/s")},
			{"request throughput", round3(mt.RequestThroughput) + " requests/s"}}
		if mt.AvgDecodeBatchSize != nil {
			cp.Throughput = append(cp.Throughput, kv{"mean decode batch (records)", round3(*mt.AvgDecodeBatchSize)})
		}
		if mt.AvgExpertActivationDecode != nil {
			cp.Throughput = append(cp.Throughput, kv{"experts activated per decode pass and layer (records)", round3(*mt.AvgExpertActivationDecode)})
		}
		if len(mt.Errors) > 0 {
			var es []string
			for k, n := range mt.Errors {
				es = append(es, fmt.Sprintf("%s ×%d", k, n))
			}
			sort.Strings(es)
			cp.Throughput = append(cp.Throughput, kv{"request errors", strings.Join(es, ", ")})
		}
		if len(mt.InvalidReasons) > 0 {
			cp.Throughput = append(cp.Throughput, kv{"result invalid", flaggedText(strings.Join(mt.InvalidReasons, "; "))})
		}
		if mt.PromptStyle != "" {
			cp.Throughput = append(cp.Throughput, kv{"prompts", mt.PromptStyle})
		}
		if mt.Records != "" {
			cp.Throughput = append(cp.Throughput, kv{"records", mt.Records})
		}
	}
	if c := r.Cap; c != nil {
		cp.CAP = []kv{{"source", c.Source}}
		if r.ok() {
			cp.CAP = append(cp.CAP,
				kv{"S-MBU decode / prefill", fmtVal(r, "s_mbu_decode", pct(r.util(false, true)), "%") + " / " + fmtVal(r, "s_mbu_prefill", pct(r.util(true, true)), "%")},
				kv{"S-MFU decode / prefill", fmtVal(r, "s_mfu_decode", pct(r.util(false, false)), "%") + " / " + fmtVal(r, "s_mfu_prefill", pct(r.util(true, false)), "%")},
				kv{"TPOT floor · measured ÷ floor", fmtVal(r, "tpot_floor_ms", c.TPOTFloorMs, " ms") + " · " + fmtVal(r, "tpot_over_floor", c.TPOTOverFloor, "×")},
				kv{"TTFT floor · measured ÷ floor", fmtVal(r, "ttft_floor_ms", c.TTFTFloorMs, " ms") + " · " + fmtVal(r, "ttft_over_floor", c.TTFTOverFloor, "×")})
		}
		cp.CAP = append(cp.CAP, kv{"predicted memory", memoryVerdict(r)})
		if v, src := r.CostPerMTok(); v != nil {
			cp.CAP = append(cp.CAP, kv{"cost", fmt.Sprintf("$%s per million output tokens (%s)", round3(*v), src)})
		}
	}
	if ts := m.Telemetry; ts != nil {
		cp.Telemetry = []kv{
			{"energy", telText(r, func(t *gpu.Summary) *float64 { return t.EnergyJ }, "%.0f J")},
			{"per output token", telText(r, func(t *gpu.Summary) *float64 { return t.JPerOutputToken }, "%.3g J")},
			{"power avg / peak", telText(r, func(t *gpu.Summary) *float64 { return t.AvgPowerW }, "%.0f W") + " / " + telText(r, func(t *gpu.Summary) *float64 { return t.PeakPowerW }, "%.0f W")},
			{"utilisation mean / p95", telText(r, func(t *gpu.Summary) *float64 { return t.MeanUtilPct }, "%.0f%%") + " / " + telText(r, func(t *gpu.Summary) *float64 { return t.P95UtilPct }, "%.0f%%")},
			{"peak memory", show(gib(r.tel(func(t *gpu.Summary) *float64 { return u64f(t.PeakMemoryBytes) })), "%.1f GiB")},
		}
		if ts.Reason != "" {
			cp.Telemetry = append(cp.Telemetry, kv{"note", ts.Reason})
		}
	}
	s := m.Server
	cp.ServerArgv = shellQuote(s.Argv)
	cp.Server = []kv{{"listen", fmt.Sprintf("%s:%d", orAbsent(s.Host), s.Port)}}
	if s.PID > 0 {
		cp.Server = append(cp.Server, kv{"pid", strconv.Itoa(s.PID)})
	}
	if s.ExitCode != nil {
		cp.Server = append(cp.Server, kv{"exit code", strconv.Itoa(*s.ExitCode)})
	}
	if s.CondaEnv != "" {
		cp.Server = append(cp.Server, kv{"conda env", s.CondaEnv})
	}
	var envs []string
	for k, v := range s.EnvAdded {
		envs = append(envs, k+"="+v)
	}
	sort.Strings(envs)
	if len(envs) > 0 {
		cp.Server = append(cp.Server, kv{"environment added", strings.Join(envs, "\n")})
	}
	cp.Client = []kv{{"kind", m.Client.Kind}}
	cp.ClientArgv = shellQuote(m.Client.Argv)
	cp.Throughput = append(cp.Throughput, repeatRows(m)...)
	cp.Throughput = append(cp.Throughput, rateRows(m)...)
	cp.Throughput = append(cp.Throughput, serverMetricRows(m)...)
	cp.Vers = []kv{{"moecapd", orAbsent(m.Versions.Moecapd)}, {"backend", orAbsent(m.Versions.Backend)}, {"NVIDIA driver", orAbsent(m.Versions.Driver)}}
	return cp
}

func orAbsent(s string) string {
	if s == "" {
		return Absent
	}
	return s
}

const cellBodyTmpl = `<h2>{{.Title}}</h2>
<p><code>{{.ID}}</code> · status <b>{{.Status}}</b>{{if and .Reason (not .Failure)}} · {{.Reason}}{{end}}</p>
{{range .Flags}}<p class="flag">flagged: {{.}}</p>{{end}}
{{range .Notes}}<p class="meta">{{.}}</p>{{end}}
{{if .Failure}}<h3>Failure</h3><p><b>{{.Failure.K}}</b>: {{.Failure.V}}</p>{{if .LogTail}}<pre>{{.LogTail}}</pre>{{end}}{{end}}
{{if .Latency}}<h3>Latency (ms)</h3><p class="meta">{{.LatencyNote}}</p>
<table><tr><th class="l">metric</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>std</th></tr>
{{range .Latency}}<tr><td class="l">{{.Name}}</td><td>{{.Mean}}</td><td>{{.P50}}</td><td>{{.P90}}</td><td>{{.P99}}</td><td>{{.Std}}</td></tr>{{end}}</table>{{end}}
{{if .ServerPass}}<h3>Server pass latencies (GPU forward time, no queueing)</h3><table class="kv">{{range .ServerPass}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>{{end}}
{{if .Plots}}<div class="plots">{{range .Plots}}
<figure><figcaption>{{.Title}}</figcaption><a href="{{.Src}}"><img class="plot" alt="{{.Title}}" src="{{.Src}}"></a></figure>{{end}}
</div>{{else}}<p class="meta">{{.NoPlots}}</p>{{end}}
{{if .Throughput}}<h3>Throughput</h3><table class="kv">{{range .Throughput}}<tr><th>{{.K}}</th><td>{{full .V}}</td></tr>{{end}}</table>{{end}}
{{if .CAP}}<h3>CAP numbers</h3><table class="kv">{{range .CAP}}<tr><th>{{.K}}</th><td>{{full .V}}</td></tr>{{end}}</table>{{end}}
{{if .Telemetry}}<h3>GPU telemetry (bench window)</h3><table class="kv">{{range .Telemetry}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>{{end}}
<h3>Cell</h3><table class="kv">{{range .Identity}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}{{range .Run}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>
<h3>Server</h3><p class="meta">argv, shown shell-quoted for reading (moecapd passes it as a list, never through a shell):</p><pre>{{.ServerArgv}}</pre>
<table class="kv">{{range .Server}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>
<h3>Client</h3><table class="kv">{{range .Client}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>{{if .ClientArgv}}<pre>{{.ClientArgv}}</pre>{{end}}
<h3>Versions</h3><table class="kv">{{range .Vers}}<tr><th>{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>
`

const cellPageTmpl = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.ID}}</title>
<style>{{template "css"}}</style></head>
<body>
<p class="meta"><a href="{{.Up}}">← report</a>{{if .Files}} · in the cell directory: {{range $i, $f := .Files}}{{if $i}}, {{end}}<code>{{$f}}</code>{{end}}{{end}}</p>
{{template "cellbody" .}}
{{template "check"}}
</body></html>
`

// repeatRows are a repeated cell's means over its repeats with their interval and CV (the
// other rows of the page are repeat 1's).
func repeatRows(m *cell.Manifest) []kv {
	rs := repeatStats(m)
	if rs == nil {
		return nil
	}
	out := []kv{{"repeats", fmt.Sprintf("%d (the rows above are repeat 1's; below the mean over the repeats, %g%% interval, CV)", len(m.Repeats), 100*rs.Level)}}
	units := map[string]string{"ttft_ms": " ms", "tpot_ms": " ms", "e2el_ms": " ms", "output_throughput": " tokens/s", "j_per_output_token": " J/token"}
	for _, k := range cell.RepeatMetricKeys {
		e, ok := rs.Metrics[k]
		if !ok {
			continue
		}
		v := round3(e.Mean) + units[k]
		if e.Lo != nil && e.Hi != nil {
			v += fmt.Sprintf(" [%s, %s]", round3(*e.Lo), round3(*e.Hi))
		}
		if e.CV != nil {
			v += fmt.Sprintf(", CV %.1f%%", 100**e.CV)
		}
		if slices.Contains(rs.Unstable, k) {
			v += " (unstable)"
		}
		out = append(out, kv{k + " over repeats", v})
	}
	return out
}

func repeatStats(m *cell.Manifest) *cell.RepeatStats {
	if m == nil {
		return nil
	}
	return m.RepeatStats
}

// truthLines is the cell's truth verdict as the page shows it: the verdict, then every
// check with its value, bound and outcome, then what could not be checked.
func truthLines(t *cell.Truth) []string {
	out := []string{fmt.Sprintf("Truth verdict: %s (%d checks)", t.Verdict, len(t.Checks))}
	for _, c := range t.Checks {
		res := "pass"
		if !c.Pass {
			res = "FAIL"
		}
		l := fmt.Sprintf("truth check %s (%s): %s, bound %s: %s", c.Name, c.Kind, round3(c.Value), c.Bound, res)
		if c.Note != "" {
			l += " (" + c.Note + ")"
		}
		out = append(out, l)
	}
	for _, n := range t.NotChecked {
		out = append(out, "truth: not checked: "+n)
	}
	return out
}

// serverMetricRows are what the server's own Prometheus metrics said over the window.
func serverMetricRows(m *cell.Manifest) []kv {
	if m == nil || m.ServerMetrics == nil {
		return nil
	}
	sm := m.ServerMetrics
	opt := func(p *float64) string {
		if p == nil {
			return "not exported"
		}
		return round3(*p)
	}
	optCount := func(p *float64) string {
		if p == nil {
			return "not exported"
		}
		return count(*p)
	}
	return []kv{
		{"server metrics", fmt.Sprintf("%d scrapes of %s", sm.Samples, sm.URL)},
		{"server: running requests (mean / peak)", opt(sm.MeanRunning) + " / " + opt(sm.PeakRunning)},
		{"server: waiting requests (mean / peak)", opt(sm.MeanWaiting) + " / " + opt(sm.PeakWaiting)},
		{"server: peak KV-cache usage", opt(sm.PeakKVUsage)},
		{"server: preemptions", optCount(sm.Preemptions)},
		{"server: prompt / generation tokens", optCount(sm.PromptTokens) + " / " + optCount(sm.GenerationTokens)},
	}
}
