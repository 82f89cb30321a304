package passcost

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

func tables(t *testing.T) *config.Tables {
	t.Helper()
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// TestPublishedParameterCounts: total and activated parameters from the config.json fields
// agree with what the vendors publish, within 3%. Vendors count "activated" two ways:
// Qwen includes the input embedding table (A2.7B), DeepSeek and Mistral do not.
func TestPublishedParameterCounts(t *testing.T) {
	tb := tables(t)
	for _, c := range []struct {
		key              string
		total, activated float64
		withEmbedding    bool
	}{
		{"qwen1_5", 14.3e9, 2.7e9, true},
		{"dsv2_lite", 15.7e9, 2.4e9, false},
		{"mixtral_8x7b", 46.7e9, 12.9e9, false},
		{"mixtral_8x22b", 141e9, 39e9, false},
		{"deepseek_r1", 671e9, 37e9, false},
	} {
		m := tb.Models[c.key]
		act := ActivatedParams(m)
		if c.withEmbedding {
			act = ActivatedParamsWithEmbedding(m)
		}
		tot := TotalParams(m)
		t.Logf("%s: total %.4g activated %.4g (per token %.4g)", c.key, tot, act, ActivatedParams(m))
		if math.Abs(tot/c.total-1) > 0.03 {
			t.Errorf("%s: total %.4g, published %.4g (more than 3%% off)", c.key, tot, c.total)
		}
		if math.Abs(act/c.activated-1) > 0.03 {
			t.Errorf("%s: activated %.4g, published %.4g (more than 3%% off)", c.key, act, c.activated)
		}
	}
}

// TestPublishedParameterCountsBeyondTheTable: models known only from a config.json.
func TestPublishedParameterCountsBeyondTheTable(t *testing.T) {
	for _, c := range []struct {
		file             string
		total, activated float64
		withEmbedding    bool
	}{
		{"qwen3_30b_a3b.json", 30.5e9, 3.3e9, true},
		{"qwen2_57b_a14b.json", 57.4e9, 14.2e9, true},
		{"olmoe_1b_7b.json", 6.9e9, 1.3e9, true},
		{"deepseek_v3.json", 671e9, 37e9, false},
		{"gpt_oss_20b.json", 21e9, 3.6e9, false},
	} {
		b, err := os.ReadFile(filepath.Join("..", "config", "testdata", c.file))
		if err != nil {
			t.Fatal(err)
		}
		m, err := config.ParseHFConfig(b, c.file)
		if err != nil {
			t.Fatal(err)
		}
		act := ActivatedParams(m)
		if c.withEmbedding {
			act = ActivatedParamsWithEmbedding(m)
		}
		if tot := TotalParams(m); math.Abs(tot/c.total-1) > 0.03 || math.Abs(act/c.activated-1) > 0.03 {
			t.Errorf("%s: total %.4g activated %.4g, published %.4g / %.4g", c.file, tot, act, c.total, c.activated)
		}
	}
}

// TestDesignFloorsTable recomputes the hand-checkable floors of docs/DESIGN.md.
func TestDesignFloorsTable(t *testing.T) {
	tb := tables(t)
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "DESIGN.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	begin, end := strings.Index(doc, "<!-- floors:begin -->"), strings.Index(doc, "<!-- floors:end -->")
	if begin < 0 || end < begin {
		t.Fatal("docs/DESIGN.md has no floors table")
	}
	rows := 0
	for _, line := range strings.Split(doc[begin:end], "\n") {
		f := strings.Split(line, "|")
		if len(f) < 9 || strings.TrimSpace(f[1]) == "model" || strings.HasPrefix(strings.TrimSpace(f[1]), "---") {
			continue
		}
		cell := func(i int) string { return strings.TrimSpace(f[i]) }
		m, ok := tb.Models[cell(1)]
		n, fam, _ := strings.Cut(cell(2), "x")
		hw, ok2 := tb.Hardware[fam]
		gpus, _ := strconv.Atoi(n)
		batch, _ := strconv.Atoi(cell(4))
		tokens, _ := strconv.Atoi(cell(5))
		want, _ := strconv.ParseFloat(cell(6), 64)
		if !ok || !ok2 || gpus == 0 || batch == 0 || tokens == 0 || want == 0 {
			t.Fatalf("bad row %q", line)
		}
		var w Work
		if cell(3) == "decode" {
			w = Decode(m, gpus, float64(batch), float64(batch*tokens), TouchedExperts(m.Experts, m.TopK, float64(batch)))
		} else {
			lens := make([]int, batch)
			for i := range lens {
				lens[i] = tokens
			}
			w = Prefill(m, gpus, Prompts(lens...), TouchedExperts(m.Experts, m.TopK, float64(batch*tokens)))
		}
		got := TimeOf(w, PeaksOf(m, hw))
		if math.Abs(got.Seconds*1000/want-1) > 0.001 || got.Bound != cell(7) {
			t.Errorf("%s: %.5g ms %s-bound, DESIGN.md says %v ms %s", line, got.Seconds*1000, got.Bound, want, cell(7))
		}
		rows++
	}
	if rows < 5 {
		t.Errorf("%d rows checked, want the whole table", rows)
	}
	// The memory sentence under the table.
	f := Feasibility(tb.Models["deepseek_r1"], tb.Hardware["H200"], 8, 64, 13000, 1000)
	if f.Verdict != UnderBatched || f.Concurrent != 52 || math.Abs(f.NeedPerGPU/1e9-146.8) > 0.05 {
		t.Errorf("R1 8xH200 13k bs64: %+v; DESIGN.md says 146.8 GB per GPU, 52 at once", f)
	}
}

// TestSlidingWindow: GPT-OSS's sliding-window layers hold and read at most the window per
// sequence and attend to at most the window per query.
func TestSlidingWindow(t *testing.T) {
	for _, c := range []struct{ e, p, w, want float64 }{
		{5, 0, 3, 1 + 2 + 3 + 3 + 3},
		{2, 5, 3, 3 + 3},
		{3, 0, 10, 1 + 2 + 3},
		{3, 2, 4, 3 + 4 + 4},
	} {
		if got := windowPairs(c.e, c.p, c.w); got != c.want {
			t.Errorf("windowPairs(%v, %v, %v) = %v, want %v", c.e, c.p, c.w, got, c.want)
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "config", "testdata", "gpt_oss_20b.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := config.ParseHFConfig(b, "gpt_oss_20b.json")
	if err != nil {
		t.Fatal(err)
	}
	// Two sequences of 4500 positions: 12 full layers hold 9000, 12 sliding ones 2 × 128.
	if got := kvTokens(m, 2, 9000); got != 0.5*9000+0.5*256 {
		t.Errorf("kvTokens = %v, want %v", got, 0.5*9000+0.5*256)
	}
	// KV per token: 2 · 24 layers · 8 heads · 64 · 2 B = 49,152 B (all layers' worth).
	if got := KVBytesPerSeqPerGPU(m, 1, 4500); got != (0.5*4500+0.5*128)*49152 {
		t.Errorf("KV of one 4500-token sequence = %v", got)
	}
	// Weights: the experts at 4.25 bits, the rest at bf16.
	experts := float64(m.MoELayers()) * float64(m.Experts) * ExpertParams(m)
	if got, want := WeightBytes(m), (TotalParams(m)-experts)*2+experts*4.25/8; math.Abs(got/want-1) > 1e-12 {
		t.Errorf("weight bytes %v, want %v", got, want)
	}
}

// TestMLADecodeAbsorbed: DeepSeek-V2-Lite (27 layers, 16 heads, kv_lora 512, rope 64,
// nope 128, v 128) decodes in the absorbed form: 2·27·16·(2·512+64) = 940,032 attention
// FLOPs per (query, key) pair; its prefill keeps the non-absorbed 2·27·16·(128+64+128) =
// 276,480. A GQA model is the same in both phases.
func TestMLADecodeAbsorbed(t *testing.T) {
	tb := tables(t)
	m := tb.Models["dsv2_lite"]
	if m.Layers != 27 || m.Heads != 16 || m.KVLoraRank != 512 || m.QKRopeHeadDim != 64 || m.QKNopeHeadDim != 128 || m.VHeadDim != 128 {
		t.Fatalf("dsv2_lite description changed: %+v", m)
	}
	if got := Decode(m, 1, 1, 1000, 6).AttnFLOPs; got != 940032*1000 {
		t.Errorf("decode attention FLOPs %v, want %v", got, 940032*1000)
	}
	if got := Prefill(m, 1, Prompts(1), 6).AttnFLOPs; got != 276480 {
		t.Errorf("prefill attention FLOPs %v, want 276480", got)
	}
	q := tb.Models["qwen1_5"]
	if Decode(q, 1, 1, 1, 4).AttnFLOPs != Prefill(q, 1, Prompts(1), 4).AttnFLOPs {
		t.Error("GQA decode and prefill pair FLOPs differ")
	}
}
