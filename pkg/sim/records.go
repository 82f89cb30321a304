package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Record is one forward pass as the MoE-CAP wrappers write it (sglang.py's record_dict,
// vllm.py's rec_dict): the runner computes TTFT, TPOT, S-MBU and S-MFU from these.
type Record struct {
	ForwardPassID    int     `json:"forward_pass_id"`
	BatchSize        int     `json:"batch_size"`
	Latency          float64 `json:"latency"`
	SeqLensSum       int     `json:"seq_lens_sum"`
	ForwardMode      string  `json:"forward_mode"`
	ExpertActivation float64 `json:"expert_activation"`
	GPUNum           int     `json:"gpu_num"`
	GPURawType       string  `json:"gpu_raw_type"`
	ScheduledTokens  int     `json:"scheduled_tokens"`
	// PerReqInfo is set on prefill passes: MoE-CAP sums, per req_id, the latency of every
	// prefill pass a request took part in until is_last_chunk, and calls that its TTFT.
	PerReqInfo []ReqInfo `json:"per_req_info,omitempty"`
	// ReqIDs is set on decode passes.
	ReqIDs []string `json:"req_ids,omitempty"`
}

// ReqInfo is one request's share of a prefill pass.
type ReqInfo struct {
	ReqID       string `json:"req_id"`
	ExtendLen   int    `json:"extend_len"`
	TotalLen    int    `json:"total_len"`
	PromptLen   int    `json:"prompt_len"`
	IsLastChunk bool   `json:"is_last_chunk"`
}

// recorder keeps the passes between a start and a stop call.
type recorder struct {
	mu        sync.Mutex
	recording bool
	records   []Record
}

// on reports whether passes are being kept; the scheduler asks before building a record so
// that an idle recorder costs nothing per pass.
func (r *recorder) on() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recording
}

func (r *recorder) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recording {
		r.records = append(r.records, rec)
	}
}

// start begins a fresh recording. Unlike the real sglang wrapper, records of an earlier
// start/stop cycle do not leak into the next dump.
func (r *recorder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = true
	r.records = nil
}

func (r *recorder) stop() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = false
	return len(r.records)
}

func (r *recorder) clear() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.records)
	r.records = nil
	return n
}

func (r *recorder) snapshot() ([]Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.records...), r.recording
}

// SGLangRecordPath is where the sglang wrapper dumps its records:
// <dir>/<model path as passed to --model-path>/expert_distribution_record.jsonl.
func SGLangRecordPath(dir, modelPath string) string {
	return filepath.Join(dir, modelPath, "expert_distribution_record.jsonl")
}

// writeJSONL writes records one JSON object per line, through a temp file and a rename so
// that a reader never sees half a dump.
func writeJSONL(path string, recs []Record) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create records dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".records-*")
	if err != nil {
		return fmt.Errorf("write records: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write records: %w", err)
	}
	return nil
}
