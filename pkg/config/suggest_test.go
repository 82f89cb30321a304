package config

import (
	"slices"
	"strings"
	"testing"
)

func TestSuggest(t *testing.T) {
	tab, err := LoadTables("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		want []string // the first suggestions, in order; nil: none
	}{
		{"Qwen/Qwen1.5-MoE-A2.7B-Chatt", []string{"Qwen/Qwen1.5-MoE-A2.7B-Chat"}},
		{"qwen/qwen1.5-moe-a2.7b-chat", []string{"Qwen/Qwen1.5-MoE-A2.7B-Chat"}},
		{"deepseek-ai/DeepSeek-V2-Lite", []string{"deepseek-ai/DeepSeek-V2-Lite-Chat"}},
		{"mixtral_8x7", []string{"mistralai/Mixtral-8x7B-Instruct-v0.1"}},
		{"deepseek-ai/DeepSeek-R2", []string{"deepseek-ai/DeepSeek-R1"}},
		{"acme/dense-llm", nil},
		{"", nil},
	} {
		got := tab.Suggest(tc.id)
		if len(tc.want) == 0 {
			if len(got) != 0 {
				t.Errorf("Suggest(%q) = %v, want none", tc.id, got)
			}
			continue
		}
		if len(got) < len(tc.want) || !slices.Equal(got[:len(tc.want)], tc.want) {
			t.Errorf("Suggest(%q) = %v, want %v first", tc.id, got, tc.want)
		}
	}
	if s := tab.DidYouMean("deepseek-ai/DeepSeek-V2-Lite"); s != " Did you mean deepseek-ai/DeepSeek-V2-Lite-Chat?" {
		t.Errorf("DidYouMean = %q", s)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"abc", "", 3}, {"", "ab", 2}, {"kitten", "sitting", 3}, {"chat", "chatt", 1}, {"ab", "ba", 2}} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestClosestAndFlagErrors(t *testing.T) {
	backends := []string{"sglang", "vllm", "sim"}
	for _, c := range []struct {
		got, want string
	}{
		{"sglnag", "sglang"},
		{"SGLang", "sglang"},
		{"vlm", "vllm"},
		{"sin", "sim"},
		{"tensorrt", ""},
		{"", ""},
	} {
		if got := Closest(c.got, backends); got != c.want {
			t.Errorf("Closest(%q) = %q, want %q", c.got, got, c.want)
		}
	}
	if h := MeanHint("sglnag", backends); h != ` (did you mean "sglang"?)` {
		t.Errorf("MeanHint = %q", h)
	}
	if h := MeanHint("sglang", backends); h != "" {
		t.Errorf("MeanHint of an exact option = %q, want none", h)
	}
	for _, c := range []struct {
		err  *Error
		want string
	}{
		{&Error{Key: "--batch-size", Msg: "required"}, "--batch-size: required"},
		{&Error{File: "configs/x.yaml", Key: "model_id", Msg: "bad"}, `configs/x.yaml: key "model_id": bad`},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
}

func TestFlagAndHardwareHints(t *testing.T) {
	known := []string{"tp", "batch-size", "hardware"}
	for name, want := range map[string]string{
		"tensor-parallel-size": "vLLM's spelling; moecapd's flag is --tp",
		"tp_size":              "SGLang's spelling; moecapd's flag is --tp",
		"max-num-seqs":         "moecapd's flag is --batch-size",
		"hardwre":              "did you mean --hardware?",
		"zzz":                  "",
	} {
		if got := FlagHint(name, known); want == "" && got != "" || !strings.Contains(got, want) {
			t.Errorf("FlagHint(%q) = %q, want %q", name, got, want)
		}
	}
	if got := FlagHint("tp-size", []string{"results"}); strings.Contains(got, "--tp") {
		t.Errorf("a command without --tp is not told to use it: %q", got)
	}
	fams := []string{"A100", "H100", "H200"}
	for label, want := range map[string]string{
		"H10O": "did you mean 1xH100?", "8xh200": "did you mean 8xH200?", "2xH100+1xA10O": "did you mean 2xH100+1xA100?",
		"1xH100": "", "2xH100+1xA100": "", "1xL40S": "",
	} {
		if got := HardwareHint(label, fams); want == "" && got != "" || !strings.HasPrefix(got, want) {
			t.Errorf("HardwareHint(%q) = %q, want %q", label, got, want)
		}
	}
}
