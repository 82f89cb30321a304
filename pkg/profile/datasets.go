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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// DefaultHubURL is the Hugging Face dataset viewer, whose /rows API serves dataset rows as
// JSON without the datasets library.
const DefaultHubURL = "https://datasets-server.huggingface.co"

// hubDataset says where a benchmark dataset lives on the hub and which fields make a prompt.
type hubDataset struct {
	ID, Config, Split string
	Fields            []string // joined with a blank line
}

// knownDatasets are the fixed-length tasks of the guide, as MoE-CAP's loaders read them.
var knownDatasets = map[string]hubDataset{
	"gsm8k":        {ID: "openai/gsm8k", Config: "main", Split: "test", Fields: []string{"question"}},
	"longbench_v2": {ID: "THUDM/LongBench-v2", Config: "default", Split: "train", Fields: []string{"context", "question"}},
}

// hubPageRows is the most rows the /rows API returns per call.
const hubPageRows = 100

// loadDatasetTexts returns at least one, at most n, prompt texts of o.Dataset: from
// o.DatasetFile when set, else from the cache, else from the hub (then cached).
// CheckDataset checks, without the server or the network, that the prompts of a run of n
// requests can be had: "random" always, a --dataset-file that reads with at least one row,
// a known dataset, and offline a cache holding n rows. Run it before a server is started,
// so a missing dataset does not cost a model load.
func CheckDataset(o Options, n int) error {
	if o.Dataset == "random" && o.DatasetFile == "" {
		return nil
	}
	if o.DatasetFile != "" {
		if _, err := readTextFile(o.DatasetFile, knownDatasets[o.Dataset].Fields, 1); err != nil {
			return fmt.Errorf("dataset file (--dataset-file): %w", err)
		}
		return nil
	}
	if _, ok := knownDatasets[o.Dataset]; !ok || !o.Offline {
		if !ok {
			_, err := loadDatasetTexts(context.Background(), &o, n) // names the known ones
			return err
		}
		return nil // fetched (or read from the cache) when the bench starts
	}
	o.HubURL = "http://offline.invalid" // never reached: offline
	_, err := loadDatasetTexts(context.Background(), &o, n)
	return err
}

func loadDatasetTexts(ctx context.Context, o *Options, n int) ([]string, error) {
	if o.DatasetFile != "" {
		texts, err := readTextFile(o.DatasetFile, knownDatasets[o.Dataset].Fields, n)
		if err != nil {
			return nil, fmt.Errorf("dataset file (--dataset-file): %w", err)
		}
		return texts, nil
	}
	ds, ok := knownDatasets[o.Dataset]
	if !ok {
		return nil, fmt.Errorf("dataset %q: moecapd knows gsm8k, longbench_v2 and random; for another dataset pass --dataset-file with a JSONL file of {\"text\": …} rows", o.Dataset)
	}
	if o.DatasetSubset != "" {
		ds.Config = o.DatasetSubset
	}
	if o.DatasetSplit != "" {
		ds.Split = o.DatasetSplit
	}
	cache := ""
	if o.DatasetCacheDir != "" {
		cache = filepath.Join(o.DatasetCacheDir, strings.ReplaceAll(ds.ID, "/", "__"), ds.Config+"-"+ds.Split+".jsonl")
		if texts, err := readTextFile(cache, []string{"text"}, n); err == nil && len(texts) >= n {
			return texts, nil
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			o.log().Warn("dataset cache unreadable, fetching again", logStr("file", cache), logErr(err))
		}
	}
	hub := o.HubURL
	if hub == "" {
		hub = DefaultHubURL
	}
	if o.Offline {
		where := "no cache directory is set (--dataset-cache-dir)"
		if cache != "" {
			where = "no usable cache at " + cache
		}
		return nil, fmt.Errorf("dataset %s: offline and %s; either pass --dataset-file with a local JSONL copy of %s (fields %s), or run once with network access so the rows are fetched from %s and cached",
			o.Dataset, where, ds.ID, strings.Join(ds.Fields, "+"), hub)
	}
	texts, err := fetchHubRows(ctx, o, hub, ds, n)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w; either pass --dataset-file with a local JSONL copy of %s, or fix network access to %s", o.Dataset, err, ds.ID, hub)
	}
	if cache != "" {
		if err := os.MkdirAll(filepath.Dir(cache), 0o755); err == nil {
			rows := make([]map[string]string, len(texts))
			for i, t := range texts {
				rows[i] = map[string]string{"text": t}
			}
			if err := writeJSONL(cache, rows); err != nil {
				o.log().Warn("could not cache dataset rows; the next run fetches them again", logErr(err))
			}
		}
	}
	return texts, nil
}

// maxHubPage bounds one page of rows from the hub (100 LongBench rows of up to a few
// MB each); hubPageTimeout bounds fetching it (a hub that never answers would otherwise
// hold the bench until --bench-timeout).
const (
	maxHubPage     = 1 << 30
	hubPageTimeout = 10 * time.Minute
)

// fetchHubRows pages through the dataset viewer's /rows API until it has n rows or the split
// ends. Transient failures (429, 5xx, resets) are retried with backoff.
func fetchHubRows(ctx context.Context, o *Options, hub string, ds hubDataset, n int) ([]string, error) {
	rc := retryablehttp.NewClient()
	rc.Logger = nil
	rc.RetryMax = 4
	rc.RetryWaitMin = 200 * time.Millisecond
	rc.RetryWaitMax = 5 * time.Second
	if o.HTTPClient != nil {
		rc.HTTPClient = o.HTTPClient
	} else {
		rc.HTTPClient.Timeout = hubPageTimeout
	}
	var texts []string
	for offset := 0; len(texts) < n; offset += hubPageRows {
		q := url.Values{
			"dataset": {ds.ID}, "config": {ds.Config}, "split": {ds.Split},
			"offset": {fmt.Sprint(offset)}, "length": {fmt.Sprint(hubPageRows)},
		}
		u := strings.TrimRight(hub, "/") + "/rows?" + q.Encode()
		req, err := retryablehttp.NewRequestWithContext(ctx, "GET", u, nil)
		if err != nil {
			return nil, err
		}
		resp, err := rc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("fetch rows: %w", err)
		}
		var page struct {
			Rows []struct {
				Row map[string]any `json:"row"`
			} `json:"rows"`
			NumRowsTotal int    `json:"num_rows_total"`
			Error        string `json:"error"`
		}
		derr := json.NewDecoder(io.LimitReader(resp.Body, maxHubPage)).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%s answered HTTP %d %s", u, resp.StatusCode, page.Error)
		}
		if derr != nil {
			return nil, fmt.Errorf("%s: reply is not a rows page: %v", u, derr)
		}
		got := len(texts)
		for _, r := range page.Rows {
			if t := joinFields(r.Row, ds.Fields); t != "" {
				texts = append(texts, t)
			}
		}
		// A page without one usable row ends the fetch: a hub whose rows all lack the
		// fields (or that pages without end) would otherwise be asked forever.
		if len(page.Rows) < hubPageRows || offset+hubPageRows >= page.NumRowsTotal || len(texts) == got {
			break
		}
	}
	if len(texts) == 0 {
		return nil, fmt.Errorf("the hub returned no rows with fields %s", strings.Join(ds.Fields, "+"))
	}
	return texts[:min(len(texts), n)], nil
}

// readTextFile reads prompt texts from a JSONL file: each line an object whose "text" (or
// "prompt", or the dataset's own fields such as gsm8k's "question") holds the prompt.
func readTextFile(path string, fields []string, n int) ([]string, error) {
	if strings.HasSuffix(path, ".parquet") {
		return nil, fmt.Errorf("%s: parquet is not supported; convert it to JSONL, e.g. python -c \"import pandas as p; p.read_parquet('%s').to_json('%s.jsonl', orient='records', lines=True)\"", path, path, strings.TrimSuffix(path, ".parquet"))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	candidates := [][]string{{"text"}, {"prompt"}}
	if len(fields) > 0 {
		candidates = append(candidates, fields)
	}
	candidates = append(candidates, []string{"question"}, []string{"context"})
	var texts []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20) // LongBench contexts run to megabytes
	line := 0
	for sc.Scan() && len(texts) < n {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var row map[string]any
		if err := json.Unmarshal(b, &row); err != nil {
			return nil, fmt.Errorf("%s:%d: not a JSON object: %v", path, line, err)
		}
		t := ""
		for _, c := range candidates {
			if t = joinFields(row, c); t != "" {
				break
			}
		}
		if t == "" {
			return nil, fmt.Errorf("%s:%d: no \"text\", \"prompt\" or %q field holding a string", path, line, fields)
		}
		texts = append(texts, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(texts) == 0 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	return texts, nil
}

// joinFields joins the string fields of row; any missing or non-string field yields "".
func joinFields(row map[string]any, fields []string) string {
	parts := make([]string, 0, len(fields))
	for _, f := range fields {
		s, ok := row[f].(string)
		if !ok || s == "" {
			return ""
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "\n\n")
}
