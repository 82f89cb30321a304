package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Record is one forward pass as the engine reports it (seq_lens_sum: the batch's context);
// the recorder writes it in the flavor's wrapper shape (recorder.wrapperRecord).
type Record struct {
	ForwardPassID    int     `json:"forward_pass_id"` // assigned by the recorder
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

// recorder keeps the passes the way the flavor's MoE-CAP wrapper does, and writes them in
// that wrapper's shapes (wrapperRecord):
//
//   - sglang: every pass since start-up is kept, recording or not (the wrapper never clears
//     its list), beginning with a start-up probe; start/stop only toggle recording; a dump
//     writes the whole list. Records carry forward_pass_id, per_req_info with pool-slot ids,
//     decode req_ids as pool slots, scheduled_tokens, and seq_lens_sum is the batch's context.
//   - vllm: passes are kept between start (which clears) and stop, in
//     vllm_batch_records.jsonl in the recorder dir (written at stop and dump; the wrapper
//     appends per pass, the content is the same); seq_lens_sum (and scheduled_tokens) is the
//     tokens scheduled in the pass, decode req_ids are request ids. With
//     --enable-expert-distribution-metrics every pass since start-up is also logged, with
//     forward_pass_id, to logs/expert_distribution/<model>_<time>/expert_distribution_record.jsonl
//     (written at dump and at close).
//
// Passes are kept as the engine hands them over and converted to the wrapper's shape only
// when written: the engine's pass loop pays an append, not a JSON map, per pass.
type recorder struct {
	mu        sync.Mutex
	flavor    string
	dir       string // recorder dir; "" keeps nothing on disk
	model     string
	expertLog string // vllm expert log file, "" when off
	recording bool
	all       []Record // sglang: every pass; vllm with the expert log: every pass
	window    []Record // vllm: the passes since start
	passID    int
}

// newRecorder sets up the flavor's recorder; sglang's list starts with the probe pass the
// real server records before it reports ready.
func newRecorder(flavor, dir, model string, expertLog bool, gpuNum int, gpuRaw string) *recorder {
	r := &recorder{flavor: flavor, dir: dir, model: model}
	if flavor == FlavorVLLM && expertLog && dir != "" {
		r.expertLog = filepath.Join(dir, "logs", "expert_distribution",
			strings.ReplaceAll(model, "/", "_")+"_"+time.Now().Format("20060102_150405"), "expert_distribution_record.jsonl")
	}
	if flavor == FlavorSGLang {
		// A start-up probe the wrapper records before /health answers: a prefill of a few
		// tokens, slow as first passes are (graph warm-up). The real server's own warm-up
		// request also decodes a few tokens; the simulated one does not, so a runner's
		// decode means over the whole dump equal moecapd's over the recording window here
		// (on a real SGLang server they differ by those few warm-up decode passes).
		r.add(Record{BatchSize: 1, Latency: 0.35, SeqLensSum: 7, ForwardMode: "prefill", ExpertActivation: 1, GPUNum: gpuNum, GPURawType: gpuRaw,
			ScheduledTokens: 7, PerReqInfo: []ReqInfo{{ReqID: "warmup", ExtendLen: 7, TotalLen: 7, PromptLen: 7, IsLastChunk: true}}})
	}
	return r
}

// on reports whether passes are kept at all; the scheduler asks before building a record so
// that an idle recorder costs nothing per pass.
func (r *recorder) on() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flavor == FlavorSGLang || r.recording || r.expertLog != ""
}

func (r *recorder) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.passID++
	rec.ForwardPassID = r.passID
	if r.flavor == FlavorSGLang || r.expertLog != "" {
		r.all = append(r.all, rec)
	}
	if r.flavor == FlavorVLLM && r.recording {
		r.window = append(r.window, rec)
	}
}

// wrapperRecords converts recs to the flavor's wrapper shape. SGLang's request ids are pool
// slots, numbered in order of first appearance (so a conversion of the same passes always
// gives the same ids).
func (r *recorder) wrapperRecords(recs []Record, withID bool) []map[string]any {
	slots := map[string]int{}
	slot := func(id string) int {
		s, ok := slots[id]
		if !ok {
			s = len(slots)
			slots[id] = s
		}
		return s
	}
	out := make([]map[string]any, len(recs))
	for i, rec := range recs {
		m := map[string]any{
			"batch_size": rec.BatchSize, "latency": rec.Latency, "forward_mode": rec.ForwardMode,
			"expert_activation": rec.ExpertActivation, "gpu_num": rec.GPUNum, "gpu_raw_type": rec.GPURawType,
		}
		if withID {
			m["forward_pass_id"] = rec.ForwardPassID
		}
		switch {
		case r.flavor == FlavorSGLang && rec.ForwardMode == "prefill":
			m["seq_lens_sum"] = rec.SeqLensSum // the running context sum
			info := make([]map[string]any, len(rec.PerReqInfo))
			ext := 0
			for j, q := range rec.PerReqInfo {
				sl := slot(q.ReqID)
				info[j] = map[string]any{"req_pool_idx": sl, "req_id": fmt.Sprintf("%d_0", sl), "extend_len": q.ExtendLen,
					"total_len": q.TotalLen, "is_last_chunk": q.IsLastChunk, "orig_len": q.PromptLen, "prompt_len": q.PromptLen}
				ext += q.ExtendLen
			}
			m["per_req_info"] = info
			m["scheduled_tokens"] = ext
		case r.flavor == FlavorSGLang:
			m["seq_lens_sum"] = rec.SeqLensSum
			if len(rec.ReqIDs) > 0 {
				ids := make([]int, len(rec.ReqIDs))
				for j, id := range rec.ReqIDs {
					ids[j] = slot(id)
				}
				m["req_ids"] = ids
			}
			m["scheduled_tokens"] = rec.BatchSize
		default:
			// vLLM: seq_lens_sum is the tokens scheduled in this pass, republished as
			// scheduled_tokens.
			m["seq_lens_sum"] = rec.ScheduledTokens
			m["scheduled_tokens"] = rec.ScheduledTokens
			if rec.ForwardMode == "prefill" {
				if len(rec.PerReqInfo) > 0 {
					info := make([]map[string]any, len(rec.PerReqInfo))
					for j, q := range rec.PerReqInfo {
						info[j] = map[string]any{"req_id": q.ReqID, "extend_len": q.ExtendLen, "total_len": q.PromptLen,
							"prompt_len": q.PromptLen, "is_last_chunk": q.IsLastChunk}
					}
					m["per_req_info"] = info
				}
			} else if len(rec.ReqIDs) > 0 {
				ids := append([]string(nil), rec.ReqIDs...)
				sort.Strings(ids)
				m["req_ids"] = ids
			}
		}
		out[i] = m
	}
	return out
}

// start begins recording. vLLM's wrapper clears its data file; SGLang's keeps every pass.
func (r *recorder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = true
	if r.flavor == FlavorVLLM {
		r.window = nil
		if r.dir != "" {
			os.MkdirAll(r.dir, 0o755)
			os.WriteFile(filepath.Join(r.dir, "vllm_batch_recording.flag"), []byte("1"), 0o644)
			os.Remove(filepath.Join(r.dir, "vllm_batch_records.jsonl"))
		}
	}
}

func (r *recorder) stop() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = false
	if r.flavor == FlavorVLLM {
		if r.dir != "" {
			os.Remove(filepath.Join(r.dir, "vllm_batch_recording.flag"))
		}
		r.writeDataFile()
		return len(r.window)
	}
	return len(r.all)
}

// writeDataFile writes vLLM's batch data file; the caller holds mu.
func (r *recorder) writeDataFile() {
	if r.dir == "" {
		return
	}
	writeJSONL(filepath.Join(r.dir, "vllm_batch_records.jsonl"), r.wrapperRecords(r.window, false))
}

// writeExpertLog writes vLLM's expert log; the caller holds mu.
func (r *recorder) writeExpertLog() {
	if r.expertLog != "" && len(r.all) > 0 {
		writeJSONL(r.expertLog, r.wrapperRecords(r.all, true))
	}
}

func (r *recorder) clear() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.window)
	r.window = nil
	if r.flavor == FlavorVLLM && r.dir != "" {
		os.Remove(filepath.Join(r.dir, "vllm_batch_records.jsonl"))
	}
	return n
}

// snapshot is what a dump returns, in the wrapper's shape: SGLang every pass since
// start-up, vLLM the passes since start (also written to its data file and expert log).
func (r *recorder) snapshot() ([]map[string]any, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flavor == FlavorSGLang {
		return r.wrapperRecords(r.all, true), r.recording
	}
	if !r.recording {
		r.writeDataFile()
	}
	r.writeExpertLog()
	return r.wrapperRecords(r.window, false), r.recording
}

// count is how many passes a dump would return, without converting them.
func (r *recorder) count() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flavor == FlavorSGLang {
		return len(r.all), r.recording
	}
	return len(r.window), r.recording
}

// close writes the vLLM expert log one last time.
func (r *recorder) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writeExpertLog()
}

// SGLangRecordPath is where the sglang wrapper dumps its records:
// <dir>/<model path as passed to --model-path>/expert_distribution_record.jsonl, joined as
// Python's os.path.join does (an absolute model path replaces dir).
func SGLangRecordPath(dir, modelPath string) string {
	if filepath.IsAbs(modelPath) {
		return filepath.Join(modelPath, "expert_distribution_record.jsonl")
	}
	return filepath.Join(dir, modelPath, "expert_distribution_record.jsonl")
}

// writeJSONL writes records one JSON object per line, through a temp file and a rename so
// that a reader never sees half a dump.
func writeJSONL(path string, recs []map[string]any) error {
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
