package profile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PassRecord is one server forward pass as the MoE-CAP wrappers record it. Fields the
// wrappers may leave out are pointers or zero.
type PassRecord struct {
	BatchSize        int      `json:"batch_size"`
	Latency          *float64 `json:"latency"`
	SeqLensSum       int      `json:"seq_lens_sum"`
	ForwardMode      string   `json:"forward_mode"`
	ExpertActivation *float64 `json:"expert_activation"`
	GPUNum           int      `json:"gpu_num"`
	GPURawType       string   `json:"gpu_raw_type"`
	ScheduledTokens  int      `json:"scheduled_tokens"`
}

func (p *PassRecord) isPrefill() bool { return p.ForwardMode == "prefill" }
func (p *PassRecord) isDecode() bool  { return p.ForwardMode == "decode" || p.ForwardMode == "decoding" }

// RecordSummary is what the pass records say about the run.
type RecordSummary struct {
	Passes                      int
	PrefillPasses, DecodePasses int
	AvgExpertActivationPrefill  *float64
	AvgExpertActivationDecode   *float64
	AvgPrefillBatchSize         *float64
	AvgDecodeBatchSize          *float64
	MeanPrefillLatencyS         *float64
	MeanDecodeLatencyS          *float64
	GPUNum                      int
	GPURawType                  string

	raw []PassRecord // the passes themselves, for detailed_results
}

// SummarizeRecords averages activation, batch size and latency per forward mode, the way
// the runner does (negative activations mean "not recorded" and are skipped). A mode with no
// passes leaves its numbers nil: absent, not zero.
func SummarizeRecords(recs []PassRecord) RecordSummary {
	s := RecordSummary{Passes: len(recs)}
	var act, bs, lat [2]acc
	for i := range recs {
		r := &recs[i]
		if s.GPUNum == 0 && r.GPUNum > 0 {
			s.GPUNum = r.GPUNum
		}
		if s.GPURawType == "" {
			s.GPURawType = r.GPURawType
		}
		m := -1
		switch {
		case r.isPrefill():
			m = 0
			s.PrefillPasses++
		case r.isDecode():
			m = 1
			s.DecodePasses++
		}
		if m < 0 {
			continue
		}
		if r.ExpertActivation != nil && *r.ExpertActivation >= 0 {
			act[m].add(*r.ExpertActivation)
		}
		if r.BatchSize > 0 {
			bs[m].add(float64(r.BatchSize))
		}
		if r.Latency != nil && *r.Latency >= 0 {
			lat[m].add(*r.Latency)
		}
	}
	s.AvgExpertActivationPrefill, s.AvgExpertActivationDecode = act[0].mean(), act[1].mean()
	s.AvgPrefillBatchSize, s.AvgDecodeBatchSize = bs[0].mean(), bs[1].mean()
	s.MeanPrefillLatencyS, s.MeanDecodeLatencyS = lat[0].mean(), lat[1].mean()
	return s
}

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

// recorder drives the server's pass recording: SGLang's expert distribution recorder (which
// dumps to a file in the server's recorder dir) or the vLLM wrapper's batch recording (which
// returns the records in the dump reply).
type recorder struct {
	hc         *http.Client
	base       string
	backend    string // "sglang" or "vllm"
	model      string
	serverDir  string // sglang: $SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR of the server
	recordsDir string // where the records are kept for the cell
	apiKey     string
}

func (r *recorder) post(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute) // a big dump takes a while
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+path, nil)
	if err != nil {
		return nil, err
	}
	if r.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+r.apiKey)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("POST %s: read reply: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("POST %s answered HTTP %d: %.200s", path, resp.StatusCode, bytes.TrimSpace(body))
	}
	return body, nil
}

func (r *recorder) names() (start, stop, dump string) {
	if r.backend == "sglang" {
		return "/start_expert_distribution_record", "/stop_expert_distribution_record", "/dump_expert_distribution_record"
	}
	return "/start_batch_recording", "/stop_batch_recording", "/dump_batch_recording"
}

// sglangFile is where the SGLang wrapper dumps: <recorder dir>/<model path>/….
func (r *recorder) sglangFile() string {
	return filepath.Join(r.serverDir, r.model, "expert_distribution_record.jsonl")
}

func (r *recorder) start(ctx context.Context) error {
	if r.backend == "sglang" && r.serverDir != "" {
		// A server that was reused keeps appending earlier runs' passes to this file; move a
		// stale one aside so this run's summary holds only this run.
		f := r.sglangFile()
		if _, err := os.Stat(f); err == nil {
			if err := os.Rename(f, f+".before-"+time.Now().Format(RunnerTimestampLayout)); err != nil {
				return fmt.Errorf("move stale %s aside: %w", f, err)
			}
		}
	}
	s, _, _ := r.names()
	_, err := r.post(ctx, s)
	return err
}

func (r *recorder) stop(ctx context.Context) error {
	_, s, _ := r.names()
	_, err := r.post(ctx, s)
	return err
}

// dump fetches the records, stores them under recordsDir and returns them with the path
// of the stored file.
func (r *recorder) dump(ctx context.Context) ([]PassRecord, string, error) {
	_, _, d := r.names()
	body, err := r.post(ctx, d)
	if err != nil {
		return nil, "", err
	}
	var raw []json.RawMessage
	stored := ""
	if r.backend == "sglang" {
		if r.serverDir == "" {
			return nil, "", errors.New("the SGLang server dumps records into its SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR; set the records dir to that directory")
		}
		stored = r.sglangFile()
		raw, err = readRawJSONL(stored)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("the dump call succeeded but %s does not exist: the server's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR is not %s", stored, r.serverDir)
		}
		if err != nil {
			return nil, "", err
		}
	} else {
		var rep struct {
			Status       string            `json:"status"`
			Records      []json.RawMessage `json:"records"`
			TotalRecords int               `json:"total_records"`
		}
		if err := json.Unmarshal(body, &rep); err != nil {
			return nil, "", fmt.Errorf("/dump_batch_recording reply is not {\"status\",\"records\",\"total_records\"}: %v", err)
		}
		raw = rep.Records
	}
	if r.recordsDir != "" && (r.backend != "sglang" || !strings.HasPrefix(stored, filepath.Clean(r.recordsDir)+string(filepath.Separator))) {
		if err := os.MkdirAll(r.recordsDir, 0o755); err != nil {
			return nil, "", fmt.Errorf("create records dir: %w", err)
		}
		name := "batch_records.jsonl"
		if r.backend == "sglang" {
			name = "expert_distribution_record.jsonl"
		}
		stored = filepath.Join(r.recordsDir, name)
		var buf bytes.Buffer
		for _, l := range raw {
			buf.Write(l)
			buf.WriteByte('\n')
		}
		if err := writeAtomic(stored, buf.Bytes()); err != nil {
			return nil, "", err
		}
	}
	recs := make([]PassRecord, 0, len(raw))
	for i, l := range raw {
		var p PassRecord
		if err := json.Unmarshal(l, &p); err != nil {
			return nil, stored, fmt.Errorf("%s: record %d is not a pass record: %v", stored, i+1, err)
		}
		recs = append(recs, p)
	}
	return recs, stored, nil
}

func readRawJSONL(path string) ([]json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []json.RawMessage
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) > 0 {
			out = append(out, json.RawMessage(bytes.Clone(b)))
		}
	}
	return out, sc.Err()
}

// detectBackend asks the server what it is, as the runner does: /get_model_info with a
// model_path means SGLang, else an answering /v1/models means vLLM.
func detectBackend(ctx context.Context, hc *http.Client, base string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	get := func(path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return nil, err
		}
		return hc.Do(req)
	}
	if resp, err := get("/get_model_info"); err == nil {
		var info map[string]any
		derr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&info)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && derr == nil {
			if _, ok := info["model_path"]; ok {
				return "sglang", nil
			}
		}
	}
	resp, err := get("/v1/models")
	if err != nil {
		return "", fmt.Errorf("detect the backend: %s answers neither /get_model_info nor /v1/models: %w; is the server up? pass --backend sglang|vllm to skip detection", base, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("detect the backend: %s/v1/models answered HTTP %d; pass --backend sglang|vllm", base, resp.StatusCode)
	}
	return "vllm", nil
}
