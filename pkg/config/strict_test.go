package config

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDuplicateKeysRejected(t *testing.T) {
	type inner struct {
		A int `yaml:"a"`
	}
	type doc struct {
		X     int              `yaml:"x"`
		Map   map[string]inner `yaml:"map"`
		List  []inner          `yaml:"list"`
		Inner inner            `yaml:"inner"`
	}
	cases := []struct {
		name, body, key string
		line, first     int
	}{
		{"top level", "x: 1\nx: 2\n", "x", 2, 1},
		{"map entry (a matrix group)", "map:\n  g: {a: 1}\n  g: {a: 2}\n", "map.g", 3, 2},
		{"inside a map value", "map:\n  g:\n    a: 1\n    a: 2\n", "map.g.a", 4, 3},
		{"inside a list item", "list:\n  - a: 1\n    a: 2\n", "list[0].a", 3, 2},
		{"nested struct", "inner: {a: 1, a: 1}\n", "inner.a", 1, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var d doc
			err := DecodeStrict("f.yaml", []byte(c.body), &d)
			ce, ok := err.(*Error)
			if !ok || ce.Key != c.key || ce.Line != c.line || !strings.Contains(ce.Msg, "duplicate key") {
				t.Fatalf("err %v; want a duplicate-key *Error for %q at line %d", err, c.key, c.line)
			}
			if !strings.Contains(ce.Msg, "first at line "+strconv.Itoa(c.first)) {
				t.Errorf("message %q does not point at the first occurrence (line %d)", ce.Msg, c.first)
			}
		})
	}
	var d doc
	if err := DecodeStrict("f.yaml", []byte("x: 1\nmap: {g: {a: 1}, h: {a: 1}}\nlist: [{a: 1}, {a: 1}]\n"), &d); err != nil {
		t.Errorf("distinct keys refused: %v", err)
	}
}

func TestBenchBounds(t *testing.T) {
	dir := t.TempDir()
	write := func(in, out, n string) string {
		p := filepath.Join(dir, "b.yaml")
		os.WriteFile(p, []byte("dataset_names: [gsm8k]\nmodel_id: m/m\ntarget_input_tokens: "+in+"\ntarget_output_tokens: "+out+"\nnum_samples: "+n+"\n"), 0o644)
		return p
	}
	cases := []struct {
		in, out, n string
		key, want  string
	}{
		{"4000", "1000", "100", "", ""},
		{"4000", "1000", "1000000000", "num_samples", "expected 1 to 1000000"},
		{"9223372036854775807", "1000", "100", "target_input_tokens", "expected 1 to 1048576"},
		{"99999999999999999999", "1000", "100", "target_input_tokens", "expected an integer"},
		{"4000", "1048577", "100", "target_output_tokens", "expected 1 to 1048576"},
		{"13000", "1000", "10000", "num_samples", "more than the limit of 67108864"},
		{"13000", "1000", "4000", "", ""},
	}
	for _, c := range cases {
		_, err := LoadBench(write(c.in, c.out, c.n))
		if c.key == "" {
			if err != nil {
				t.Errorf("in %s out %s n %s: %v", c.in, c.out, c.n, err)
			}
			continue
		}
		ce, ok := err.(*Error)
		if !ok || ce.Key != c.key || !strings.Contains(ce.Error(), c.want) {
			t.Errorf("in %s out %s n %s: %v; want key %s and %q", c.in, c.out, c.n, err, c.key, c.want)
		}
	}
}

func TestChecks(t *testing.T) {
	if err := CheckInt("f", "--batch-size", 4097, 1, MaxBatchSize, "concurrent requests"); err == nil || !strings.Contains(err.Error(), `"--batch-size": got 4097, expected 1 to 4096`) {
		t.Errorf("CheckInt: %v", err)
	}
	if err := CheckDuration("f", "--grace", -time.Second, 0, time.Hour); err == nil || !strings.Contains(err.Error(), "got -1s, expected 0s to 1h0m0s") {
		t.Errorf("CheckDuration: %v", err)
	}
	if err := CheckFloat("f", "--gpu-hour-usd", math.NaN(), 0, MaxUSD); err == nil {
		t.Error("CheckFloat accepted NaN")
	}
	if err := CheckWorkload("f", MaxNumSamples, MaxWarmup, MaxTokens, MaxTokens); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("CheckWorkload at every maximum: %v; want the product refused (and no overflow)", err)
	}
}
