package passcost

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
)

// FuzzHFConfig: a model's config.json (from the hub cache or --model-config: another
// program's file, hand-edited or corrupt) describes a model or is an error, in bounded time
// (num_hidden_layers 2^62 ran a loop that long), and a model it describes costs finite work.
func FuzzHFConfig(f *testing.F) {
	matches, _ := filepath.Glob("../config/testdata/*.json")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"model_type":"mixtral","num_hidden_layers":4611686018427387904,"hidden_size":4096,"num_attention_heads":32,"vocab_size":32000,"num_local_experts":8,"num_experts_per_tok":2,"intermediate_size":14336}`))
	f.Add([]byte(`{"model_type":"qwen2_moe","num_hidden_layers":2,"hidden_size":-4096,"num_attention_heads":32,"num_key_value_heads":-1,"vocab_size":32000,"num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":1e9}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := config.ParseHFConfig(data, "config.json")
		if err != nil {
			return
		}
		act := TouchedExperts(m.Experts, m.TopK, 64)
		w := Decode(m, 1, 64, 64*4096, act)
		w = w.Add(Prefill(m, 1, Prompts(4096, 4096), act))
		for _, v := range []float64{w.WeightBytes, w.KVBytes, w.LinearFLOPs, w.AttnFLOPs, TotalParams(m), KVBytesPerToken(m)} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				t.Fatalf("model %+v costs %v", m, v)
			}
		}
	})
}
