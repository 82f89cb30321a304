package capmath

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

// toy is small enough to do every sum by hand.
//
//	attn   = d·(H·hd + 2·KV·hd) + H·hd·d = 4·(2·2 + 2·1·2) + 2·2·4 = 32 + 16 = 48
//	expert = 3·d_ff·d = 3·8·4 = 96
//	kv     = 2·L·hd·KV elements · 2 bytes = 2·2·2·1·2 = 16 bytes/token
var toy = config.Model{Key: "toy", Layers: 2, DModel: 4, Heads: 2, KVHeads: 1, HeadDim: 2,
	Experts: 4, TopK: 2, ExpertFFN: 8, Precision: "bfloat16"}

// toyHW: 10 kB/s and 100 kFLOP/s, so utilisations come out as plain decimals.
var toyHW = config.Hardware{Family: "TOY", HBMBandwidth: 1e4, BF16FLOPs: 1e5, MemoryBytes: 1e6}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %.12g, want %.12g", what, got, want)
	}
}

func tables(t *testing.T) *config.Tables {
	t.Helper()
	tb, err := config.LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestToySizes(t *testing.T) {
	near(t, "AttnParams", AttnParams(toy), 48)
	near(t, "ExpertParams", toy.ExpertParams(), 96)
	near(t, "KVBytesPerToken", toy.KVBytesPerToken(), 16)
	// ActiveParams(3) = L·attn + MoE layers·3·expert = 2·48 + 2·3·96 = 96 + 576 = 672
	near(t, "ActiveParams(3)", ActiveParams(toy, 3), 672)
	// AttentionScore(10) = ctx·L·H·hd·2 = 10·2·2·2·2 = 160
	near(t, "AttentionScore(10)", AttentionScore(toy, 10), 160)
}

func TestPassUtilDecode(t *testing.T) {
	// batch 2, 0.5 s, 10 tokens of context over the batch, 3 experts active per layer.
	//   bytes = 672 params · 2 B + 10 tokens · 16 B = 1344 + 160 = 1504 B
	//   S-MBU = 1504 / 0.5 / (1 · 1e4) = 3008 / 1e4 = 0.3008
	//   FLOPParams = L·attn + L·(one expert) = 96 + 192 = 288
	//   S-MFU = (288 + 160) · 2 · (2/0.5 tokens/s) / 1e5 = 448 · 8 / 1e5 = 0.03584
	u, err := PassUtil(toy, toyHW, 1, Pass{Mode: "decode", BatchSize: 2, LatencyS: 0.5, SeqLensSum: 10, Activation: 3})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "decode S-MBU", u.SMBU, 0.3008)
	near(t, "decode S-MFU", u.SMFU, 0.03584)

	// Same pass on 2 GPUs (record's gpu_num wins over the cell's): both halve.
	u2, err := PassUtil(toy, toyHW, 1, Pass{Mode: "decode", BatchSize: 2, LatencyS: 0.5, SeqLensSum: 10, Activation: 3, GPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "decode S-MBU on 2 GPUs", u2.SMBU, 0.1504)
	near(t, "decode S-MFU on 2 GPUs", u2.SMFU, 0.01792)
}

func TestPassUtilPrefill(t *testing.T) {
	// 6 prompt tokens in 0.2 s, all 4 experts active.
	//   bytes = (96 + 2·4·96) · 2 + 6·16 = 864·2 + 96 = 1824 B
	//   S-MBU = 1824 / 0.2 / 1e4 = 0.912
	//   tokens/s = 6 / 0.2 = 30; AttentionScore(6) = 6·L·H·hd·2 = 6·16 = 96
	//   S-MFU = (288 + 96) · 2 · 30 / 1e5 = 23040 / 1e5 = 0.2304
	u, err := PassUtil(toy, toyHW, 1, Pass{Mode: "prefill", BatchSize: 1, LatencyS: 0.2, SeqLensSum: 6, Activation: 4})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "prefill S-MBU", u.SMBU, 0.912)
	near(t, "prefill S-MFU", u.SMFU, 0.2304)
}

func TestSharedAndDenseAlwaysActive(t *testing.T) {
	// One of the two layers dense (FFN 20), one MoE layer with a shared expert of FFN 8.
	//   shared = 3·8·4 = 96, dense = 3·20·4 = 240
	//   ActiveParams(3) = 2·48 + 1·(3·96 + 96) + 1·240 = 96 + 384 + 240 = 720
	//   FLOPParams      = 2·48 + 1·(96 + 96) + 240 = 528
	m := toy
	m.DenseLayers, m.DenseFFN, m.SharedExperts, m.SharedFFN = 1, 20, 1, 8
	near(t, "ActiveParams(3)", ActiveParams(m, 3), 720)
	near(t, "ActiveParams(0)", ActiveParams(m, 0), 96+96+240)
	near(t, "FLOPParams", FLOPParams(m), 528)
}

func TestFP8AndMLA(t *testing.T) {
	tb := tables(t)
	r1 := tb.Models["deepseek_r1"]
	// FP8 weights: 1 byte per parameter; H200 FP8 dense peak 1979 TFLOP/s.
	near(t, "R1 bytes/param", r1.BytesPerParam(), 1)
	near(t, "R1 peak FLOPs on H200", tb.Hardware["H200"].PeakFLOPs(r1), 1979e12)
	// MLA attention of R1 (d 7168, H 128, q_lora 1536, kv_lora 512, rope 64, nope = v = 128):
	//   q  = 7168·1536 + 1536·128·192 = 11,010,048 + 37,748,736 = 48,758,784
	//   kv = 7168·(512+64) + 512·128·(128+128) = 4,128,768 + 16,777,216 = 20,905,984
	//   o  = 128·128·7168 = 117,440,512            total 187,105,280
	near(t, "R1 MLA attn", AttnParams(r1), 187105280)
	// KV cache: L·(kv_lora + rope) · 2 bytes = 61·576·2 = 70,272 B/token.
	near(t, "R1 KV bytes/token", r1.KVBytesPerToken(), 70272)
	// One R1 decode pass on 8×H200: batch 1, 4000 tokens, 8 experts, 40 ms.
	//   weights = 61·187,105,280 + 58·(8·44,040,192 + 44,040,192) + 3·3·18432·7168
	//           = 11,413,422,080 + 58·396,361,728 + 1,189,085,184
	//           = 11,413,422,080 + 22,988,980,224 + 1,189,085,184 = 35,591,487,488 params = bytes (fp8)
	//   kv      = 4000 · 70,272 = 281,088,000 B
	//   S-MBU   = 35,872,575,488 / 0.04 / (8 · 4.8e12) = 0.0233545413...
	u, err := PassUtil(r1, tb.Hardware["H200"], 8, Pass{Mode: "decode", BatchSize: 1, LatencyS: 0.04, SeqLensSum: 4000, Activation: 8})
	if err != nil {
		t.Fatal(err)
	}
	near(t, "R1 decode S-MBU", u.SMBU, 35872575488.0/0.04/(8*4.8e12))
}

func TestExpectedTouchedExperts(t *testing.T) {
	// One token touches exactly k; E·(1−(1−k/E)^B) otherwise.
	near(t, "B=1", ExpectedTouchedExperts(60, 4, 1), 4)
	// B=2: 60·(1 − (56/60)²) = 60·(1 − 0.871111…) = 7.7333…
	near(t, "B=2", ExpectedTouchedExperts(60, 4, 2), 60*(1-(56.0/60)*(56.0/60)))
	// B=32: (14/15)^32 = 0.10994…, so 60·0.89006 ≈ 53.40
	if got := ExpectedTouchedExperts(60, 4, 32); math.Abs(got-53.40) > 0.01 {
		t.Errorf("B=32: got %.4f, want ≈53.40", got)
	}
	// Mixtral (8 experts, top 2) at batch 128: all 8.
	if got := ExpectedTouchedExperts(8, 2, 128); math.Abs(got-8) > 1e-9 {
		t.Errorf("Mixtral B=128: got %v, want 8", got)
	}
}

func TestDecodeFloorQwenH100(t *testing.T) {
	tb := tables(t)
	q, h100 := tb.Models["qwen1_5"], tb.Hardware["H100"]
	// Qwen1.5-MoE, 1×H100, batch 1, 4k-1k: context per sequence 4000 + 999/2 = 4499.5.
	//   attn = 2048·(16·128 + 2·16·128) + 16·128·2048 = 16,777,216
	//   expert = 3·1408·2048 = 8,650,752; shared = 3·5632·2048 = 34,603,008
	//   touched at B=1 = 4
	//   weights = 24·16,777,216 + 24·(4·8,650,752 + 34,603,008) = 2,063,597,568 params · 2 B
	//           = 4,127,195,136 B
	//   KV = 4499.5 · (2·24·128·16·2 = 196,608 B) = 884,637,696 B
	//   bytes = 5,011,832,832 B; / 3.35e12 B/s = 1.49607 ms (memory bound: the FLOPs,
	//   2·(2,063,597,568 + 4499.5·98,304) = 5.01e9, take 5 µs at 989 TFLOP/s)
	f := DecodeFloor(q, h100, 1, 1, 4499.5, ExpectedTouchedExperts(q.Experts, q.TopK, 1))
	near(t, "bytes", f.Bytes, 5011832832)
	near(t, "seconds", f.Seconds, 5011832832/3.35e12)
	if f.Bound != "memory" {
		t.Errorf("bound = %q, want memory", f.Bound)
	}
	// TP over 8 GPUs divides the floor by 8.
	f8 := DecodeFloor(q, h100, 8, 1, 4499.5, 4)
	near(t, "8 GPUs", f8.Seconds, f.Seconds/8)
}

func TestPrefillFloorComputeBound(t *testing.T) {
	tb := tables(t)
	q, h100 := tb.Models["qwen1_5"], tb.Hardware["H100"]
	// 4000 prompt tokens: FLOPs = 4000·2·(2,063,597,568 + AttentionScore(2000))
	//   AttentionScore(2000) = 2000·24·16·128·2 = 196,608,000
	//   = 8000 · 2,260,205,568 = 18,081,644,544,000 FLOPs; / 989e12 = 18.283 ms
	f := PrefillFloor(q, h100, 1, 4000)
	near(t, "flops", f.FLOPs, 18081644544000)
	near(t, "seconds", f.Seconds, 18081644544000/989e12)
	if f.Bound != "compute" {
		t.Errorf("bound = %q, want compute", f.Bound)
	}
}

func TestFeasible(t *testing.T) {
	tb := tables(t)
	q, h100 := tb.Models["qwen1_5"], tb.Hardware["H100"]
	// Qwen1.5-MoE weights: attn 24·16,777,216 = 402,653,184; MoE 24·(60·8,650,752 +
	// 34,603,008 + 60·2048 router) = 13,290,504,192; embeddings 2·151,936·2048 = 622,329,856;
	// 14,315,487,232 params · 2 B = 28,630,974,464 B.
	near(t, "qwen weights", TotalWeightBytes(q), 28630974464)
	// bs32, 4k-1k: KV = 32·5000·196,608 = 31,457,280,000; need 60.09 GB; have
	// 0.9·85,520,809,984 = 76.97 GB: fits.
	ok, need, have, why := Feasible(q, h100, 1, 32, 4000, 1000)
	if !ok || math.Abs(need-60088254464) > 1 || math.Abs(have-0.9*85520809984) > 1 {
		t.Errorf("bs32: ok=%v need=%.0f have=%.0f (%s), want fits with need 60088254464", ok, need, have, why)
	}
	// bs64: KV doubles to 62.9 GB, need 91.5 GB > 77 GB.
	ok, need, _, why = Feasible(q, h100, 1, 64, 4000, 1000)
	if ok || math.Abs(need-(28630974464+62914560000)) > 1 || !strings.Contains(why, "does not fit") {
		t.Errorf("bs64: ok=%v need=%.0f (%s), want infeasible with need 91545534464", ok, need, why)
	}
	// 13k-1k exceeds Qwen1.5's 8192-token window whatever the memory.
	ok, _, _, why = Feasible(q, tb.Hardware["H200"], 8, 1, 13000, 1000)
	if ok || !strings.Contains(why, "context window of 8192") {
		t.Errorf("13k on qwen: ok=%v (%s), want refused for the context window", ok, why)
	}
	// DeepSeek-R1 (≈671B fp8) fits 8×H200 at bs128 13k-1k but not 8×H100.
	r1 := tb.Models["deepseek_r1"]
	if ok, need, have, why := Feasible(r1, tb.Hardware["H200"], 8, 128, 13000, 1000); !ok {
		t.Errorf("R1 8xH200: need %.0f have %.0f: %s", need, have, why)
	}
	if ok, _, _, why := Feasible(r1, tb.Hardware["H100"], 8, 1, 4000, 1000); ok {
		t.Errorf("R1 8xH100 fits (%s), want not", why)
	}
}

func TestReadRecordsBothFormats(t *testing.T) {
	dir := t.TempDir()
	sg := filepath.Join(dir, "Qwen", "Qwen1.5-MoE-A2.7B-Chat")
	if err := os.MkdirAll(sg, 0o755); err != nil {
		t.Fatal(err)
	}
	jsonl := `{"batch_size":2,"latency":0.5,"seq_lens_sum":10,"forward_mode":"decode","expert_activation":3,"gpu_num":1,"gpu_raw_type":"TOY","req_ids":[1,2]}
{"batch_size":1,"latency":0.2,"seq_lens_sum":6,"forward_mode":"prefill","expert_activation":4.0,"gpu_num":1,"per_req_info":[{"req_id":1}]}
{"batch_size":1,"latency":0.2,"seq_lens_sum":6,"forward_mode":"prefill","expert_activation":null}
`
	if err := os.WriteFile(filepath.Join(sg, "expert_distribution_record.jsonl"), []byte(jsonl), 0o644); err != nil {
		t.Fatal(err)
	}
	dump := `{"status":"ok","total_records":1,"records":[{"batch_size":2,"latency":0.25,"seq_lens_sum":10,"forward_mode":"decode","expert_activation":3,"scheduled_tokens":2}]}`
	if err := os.WriteFile(filepath.Join(dir, "batch_records.json"), []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "recording_flag.json"), []byte("on"), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Passes) != 3 || recs.Skipped["no expert_activation"] != 1 || len(recs.Files) != 2 {
		t.Fatalf("passes %d, skipped %v, files %v; want 3 passes, 1 skipped, 2 files", len(recs.Passes), recs.Skipped, recs.Files)
	}
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 4, OutputTokens: 3}, recs)
	if err != nil {
		t.Fatal(err)
	}
	// Decode passes: 0.3008 (0.5 s) and 0.6016 (0.25 s): mean 0.4512. Prefill: 0.912.
	if d.Source != "records" || d.Decode == nil || d.Prefill == nil {
		t.Fatalf("derived %+v: want both from records", d)
	}
	near(t, "mean decode S-MBU", d.Decode.SMBU, 0.4512)
	near(t, "prefill S-MBU", d.Prefill.SMBU, 0.912)
	if d.Inputs.FloorActivationSource != "measured" || d.Inputs.FloorActivation != 3 {
		t.Errorf("floor activation %v (%s), want 3 measured", d.Inputs.FloorActivation, d.Inputs.FloorActivationSource)
	}
	// Floor: batch 2, context 4 + 2/2 = 5 per sequence, 3 experts:
	//   bytes = 672·2 + 2·5·16 = 1504 → 1504 / 1e4 = 0.1504 s.
	//   FLOPs = 2·2·(ActiveParams(2) = 96 + 384 = 480, + AttentionScore(5) = 80) = 2240
	//   → 0.0224 s: memory bound.
	near(t, "TPOT floor ms", d.TPOTFloorMs, 150.4)

	missing, err := ReadRecords(filepath.Join(dir, "nope"))
	if err != nil || len(missing.Passes) != 0 {
		t.Errorf("missing dir: %v, %d passes; want empty and no error", err, len(missing.Passes))
	}
}

func TestDeriveFromClientMetrics(t *testing.T) {
	tpot, ttft := 500.0, 200.0
	d, err := Derive(Cell{Model: toy, Hardware: config.Hardware{Family: "TOY", HBMBandwidth: 1e4, BF16FLOPs: 1e5,
		MemoryBytes: 1e6, GPUHourUSD: 3.6}, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 9,
		MeanTPOTMs: &tpot, MeanTTFTMs: &ttft, TotalOutputTokens: 1000, DurationS: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Source != "client_metrics" || d.Decode == nil || d.Prefill == nil {
		t.Fatalf("derived %+v: want both from client metrics", d)
	}
	// Decode: batch 2, uniform routing at B=2 → 4·(1−(1/2)²) = 3 experts; context
	// 6 + 8/2 = 10 per sequence, 20 over the batch; 0.5 s:
	//   bytes = 672·2 + 20·16 = 1664 → S-MBU = 1664/0.5/1e4 = 0.3328
	near(t, "decode S-MBU", d.Decode.SMBU, 0.3328)
	// Prefill: 6 tokens, touched 4·(1−(1/2)^6) = 3.9375; 0.2 s:
	//   bytes = (96 + 2·3.9375·96)·2 + 6·16 = (96 + 756)·2 + 96 = 1800 → 1800/0.2/1e4 = 0.9
	near(t, "prefill S-MBU", d.Prefill.SMBU, 0.9)
	// Floor 1664/1e4 = 166.4 ms; measured 500 ms → 3.0048×.
	near(t, "TPOT floor", d.TPOTFloorMs, 166.4)
	near(t, "TPOT/floor", *d.TPOTOverFloor, 500/166.4)
	// Rental: 1 GPU · $3.6/h · 100 s = $0.1 for 1000 tokens → $100 per million.
	near(t, "rental $/Mtok", *d.RentalCostPerMOutputTokensUSD, 100)
}
