package sim

import (
	"hash/fnv"
	"strings"
)

// Tokenizer is a deterministic stand-in for a real tokenizer: runs of letters, digits and
// non-ASCII bytes become one token per at most maxPiece bytes, every other non-space byte
// is a token of its own, and spaces only separate. Ids are a hash of the piece into the
// model's vocabulary, so the same text gives the same ids on every run and machine.
// Decode writes each id as a short lowercase word, which re-tokenizes to exactly one
// token, so a client can build a prompt of an exact length through /detokenize.
type Tokenizer struct {
	Vocab int
}

const maxPiece = 6

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// pieces calls f with every token piece of s, in order.
func pieces(s string, f func(p string)) {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case isWordByte(c):
			j := i
			for j < len(s) && j-i < maxPiece && isWordByte(s[j]) {
				j++
			}
			f(s[i:j])
			i = j
		default:
			f(s[i : i+1])
			i++
		}
	}
}

// Count is the number of tokens of s, without allocating.
func (t Tokenizer) Count(s string) int {
	n := 0
	pieces(s, func(string) { n++ })
	return n
}

// Encode returns the token ids of s.
func (t Tokenizer) Encode(s string) []int {
	var ids []int
	pieces(s, func(p string) { ids = append(ids, t.id(p)) })
	return ids
}

func (t Tokenizer) id(p string) int {
	h := fnv.New32a()
	h.Write([]byte(p))
	v := t.Vocab
	if v <= 0 {
		v = 1 << 15
	}
	return int(h.Sum32() % uint32(v))
}

var (
	consonants = "bcdfghjklmnprstvwz"
	vowels     = "aeiou"
)

// word spells id as two or three consonant-vowel syllables (at most maxPiece letters).
func word(id int) string {
	if id < 0 {
		id = -id
	}
	var b [maxPiece]byte
	n := 0
	for k := 0; k < 3; k++ {
		b[n] = consonants[id%len(consonants)]
		id /= len(consonants)
		b[n+1] = vowels[id%len(vowels)]
		id /= len(vowels)
		n += 2
		if id == 0 && k >= 1 {
			break
		}
	}
	return string(b[:n])
}

// Decode renders ids as space-separated words.
func (t Tokenizer) Decode(ids []int) string {
	var sb strings.Builder
	for i, id := range ids {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(word(id))
	}
	return sb.String()
}

// outputWords are the texts of generated tokens, built once so that streaming a token
// allocates nothing. Each starts with a space, as a detokenized continuation does.
var outputWords = func() []string {
	w := make([]string, 512)
	for i := range w {
		w[i] = " " + word(i*7919+13)
	}
	return w
}()

// outputWord is the text of the pos-th generated token of the request with sequence seq.
func outputWord(seq uint64, pos int) string {
	return outputWords[(seq*131+uint64(pos)*31)%uint64(len(outputWords))]
}
