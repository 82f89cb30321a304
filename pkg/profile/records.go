package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/moecapd/moecapd/pkg/records"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// recorder drives the server's pass recording: SGLang's expert distribution recorder (which
// dumps to a file in the server's recorder dir) or the vLLM wrapper's batch recording (which
// returns the records in the dump reply).
type recorder struct {
	hc        *http.Client
	base      string
	backend   string // "sglang" or "vllm"
	model     string
	serverDir string // sglang: $SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR of the server
	apiKey    string
	sgMark    SGLangMark
}

// maxDumpReply bounds a recorder reply: a dump of a long bench is tens of MB.
const maxDumpReply = 1 << 30

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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDumpReply+1))
	if err != nil {
		return nil, fmt.Errorf("POST %s: read reply: %w", path, err)
	}
	if len(body) > maxDumpReply {
		// Cut here it would read as JSON that ends early, not as what it is.
		return nil, fmt.Errorf("POST %s: the reply is larger than %d GiB, more pass records than a bench makes; not read (pass --no-records to bench without them)", path, maxDumpReply>>30)
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
func (r *recorder) sglangFile() string { return SGLangRecordFile(r.serverDir, r.model) }

// SGLangRecordFile is where the SGLang wrapper dumps: <recorder dir>/<model path>/
// expert_distribution_record.jsonl, joined as Python's os.path.join joins (an absolute
// model path replaces the recorder dir).
func SGLangRecordFile(recorderDir, model string) string {
	if filepath.IsAbs(model) {
		return filepath.Join(model, "expert_distribution_record.jsonl")
	}
	return filepath.Join(recorderDir, model, "expert_distribution_record.jsonl")
}

// ErrRecordsUnavailable means the SGLang server acknowledged a dump but no (or an empty)
// record file is where the client looks: server and client disagree on
// SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, or recording never started. The runner exits 1
// on it; so does moecapd bench.
var ErrRecordsUnavailable = errors.New("server pass records unavailable")

// SGLangMark is where the recording window starts in an SGLang dump. The wrapper never
// clears its pass list (a dump holds every pass since start-up, warm-up and readiness probes
// included), so the window is what comes after the passes a dump held just before the run.
type SGLangMark struct {
	Before int      // passes in the dump taken before the run
	MaxID  *float64 // highest forward_pass_id among them, when the records carry ids
}

// Window returns the passes of all (a later dump) that were recorded after m.
func (m SGLangMark) Window(all []Pass) []Pass {
	if m.MaxID != nil {
		var out []Pass
		ids := true
		for i := range all {
			if all[i].ForwardPassID == nil {
				ids = false
				break
			}
			if *all[i].ForwardPassID > *m.MaxID {
				out = append(out, all[i])
			}
		}
		if ids {
			return out
		}
	}
	if m.Before >= len(all) {
		return nil
	}
	return all[m.Before:]
}

// MarkSGLang dumps the SGLang server's records and returns where the next run's window
// starts. The dump file must appear at <recorderDir>/<model>/expert_distribution_record.jsonl,
// so this also proves that server and client agree on the recorder dir before anything is
// measured.
func MarkSGLang(ctx context.Context, hc *http.Client, base, apiKey, recorderDir, model string) (SGLangMark, error) {
	r := &recorder{hc: hc, base: base, backend: "sglang", model: model, serverDir: recorderDir, apiKey: apiKey}
	return r.mark(ctx)
}

func (r *recorder) mark(ctx context.Context) (SGLangMark, error) {
	if r.serverDir == "" {
		return SGLangMark{}, fmt.Errorf("%w: the SGLang server dumps records into its SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR; set the records dir to that directory", ErrRecordsUnavailable)
	}
	if _, err := r.post(ctx, "/dump_expert_distribution_record"); err != nil {
		return SGLangMark{}, err
	}
	f := r.sglangFile()
	passes, err := records.ReadJSONL(f)
	if errors.Is(err, fs.ErrNotExist) {
		return SGLangMark{}, fmt.Errorf("%w: the server answered the dump but %s does not exist: its SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR is not %s (pass the server's dir with --sglang-recorder-dir, or start both with the same variable)", ErrRecordsUnavailable, f, r.serverDir)
	}
	if err != nil {
		return SGLangMark{}, fmt.Errorf("read %s: %w", f, err)
	}
	m := SGLangMark{Before: len(passes)}
	for i := range passes {
		if id := passes[i].ForwardPassID; id != nil && (m.MaxID == nil || *id > *m.MaxID) {
			v := *id
			m.MaxID = &v
		}
	}
	return m, nil
}

func (r *recorder) start(ctx context.Context) error {
	if r.backend == "sglang" {
		m, err := r.mark(ctx)
		if err != nil {
			return err
		}
		r.sgMark = m
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

// dump fetches the records and returns the recording window's passes (each once) and the
// file they were read from.
func (r *recorder) dump(ctx context.Context) ([]Pass, string, error) {
	_, _, d := r.names()
	body, err := r.post(ctx, d)
	if err != nil {
		return nil, "", err
	}
	if r.backend == "sglang" {
		f := r.sglangFile()
		all, err := records.ReadJSONL(f)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, f, fmt.Errorf("%w: the dump call succeeded but %s does not exist: the server's SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR is not %s", ErrRecordsUnavailable, f, r.serverDir)
		}
		if err != nil {
			return nil, f, err
		}
		if len(all) == 0 {
			return nil, f, fmt.Errorf("%w: %s is empty: the server's pass recording never started", ErrRecordsUnavailable, f)
		}
		return r.sgMark.Window(all), f, nil
	}
	var rep struct {
		Status       string            `json:"status"`
		Records      []json.RawMessage `json:"records"`
		TotalRecords int               `json:"total_records"`
	}
	if err := json.Unmarshal(records.PythonJSON(body), &rep); err != nil {
		return nil, "", fmt.Errorf("/dump_batch_recording reply is not {\"status\",\"records\",\"total_records\"}: %v", err)
	}
	passes, err := ParsePasses(r.base+"/dump_batch_recording", rep.Records)
	return passes, r.base + "/dump_batch_recording", err
}

// ReadRunnerWindow reads the recording window of a run whose client was the MoE-CAP runner
// from the server's recorder dir: SGLang's dump after mark (nil mark: the whole dump, probes
// left for the probe filter), or the vLLM wrapper's batch data file, which its start call
// clears (its expert log under logs/ holds every pass since start-up and is not read).
func ReadRunnerWindow(recorderDir, flavor, model string, mark *SGLangMark) ([]Pass, string, error) {
	f := filepath.Join(recorderDir, "vllm_batch_records.jsonl")
	if flavor == "sglang" {
		f = SGLangRecordFile(recorderDir, model)
	}
	all, err := records.ReadJSONL(f)
	if err != nil {
		return nil, f, err
	}
	if flavor == "sglang" && mark != nil {
		all = mark.Window(all)
	}
	return all, f, nil
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

// plausibleVersion: a version string as engines print them ("0.10.1.1", "0.5.0rc2+cu128",
// a build note after it as in "0.5.8 (moecapd sim)"), not a megabyte of text or markup
// from a server that is not the engine; it goes into every manifest and report row. It
// starts with a letter or digit and holds letters, digits, spaces and .+-_~()/:, only.
func plausibleVersion(v string) bool {
	if v == "" || len(v) > 64 || !isAlnum(rune(v[0])) {
		return false
	}
	for _, c := range v {
		if !isAlnum(c) && !strings.ContainsRune(".+-_~ ()/:,", c) {
			return false
		}
	}
	return true
}

func isAlnum(c rune) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// engineVersion asks the server for its version, as the runner writes it into the metadata
// (it imports the engine; this client asks SGLang's /get_server_info or vLLM's /version).
func engineVersion(ctx context.Context, hc *http.Client, base, backend string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	path := "/version"
	if backend == "sglang" {
		path = "/get_server_info"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return "unknown"
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "unknown"
	}
	defer resp.Body.Close()
	var v struct {
		Version string `json:"version"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v) != nil || !plausibleVersion(v.Version) {
		return "unknown"
	}
	return v.Version
}
