// Package records is moecapd's one model of MoE-CAP forward-pass records: the type, the
// reader, the forward-mode classifier, the probe (warm-up) rule, the name of the recording
// window file, and the one percentile definition every latency summary uses.
//
// SGLang's wrapper writes one record per forward pass with forward_mode "prefill" or
// "decode"; vLLM's writes "prefill", "decode", "mixed" (older wrappers: one record for a
// step that both prefilled and decoded; newer ones split it in two) and "unknown" (a step
// with no request scheduled: an idle or padding step). Classify decides what each is once,
// and the three rules that read the modes are methods of Mode (docs/DESIGN.md "Pass
// records").
package records

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Mode is a pass's forward mode as moecapd classifies it.
type Mode int

const (
	// Unknown is any mode string other than the three below: vLLM's "unknown" (no request
	// scheduled in the step) and anything a future wrapper invents.
	Unknown Mode = iota
	// Prefill is "prefill".
	Prefill
	// Decode is "decode" (and "decoding", the runner's detailed_results spelling).
	Decode
	// Mixed is vLLM's "mixed": one step that prefilled some requests and decoded others.
	Mixed
)

// Classify turns a record's forward_mode into a Mode (case-insensitive, as the wrappers
// have written it in both cases).
func Classify(forwardMode string) Mode {
	switch strings.ToLower(strings.TrimSpace(forwardMode)) {
	case "prefill":
		return Prefill
	case "decode", "decoding":
		return Decode
	case "mixed":
		return Mixed
	}
	return Unknown
}

func (m Mode) String() string {
	switch m {
	case Prefill:
		return "prefill"
	case Decode:
		return "decode"
	case Mixed:
		return "mixed"
	}
	return "unknown"
}

// UpstreamDecode is MoE-CAP's S-MBU/S-MFU rule (continuous_batching_utils): every pass that
// is not a prefill is a decode step, "mixed" and "unknown" included. The *_moecap numbers
// use it and nothing else does.
func (m Mode) UpstreamDecode() bool { return m != Prefill }

// DecodeStep is moecapd's rule for every decode figure it measures or derives: the TPOT of
// the server's passes, the decode batch, activation and context means, physical decode
// S-MBU/S-MFU and the TPOT floor. A decode step is a pass that decoded at least one
// sequence: "decode" and "mixed" (the same set MoE-CAP's runner averages its TPOT over). An
// "unknown" step scheduled no request, so it produced no token and is no decode step.
func (m Mode) DecodeStep() bool { return m == Decode || m == Mixed }

// ProbeTokens is the probe rule: a prefill pass of at most this many tokens (seq_lens_sum)
// is a start-up or health-check probe, never a benchmark request, and is left out of every
// prefill figure (MoE-CAP's own filter).
const ProbeTokens = 10

// WindowFile is the one file under a cell's records/ that holds each pass of the recording
// window exactly once (the wrappers' own dumps there hold more: SGLang's every pass since
// start-up, vLLM's expert log every pass since the server started). ReadDir reads only this
// file when it is present.
const WindowFile = "moecapd_window.jsonl"

// Pass is one forward pass as a MoE-CAP wrapper recorded it. Raw keeps every field verbatim
// (detailed_results and the window file copy them through unchanged); the other fields are
// the ones moecapd reads, nil when the record does not carry them.
type Pass struct {
	Raw map[string]json.RawMessage

	ForwardMode      string // verbatim
	Mode             Mode   // Classify(ForwardMode)
	BatchSize        *float64
	Latency          *float64 // seconds; "latency", or in detailed_results rows "ttft"/"tpot"
	SeqLensSum       *float64
	ExpertActivation *float64
	ScheduledTokens  *float64
	GPUNum           *float64
	GPURawType       string
	ForwardPassID    *float64
	PerReqInfo       []ReqChunk
	// ReqIDs are the decode pass's requests (vLLM: request ids; older SGLang: pool slots).
	ReqIDs []string
	// ContextTokens is the batch's total context in a decode pass (every sequence's prompt
	// plus the tokens generated so far). SGLang's seq_lens_sum is that number; vLLM's is the
	// tokens scheduled in the pass, so moecapd rebuilds it (DecodeContexts).
	ContextTokens *float64
}

// ReqChunk is one request's share of a prefill pass (per_req_info).
type ReqChunk struct {
	// Key identifies the request across passes: its req_id, else (older SGLang traces) its
	// pool slot, as MoE-CAP keys it. Empty when the record carries neither.
	Key       string
	ExtendLen *float64
	// TotalLen is total_len verbatim (SGLang: the running total, prefix hits included;
	// vLLM: the prompt length).
	TotalLen    *float64
	PromptLen   *float64 // prompt_len, else (vLLM, where it is the same) total_len
	IsLastChunk bool
	// Slot is req_pool_idx when the record carries it.
	Slot string
}

// Probe reports whether p is a start-up or health-check probe (ProbeTokens).
func (p *Pass) Probe() bool {
	return p.Mode == Prefill && p.SeqLensSum != nil && *p.SeqLensSum <= ProbeTokens
}

// Val is *f, or 0 for an absent number (for arithmetic where MoE-CAP reads absent as 0).
func Val(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// Number reads a JSON number; nil for null, absent, booleans, strings ("N/A") and anything
// else, which MoE-CAP treats as "no value".
func Number(r json.RawMessage) *float64 {
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

// id reads an id that one engine writes as a string and another as an integer.
func id(r json.RawMessage) (string, bool) {
	r = bytes.TrimSpace(r)
	if len(r) == 0 || string(r) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s, true
	}
	if f := Number(r); f != nil {
		return strconv.FormatFloat(*f, 'f', -1, 64), true
	}
	return "", false
}

// Parse reads one record (a JSON object).
func Parse(b []byte) (Pass, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Pass{}, err
	}
	if raw == nil {
		return Pass{}, fmt.Errorf("null is not a pass record")
	}
	p := Pass{Raw: raw}
	if m, ok := raw["forward_mode"]; ok {
		_ = json.Unmarshal(m, &p.ForwardMode)
	}
	p.Mode = Classify(p.ForwardMode)
	p.BatchSize = Number(raw["batch_size"])
	p.Latency = Number(raw["latency"])
	if _, has := raw["latency"]; !has {
		if p.Mode == Prefill {
			p.Latency = Number(raw["ttft"])
		} else {
			p.Latency = Number(raw["tpot"])
		}
	}
	p.SeqLensSum = Number(raw["seq_lens_sum"])
	p.ExpertActivation = Number(raw["expert_activation"])
	p.ScheduledTokens = Number(raw["scheduled_tokens"])
	p.GPUNum = Number(raw["gpu_num"])
	p.ForwardPassID = Number(raw["forward_pass_id"])
	p.ContextTokens = Number(raw["context_tokens"])
	if g, ok := raw["gpu_raw_type"]; ok {
		_ = json.Unmarshal(g, &p.GPURawType)
	}
	if pri, ok := raw["per_req_info"]; ok {
		var infos []map[string]json.RawMessage
		if json.Unmarshal(pri, &infos) == nil {
			for _, in := range infos {
				c := ReqChunk{ExtendLen: Number(in["extend_len"]), TotalLen: Number(in["total_len"]), PromptLen: Number(in["prompt_len"])}
				if c.PromptLen == nil {
					c.PromptLen = c.TotalLen
				}
				if s, ok := id(in["req_id"]); ok {
					c.Key = "id:" + s
				}
				if s, ok := id(in["req_pool_idx"]); ok {
					c.Slot = s
					if c.Key == "" {
						c.Key = "pool:" + s
					}
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
				if s, ok := id(l); ok {
					p.ReqIDs = append(p.ReqIDs, s)
				}
			}
		}
	}
	return p, nil
}

// ParseAll reads records; name says where they came from, for the error.
func ParseAll(name string, raws []json.RawMessage) ([]Pass, error) {
	out := make([]Pass, 0, len(raws))
	for i, r := range raws {
		p, err := Parse(r)
		if err != nil {
			return nil, fmt.Errorf("%s: record %d is not a pass record: %v", name, i+1, err)
		}
		out = append(out, p)
	}
	return out, nil
}
