package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltInTablesAndConfigs(t *testing.T) {
	tab, err := LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(tab.Models); got != 5 {
		t.Fatalf("models: got %d, want 5", got)
	}
	for _, k := range []string{"qwen1_5", "dsv2_lite", "mixtral_8x7b", "mixtral_8x22b", "deepseek_r1"} {
		m := tab.Models[k]
		for _, task := range []string{"4k_1k", "13k_1k"} {
			b, err := LoadBench(filepath.Join("configs", "fixed_"+task+"_"+k+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if b.ModelID != m.HFID {
				t.Errorf("%s %s: model_id %q, want %q", k, task, b.ModelID, m.HFID)
			}
			got, ok := tab.ModelByID(b.ModelID)
			if !ok || got.Key != k {
				t.Errorf("ModelByID(%q) = %q, want %q", b.ModelID, got.Key, k)
			}
		}
	}
	// Parameter counts against the published figures: pkg/passcost's test.
	if tab.Models["deepseek_r1"].BytesPerParam() != 1 || !tab.Models["deepseek_r1"].FP8Linear || tab.Models["qwen1_5"].BytesPerParam() != 2 {
		t.Error("bytes per param: want fp8=1 (fp8 linear layers) for deepseek_r1, bf16=2 for qwen1_5")
	}
	// The Chat checkpoint's context window (the base model's is 8192).
	if got := tab.Models["qwen1_5"].MaxPositions; got != 32768 {
		t.Errorf("qwen1_5 max_position_embeddings %d, want 32768", got)
	}
}

func TestBenchErrorsNameFileAndKey(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"unknown key", "model_id: a/b\ntarget_input_tokens: 4\ntarget_output_tokens: 1\nnum_samples: 1\ndataset_names: [x]\nnum_sample: 3\n", `key "num_sample": unknown key; expected one of:`},
		{"wrong type", "model_id: a/b\ntarget_input_tokens: four\n", `key "target_input_tokens": got "four", expected an integer`},
		{"missing model", "target_input_tokens: 4\n", `key "model_id": missing`},
		{"zero samples", "model_id: a/b\ntarget_input_tokens: 4\ntarget_output_tokens: 1\nnum_samples: 0\ndataset_names: [x]\n", `key "num_samples": got 0`},
		{"list type", "model_id: a/b\ndataset_names: gsm8k\n", `expected a list of strings`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(p, []byte(c.body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := LoadBench(p)
			if err == nil || !IsConfigError(err) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.yaml") {
				t.Fatalf("got %v, want a config error naming bad.yaml and containing %q", err, c.want)
			}
		})
	}
}

func TestTaskLabel(t *testing.T) {
	for _, c := range []struct {
		in, out int
		want    string
	}{{4000, 1000, "4k-1k"}, {13000, 1000, "13k-1k"}, {512, 128, "512-128"}} {
		if got := TaskLabel(c.in, c.out); got != c.want {
			t.Errorf("TaskLabel(%d,%d) = %q, want %q", c.in, c.out, got, c.want)
		}
	}
}
