package cell

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/profile"
)

// MaxRequestRate bounds --request-rate and --rates (requests per second).
const MaxRequestRate = 1e6

// Load is the native client's load beyond the guide's closed loop (issue 21.4): an open
// loop at RequestRate (gamma arrivals of shape Burstiness, 1: Poisson), a sweep over Rates
// in one server lifetime, goodput under SLO ("ttft=…,tpot=…[,share=…]"), and FindMaxRate,
// the search of the highest rate meeting the SLO in at most MaxRateSteps benches (0:
// profile.DefaultMaxRateSteps). The zero value is the closed loop. The same value comes
// from launch-and-bench's flags, a matrix group's keys and a submitted job's fields (the
// JSON names below); Check and Apply are its one validation, whichever it came from.
type Load struct {
	RequestRate    float64   `json:"request_rate,omitempty"`
	Burstiness     float64   `json:"burstiness,omitempty"`
	MaxConcurrency int       `json:"max_concurrency,omitempty"`
	Rates          []float64 `json:"rates,omitempty"`
	SLO            string    `json:"slo,omitempty"`
	FindMaxRate    bool      `json:"find_max_rate,omitempty"`
	MaxRateSteps   int       `json:"max_rate_steps,omitempty"`
}

// OpenLoop is whether any open-loop load is asked for.
func (l Load) OpenLoop() bool {
	return l.RequestRate > 0 || len(l.Rates) > 0 || l.FindMaxRate
}

// Benches is how many measured benches the load runs at most: one per listed rate plus
// --find-max-rate's probes; 1 for the closed loop and a single open-loop rate.
func (l Load) Benches() int {
	n := len(l.Rates)
	if l.FindMaxRate {
		n += l.steps()
	}
	return max(n, 1)
}

func (l Load) steps() int {
	if l.MaxRateSteps > 0 {
		return l.MaxRateSteps
	}
	return profile.DefaultMaxRateSteps
}

// KeyStyle is how the user wrote the load settings: flags, matrix-file keys or a submitted
// job's JSON fields.
type KeyStyle int

// Key styles.
const (
	FlagKeys KeyStyle = iota // --request-rate
	YAMLKeys                 // request_rate: (a matrix group)
	JSONKeys                 // "request_rate" (a submitted job)
)

// LoadKeys names the load settings the way the user gave them, so an error names the key
// to fix: Source is the file (config.Error's File: "settings", the matrix file, "job"),
// Prefix comes before each key ("groups.g.").
type LoadKeys struct {
	Source string
	Prefix string
	Style  KeyStyle
}

// LoadFlags names the settings as launch-and-bench's flags.
var LoadFlags = LoadKeys{Source: "settings", Style: FlagKeys}

// Name is the setting of field (a JSON name such as "request_rate") as the user wrote it.
func (k LoadKeys) Name(field string) string {
	if k.Style == FlagKeys {
		return "--" + strings.ReplaceAll(field, "_", "-")
	}
	return k.Prefix + field
}

// set is how to write field with value v in the user's input, for a fix (the SLO is a
// string; the other values are numbers).
func (k LoadKeys) set(field, v string) string {
	if field == "slo" && k.Style != FlagKeys {
		v = strconv.Quote(v)
	}
	switch k.Style {
	case YAMLKeys:
		return field + ": " + v
	case JSONKeys:
		return strconv.Quote(field) + ": " + v
	}
	return k.Name(field) + " " + v
}

func (k LoadKeys) err(field, format string, a ...any) error {
	return exitcode.New(exitcode.Usage, &config.Error{File: k.Source, Key: k.Name(field), Msg: fmt.Sprintf(format, a...)})
}

func (k LoadKeys) usage(err error) error { return exitcode.New(exitcode.Usage, err) }

// Check refuses load settings that cannot run, each error naming the key and the fix
// (exit 2), before anything starts. The SLO is parsed here too: a typo fails now, not after
// the server loaded its weights.
func (l Load) Check(k LoadKeys) error {
	if err := config.CheckFloat(k.Source, k.Name("request_rate"), l.RequestRate, 0, MaxRequestRate); err != nil {
		return k.usage(err)
	}
	for _, r := range l.Rates {
		if err := config.CheckFloat(k.Source, k.Name("rates"), r, 1e-6, MaxRequestRate); err != nil {
			return k.usage(err)
		}
	}
	if err := config.CheckFloat(k.Source, k.Name("burstiness"), l.Burstiness, 0, 1000); err != nil {
		return k.usage(err)
	}
	if err := config.CheckInt(k.Source, k.Name("max_concurrency"), int64(l.MaxConcurrency), 0, 1<<20, "open-loop requests in flight; 0: no cap"); err != nil {
		return k.usage(err)
	}
	if err := config.CheckInt(k.Source, k.Name("max_rate_steps"), int64(l.MaxRateSteps), 0, MaxRates, "benches the max-rate search may run; 0: the default"); err != nil {
		return k.usage(err)
	}
	if len(l.Rates)+l.MaxRateSteps > MaxRates {
		return k.err("rates", "%d rates and %s %d: at most %d benches in one cell; split the sweep", len(l.Rates), k.Name("max_rate_steps"), l.MaxRateSteps, MaxRates)
	}
	if (l.Burstiness > 0 || l.MaxConcurrency > 0) && !l.OpenLoop() {
		return k.err("burstiness", "%s and %s shape the open loop: give %s, %s or %s too",
			k.Name("burstiness"), k.Name("max_concurrency"), k.set("request_rate", "R"), k.Name("rates"), k.Name("find_max_rate"))
	}
	if l.SLO != "" {
		if _, err := profile.ParseSLO(l.SLO); err != nil {
			return k.err("slo", "%s", strings.TrimPrefix(err.Error(), "--slo "))
		}
	}
	if l.FindMaxRate && l.SLO == "" {
		return k.err("find_max_rate", "%s needs an SLO to meet: add %s (share=0.9 by default)", k.Name("find_max_rate"), k.set("slo", "ttft=500ms,tpot=50ms"))
	}
	return nil
}

// Apply puts the load settings into a cell's config (after Check). The open loop and the
// SLO need the native client's streamed latencies; repeats of a sweep are not supported.
func (l Load) Apply(c *Config, k LoadKeys) error {
	if !l.OpenLoop() && l.SLO == "" {
		c.Load = Load{}
		return nil
	}
	if c.Client != ClientNative {
		return k.err(l.firstSet(), "%s, %s, %s and %s need the native client (--client native); the MoE-CAP runner sends its own closed-loop waves",
			k.Name("request_rate"), k.Name("rates"), k.Name("slo"), k.Name("find_max_rate"))
	}
	if c.Native.PromptStyle == profile.PromptUpstream && l.SLO != "" {
		return k.err("slo", "%s needs streamed TTFT and TPOT: use --prompt-style exact-ids (upstream's non-streaming replies have only E2E latency)", k.Name("slo"))
	}
	if err := l.CheckRepeats(c.Repeats, k); err != nil {
		return err
	}
	c.Native.RequestRate, c.Native.Burstiness, c.Native.MaxConcurrency = l.RequestRate, l.Burstiness, l.MaxConcurrency
	c.Native.SLO = nil
	if l.SLO != "" {
		slo, err := profile.ParseSLO(l.SLO)
		if err != nil {
			return k.err("slo", "%s", strings.TrimPrefix(err.Error(), "--slo "))
		}
		c.Native.SLO = &slo
	}
	c.Load = l
	c.Load.Rates = append([]float64(nil), l.Rates...)
	return nil
}

// firstSet is the first load setting given, for an error about them all.
func (l Load) firstSet() string {
	switch {
	case l.RequestRate > 0:
		return "request_rate"
	case len(l.Rates) > 0:
		return "rates"
	case l.FindMaxRate:
		return "find_max_rate"
	}
	return "slo"
}

// CheckRepeats refuses repeats of a sweep (a matrix checks it when it loads, before the
// run's client is known).
func (l Load) CheckRepeats(repeats int, k LoadKeys) error {
	if repeats > 1 && (len(l.Rates) > 0 || l.FindMaxRate) {
		return k.err("rates", "%s with %s or %s is not supported: a sweep is one bench per rate; drop the repeats or run the rates as separate cells", k.Name("repeats"), k.Name("rates"), k.Name("find_max_rate"))
	}
	return nil
}

// IDPart is the cell-id part that names an open-loop load ("" for the closed loop, whose
// id stays the guide's five parts): "rate<R>" for --request-rate, "rates<r1>-<r2>-…" for a
// sweep, "maxrate" for --find-max-rate followed by its step budget ("s<K>", when not the
// default) and its SLO ("ttft500ms", "tpot50ms", "share0_75" when not the default 0.9),
// then "b<B>" for a burstiness other than Poisson's 1 and "c<N>" for a concurrency cap,
// joined by '-', '.' written '_'. The SLO names a search (it decides which rates run) but
// not a closed loop or a sweep, where it only judges the same measurement. A part longer
// than MaxPartLen keeps its head (cut at a '-') and ends in "-h" and 10 hex digits of the
// SHA-256 of the whole part, so it stays unique and is the same on every run.
func (l Load) IDPart() string {
	if !l.OpenLoop() {
		return ""
	}
	var ps []string
	if len(l.Rates) > 0 {
		rs := make([]string, len(l.Rates))
		for i, r := range l.Rates {
			rs[i] = idNum(r)
		}
		ps = append(ps, "rates"+strings.Join(rs, "-"))
	}
	if l.RequestRate > 0 {
		ps = append(ps, "rate"+idNum(l.RequestRate))
	}
	if l.FindMaxRate {
		ps = append(ps, "maxrate")
		if l.MaxRateSteps > 0 && l.MaxRateSteps != profile.DefaultMaxRateSteps {
			ps = append(ps, "s"+strconv.Itoa(l.MaxRateSteps))
		}
		if slo, err := profile.ParseSLO(l.SLO); err == nil {
			if slo.TTFT > 0 {
				ps = append(ps, "ttft"+idDur(slo.TTFT.String()))
			}
			if slo.TPOT > 0 {
				ps = append(ps, "tpot"+idDur(slo.TPOT.String()))
			}
			if slo.Share != profile.DefaultGoodShare {
				ps = append(ps, "share"+idNum(slo.Share))
			}
		}
	}
	if l.Burstiness > 0 && l.Burstiness != 1 {
		ps = append(ps, "b"+idNum(l.Burstiness))
	}
	if l.MaxConcurrency > 0 {
		ps = append(ps, "c"+strconv.Itoa(l.MaxConcurrency))
	}
	part := strings.Join(ps, "-")
	if len(part) <= MaxPartLen {
		return part
	}
	sum := sha256.Sum256([]byte(part))
	const tail = 2 + 10 // "-h" and the hash
	head := part[:MaxPartLen-tail]
	if i := strings.LastIndexByte(head, '-'); i > 0 {
		head = head[:i]
	}
	return head + "-h" + hex.EncodeToString(sum[:])[:10]
}

// Describe says the load in words for plans and dry runs: "closed loop" or the open loop's
// settings as the user would give them.
func (l Load) Describe() string {
	if !l.OpenLoop() {
		if l.SLO != "" {
			return "closed loop, goodput under " + l.SLO
		}
		return "closed loop"
	}
	var ps []string
	if len(l.Rates) > 0 {
		rs := make([]string, len(l.Rates))
		for i, r := range l.Rates {
			rs[i] = strconv.FormatFloat(r, 'g', -1, 64)
		}
		ps = append(ps, "rates "+strings.Join(rs, ", ")+" req/s")
	}
	if l.RequestRate > 0 {
		ps = append(ps, "rate "+strconv.FormatFloat(l.RequestRate, 'g', -1, 64)+" req/s")
	}
	if l.FindMaxRate {
		ps = append(ps, fmt.Sprintf("highest rate meeting the SLO in ≤ %d benches", l.steps()))
	}
	if l.SLO != "" {
		ps = append(ps, "SLO "+l.SLO)
	}
	if l.Burstiness > 0 && l.Burstiness != 1 {
		ps = append(ps, "burstiness "+strconv.FormatFloat(l.Burstiness, 'g', -1, 64))
	}
	if l.MaxConcurrency > 0 {
		ps = append(ps, "at most "+strconv.Itoa(l.MaxConcurrency)+" in flight")
	}
	return "open loop: " + strings.Join(ps, "; ")
}

// idNum writes a number for an id part: plain decimal (no exponent), '.' as '_'.
func idNum(f float64) string {
	return strings.ReplaceAll(strconv.FormatFloat(f, 'f', -1, 64), ".", "_")
}

// idDur writes a Go duration for an id part: "1.5s" as "1_5s", "µs" as "us".
func idDur(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, ".", "_"), "µ", "u")
}
