package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// hubServer imitates the dataset viewer's /rows API for gsm8k with total rows.
func hubServer(t *testing.T, total int, calls *atomic.Int32) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		q := r.URL.Query()
		if r.URL.Path != "/rows" || q.Get("dataset") != "openai/gsm8k" || q.Get("config") != "main" || q.Get("split") != "test" {
			http.Error(w, `{"error":"unexpected query"}`, 404)
			return
		}
		off, _ := strconv.Atoi(q.Get("offset"))
		n, _ := strconv.Atoi(q.Get("length"))
		var rows []map[string]any
		for i := off; i < min(off+n, total); i++ {
			rows = append(rows, map[string]any{"row_idx": i, "row": map[string]any{"question": fmt.Sprintf("question number %d about apples", i), "answer": "42"}, "truncated_cells": []string{}})
		}
		json.NewEncoder(w).Encode(map[string]any{"rows": rows, "num_rows_total": total, "partial": false})
	}))
	t.Cleanup(s.Close)
	return s
}

func TestDatasetFromHubIsCachedThenWorksOffline(t *testing.T) {
	var calls atomic.Int32
	hub := hubServer(t, 250, &calls)
	cache := t.TempDir()
	o := &Options{Dataset: "gsm8k", DatasetCacheDir: cache, HubURL: hub.URL}
	texts, err := loadDatasetTexts(t.Context(), o, 150)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if len(texts) != 150 || texts[149] != "question number 149 about apples" {
		t.Fatalf("got %d texts, last %q", len(texts), texts[len(texts)-1])
	}
	if calls.Load() != 2 {
		t.Errorf("hub called %d times, want 2 pages of 100", calls.Load())
	}
	o.Offline, o.HubURL = true, "http://127.0.0.1:1" // nothing may be fetched now
	again, err := loadDatasetTexts(t.Context(), o, 150)
	if err != nil || len(again) != 150 || again[7] != texts[7] {
		t.Fatalf("offline from cache: %v (%d texts)", err, len(again))
	}
}

func TestDatasetOfflineWithoutCacheNamesBothWaysOut(t *testing.T) {
	o := &Options{Dataset: "longbench_v2", DatasetCacheDir: t.TempDir(), Offline: true}
	_, err := loadDatasetTexts(t.Context(), o, 10)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"offline", "--dataset-file", "THUDM/LongBench-v2", "network access", "cached"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDatasetHubErrorNamesBothWaysOut(t *testing.T) {
	hub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"The dataset does not exist"}`, 404)
	}))
	defer hub.Close()
	o := &Options{Dataset: "gsm8k", HubURL: hub.URL}
	_, err := loadDatasetTexts(t.Context(), o, 10)
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") || !strings.Contains(err.Error(), "--dataset-file") {
		t.Errorf("err = %v, want the HTTP status and --dataset-file", err)
	}
}

func TestDatasetFileFormats(t *testing.T) {
	dir := t.TempDir()
	lb := filepath.Join(dir, "lb.jsonl")
	os.WriteFile(lb, []byte(`{"context":"a long document","question":"what is it?","choice_A":"x"}`+"\n\n"), 0o644)
	texts, err := readTextFile(lb, knownDatasets["longbench_v2"].Fields, 5)
	if err != nil || len(texts) != 1 || texts[0] != "a long document\n\nwhat is it?" {
		t.Errorf("longbench row = %q, %v", texts, err)
	}
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte(`{"text":"ok"}`+"\n"+`{"number":3}`+"\n"), 0o644)
	if _, err := readTextFile(bad, nil, 5); err == nil || !strings.Contains(err.Error(), "bad.jsonl:2") {
		t.Errorf("err = %v, want file:line", err)
	}
	if _, err := readTextFile(filepath.Join(dir, "x.parquet"), nil, 5); err == nil || !strings.Contains(err.Error(), "convert it to JSONL") {
		t.Errorf("parquet err = %v", err)
	}
	o := &Options{Dataset: "mmlu"}
	if _, err := loadDatasetTexts(t.Context(), o, 1); err == nil || !strings.Contains(err.Error(), "--dataset-file") {
		t.Errorf("unknown dataset err = %v", err)
	}
}

func TestProgressLineAndLogLines(t *testing.T) {
	f := newFakeServer(t, &fakeServer{flavor: "plain", tpot: 5 * time.Millisecond})
	var buf bytes.Buffer
	o := baseOptions(f, "")
	o.Backend, o.NoRecords, o.OutputTokens = "vllm", true, 20
	o.Progress, o.ProgressInterval = &buf, 20*time.Millisecond // only the progress goroutine writes; Run waits for it
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "\r\x1b[K") || !strings.Contains(out, "bench: 12/12 requests done (0 failed), 0 in flight") || !strings.Contains(out, ", done\n") || !strings.HasSuffix(out, "\n") {
		t.Errorf("progress output %q", out)
	}

	core, logs := observer.New(zap.InfoLevel)
	o.Progress, o.Log = nil, zap.New(core)
	if _, err := Run(t.Context(), o); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage("bench progress").Len(); n == 0 {
		t.Errorf("no periodic progress log lines without a terminal")
	}
	if logs.FilterMessage("bench finished").Len() != 1 {
		t.Errorf("no final log line")
	}
}

// A hub that pages without end but whose rows lack the dataset's fields is asked once, not
// forever (a page without a usable row ends the fetch), and the error names the fields.
func TestDatasetHubWithoutUsableRowsEnds(t *testing.T) {
	var calls atomic.Int32
	hub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		rows := make([]map[string]any, hubPageRows)
		for i := range rows {
			rows[i] = map[string]any{"row": map[string]any{"other": "x"}}
		}
		json.NewEncoder(w).Encode(map[string]any{"rows": rows, "num_rows_total": 1 << 40})
	}))
	t.Cleanup(hub.Close)
	_, err := loadDatasetTexts(t.Context(), &Options{Dataset: "gsm8k", HubURL: hub.URL}, 150)
	if err == nil || !strings.Contains(err.Error(), "no rows with fields question") {
		t.Errorf("err %v, want one naming the fields", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("hub asked %d times for rows it never has", n)
	}
}

func TestPlausibleVersion(t *testing.T) {
	for v, want := range map[string]bool{"0.10.1.1": true, "0.5.0rc2+cu128": true, "0.5.8 (moecapd sim)": true, "": false,
		"<html>": false, strings.Repeat("1", 65): false, "1.0\nX-Injected: 1": false, " 1.0": false, "1.0 <b>x</b>": false} {
		if got := plausibleVersion(v); got != want {
			t.Errorf("plausibleVersion(%q) = %v, want %v", v, got, want)
		}
	}
}
