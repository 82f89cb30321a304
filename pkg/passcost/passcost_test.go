package passcost

import (
	"math"
	"os"
	"path/filepath"
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
