package config

import (
	"fmt"
	"slices"
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

// Closest is the option nearest to got (case-insensitive edit distance within a third of
// the longer word, at least one edit allowed), or "" when none is near: the did-you-mean of
// a closed list (backends, hardware labels, clients).
func Closest(got string, options []string) string {
	want := strings.ToLower(got)
	best, bestD := "", -1
	for _, o := range options {
		d := editDistance(want, strings.ToLower(o))
		if d > max(len(want), len(o))/3 && d > 1 {
			continue
		}
		if bestD < 0 || d < bestD {
			best, bestD = o, d
		}
	}
	return best
}

// MeanHint is ` (did you mean "X"?)` for Closest(got, options), or "".
func MeanHint(got string, options []string) string {
	if c := Closest(got, options); c != "" && c != got {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return ""
}

// foreignFlags are the servers' own spellings of what a moecapd flag sets: moecapd answers
// them with its flag, never takes them silently (its flag sets more than the server's: the
// client's in-flight count too, the cell id, the GPUs).
var foreignFlags = map[string]struct{ ours, whose string }{
	"tensor-parallel-size": {"tp", "vLLM's"},
	"tp-size":              {"tp", "SGLang's"},
	"max-num-seqs":         {"batch-size", "vLLM's"},
	"max-running-requests": {"batch-size", "SGLang's"},
}

// FlagHint is what to say of an unknown flag name (without dashes) of a command whose
// flags are known: a server's spelling of one of them is answered with moecapd's
// ("--tp-size is SGLang's spelling; moecapd's flag is --tp"), anything else with the
// nearest known flag ("did you mean --batch-size?"); "" when nothing is near.
func FlagHint(name string, known []string) string {
	name = strings.TrimLeft(name, "-")
	if f, ok := foreignFlags[strings.ReplaceAll(name, "_", "-")]; ok && slices.Contains(known, f.ours) {
		return fmt.Sprintf("--%s is %s spelling; moecapd's flag is --%s (it also sets the server's)", name, f.whose, f.ours)
	}
	if c := Closest(name, known); c != "" && c != name {
		return fmt.Sprintf("did you mean --%s?", c)
	}
	return ""
}

// HardwareHint is the did-you-mean of a hardware label (--hardware): for a part of
// "<count>x<family>[+…]" without its count, or whose family is not one of families but
// near one ("1xH10O"), the label probably meant ("did you mean 1xH100?"); "" when every
// part names a known family or one near none (an NVML name such as L40S is a label too).
func HardwareHint(label string, families []string) string {
	parts := strings.Split(label, "+")
	fixed, changed := make([]string, len(parts)), false
	for i, p := range parts {
		n, fam, ok := strings.Cut(p, "x")
		if !ok || n == "" || strings.Trim(n, "0123456789") != "" {
			n, fam = "1", p // no count: one GPU of the family meant
		}
		fixed[i] = n + "x" + fam
		if slices.Contains(families, fam) {
			changed = changed || fixed[i] != p
			continue
		}
		if c := Closest(fam, families); c != "" {
			fixed[i], changed = n+"x"+c, true
		}
	}
	if !changed {
		return ""
	}
	return fmt.Sprintf("did you mean %s? (a label is <gpu count>x<family>, families: %s)", strings.Join(fixed, "+"), strings.Join(families, ", "))
}

// Families are the hardware table's GPU families, sorted.
func (t *Tables) Families() []string {
	var out []string
	for f := range t.Hardware {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}
