package capmath

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Pass is one server forward pass as MoE-CAP's wrappers record it (field names as in the
// records: batch_size, latency, seq_lens_sum, forward_mode, expert_activation, gpu_num,
// scheduled_tokens, per_req_info, req_ids).
type Pass struct {
	Mode      string  // "prefill" or "decode"
	BatchSize float64 // sequences in the pass
	LatencyS  float64 // GPU time of the pass, seconds
	// SeqLensSum: SGLang decode: the batch's context positions; vLLM decode: tokens
	// scheduled (about the batch size); prefill: tokens prefilled.
	SeqLensSum float64
	// Activation is the mean number of routed experts active per MoE layer in the pass.
	Activation      float64
	GPUs            int     // gpu_num of the record; 0 means "use the cell's"
	ScheduledTokens float64 // 0 when absent
	PerReqInfo      []ReqInfo
	ReqIDs          []string
}

// ReqInfo is one request's share of a prefill pass.
type ReqInfo struct {
	ReqID       string
	ExtendLen   float64
	TotalLen    float64
	PromptLen   float64
	IsLastChunk bool
}

// windowFile is profile.WindowFile (capmath does not import profile).
const windowFile = "moecapd_window.jsonl"

// rawPass is a pass record as the wrappers write it. Numbers that one version writes as
// ints and another as floats, or as null, are read leniently.
type rawPass struct {
	ForwardPassID    json.RawMessage `json:"forward_pass_id,omitempty"`
	BatchSize        json.RawMessage `json:"batch_size"`
	Latency          json.RawMessage `json:"latency"`
	SeqLensSum       json.RawMessage `json:"seq_lens_sum"`
	ForwardMode      string          `json:"forward_mode"`
	ExpertActivation json.RawMessage `json:"expert_activation"`
	GPUNum           json.RawMessage `json:"gpu_num"`
	ScheduledTokens  json.RawMessage `json:"scheduled_tokens"`
	PerReqInfo       []rawReqInfo    `json:"per_req_info"`
	ReqIDs           []any           `json:"req_ids"`
}

// rawReqInfo is one request's share of a prefill pass. SGLang names the request by req_id
// (a string or a number), older wrappers by req_pool_idx.
type rawReqInfo struct {
	ReqID       any             `json:"req_id"`
	ReqPoolIdx  any             `json:"req_pool_idx"`
	ExtendLen   json.RawMessage `json:"extend_len"`
	TotalLen    json.RawMessage `json:"total_len"`
	PromptLen   json.RawMessage `json:"prompt_len"`
	IsLastChunk bool            `json:"is_last_chunk"`
}

// idString turns a JSON request id (string or number) into one comparable form.
func idString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		return fmt.Sprint(x)
	}
}

// number reads a JSON number; ok is false for null, absent or anything else (a list, a
// string), which MoE-CAP treats as "no value".
func number(r json.RawMessage) (float64, bool) {
	// Unmarshal leaves f alone for null and reports success, so null is checked first.
	if len(r) == 0 || string(r) == "null" {
		return 0, false
	}
	var f float64
	if err := json.Unmarshal(r, &f); err != nil {
		return 0, false
	}
	return f, true
}

// Records is what ReadRecords found.
type Records struct {
	Passes []Pass
	// Files are the record files read, relative to the records directory.
	Files []string
	// Skipped counts records left out, by reason, the way MoE-CAP skips them (no or negative
	// expert_activation, no latency, unknown forward_mode).
	Skipped map[string]int
	// Copies are record files left out because every record in them was already read from
	// another file (the vLLM wrapper's own log next to the client's dump): each pass counts
	// once.
	Copies []string

	keys []string // canonical form of each record of one file, while reading it
}

// ReadRecords reads every pass record under dir: SGLang's
// <model path>/expert_distribution_record.jsonl, vLLM's JSONL or JSON dumps (a bare array,
// or the /dump_batch_recording reply {"status","records":[…],"total_records"}). Files that
// hold no records (vLLM's flag files, state files) are passed over. A missing dir is no
// error: the result is empty.
func ReadRecords(dir string) (*Records, error) {
	recs := &Records{Skipped: map[string]int{}}
	// moecap helper (issue 9): moecapd writes the recording window, each pass once, to
	// moecapd_window.jsonl (profile.WindowFile). The wrappers' own files beside it hold more
	// (SGLang: every pass since start-up, warm-up included; vLLM: its expert log of every
	// pass), so when the window file exists it is the only one read. Its records are the
	// wrappers' verbatim (plus a context_tokens key that is not read here).
	if b, err := os.ReadFile(filepath.Join(dir, windowFile)); err == nil {
		if _, err := decodeRecords(b, recs); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, windowFile), err)
		}
		recs.Files = []string{windowFile}
		return recs, nil
	}
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path == dir {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		ext := strings.ToLower(filepath.Ext(path))
		if ext != ".json" && ext != ".jsonl" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		file := &Records{Skipped: map[string]int{}}
		n, err := decodeRecords(b, file)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if n == 0 {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		copyOf := true
		for _, k := range file.keys {
			if !seen[k] {
				copyOf = false
				break
			}
		}
		if copyOf {
			recs.Copies = append(recs.Copies, rel)
			return nil
		}
		for _, k := range file.keys {
			seen[k] = true
		}
		recs.Passes = append(recs.Passes, file.Passes...)
		for k, v := range file.Skipped {
			recs.Skipped[k] += v
		}
		recs.Files = append(recs.Files, rel)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(recs.Files)
	return recs, nil
}

// decodeRecords reads a stream of JSON values (one document or JSON lines) and adds the
// pass records among them. It returns how many records the bytes held.
func decodeRecords(b []byte, recs *Records) (int, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	n := 0
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			if n == 0 {
				// Not a record file (a flag file that happens to end in .json): pass over it.
				return 0, nil
			}
			return n, fmt.Errorf("after %d records: %w", n, err)
		}
		n += addValue(v, recs)
	}
}

func addValue(v json.RawMessage, recs *Records) int {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return 0
	}
	switch v[0] {
	case '[':
		var arr []json.RawMessage
		if json.Unmarshal(v, &arr) != nil {
			return 0
		}
		n := 0
		for _, e := range arr {
			n += addValue(e, recs)
		}
		return n
	case '{':
		var probe struct {
			Records     json.RawMessage `json:"records"`
			ForwardMode *string         `json:"forward_mode"`
		}
		if json.Unmarshal(v, &probe) != nil {
			return 0
		}
		if probe.ForwardMode == nil {
			if len(probe.Records) > 0 {
				return addValue(probe.Records, recs)
			}
			return 0
		}
		var r rawPass
		if json.Unmarshal(v, &r) != nil {
			recs.keys = append(recs.keys, string(v))
			recs.Skipped["malformed record"]++
			return 1
		}
		// The same pass re-encoded by another writer has the same canonical form.
		k, _ := json.Marshal(r)
		recs.keys = append(recs.keys, string(k))
		addPass(r, recs)
		return 1
	}
	return 0
}

func addPass(r rawPass, recs *Records) {
	mode := strings.ToLower(r.ForwardMode)
	if mode == "decoding" {
		mode = "decode"
	}
	if mode != "prefill" && mode != "decode" {
		recs.Skipped[fmt.Sprintf("forward_mode %q", r.ForwardMode)]++
		return
	}
	act, ok := number(r.ExpertActivation)
	if !ok || act < 0 {
		recs.Skipped["no expert_activation"]++
		return
	}
	lat, ok := number(r.Latency)
	if !ok || lat <= 0 {
		recs.Skipped["no latency"]++
		return
	}
	bs, _ := number(r.BatchSize)
	sl, _ := number(r.SeqLensSum)
	g, _ := number(r.GPUNum)
	st, _ := number(r.ScheduledTokens)
	p := Pass{Mode: mode, BatchSize: bs, LatencyS: lat, SeqLensSum: sl, Activation: act, GPUs: int(g), ScheduledTokens: st}
	for _, ri := range r.PerReqInfo {
		id := ri.ReqID
		if id == nil {
			id = ri.ReqPoolIdx
		}
		e, _ := number(ri.ExtendLen)
		tl, _ := number(ri.TotalLen)
		pl, _ := number(ri.PromptLen)
		p.PerReqInfo = append(p.PerReqInfo, ReqInfo{ReqID: idString(id), ExtendLen: e, TotalLen: tl, PromptLen: pl, IsLastChunk: ri.IsLastChunk})
	}
	for _, id := range r.ReqIDs {
		p.ReqIDs = append(p.ReqIDs, idString(id))
	}
	recs.Passes = append(recs.Passes, p)
}
