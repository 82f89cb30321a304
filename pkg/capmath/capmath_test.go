package capmath

import (
	"encoding/json"
	"fmt"
	"github.com/moecapd/moecapd/pkg/records"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

// toy is small enough to do every sum by hand (no shared experts, no dense layers):
//
//	A (attention)  = d·H·hd + 2·d·KV·hd + H·hd·d = 16 + 16 + 16 = 48
//	X (expert)     = 3·ffn·d = 3·8·4 = 96;  router = E·d = 16;  LM head = V·d = 40
//	layers(act)    = L·A + L·(act·X + router) = 96 + 192·act + 32 = 128 + 192·act
//	kv             = 2·L·KV·hd·2 bytes = 16 B/token
//	attention FLOPs per (query, key) = 2·L·H·(hd+hd) = 32
var toy = config.Model{Key: "toy", HFID: "org/toy", Family: "mixtral", Layers: 2, DModel: 4, Heads: 2, KVHeads: 1, HeadDim: 2,
	Experts: 4, TopK: 2, ExpertFFN: 8, Vocab: 10, Precision: "bfloat16", WeightBytes: 2, KVElemBytes: 2}

// toyHW: 10 kB/s and 100 kFLOP/s, so times and utilisations come out as plain decimals.
var toyHW = config.Hardware{Family: "TOY", HBMBandwidth: 1e4, BF16FLOPs: 1e5, MemoryBytes: 1e6, GPUHourUSD: 3.6, ElectricityUSDPerKWh: 0.1}

func near(t *testing.T, what string, got *float64, want float64) {
	t.Helper()
	if got == nil {
		t.Errorf("%s absent, want %.12g", what, want)
		return
	}
	if math.Abs(*got-want) > 1e-9*math.Max(1, math.Abs(want)) {
		t.Errorf("%s = %.12g, want %.12g", what, *got, want)
	}
}

func writeRecords(t *testing.T, lines string) *records.Set {
	t.Helper()
	dir := t.TempDir()
	sg := filepath.Join(dir, "org", "toy")
	if err := os.MkdirAll(sg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sg, "expert_distribution_record.jsonl"), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := records.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// usable is the passes Derive computes with.
func usable(set *records.Set) []pass {
	records.DecodeContexts(set.Passes)
	ps, _ := usablePasses(set.Passes)
	return ps
}

// Two requests of 6 prompt tokens prefilled together in 0.25 s, then one decode pass of
// both (contexts 7 each) in 0.2 s; a readiness probe (2 tokens) and a record without
// expert_activation are left out.
const toyRecords = `{"batch_size":1,"latency":0.01,"seq_lens_sum":2,"forward_mode":"prefill","expert_activation":2,"gpu_num":1,"per_req_info":[{"req_id":"probe","extend_len":2,"total_len":2,"prompt_len":2,"is_last_chunk":true}]}
{"batch_size":2,"latency":0.25,"seq_lens_sum":12,"forward_mode":"prefill","expert_activation":4,"gpu_num":1,"per_req_info":[{"req_id":"a","extend_len":6,"total_len":6,"prompt_len":6,"is_last_chunk":true},{"req_id":"b","extend_len":6,"total_len":6,"prompt_len":6,"is_last_chunk":true}]}
{"batch_size":2,"latency":0.2,"seq_lens_sum":14,"forward_mode":"decode","expert_activation":3,"gpu_num":1,"scheduled_tokens":2,"req_ids":["a","b"]}
{"batch_size":2,"latency":0.2,"seq_lens_sum":14,"forward_mode":"decode","expert_activation":null}
`

// TestDeriveFromRecordsByHand recomputes every physical and MoE-CAP number of toyRecords.
func TestDeriveFromRecordsByHand(t *testing.T) {
	recs := writeRecords(t, toyRecords)
	if ps, skipped := usablePasses(recs.Passes); len(ps) != 3 || skipped["no expert_activation"] != 1 {
		t.Fatalf("passes %d, skipped %v; want 3 and 1 without expert_activation", len(ps), skipped)
	}
	tpot := 210.0
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, NumSamples: 2,
		Ran: true, MeanTPOTMs: &tpot, TotalOutputTokens: 4, WindowS: 1, Window: WindowBenchPhase}, recs)
	if err != nil {
		t.Fatal(err)
	}
	// Physical prefill (2 prompts of 6, 4 experts, 0.25 s):
	//   bytes  = (128 + 192·4 + 40)·2 + 12·16 = 1872 + 192 = 2064 → S-MBU = 2064/0.25/1e4 = 0.8256
	//   FLOPs  = 2·12·(128 + 192·2) + 2·2·40 + 32·(2·6·7/2) = 12288 + 160 + 1344 = 13792
	//   S-MFU  = 13792/1e5/0.25 = 0.55168
	near(t, "prefill s_mbu", d.Prefill.SMBU, 0.8256)
	near(t, "prefill s_mfu", d.Prefill.SMFU, 0.55168)
	// Physical decode (batch 2, contexts 6+1 each from req_ids, 3 experts, 0.2 s):
	//   bytes = (128 + 576 + 40)·2 + 14·16 = 1488 + 224 = 1712 → 1712/0.2/1e4 = 0.856
	//   FLOPs = 2·2·(128 + 384 + 40) + 32·14 = 2208 + 448 = 2656 → 2656/1e5/0.2 = 0.1328
	near(t, "decode s_mbu", d.Decode.SMBU, 0.856)
	near(t, "decode s_mfu", d.Decode.SMFU, 0.1328)
	if d.Decode.Bound != "memory" || d.Prefill.Bound != "memory" {
		t.Errorf("bounds %s/%s, want memory/memory", d.Prefill.Bound, d.Decode.Bound)
	}
	// MoE-CAP (default family: one expert per token in FLOPs, seq_lens_sum for the score):
	//   decode: S-MBU = (2·(3·96+48) + 14·8)·2/0.2/1e4 = (672+112)·2/2000 = 0.784
	//           S-MFU = (2·(96+48) + 14·2·2·2·2)·2·(2/0.2)/1e5 = (288+224)·20/1e5 = 0.1024
	//   prefill per request (each charged the whole 0.25 s, 6 tokens, 24 tokens/s):
	//           S-MBU = (2·(4·96+48) + 6·8)·2/0.25/1e4 = 912·2/2500 = 0.7296
	//           S-MFU = (288 + 6·16)·2·24/1e5 = 0.18432
	near(t, "decode s_mbu_moecap", d.Decode.SMBUMoECAP, 0.784)
	near(t, "decode s_mfu_moecap", d.Decode.SMFUMoECAP, 0.1024)
	near(t, "prefill s_mbu_moecap", d.Prefill.SMBUMoECAP, 0.7296)
	near(t, "prefill s_mfu_moecap", d.Prefill.SMFUMoECAP, 0.18432)
	if d.Prefill.MoECAPPath != "per_request" {
		t.Errorf("moecap path %q, want per_request", d.Prefill.MoECAPPath)
	}
	// Floors of what ran: decode at batch 2, context 7, 3 experts: 1712 B / 1e4 = 171.2 ms;
	// TTFT: the wave of both prompts, 2064 B / 1e4 = 206.4 ms.
	near(t, "tpot floor", d.TPOTFloorMs, 171.2)
	near(t, "ttft floor", d.TTFTFloorMs, 206.4)
	// The per-request TTFT floor sums pass floors: it has no single memory/compute split.
	if b, _ := json.Marshal(d.TTFTFloor); strings.Contains(string(b), "memory_s") || strings.Contains(string(b), "compute_s") {
		t.Errorf("ttft_floor %s: memory_s/compute_s that were not measured", b)
	}
	near(t, "tpot over floor", d.TPOTOverFloor, 210/171.2)
	near(t, "decode pass over floor", d.DecodePassOverFloor, 200/171.2)
	if d.Inputs.FloorSource != "records" || d.Inputs.TPOTMeasured != "client" {
		t.Errorf("floor source %q, tpot measured %q", d.Inputs.FloorSource, d.Inputs.TPOTMeasured)
	}
	// Cost: 1 GPU × $3.6/h × 1 s = $0.001 for 4 tokens; no energy measured, electricity
	// priced → no total, rental $250 per million.
	if d.Cost == nil || d.Cost.TotalUSD != nil {
		t.Fatalf("cost %+v, want rental only", d.Cost)
	}
	near(t, "rental per Mtok", d.Cost.RentalPerMillionOutputTokensUSD, 250)
}

// TestVLLMDecodeContext: vLLM's decode seq_lens_sum counts scheduled tokens, not context;
// the context comes from the requests' prompt lengths and decode steps, as for SGLang.
func TestVLLMDecodeContext(t *testing.T) {
	vllm := strings.Replace(toyRecords, `"seq_lens_sum":14,"forward_mode":"decode","expert_activation":3`, `"seq_lens_sum":2,"forward_mode":"decode","expert_activation":3`, 1)
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true}, writeRecords(t, vllm))
	if err != nil {
		t.Fatal(err)
	}
	near(t, "decode s_mbu", d.Decode.SMBU, 0.856) // the same 14 positions as from SGLang's seq_lens_sum
	near(t, "decode context", d.Inputs.DecodeContext, 7)
}

// TestRecordCopiesCountOnce: the same passes in a second file (vLLM's own log beside the
// client's dump, re-encoded) are read once.
func TestRecordCopiesCountOnce(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "batch_records.jsonl"), []byte(toyRecords), 0o644)
	var reenc strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(toyRecords), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v) // keys sorted: another writer's byte order
		reenc.Write(append(b, '\n'))
	}
	os.WriteFile(filepath.Join(dir, "vllm_batch_records.jsonl"), []byte(reenc.String()), 0o644)
	recs, err := records.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.Passes) != 4 || len(recs.Copies) != 1 || recs.Copies[0] != "vllm_batch_records.jsonl" {
		t.Errorf("passes %d, copies %v; want the 4 records once and the second file a copy", len(recs.Passes), recs.Copies)
	}
}

// TestChunkedPrefillPrefix: a 23-token prompt prefilled in chunks of 12 and 11 attends
// 12·13/2 = 78 then 11·12 + 11·12/2 = 198 keys, whether total_len is the running total
// (SGLang) or the prompt length (vLLM).
func TestChunkedPrefillPrefix(t *testing.T) {
	for name, totals := range map[string][2]int{"sglang": {12, 23}, "vllm": {23, 23}} {
		recs := writeRecords(t, fmt.Sprintf(`{"batch_size":1,"latency":0.1,"seq_lens_sum":12,"forward_mode":"prefill","expert_activation":4,"gpu_num":1,"per_req_info":[{"req_id":"a","extend_len":12,"total_len":%d,"prompt_len":23,"is_last_chunk":false}]}
{"batch_size":1,"latency":0.1,"seq_lens_sum":11,"forward_mode":"prefill","expert_activation":4,"gpu_num":1,"per_req_info":[{"req_id":"a","extend_len":11,"total_len":%d,"prompt_len":23,"is_last_chunk":true}]}
`, totals[0], totals[1]))
		pre, _, _ := physicalPasses(toy, 1, usable(recs), 0, false)
		if len(pre) != 2 {
			t.Fatalf("%s: %d passes", name, len(pre))
		}
		// attention FLOPs = 32 per (query, key) pair
		if a, b := pre[0].work.AttnFLOPs, pre[1].work.AttnFLOPs; a != 32*78 || b != 32*198 {
			t.Errorf("%s: attention FLOPs %v, %v; want %v, %v", name, a, b, 32*78, 32*198)
		}
	}
}

// TestMoECAPPerPassPath: without per_req_info upstream takes each prefill pass whole, and
// its attention term counts the pass's seq_lens_sum for every token.
func TestMoECAPPerPassPath(t *testing.T) {
	recs := writeRecords(t, `{"batch_size":2,"latency":0.25,"seq_lens_sum":12,"forward_mode":"prefill","expert_activation":4,"gpu_num":1}`+"\n")
	u := moeCAP(toy, toyHW, 1, usable(recs))
	// S-MBU = (864 + 12·8)·2/0.25/1e4 = 0.768; S-MFU = (288 + 12·16)·2·48/1e5 = 0.4608
	near(t, "s_mbu", &u.PrefillSMBU, 0.768)
	near(t, "s_mfu", &u.PrefillSMFU, 0.4608)
	if u.PrefillPath != "per_pass" {
		t.Errorf("path %q", u.PrefillPath)
	}
}

// TestMoECAPFamilies: upstream picks its formula by the model's name; DeepSeek counts two
// shared experts whatever the config says, Qwen one shared expert in every layer.
func TestMoECAPFamilies(t *testing.T) {
	ds := toy
	ds.HFID, ds.Family = "deepseek-ai/DeepSeek-toy", "deepseek_v3"
	ds.KVLoraRank, ds.QKNopeHeadDim, ds.QKRopeHeadDim, ds.VHeadDim = 3, 2, 1, 2
	ds.SharedExperts, ds.SharedFFN = 1, 8
	mm := newMoECAPModel(ds, toyHW)
	if mm.fam != famDeepSeek || mm.shared != 2*96 || mm.kvElems != 2*(3+1) {
		t.Errorf("deepseek: %+v; want two shared experts (192) and latent KV 8 elements", mm)
	}
	qw := toy
	qw.HFID, qw.SharedFFN = "Qwen/Qwen-toy", 8
	if mm := newMoECAPModel(qw, toyHW); mm.fam != famQwen || mm.weights(1) != 2*(96+96+48) {
		t.Errorf("qwen: weights(1) = %v, want L·(X + Sh + A) = 480", mm.weights(1))
	}
	q3 := toy
	q3.HFID = "Qwen/Qwen3-toy"
	if mm := newMoECAPModel(q3, toyHW); mm.fam != famQwen3 {
		t.Errorf("qwen3 family not picked")
	}
}

// TestImpossibleIsFlagged: a physical utilisation above 1.01, or a latency below 0.98 × its
// floor, is never a result: it moves to errors with its likely cause.
func TestImpossibleIsFlagged(t *testing.T) {
	recs := writeRecords(t, `{"batch_size":2,"latency":0.15,"seq_lens_sum":12,"forward_mode":"prefill","expert_activation":4,"gpu_num":1,"per_req_info":[{"req_id":"a","extend_len":6,"total_len":6,"prompt_len":6,"is_last_chunk":true},{"req_id":"b","extend_len":6,"total_len":6,"prompt_len":6,"is_last_chunk":true}]}`+"\n")
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true}, recs)
	if err != nil {
		t.Fatal(err)
	}
	// 2064 B in 0.15 s on 1e4 B/s: S-MBU 1.376 (S-MFU 13792/1e5/0.15 = 0.919 is possible);
	// the TTFT of 150 ms against the 206.4 ms floor is 0.7267 × floor, below 0.98.
	if d.TTFTOverFloor != nil || len(d.Errors) != 2 || d.Errors[1].Field != "ttft_over_floor" || math.Abs(d.Errors[1].Value-150/206.4) > 1e-9 || d.Errors[1].Limit != FloorLimit {
		t.Errorf("ttft_over_floor %v errors %+v; want 150/206.4 moved to errors", d.TTFTOverFloor, d.Errors)
	}
	if d.Prefill.SMBU != nil || len(d.Errors) < 1 || d.Errors[0].Field != "prefill.s_mbu" || math.Abs(d.Errors[0].Value-1.376) > 1e-9 || !strings.Contains(d.Errors[0].Cause, "faster than the hardware allows") {
		t.Fatalf("prefill %+v errors %+v; want s_mbu 1.376 moved to errors with a cause", d.Prefill, d.Errors)
	}
	if d.Prefill.SMFU == nil || d.Prefill.SMBUMoECAP == nil {
		t.Errorf("the possible values stay: %+v", d.Prefill)
	}
}

// TestScaledAndOverriddenSim: a scaled sim's client latencies are not compared with the
// floors and it gets no cost; fixed pass times keep physical utilisation out.
func TestScaledAndOverriddenSim(t *testing.T) {
	scale, ov := SimSettings([]string{"moecapd", "sim-server", "--sim-time-scale", "0.05", "--sim-tpot=2ms"})
	if scale != 0.05 || len(ov) != 1 || ov[0] != "--sim-tpot" {
		t.Fatalf("SimSettings = %v %v", scale, ov)
	}
	recs := writeRecords(t, toyRecords)
	tpot := 10.0
	d, _ := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true,
		MeanTPOTMs: &tpot, SimTimeScale: 0.05, WindowS: 1}, recs)
	// The client's 10 ms is wall time of a scaled run: the ratio comes from the records'
	// passes (model time) instead, 200 ms / 171.2 ms.
	if d.Inputs.TPOTMeasured != "server_pass" || d.Cost != nil || d.Decode.SMBU == nil {
		t.Errorf("scaled: tpot measured %q, cost %v, s_mbu %v; want the server's passes, no cost, the utilisation",
			d.Inputs.TPOTMeasured, d.Cost, d.Decode.SMBU)
	}
	near(t, "scaled tpot over floor", d.TPOTOverFloor, 200/171.2)
	near(t, "scaled ttft over floor", d.TTFTOverFloor, 250/206.4)
	d, _ = Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true,
		MeanTPOTMs: &tpot, SimOverrides: []string{"--sim-tpot"}}, recs)
	if d.Decode.SMBU != nil || d.Decode.SMBUMoECAP == nil || d.TPOTOverFloor != nil {
		t.Errorf("overridden: %+v; want no physical utilisation or ratio, MoE-CAP values kept", d.Decode)
	}
}

// TestPredictionNotFloors: a cell that did not run has a prediction and a memory verdict,
// no floors; an undescribable model has its CAP numbers absent with the reason.
func TestPredictionNotFloors(t *testing.T) {
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.TPOTFloorMs != nil || d.TTFTFloorMs != nil || d.Prediction == nil || d.Prediction.TPOTMs == nil || *d.Prediction.TPOTMs <= 0 || !d.Feasible {
		t.Errorf("not run: %+v; want a prediction and no floors", d)
	}
	// A request of 100,000 tokens needs 1.6 MB of KV cache on a 1 MB GPU: nothing can run,
	// so the predicted TPOT and TTFT are absent, not 0.
	d, _ = Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 100000, OutputTokens: 2}, nil)
	raw, _ := json.Marshal(d.Prediction)
	if d.Feasible || d.Prediction == nil || d.Prediction.TPOTMs != nil || d.Prediction.TTFTMs != nil || strings.Contains(string(raw), "tpot_ms") {
		t.Errorf("does-not-fit prediction %s (feasible %v); want no tpot_ms/ttft_ms", raw, d.Feasible)
	}
	d, _ = Derive(Cell{ModelErr: "model \"x/y\" cannot be described: no config.json"}, nil)
	if d.Absent == "" || d.Prefill != nil || d.Prediction != nil {
		t.Errorf("undescribed: %+v; want absent with the reason", d)
	}
}

func TestComputeCost(t *testing.T) {
	e := 3.6e6
	c := ComputeCost(CostInputs{GPUs: 2, WindowS: 1800, EnergyJ: &e, EnergySource: "counter", OutputTokens: 1_000_000,
		Prices: Prices{GPUHourUSD: 2, ElectricityUSDPerKWh: 0.5}})
	// rental 2 × $2 × 0.5 h = $2; electricity 1 kWh × $0.5 = $0.5; total $2.5 per million.
	near(t, "total", c.TotalUSD, 2.5)
	near(t, "per million", c.PerMillionOutputTokensUSD, 2.5)
	near(t, "rental per million", c.RentalPerMillionOutputTokensUSD, 2)
	if c := ComputeCost(CostInputs{GPUs: 1, WindowS: 3600, OutputTokens: 10, Prices: Prices{GPUHourUSD: 1, ElectricityUSDPerKWh: 0.1}}); c.TotalUSD != nil {
		t.Errorf("electricity priced, not measured: total %v, want absent", *c.TotalUSD)
	}
	if c := ComputeCost(CostInputs{GPUs: 1, OutputTokens: 10}); c != nil {
		t.Errorf("no window: %+v, want nil", c)
	}
}

// TestEveryForwardModeAsUpstream: a vLLM idle step (forward_mode "unknown", batch 0, no
// context) is a decode step for MoE-CAP, as upstream's continuous_batching_utils counts
// every non-prefill pass, and none for the physical numbers. toyRecords' decode pass gives
// S-MBU 0.784 and S-MFU 0.1024 (TestDeriveFromRecordsByHand); the idle step adds
//
//	S-MBU = (2·(3·96+48) + 0·8)·2/0.1/1e4 = 1344/1000 = 1.344;  S-MFU = 0 (0 tokens/s)
//
// so the means are (0.784+1.344)/2 = 1.064 and 0.1024/2 = 0.0512; physical decode stays
// 0.856 and the floor's batch 2.
func TestEveryForwardModeAsUpstream(t *testing.T) {
	idle := `{"batch_size":0,"latency":0.1,"seq_lens_sum":0,"forward_mode":"unknown","expert_activation":3,"gpu_num":1}` + "\n"
	d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true}, writeRecords(t, toyRecords+idle))
	if err != nil {
		t.Fatal(err)
	}
	near(t, "decode s_mbu_moecap", d.Decode.SMBUMoECAP, 1.064)
	near(t, "decode s_mfu_moecap", d.Decode.SMFUMoECAP, 0.0512)
	near(t, "decode s_mbu", d.Decode.SMBU, 0.856)
	near(t, "floor batch", d.Inputs.DecodeBatch, 2)
	if d.Inputs.DecodePasses != 1 {
		t.Errorf("physical decode passes %d, want 1 (the idle step is none)", d.Inputs.DecodePasses)
	}
}

// TestSGLangActivationPerMoELayer: SGLang averages expert_activation over every layer,
// dense ones included; with 1 dense layer of 2 a recorded 1.5 is 3 per MoE layer. vLLM's
// is per MoE layer already.
func TestSGLangActivationPerMoELayer(t *testing.T) {
	m := toy
	m.DenseLayers, m.DenseFFN = 1, 8
	rec := `{"batch_size":2,"latency":0.2,"seq_lens_sum":14,"forward_mode":"decode","expert_activation":1.5,"gpu_num":1}` + "\n"
	for flavor, want := range map[string]float64{"sglang": 3, "vllm": 1.5} {
		d, err := Derive(Cell{Model: m, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true, Flavor: flavor}, writeRecords(t, rec))
		if err != nil {
			t.Fatal(err)
		}
		near(t, flavor+" decode activation", d.Inputs.DecodeActivation, want)
	}
}

// TestTPOTBelowFloorIsFlagged: toyRecords' TPOT floor is 171.2 ms; a client TPOT of 150 ms
// (0.876 × floor) and a mean decode pass of 200 ms (1.168 ×) give one error, on
// tpot_over_floor; 168 ms (0.981 ×) is a result.
func TestTPOTBelowFloorIsFlagged(t *testing.T) {
	for _, tt := range []struct {
		tpot    float64
		flagged bool
	}{{150, true}, {168, false}} {
		d, err := Derive(Cell{Model: toy, Hardware: toyHW, GPUs: 1, BatchSize: 2, InputTokens: 6, OutputTokens: 2, Ran: true, MeanTPOTMs: &tt.tpot}, writeRecords(t, toyRecords))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range d.Errors {
			got = append(got, e.Field)
		}
		if tt.flagged {
			if d.TPOTOverFloor != nil || len(d.Errors) != 1 || d.Errors[0].Field != "tpot_over_floor" || math.Abs(d.Errors[0].Value-tt.tpot/171.2) > 1e-9 {
				t.Errorf("TPOT %v: tpot_over_floor %v, errors %v; want it moved to errors", tt.tpot, d.TPOTOverFloor, got)
			}
			continue
		}
		near(t, "tpot over floor", d.TPOTOverFloor, tt.tpot/171.2)
		if len(d.Errors) != 0 {
			t.Errorf("TPOT %v: errors %v, want none", tt.tpot, got)
		}
	}
}
