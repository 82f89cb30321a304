package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseFamilies: each family's config.json fields land where the pass-cost model reads
// them (dense layers, shared experts, MLA ranks, fp8).
func TestParseFamilies(t *testing.T) {
	cases := []struct {
		file  string
		check func(m Model) string
	}{
		{"qwen3_30b_a3b.json", func(m Model) string {
			if m.Family != "qwen3_moe" || m.Experts != 128 || m.TopK != 8 || m.ExpertFFN != 768 || m.HeadDim != 128 || m.KVHeads != 4 || m.SharedFFN != 0 || m.DenseLayers != 0 || m.MaxPositions != 40960 {
				return "qwen3: experts 128 top 8 ffn 768 head_dim 128 (not hidden/heads) kv 4, no shared, no dense, window 40960"
			}
			return ""
		}},
		{"qwen2_57b_a14b.json", func(m Model) string {
			if m.Family != "qwen2_moe" || m.SharedExperts != 1 || m.SharedFFN != 20480 || m.HeadDim != 128 || m.ExpertFFN != 2560 {
				return "qwen2: one shared expert of 20480, head_dim 3584/28 = 128, expert ffn 2560"
			}
			return ""
		}},
		{"deepseek_v3.json", func(m Model) string {
			if !m.MLA() || m.DenseLayers != 3 || m.DenseFFN != 18432 || m.SharedFFN != 2048 || m.QLoraRank != 1536 || m.VHeadDim != 128 || !m.FP8Linear || m.WeightBytes != 1 || m.KVElemBytes != 2 || m.Precision != "fp8" {
				return "deepseek_v3: MLA, 3 dense layers of 18432, one shared expert of 2048, q_lora 1536, fp8 linear layers, bf16 KV"
			}
			return ""
		}},
		{"gpt_oss_20b.json", func(m Model) string {
			if m.Family != "gpt_oss" || m.SlidingLayers != 12 || m.SlidingWindow != 128 || m.Precision != "mxfp4" || m.ExpertBytes() != 4.25/8 || m.WeightBytes != 2 || m.FP8Linear || m.HeadDim != 64 || m.ExpertFFN != 2880 {
				return "gpt_oss: 12 of 24 layers sliding over 128, MXFP4 experts (4.25 bits) and bf16 elsewhere, head_dim 64, expert ffn 2880"
			}
			return ""
		}},
		{"olmoe_1b_7b.json", func(m Model) string {
			if m.Family != "olmoe" || m.Experts != 64 || m.TopK != 8 || m.ExpertFFN != 1024 || m.DenseLayers != 0 {
				return "olmoe: 64 experts top 8 of 1024, every layer MoE"
			}
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			m, err := ParseHFConfig(readFixture(t, c.file), c.file)
			if err != nil {
				t.Fatal(err)
			}
			if msg := c.check(m); msg != "" {
				t.Errorf("got %+v; want %s", m, msg)
			}
		})
	}
}

// TestParseRefuses: a model the pass-cost model cannot describe is an error that says why.
func TestParseRefuses(t *testing.T) {
	for file, want := range map[string]string{
		"llama_dense.json": "not a mixture-of-experts model",
	} {
		_, err := ParseHFConfig(readFixture(t, file), file)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: got %v, want an error naming the file and %q", file, err, want)
		}
	}
	// Sliding windows outside GPT-OSS are refused, not guessed at.
	if _, err := ParseHFConfig([]byte(`{"model_type":"qwen2_moe","num_experts":8,"num_experts_per_tok":2,"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":10,"moe_intermediate_size":8,"use_sliding_window":true,"sliding_window":16}`), "swa.json"); err == nil || !strings.Contains(err.Error(), "sliding-window attention") {
		t.Errorf("qwen2 with a sliding window: %v; want refused", err)
	}
	_, err := ParseHFConfig([]byte(`{"model_type":"mixtral","num_local_experts":8,"num_experts_per_tok":2,"hidden_size":4096}`), "partial.json")
	if err == nil || !strings.Contains(err.Error(), "missing num_hidden_layers, num_attention_heads, vocab_size") {
		t.Errorf("partial config: %v; want the missing fields named", err)
	}
}

// TestDescribeSources: --model-config, a local model directory, the hub cache (refs/main's
// snapshot first) and the table, in that order; a model found nowhere is an
// UnknownModelError that lists what was tried.
func TestDescribeSources(t *testing.T) {
	tab, err := LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	hub := t.TempDir()
	snap := filepath.Join(hub, "models--Qwen--Qwen3-30B-A3B", "snapshots")
	for _, rev := range []string{"aaa", "bbb"} {
		if err := os.MkdirAll(filepath.Join(snap, rev), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(snap, "aaa", "config.json"), readFixture(t, "qwen3_30b_a3b.json"), 0o644)
	os.WriteFile(filepath.Join(snap, "bbb", "config.json"), readFixture(t, "olmoe_1b_7b.json"), 0o644)
	os.MkdirAll(filepath.Join(hub, "models--Qwen--Qwen3-30B-A3B", "refs"), 0o755)
	os.WriteFile(filepath.Join(hub, "models--Qwen--Qwen3-30B-A3B", "refs", "main"), []byte("aaa\n"), 0o644)

	tab.Sources = ModelSource{HubCache: hub}
	m, err := tab.Describe("Qwen/Qwen3-30B-A3B")
	if err != nil || m.Family != "qwen3_moe" || m.Key != "qwen3-30b-a3b" || m.HFID != "Qwen/Qwen3-30B-A3B" || !strings.Contains(m.Source, filepath.Join("snapshots", "aaa")) {
		t.Fatalf("hub cache: %+v, %v; want qwen3_moe from refs/main's snapshot, key qwen3-30b-a3b", m, err)
	}

	local := t.TempDir()
	os.WriteFile(filepath.Join(local, "config.json"), readFixture(t, "deepseek_v3.json"), 0o644)
	if m, err := tab.Describe(local); err != nil || m.Family != "deepseek_v3" || m.Source != filepath.Join(local, "config.json") {
		t.Errorf("local model dir: %+v, %v", m, err)
	}

	// A table model keeps its key, its table source without a config.json elsewhere.
	if m, err := tab.Describe("Qwen/Qwen1.5-MoE-A2.7B-Chat"); err != nil || m.Key != "qwen1_5" || !strings.Contains(m.Source, "built-in table") {
		t.Errorf("table model: %+v, %v", m, err)
	}

	tab.Sources.ConfigFile = filepath.Join("testdata", "olmoe_1b_7b.json")
	if m, err := tab.Describe("allenai/OLMoE-1B-7B-0924"); err != nil || m.Family != "olmoe" || m.Key != "olmoe-1b-7b-0924" {
		t.Errorf("--model-config: %+v, %v", m, err)
	}
	tab.Sources.ConfigFile = ""

	_, err = tab.Describe("nobody/unknown-moe")
	var ue *UnknownModelError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "models--nobody--unknown-moe") || !strings.Contains(err.Error(), "--model-config") {
		t.Errorf("unknown model: %v; want an UnknownModelError naming the cache dir looked in and the fix", err)
	}
}

func TestModelKey(t *testing.T) {
	for in, want := range map[string]string{
		"Qwen/Qwen3-30B-A3B":           "qwen3-30b-a3b",
		"/models/Qwen1.5-MoE-A2.7B/":   "qwen1_5-moe-a2_7b",
		"deepseek-ai/DeepSeek-V3-0324": "deepseek-v3-0324",
	} {
		if got := ModelKey(in); got != want {
			t.Errorf("ModelKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKVCacheBytes(t *testing.T) {
	for _, c := range []struct {
		argv []string
		want float64
		ok   bool
	}{
		{[]string{"python", "-m", "x", "--kv-cache-dtype", "fp8_e5m2"}, 1, true},
		{[]string{"--kv-cache-dtype=fp8"}, 1, true},
		{[]string{"--kv-cache-dtype", "auto"}, 2, true},
		{[]string{"--tp-size", "8"}, 0, false},
	} {
		if b, ok := KVCacheBytes(c.argv); b != c.want || ok != c.ok {
			t.Errorf("KVCacheBytes(%q) = %v, %v; want %v, %v", c.argv, b, ok, c.want, c.ok)
		}
	}
}

// A config.json with sizes no model has (a corrupt file, a hostile one) is an error naming
// the field, at once: num_hidden_layers 2^62 ran the layer loop that many turns, negative
// key/value heads made a negative KV cache.
func TestParseHFConfigImplausibleSizes(t *testing.T) {
	base := `"model_type":"mixtral","hidden_size":4096,"num_attention_heads":32,"vocab_size":32000,"num_local_experts":8,"num_experts_per_tok":2,"intermediate_size":14336`
	for field, want := range map[string]string{
		`"num_hidden_layers":4611686018427387904`:         "num_hidden_layers 4611686018427387904: more than 4096",
		`"num_hidden_layers":32,"num_key_value_heads":-8`: "num_key_value_heads -8 is outside 0..4096",
		`"num_hidden_layers":32,"head_dim":1073741824`:    "head_dim 1073741824 is outside",
	} {
		_, err := ParseHFConfig([]byte("{"+base+","+field+"}"), "config.json")
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("%s: err %v, want one naming the file and %q", field, err, want)
		}
	}
}

// A hardware table with YAML's .nan or .inf for a peak or price is an error naming the key:
// every utilisation would be NaN or 0.
func TestHardwareTableNonFinite(t *testing.T) {
	for _, v := range []string{".nan", ".inf", "-1"} {
		dir := t.TempDir()
		hw := "hardware:\n  H100:\n    name: H100\n    hbm_bandwidth: 3.35e12\n    bf16_flops: 9.89e14\n    memory_bytes: 8.0e10\n    gpu_hour_usd: " + v + "\n"
		if err := os.WriteFile(filepath.Join(dir, "hardware.yaml"), []byte(hw), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadTables(dir)
		if err == nil || !strings.Contains(err.Error(), "hardware.H100.gpu_hour_usd") {
			t.Errorf("gpu_hour_usd %s: %v, want an error naming the key", v, err)
		}
	}
}
