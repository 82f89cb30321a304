package records

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		in                     string
		want                   Mode
		upstreamDecode, decode bool
	}{
		{"prefill", Prefill, false, false},
		{"PREFILL", Prefill, false, false},
		{"decode", Decode, true, true},
		{"decoding", Decode, true, true},
		{"mixed", Mixed, true, true},
		{"unknown", Unknown, true, false},
		{"", Unknown, true, false},
		{"idle", Unknown, true, false},
	} {
		m := Classify(tt.in)
		if m != tt.want || m.UpstreamDecode() != tt.upstreamDecode || m.DecodeStep() != tt.decode {
			t.Errorf("Classify(%q) = %v (upstream decode %v, decode step %v); want %v %v %v", tt.in, m, m.UpstreamDecode(), m.DecodeStep(), tt.want, tt.upstreamDecode, tt.decode)
		}
	}
}

func readFixture(t *testing.T, name string) *Set {
	t.Helper()
	dir := t.TempDir()
	ps, err := ReadJSONL(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b, err := WindowBytes(ps)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, WindowFile), string(b))
	set, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestPoolSlotOccupancy: an older SGLang trace names requests only by pool slot (slot 0
// serves a 100-token prompt, then a 20-token one). Rebuilt from req_ids, the second
// occupant's first decode attends to 20 + 1 positions, not 20 + 3 (its slot's history).
func TestPoolSlotOccupancy(t *testing.T) {
	set := readFixture(t, "pool_slots.jsonl")
	for i := range set.Passes {
		set.Passes[i].SeqLensSum = nil // force the rebuild from req_ids
	}
	DecodeContexts(set.Passes)
	want := map[int]float64{1: 101, 2: 102, 4: 21}
	for i, w := range want {
		if c := set.Passes[i].ContextTokens; c == nil || *c != w {
			t.Errorf("pass %d context %v, want %v", i, c, w)
		}
	}
	// With seq_lens_sum (SGLang's own context) present it is taken as it is.
	set = readFixture(t, "pool_slots.jsonl")
	DecodeContexts(set.Passes)
	if c := set.Passes[4].ContextTokens; c == nil || *c != 21 {
		t.Errorf("context from seq_lens_sum %v, want 21", c)
	}
}

// TestDuplicatedPasses: a pass written twice with the same forward_pass_id counts once;
// byte-identical neighbours without ids are kept and counted as repeats.
func TestDuplicatedPasses(t *testing.T) {
	set := readFixture(t, "duplicated.jsonl")
	if len(set.Passes) != 4 || set.Duplicates != 2 || set.Repeats != 1 {
		t.Errorf("passes %d, duplicates %d, repeats %d; want 4, 2, 1", len(set.Passes), set.Duplicates, set.Repeats)
	}
}

// TestVLLMModes: a mixed step decodes its req_ids (2 of its batch of 3); the decode
// context of a and b (prompts 6) is 7 each in the mixed step and 8 each after it; vLLM's
// seq_lens_sum (scheduled tokens) is never taken as a context; the idle step has none.
func TestVLLMModes(t *testing.T) {
	set := readFixture(t, "vllm_modes.jsonl")
	ps := set.Passes
	DecodeContexts(ps)
	if b := ps[1].DecodeBatch(); b == nil || *b != 2 {
		t.Errorf("mixed decode batch %v, want 2", b)
	}
	if c := ps[1].ContextTokens; c == nil || *c != 14 {
		t.Errorf("mixed context %v, want 14", c)
	}
	if c := ps[2].ContextTokens; c == nil || *c != 16 {
		t.Errorf("decode context %v, want 16", c)
	}
	if ps[3].Mode != Unknown || ps[3].ContextTokens != nil {
		t.Errorf("idle step %v context %v", ps[3].Mode, ps[3].ContextTokens)
	}
}

func TestPercentileIsNumpyLinear(t *testing.T) {
	xs := []float64{30, 40, 80, 90}
	for _, tt := range []struct{ p, want float64 }{{0, 30}, {50, 60}, {95, 88.5}, {100, 90}} {
		if got := Percentile(xs, tt.p); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("empty input must be NaN")
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
