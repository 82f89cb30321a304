package sim

import (
	"encoding/json"
	"fmt"
	"github.com/moecapd/moecapd/pkg/records"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/moecapd/moecapd/pkg/capmath"
	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/passcost"
)

// TestSimAtTheFloor sweeps every built-in model, hardware and TP whose weights fit: a batch
// of requests runs through the simulated server over real HTTP, its records are derived
// the way a cell's are, and the sim's decode passes must equal the TPOT floor of what ran
// within 2%, with the binding resource's physical utilisation within 5% of 1 in both phases.
// The clock runs 10⁴ times fast; the records carry the model's real pass latencies.
func TestSimAtTheFloor(t *testing.T) {
	tb := tables(t)
	const (
		batch  = 8
		prompt = 4000
		out    = 6
	)
	ids, _ := json.Marshal(make([]int, prompt))
	models := map[string]config.Model{}
	for _, key := range tb.ModelKeys() {
		models[key] = tb.Models[key]
	}
	// Models known only from a config.json, GPT-OSS's sliding window and MXFP4 experts too.
	for _, f := range []string{"qwen3_30b_a3b", "olmoe_1b_7b", "gpt_oss_20b", "qwen2_57b_a14b"} {
		b, err := os.ReadFile(filepath.Join("..", "config", "testdata", f+".json"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := config.ParseHFConfig(b, f)
		if err != nil {
			t.Fatal(err)
		}
		m.Key, m.HFID = f, "test/"+f
		models[f] = m
	}
	swept := 0
	defer func() {
		if swept < 80 {
			t.Errorf("swept %d model × hardware × TP combinations, want the ≥ 80 that fit", swept)
		}
	}()
	for key, m := range models {
		for _, fam := range []string{"H100", "H200", "A100"} {
			for _, tp := range []int{1, 2, 4, 8} {
				hw := tb.Hardware[fam]
				if m.Heads%tp != 0 {
					continue
				}
				fit := passcost.Feasibility(m, hw, tp, batch, prompt, out)
				if fit.Verdict == passcost.DoesNotFit {
					continue
				}
				swept++
				t.Run(fmt.Sprintf("%s.%dx%s", key, tp, fam), func(t *testing.T) {
					srv, url := newTestServer(t, FlavorSGLang, func(c *Config) {
						c.ServedModel, c.Model, c.Hardware, c.TP, c.MaxRunning, c.TimeScale = m.HFID, m, hw, tp, batch, 1e-4
					})
					post(t, url+"/start_expert_distribution_record", "")
					var wg sync.WaitGroup
					for range batch {
						wg.Go(func() {
							body := fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":%d}`, m.HFID, ids, out)
							if code, b := post(t, url+"/v1/completions", body); code != 200 {
								t.Errorf("completion: %d %s", code, b)
							}
						})
					}
					wg.Wait()
					post(t, url+"/stop_expert_distribution_record", "")
					post(t, url+"/dump_expert_distribution_record", "")
					recs, err := records.ReadDir(srv.Config().RecordsDir)
					if err != nil || len(recs.Passes) == 0 {
						t.Fatalf("records: %v (%d passes)", err, len(recs.Passes))
					}
					d, err := capmath.Derive(capmath.Cell{Model: m, Hardware: hw, GPUs: tp, BatchSize: batch, InputTokens: prompt,
						OutputTokens: out, NumSamples: batch, Ran: true, SimTimeScale: 1e-4}, recs)
					if err != nil {
						t.Fatal(err)
					}
					if len(d.Errors) > 0 {
						t.Fatalf("flagged: %+v", d.Errors)
					}
					if d.DecodePassOverFloor == nil || math.Abs(*d.DecodePassOverFloor-1) > 0.02 {
						t.Errorf("decode pass ÷ TPOT floor = %v, want 1 within 2%% (floor %v ms)", show(d.DecodePassOverFloor), show(d.TPOTFloorMs))
					}
					for name, u := range map[string]*capmath.Util{"prefill": d.Prefill, "decode": d.Decode} {
						if u == nil || u.SMBU == nil || u.SMFU == nil {
							t.Fatalf("%s: no physical utilisation: %+v", name, u)
						}
						bind := *u.SMBU
						if u.Bound == "compute" {
							bind = *u.SMFU
						}
						if math.Abs(bind-1) > 0.05 || *u.SMBU > 1.0001 || *u.SMFU > 1.0001 {
							t.Errorf("%s: S-MBU %.4f S-MFU %.4f (%s-bound); want the binding one within 5%% of 1, neither above 1", name, *u.SMBU, *u.SMFU, u.Bound)
						}
					}
					if fit.Verdict == passcost.UnderBatched && d.Inputs.DecodeBatch != nil && *d.Inputs.DecodeBatch > float64(fit.Concurrent) {
						t.Errorf("under-batched to %d predicted, but the sim ran %.1f at once", fit.Concurrent, *d.Inputs.DecodeBatch)
					}
				})
			}
		}
	}
}

func show(p *float64) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprintf("%.4f", *p)
}

// TestSimMemoryModel: the sim admits exactly what passcost.Feasibility predicts: under a
// KV cache that holds K requests it runs K at a time, and refuses a request that can never
// fit with vLLM's out-of-memory wording.
func TestSimMemoryModel(t *testing.T) {
	tb := tables(t)
	// DeepSeek-V2-Lite on one A100: 31.4 GB of weights, 31,104 B of latent KV per token.
	m, hw := tb.Models["dsv2_lite"], tb.Hardware["A100"]
	const in, out, batch = 13000, 1000, 128
	fit := passcost.Feasibility(m, hw, 1, batch, in, out)
	if fit.Verdict != passcost.UnderBatched || fit.Concurrent < 2 || fit.Concurrent >= batch {
		t.Fatalf("prediction %+v; want under-batched", fit)
	}
	srv, url := newTestServer(t, FlavorSGLang, func(c *Config) {
		c.ServedModel, c.Model, c.Hardware, c.MaxRunning, c.TimeScale = m.HFID, m, hw, batch, 1e-2
	})
	post(t, url+"/start_expert_distribution_record", "")
	ids, _ := json.Marshal(make([]int, in))
	n := fit.Concurrent + 3
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if code, b := post(t, url+"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":%d}`, m.HFID, ids, out)); code != 200 {
				t.Errorf("completion: %d %s", code, b)
			}
		})
	}
	wg.Wait()
	post(t, url+"/stop_expert_distribution_record", "")
	post(t, url+"/dump_expert_distribution_record", "")
	recs, err := records.ReadDir(srv.Config().RecordsDir)
	if err != nil {
		t.Fatal(err)
	}
	peak := 0.0
	for _, p := range recs.Passes {
		if p.Mode == records.Decode {
			peak = max(peak, records.Val(p.BatchSize))
		}
	}
	if int(peak) != fit.Concurrent {
		t.Errorf("sim ran up to %v requests at once; the prediction says %d", peak, fit.Concurrent)
	}
	// A GPU whose memory leaves 5000 tokens of KV cache beside the weights: a request of
	// 4000 + 2000 tokens can never run (refused with vLLM's out-of-memory wording), one of
	// 2000 + 1000 runs alone.
	small := hw
	small.MemoryBytes = (passcost.MemoryOf(m, hw, 1).WeightsPerGPU + 5000.5*passcost.KVBytesPerTokenPerGPU(m, 1)) / passcost.UsableMemoryFraction
	if got := passcost.MemoryOf(m, small, 1).KVCapacityTokens; got != 5000 {
		t.Fatalf("KV capacity %d tokens, want 5000", got)
	}
	if f := passcost.Feasibility(m, small, 1, 4, 4000, 2000); f.Verdict != passcost.DoesNotFit || !strings.Contains(f.Reason, "one request") {
		t.Errorf("prediction for 4000+2000: %+v; want does-not-fit (one request)", f)
	}
	if f := passcost.Feasibility(m, small, 1, 4, 2000, 1000); f.Verdict != passcost.UnderBatched || f.Concurrent != 1 {
		t.Errorf("prediction for 2000+1000 at batch 4: %+v; want under-batched to 1", f)
	}
	_, url2 := newTestServer(t, FlavorSGLang, func(c *Config) {
		c.ServedModel, c.Model, c.Hardware, c.MaxRunning, c.TimeScale = m.HFID, m, small, 4, 1e-3
	})
	big, _ := json.Marshal(make([]int, 4000))
	code, b := post(t, url2+"/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":%s,"max_tokens":2000}`, m.HFID, big))
	if code != 400 || !strings.Contains(string(b), "larger than the maximum number of tokens that can be stored in KV cache") {
		t.Errorf("a request larger than the KV cache: %d %s; want 400 with vLLM's wording", code, b)
	}
}
