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
	"strings"
)

// windowFile is profile.WindowFile (capmath does not import profile).
const windowFile = "moecapd_window.jsonl"

// rawPass is a pass record as the wrappers write it. Numbers that one version writes as
// ints and another as floats, or as null, are read leniently.
type rawPass struct {
	BatchSize        json.RawMessage `json:"batch_size"`
	Latency          json.RawMessage `json:"latency"`
	SeqLensSum       json.RawMessage `json:"seq_lens_sum"`
	ForwardMode      string          `json:"forward_mode"`
	ExpertActivation json.RawMessage `json:"expert_activation"`
	GPUNum           json.RawMessage `json:"gpu_num"`
	// ContextTokens is moecapd's decode-batch context in the window file (vLLM's
	// seq_lens_sum is scheduled tokens, not context); preferred for decode when present.
	ContextTokens json.RawMessage `json:"context_tokens"`
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
	// (SGLang: every pass since start-up; vLLM: its expert log of every pass), so when the
	// window file exists it is the only one read.
	if b, err := os.ReadFile(filepath.Join(dir, windowFile)); err == nil {
		if _, err := decodeRecords(b, recs); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, windowFile), err)
		}
		recs.Files = []string{windowFile}
		return recs, nil
	}
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
		n, err := decodeRecords(b, recs)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if n > 0 {
			rel, _ := filepath.Rel(dir, path)
			recs.Files = append(recs.Files, rel)
		}
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
			recs.Skipped["malformed record"]++
			return 1
		}
		addPass(r, recs)
		return 1
	}
	return 0
}

func addPass(r rawPass, recs *Records) {
	mode := strings.ToLower(r.ForwardMode)
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
	if c, ok := number(r.ContextTokens); ok && mode == "decode" {
		sl = c // Pass.SeqLensSum is read as the batch's context for decode passes
	}
	g, _ := number(r.GPUNum)
	recs.Passes = append(recs.Passes, Pass{Mode: mode, BatchSize: bs, LatencyS: lat,
		SeqLensSum: sl, Activation: act, GPUs: int(g)})
}
