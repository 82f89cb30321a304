package config

import (
	"sort"
	"strings"
)

// Suggest names the known models closest to id, for a did-you-mean: the built-in table's
// Hugging Face ids and keys within an edit distance of a third of the longer name (at most
// three) and within one edit of the nearest, nearest first, each model once (by its
// Hugging Face id).
func (t *Tables) Suggest(id string) []string {
	type cand struct {
		name string
		dist int
	}
	best := map[string]int{} // hf id → its smallest distance
	want := strings.ToLower(strings.TrimRight(id, "/"))
	for _, k := range t.ModelKeys() {
		m := t.Models[k]
		for _, name := range []string{m.HFID, k, m.HFID[strings.LastIndexByte(m.HFID, '/')+1:]} {
			d := editDistance(want, strings.ToLower(name))
			limit := max(len(want), len(name)) / 3
			if d > limit {
				continue
			}
			if b, ok := best[m.HFID]; !ok || d < b {
				best[m.HFID] = d
			}
		}
	}
	var cs []cand
	for n, d := range best {
		cs = append(cs, cand{n, d})
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].dist != cs[j].dist {
			return cs[i].dist < cs[j].dist
		}
		return cs[i].name < cs[j].name
	})
	var out []string
	for i, c := range cs {
		if i == 3 || c.dist > cs[0].dist+1 {
			break
		}
		out = append(out, c.name)
	}
	return out
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// DidYouMean is " Did you mean X?" (or "X or Y") for id, or "" when no known model is near.
func (t *Tables) DidYouMean(id string) string {
	s := t.Suggest(id)
	if len(s) == 0 {
		return ""
	}
	return " Did you mean " + strings.Join(s, " or ") + "?"
}
