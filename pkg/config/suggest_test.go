package config

import (
	"slices"
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
