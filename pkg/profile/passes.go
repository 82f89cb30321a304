package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
)

type acc struct {
	sum float64
	n   int
}

func (a *acc) add(v float64) { a.sum += v; a.n++ }
func (a *acc) mean() *float64 {
	if a.n == 0 {
		return nil
	}
	v := a.sum / float64(a.n)
	return &v
}

// Pass is one server forward pass as a MoE-CAP wrapper recorded it. Raw keeps every field
// verbatim (detailed_results and the window file copy them through unchanged); the other
// fields are the ones moecapd reads, nil when the record does not carry them.
type Pass struct {
	Raw map[string]json.RawMessage

	ForwardMode      string
	BatchSize        *float64
	Latency          *float64 // "latency"; file-shape traces (detailed_results) carry it as "ttft"/"tpot"
	SeqLensSum       *float64
	ExpertActivation *float64
	ScheduledTokens  *float64
	GPUNum           *float64
	GPURawType       string
	ForwardPassID    *float64
	PerReqInfo       []ReqChunk
	ReqIDs           []string
	// ContextTokens is the batch's total context in a decode pass (every sequence's prompt
	// plus the tokens generated so far). SGLang's seq_lens_sum is that number; vLLM's is the
	// tokens scheduled in the pass, so for vLLM moecapd reconstructs it (DecodeContexts).
	ContextTokens *float64
}

// ReqChunk is one request's share of a prefill pass (per_req_info).
type ReqChunk struct {
	// Key identifies the request across passes: its req_id, else (older SGLang traces) its
	// pool slot. Empty when the record carries neither.
	Key         string
	ExtendLen   *float64
	PromptLen   *float64 // prompt_len, else (vLLM, where it is the same) total_len
	IsLastChunk bool
}

func (p *Pass) isPrefill() bool { return p.ForwardMode == "prefill" }

// isDecodeLike is every pass that is not prefill in the runner's decode aggregates
// (decode, decoding, mixed).
func (p *Pass) isDecodeLike() bool {
	return p.ForwardMode == "decode" || p.ForwardMode == "decoding" || p.ForwardMode == "mixed"
}

// warmup is MoE-CAP's probe filter: a prefill pass of at most 10 tokens is a start-up or
// health-check probe, never a benchmark request.
func (p *Pass) warmup() bool { return p.SeqLensSum != nil && *p.SeqLensSum <= 10 }

// jsonNumber reads a JSON number; nil for null, absent, booleans, strings ("N/A") and
// anything else, which MoE-CAP treats as "no value".
func jsonNumber(r json.RawMessage) *float64 {
	r = bytes.TrimSpace(r)
	if len(r) == 0 || r[0] == 'n' || r[0] == 't' || r[0] == 'f' || r[0] == '"' || r[0] == '[' || r[0] == '{' {
		return nil
	}
	f, err := strconv.ParseFloat(string(r), 64)
	if err != nil {
		return nil
	}
	return &f
}

// jsonID reads an id that one engine writes as a string and another as an integer.
func jsonID(r json.RawMessage) (string, bool) {
	r = bytes.TrimSpace(r)
	if len(r) == 0 || string(r) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s, true
	}
	if f := jsonNumber(r); f != nil {
		return strconv.FormatFloat(*f, 'f', -1, 64), true
	}
	return "", false
}

// ParsePass reads one record.
func ParsePass(b []byte) (Pass, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Pass{}, err
	}
	p := Pass{Raw: raw}
	if m, ok := raw["forward_mode"]; ok {
		_ = json.Unmarshal(m, &p.ForwardMode)
	}
	p.BatchSize = jsonNumber(raw["batch_size"])
	p.Latency = jsonNumber(raw["latency"])
	if p.Latency == nil {
		if p.isPrefill() {
			p.Latency = jsonNumber(raw["ttft"])
		} else {
			p.Latency = jsonNumber(raw["tpot"])
		}
	}
	p.SeqLensSum = jsonNumber(raw["seq_lens_sum"])
	p.ExpertActivation = jsonNumber(raw["expert_activation"])
	p.ScheduledTokens = jsonNumber(raw["scheduled_tokens"])
	p.GPUNum = jsonNumber(raw["gpu_num"])
	p.ForwardPassID = jsonNumber(raw["forward_pass_id"])
	p.ContextTokens = jsonNumber(raw["context_tokens"])
	if g, ok := raw["gpu_raw_type"]; ok {
		_ = json.Unmarshal(g, &p.GPURawType)
	}
	if pri, ok := raw["per_req_info"]; ok {
		var infos []map[string]json.RawMessage
		if json.Unmarshal(pri, &infos) == nil {
			for _, in := range infos {
				c := ReqChunk{ExtendLen: jsonNumber(in["extend_len"]), PromptLen: jsonNumber(in["prompt_len"])}
				if c.PromptLen == nil {
					c.PromptLen = jsonNumber(in["total_len"])
				}
				if id, ok := jsonID(in["req_id"]); ok {
					c.Key = "id:" + id
				} else if id, ok := jsonID(in["req_pool_idx"]); ok {
					c.Key = "pool:" + id
				}
				_ = json.Unmarshal(in["is_last_chunk"], &c.IsLastChunk)
				p.PerReqInfo = append(p.PerReqInfo, c)
			}
		}
	}
	if ids, ok := raw["req_ids"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(ids, &list) == nil {
			for _, l := range list {
				if s, ok := jsonID(l); ok {
					p.ReqIDs = append(p.ReqIDs, s)
				}
			}
		}
	}
	return p, nil
}

// ParsePasses reads records; name says where they came from, for the error.
func ParsePasses(name string, raws []json.RawMessage) ([]Pass, error) {
	out := make([]Pass, 0, len(raws))
	for i, r := range raws {
		p, err := ParsePass(r)
		if err != nil {
			return nil, fmt.Errorf("%s: record %d is not a pass record: %v", name, i+1, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// UpstreamTTFTS is MoE-CAP's TTFT in seconds: per request, the sum of the latencies of every
// prefill pass holding one of its chunks, from the first chunk to the one marked
// is_last_chunk; the mean over the requests whose last chunk was seen. Passes with
// seq_lens_sum ≤ 10 (probes) and prefill passes without per_req_info are left out. Nil when
// no request completed its prefill in passes.
func UpstreamTTFTS(passes []Pass) *float64 {
	open := map[string]float64{}
	var done acc
	for i := range passes {
		p := &passes[i]
		if !p.isPrefill() || p.warmup() || len(p.PerReqInfo) == 0 || p.Latency == nil {
			continue
		}
		for _, c := range p.PerReqInfo {
			if c.Key == "" {
				continue
			}
			open[c.Key] += *p.Latency
			if c.IsLastChunk {
				done.add(open[c.Key])
				delete(open, c.Key)
			}
		}
	}
	return done.mean()
}

// clientPrefillPasses is the prefill pass set every runner prefill aggregate reads: probes
// (seq_lens_sum ≤ 10) dropped; then, when the batch sizes add up to more than the client's
// requests, up to four leading single-request passes shorter than 1000 tokens are trimmed —
// but only if the trim makes the sum equal the request count exactly; otherwise nothing
// beyond the probe filter is dropped.
func clientPrefillPasses(passes []Pass, nRequests int) []Pass {
	var pre []Pass
	for _, p := range passes {
		if p.isPrefill() && !p.warmup() {
			pre = append(pre, p)
		}
	}
	if nRequests <= 0 {
		return pre
	}
	rows := func(ps []Pass) int {
		n := 0
		for i := range ps {
			if ps[i].BatchSize != nil {
				n += int(*ps[i].BatchSize)
			}
		}
		return n
	}
	const maxTrim = 4
	t := pre
	for len(t) > 0 && len(pre)-len(t) < maxTrim && rows(t) > nRequests &&
		t[0].BatchSize != nil && *t[0].BatchSize == 1 && val(t[0].SeqLensSum) < 1000 {
		t = t[1:]
	}
	if rows(t) == nRequests {
		return t
	}
	return pre
}

func val(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

// PassStats are the figures MoE-CAP's runner derives from the pass records, with its
// selection rules, for nRequests client requests. Nil means "no pass gave a value".
type PassStats struct {
	Passes, PrefillPasses, DecodePasses int

	TTFTS               *float64 // UpstreamTTFTS
	PrefillPassLatencyS *float64 // mean latency over the client's prefill passes
	TPOTS               *float64 // mean latency over decode-like passes
	ActivationPrefill   *float64
	ActivationDecode    *float64
	PrefillBatch        *float64
	DecodeBatch         *float64
	// PrefillForwardedTokens and PrefillStepElapsedS sum scheduled_tokens and latency over the
	// client's prefill passes; nil unless every one of them carries the field.
	PrefillForwardedTokens *int
	PrefillStepElapsedS    *float64
	// DecodeContextMean is the mean batch context of the decode passes that have one.
	DecodeContextMean *float64
	GPURawType        string
	GPUNum            *float64
}

// StatsOf computes PassStats.
func StatsOf(passes []Pass, nRequests int) PassStats {
	s := PassStats{Passes: len(passes), TTFTS: UpstreamTTFTS(passes)}
	if len(passes) > 0 {
		s.GPURawType = passes[0].GPURawType
		s.GPUNum = passes[0].GPUNum
	}
	var act, bs, lat [2]acc
	var ctx acc
	for i := range passes {
		p := &passes[i]
		switch {
		case p.isPrefill():
			s.PrefillPasses++
		case p.isDecodeLike():
			s.DecodePasses++
			if p.ExpertActivation != nil && *p.ExpertActivation >= 0 {
				act[1].add(*p.ExpertActivation)
			}
			if p.Latency != nil && *p.Latency >= 0 {
				lat[1].add(*p.Latency)
			}
			if p.BatchSize != nil && *p.BatchSize >= 0 {
				bs[1].add(*p.BatchSize)
			}
			if p.ContextTokens != nil {
				ctx.add(*p.ContextTokens)
			}
		}
	}
	cp := clientPrefillPasses(passes, nRequests)
	fwd, el := 0, 0.0
	fwdOK, elOK := len(cp) > 0, len(cp) > 0
	for i := range cp {
		p := &cp[i]
		if p.ExpertActivation != nil && *p.ExpertActivation >= 0 {
			act[0].add(*p.ExpertActivation)
		}
		if p.Latency != nil && *p.Latency >= 0 {
			lat[0].add(*p.Latency)
		}
		if p.BatchSize != nil && *p.BatchSize >= 0 {
			bs[0].add(*p.BatchSize)
		}
		if p.ScheduledTokens != nil {
			fwd += int(*p.ScheduledTokens)
		} else {
			fwdOK = false
		}
		if p.Latency != nil {
			el += *p.Latency
		} else {
			elOK = false
		}
	}
	if fwdOK {
		s.PrefillForwardedTokens = &fwd
	}
	if elOK {
		s.PrefillStepElapsedS = &el
	}
	s.ActivationPrefill, s.ActivationDecode = act[0].mean(), act[1].mean()
	s.PrefillBatch, s.DecodeBatch = bs[0].mean(), bs[1].mean()
	s.PrefillPassLatencyS, s.TPOTS = lat[0].mean(), lat[1].mean()
	s.DecodeContextMean = ctx.mean()
	return s
}

// DecodeContexts fills ContextTokens of every decode pass. SGLang's seq_lens_sum already is
// the batch's context. vLLM's is the tokens scheduled in the pass, so the context is rebuilt
// from the trace itself: each request's prompt_len from its prefill chunks, plus one token
// from its prefill and one per decode pass it appeared in before this one. A decode pass
// holding a request whose prompt length the trace never showed keeps ContextTokens nil.
func DecodeContexts(passes []Pass, flavor string) {
	if flavor != "vllm" {
		for i := range passes {
			if p := &passes[i]; p.isDecodeLike() && p.ContextTokens == nil && p.SeqLensSum != nil {
				v := *p.SeqLensSum
				p.ContextTokens = &v
			}
		}
		return
	}
	prompt := map[string]float64{}
	generated := map[string]float64{}
	for i := range passes {
		p := &passes[i]
		if p.isPrefill() {
			for _, c := range p.PerReqInfo {
				if c.Key != "" && c.PromptLen != nil {
					prompt[c.Key] = *c.PromptLen
					if c.IsLastChunk {
						generated[c.Key] = 1 // the prefill's own first token
					}
				}
			}
			continue
		}
		if !p.isDecodeLike() || len(p.ReqIDs) == 0 || p.ContextTokens != nil {
			continue
		}
		sum, known := 0.0, true
		for _, id := range p.ReqIDs {
			k := "id:" + id
			pl, ok := prompt[k]
			if !ok {
				known = false
			}
			sum += pl + generated[k]
			generated[k]++
		}
		if known {
			p.ContextTokens = &sum
		}
	}
}

// passJSON is a pass as the window file holds it: the record verbatim, plus context_tokens
// when moecapd knows the decode batch's context.
func passJSON(p *Pass) ([]byte, error) {
	m := make(map[string]json.RawMessage, len(p.Raw)+1)
	for k, v := range p.Raw {
		m[k] = v
	}
	if p.ContextTokens != nil {
		m["context_tokens"] = json.RawMessage(strconv.FormatFloat(*p.ContextTokens, 'f', -1, 64))
	}
	return json.Marshal(m)
}

// WindowFile is the one file under a cell's records/ that holds each pass of the recording
// window exactly once (the wrappers' own dumps there hold more: SGLang's every pass since
// start-up, vLLM's expert log every pass since the server started). capmath reads only this
// file when it is present.
const WindowFile = "moecapd_window.jsonl"

// WriteWindow writes passes to dir/WindowFile.
func WriteWindow(dir string, passes []Pass) (string, error) {
	var buf bytes.Buffer
	for i := range passes {
		b, err := passJSON(&passes[i])
		if err != nil {
			return "", err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	path := filepath.Join(dir, WindowFile)
	return path, writeAtomic(path, buf.Bytes())
}
