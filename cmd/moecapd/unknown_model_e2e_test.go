package main

// End-to-end tests of a model moecapd cannot describe (issue 19, item 4): refused with
// exit 2 and a did-you-mean before anything starts, unless --model-config describes it or
// --allow-unknown-model opts in (recorded; the cell then has no CAP numbers at all).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/cell"
)

func TestUnknownModelRefused(t *testing.T) {
	empty := t.TempDir()
	env := []string{"HF_HOME=" + empty, "HF_HUB_CACHE="}
	for _, tc := range []struct {
		name, model, suggest string
		args                 func(results, cfg string) []string
	}{
		{"sim typo", qwen + "t", "Did you mean " + qwen + "?", func(results, cfg string) []string {
			return simArgs(results, cfg, 2, "--", "--sim-time-scale", "0.01")
		}},
		{"sglang dry-run", "deepseek-ai/DeepSeek-V2-Lite", "Did you mean deepseek-ai/DeepSeek-V2-Lite-Chat?", func(results, cfg string) []string {
			return []string{"launch-and-bench", "--backend", "sglang", "--config", cfg, "--batch-size", "2", "--dry-run", "--conda-root", empty, "--results", results}
		}},
		{"far from any", "acme/dense-llm", "", func(results, cfg string) []string { return simArgs(results, cfg, 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results := filepath.Join(t.TempDir(), "results")
			cfg := tinyConfig(t, tc.model, 64, 8, 2)
			r := moecapd(t, env, tc.args(results, cfg)...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, exitUsage, r.stdout, r.stderr)
			}
			for _, want := range []string{tc.model, "cannot be described", "model_id", "--model-config", "--allow-unknown-model"} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
			if tc.suggest != "" && !strings.Contains(r.stderr, tc.suggest) {
				t.Errorf("stderr lacks the did-you-mean %q:\n%s", tc.suggest, r.stderr)
			}
			if tc.suggest == "" && strings.Contains(r.stderr, "Did you mean") {
				t.Errorf("a did-you-mean for a model near none:\n%s", r.stderr)
			}
			// Refused before anything started: no cell directory, no server.
			if ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile)); len(ms) != 0 {
				t.Errorf("a refused model left cells %v", ms)
			}
		})
	}
}

// TestUnknownModelAllowed: --allow-unknown-model runs the model; the manifest records the
// opt-in and the reason, extra.cap holds no number (no inputs of 0, no feasible: false),
// and the report's CSV shows no CAP value for it.
func TestUnknownModelAllowed(t *testing.T) {
	empty := t.TempDir()
	env := []string{"HF_HOME=" + empty, "HF_HUB_CACHE="}
	results := t.TempDir()
	cfg := tinyConfig(t, qwen+"t", 64, 8, 2)
	r := moecapd(t, env, simArgs(results, cfg, 2, "--allow-unknown-model", "--", "--sim-tpot", "1ms", "--sim-ttft", "2ms")...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	dir, m := onlyCell(t, results)
	if m.Status != cell.StatusOK || !m.Cell.AllowUnknownModel || !strings.Contains(m.Cell.ModelUndescribed, "cannot be described") {
		t.Errorf("status %s, allow_unknown_model %v, reason %q; want ok with the opt-in and reason recorded", m.Status, m.Cell.AllowUnknownModel, m.Cell.ModelUndescribed)
	}
	var capm map[string]any
	if err := json.Unmarshal(m.Extra["cap"], &capm); err != nil {
		t.Fatalf("extra.cap: %v (%s)", err, m.Extra["cap"])
	}
	for k := range capm {
		if k != "version" && k != "absent" && k != "notes" {
			t.Errorf("extra.cap of an undescribed model has %q: %s", k, m.Extra["cap"])
		}
	}
	if a, _ := capm["absent"].(string); !strings.Contains(a, "cannot be described") {
		t.Errorf("extra.cap.absent = %q", a)
	}
	if !strings.Contains(r.stdout, "CAP      absent: ") {
		t.Errorf("summary does not say the CAP numbers are absent:\n%s", r.stdout)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "server.log")); !strings.Contains(string(log), "cannot be described") {
		t.Errorf("server.log does not warn about the undescribed model")
	}

	out, col := reportOneCell(t, results)
	for _, c := range []string{"cap_source", "predicted_feasible", "memory_need_gib", "memory_usable_gib", "s_mbu_decode", "tpot_floor_ms", "tpot_over_floor"} {
		if v := col[c]; v != "" {
			t.Errorf("cells.csv %s = %q for a model without CAP numbers; want empty", c, v)
		}
	}
	pages, _ := filepath.Glob(filepath.Join(out, "cells", "*.html"))
	if len(pages) != 1 {
		t.Fatalf("cell pages %v", pages)
	}
	page, _ := os.ReadFile(pages[0])
	if !strings.Contains(string(page), "allow-unknown-model") || !strings.Contains(string(page), "No CAP numbers") {
		t.Errorf("cell page does not say --allow-unknown-model and why there are no CAP numbers")
	}
}

// TestMatrixUnknownModelRefused: a matrix naming a model key that is not in the table, or a
// task whose bench file serves a model that cannot be described, is refused by matrix plan
// and matrix run (exit 2, a did-you-mean) before any cell starts.
func TestMatrixUnknownModelRefused(t *testing.T) {
	empty := t.TempDir()
	env := []string{"HF_HOME=" + empty, "HF_HUB_CACHE="}
	for _, tc := range []struct {
		name, key, modelID, want string
	}{
		{"key typo", "qwen1_5t", qwen, `unknown model "qwen1_5t"; Did you mean ` + qwen + "?"},
		{"model_id typo", "qwen1_5", qwen + "t", "Did you mean " + qwen + "? Fix model_id there"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mx := filepath.Join(dir, "m.yaml")
			os.WriteFile(mx, []byte("version: 1\ntasks:\n  32-8: {config: \"tiny_{model}.yaml\"}\ndefaults:\n  backends: [sim]\ngroups:\n  g:\n    models: ["+tc.key+"]\n    hardware: [1xH100]\n    tasks: {32-8: [2]}\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "tiny_"+tc.key+".yaml"), []byte("dataset_names: [gsm8k]\nmodel_id: "+tc.modelID+"\ntarget_input_tokens: 32\ntarget_output_tokens: 8\nnum_samples: 2\n"), 0o644)
			results := filepath.Join(dir, "results")
			for _, verb := range []string{"plan", "run"} {
				args := []string{"matrix", verb, "--matrix", mx, "--results", results, "--log-format", "json"}
				if verb == "run" {
					args = append(args, "--lock-dir", filepath.Join(dir, "locks"))
				}
				r := moecapd(t, env, args...)
				if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
					t.Errorf("matrix %s: exit %d, want %d with %q\nstdout:\n%s\nstderr:\n%s", verb, r.code, exitUsage, tc.want, r.stdout, r.stderr)
				}
				if ms, _ := filepath.Glob(filepath.Join(results, "*", cell.ManifestFile)); len(ms) != 0 {
					t.Errorf("matrix %s of a refused model left cells %v", verb, ms)
				}
			}
		})
	}
}
