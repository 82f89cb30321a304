package cell

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
	"github.com/moecapd/moecapd/pkg/profile"
)

// The closed loop keeps the guide's five-part id; every open loop gets a sixth part that
// names it, which ValidID and Layout accept.
func TestLoadIDPart(t *testing.T) {
	const base = "qwen1_5.1xH100.4k-1k.bs32.sim"
	for _, c := range []struct {
		load Load
		part string
	}{
		{Load{}, ""},
		{Load{SLO: "ttft=500ms,tpot=50ms"}, ""}, // goodput on the closed loop's own measurement
		{Load{MaxRateSteps: profile.DefaultMaxRateSteps}, ""},
		{Load{RequestRate: 10}, "rate10"},
		{Load{RequestRate: 10, Burstiness: 1}, "rate10"}, // Poisson either way
		{Load{RequestRate: 2.5, Burstiness: 0.5}, "rate2_5-b0_5"},
		{Load{RequestRate: 10, MaxConcurrency: 64}, "rate10-c64"},
		{Load{RequestRate: 10, SLO: "ttft=1s"}, "rate10"},
		{Load{Rates: []float64{1, 2, 4, 8}}, "rates1-2-4-8"},
		{Load{Rates: []float64{0.5, 1e6}, SLO: "tpot=50ms"}, "rates0_5-1000000"},
		{Load{FindMaxRate: true, SLO: "ttft=500ms,tpot=50ms", MaxRateSteps: profile.DefaultMaxRateSteps}, "maxrate-ttft500ms-tpot50ms"},
		{Load{FindMaxRate: true, SLO: "ttft=1.5s,share=0.75", MaxRateSteps: 3}, "maxrate-s3-ttft1_5s-share0_75"},
		{Load{FindMaxRate: true, SLO: "tpot=250us"}, "maxrate-tpot250us"},
		{Load{Rates: []float64{3, 500}, FindMaxRate: true, SLO: "ttft=400ms,share=0.75", MaxRateSteps: 3}, "rates3-500-maxrate-s3-ttft400ms-share0_75"},
		{Load{RequestRate: 4, FindMaxRate: true, SLO: "ttft=2s"}, "rate4-maxrate-ttft2s"},
	} {
		got := c.load.IDPart()
		if got != c.part {
			t.Errorf("%+v: part %q, want %q", c.load, got, c.part)
		}
		id, err := MakeID("qwen1_5", "1xH100", "4k-1k", 32, "sim", c.load)
		want := base
		if c.part != "" {
			want += "." + c.part
		}
		if err != nil || id != want {
			t.Errorf("%+v: MakeID %q, %v; want %q", c.load, id, err, want)
		}
		if !ValidID(id) {
			t.Errorf("%q is not a ValidID", id)
		}
		lay, _ := OpenLayout(t.TempDir())
		if d, err := lay.Cell(id); err != nil || d.ID != id {
			t.Errorf("Layout.Cell(%q): %+v, %v", id, d, err)
		}
	}
}

// A sweep too long for one id part keeps its head and ends in a hash of the whole: valid,
// distinct from a sweep that differs only past the cut, and the same on every run (the
// value below is what it was when written; a change would rename results on disk).
func TestLoadIDPartLongSweepHashed(t *testing.T) {
	var rates []float64
	for i := 1; i <= 40; i++ {
		rates = append(rates, float64(i)+0.25)
	}
	l := Load{Rates: rates}
	p := l.IDPart()
	if len(p) > MaxPartLen || !ValidPart(p) || !strings.HasPrefix(p, "rates1_25-2_25-") {
		t.Fatalf("long sweep part %q (%d chars): want a valid part of at most %d starting with the first rates", p, len(p), MaxPartLen)
	}
	const want = "rates1_25-2_25-3_25-4_25-5_25-6_25-7_25-8_25-9_25-10_25-11_25-12_25-13_25-14_25-15_25-h1d2df9dcb4"
	if p != want {
		t.Errorf("long sweep part %q, want the stable %q", p, want)
	}
	if again := (Load{Rates: append([]float64(nil), rates...)}).IDPart(); again != p {
		t.Errorf("the same sweep named %q then %q", p, again)
	}
	other := append([]float64(nil), rates...)
	other[len(other)-1] = 99
	if q := (Load{Rates: other}).IDPart(); q == p || len(q) > MaxPartLen {
		t.Errorf("sweeps differing past the cut named %q and %q", p, q)
	}
	id, err := MakeID("qwen1_5", "1xH100", "4k-1k", 32, "sim", l)
	if err != nil || !ValidID(id) || strings.Count(id, ".") != 5 {
		t.Errorf("MakeID with a long sweep: %q, %v", id, err)
	}
}

// Check names the key the user wrote (a flag, a matrix key, a job field) and is exit 2.
func TestLoadCheckNamesTheKey(t *testing.T) {
	matrixKeys := LoadKeys{Source: "m.yaml", Prefix: "groups.sweep.", Style: YAMLKeys}
	jobKeys := LoadKeys{Source: "job", Style: JSONKeys}
	for _, c := range []struct {
		load Load
		keys LoadKeys
		want []string
	}{
		{Load{Rates: []float64{2, -1}}, LoadFlags, []string{`"--rates"`, "got -1"}},
		{Load{Rates: []float64{2, -1}}, matrixKeys, []string{"m.yaml", `"groups.sweep.rates"`, "got -1"}},
		{Load{Rates: []float64{0}}, jobKeys, []string{"job", `"rates"`}},
		{Load{RequestRate: 2e6}, jobKeys, []string{`"request_rate"`}},
		{Load{FindMaxRate: true}, LoadFlags, []string{"--find-max-rate needs an SLO", "add --slo ttft=500ms,tpot=50ms"}},
		{Load{FindMaxRate: true}, matrixKeys, []string{`"groups.sweep.find_max_rate"`, "needs an SLO", `add slo: "ttft=500ms,tpot=50ms"`}},
		{Load{Burstiness: 0.5}, LoadFlags, []string{"give --request-rate R, --rates or --find-max-rate too"}},
		{Load{Burstiness: 0.5}, matrixKeys, []string{"give request_rate: R, groups.sweep.rates or groups.sweep.find_max_rate too"}},
		{Load{SLO: "ttft=fast"}, matrixKeys, []string{`"groups.sweep.slo"`, "neither a duration"}},
		{Load{Rates: slices.Repeat([]float64{1}, 45), MaxRateSteps: 8}, LoadFlags, []string{"at most 50 benches"}},
	} {
		err := c.load.Check(c.keys)
		if err == nil {
			t.Errorf("%+v accepted", c.load)
			continue
		}
		if exitcode.Of(err) != int(exitcode.Usage) || !config.IsConfigError(err) {
			t.Errorf("%+v: %v is not a usage/config error", c.load, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: %q lacks %q", c.load, err, w)
			}
		}
	}
	if err := (Load{Rates: []float64{1, 2}, SLO: "ttft=1s", FindMaxRate: true, MaxRateSteps: 3}).Check(LoadFlags); err != nil {
		t.Errorf("a valid sweep refused: %v", err)
	}
}

// Apply refuses what the cell's client cannot send and fills the native client's options.
func TestLoadApply(t *testing.T) {
	k := LoadKeys{Source: "m.yaml", Prefix: "groups.g.", Style: YAMLKeys}
	c := &Config{Client: ClientMoECAP}
	if err := (Load{RequestRate: 5}).Apply(c, k); err == nil || !strings.Contains(err.Error(), "need the native client (--client native)") || !strings.Contains(err.Error(), "groups.g.rates") {
		t.Errorf("moe-cap client with an open loop: %v", err)
	}
	c = &Config{Client: ClientNative, Repeats: 3}
	var ce *config.Error
	if err := (Load{Rates: []float64{1}}).Apply(c, k); !errors.As(err, &ce) || ce.Key != "groups.g.rates" {
		t.Errorf("repeats with a sweep: %v", err)
	}
	c = &Config{Client: ClientNative}
	c.Native.PromptStyle = profile.PromptExactIDs
	l := Load{RequestRate: 4, Burstiness: 0.5, MaxConcurrency: 8, SLO: "ttft=1s"}
	if err := l.Apply(c, k); err != nil {
		t.Fatal(err)
	}
	if c.Native.RequestRate != 4 || c.Native.Burstiness != 0.5 || c.Native.MaxConcurrency != 8 || c.Native.SLO == nil || c.Load.IDPart() != "rate4-b0_5-c8" {
		t.Errorf("applied: native %+v, load %+v", c.Native, c.Load)
	}
}
