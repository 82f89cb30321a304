package gpu

import (
	"fmt"
	"strconv"
	"strings"
)

// knownFamilies are the families the hardware table and cell ids use.
var knownFamilies = []string{"H100", "H200", "A100"}

// Family maps an NVML device name onto the short hardware name of cell ids:
// "NVIDIA H100 80GB HBM3" → H100, "NVIDIA A100-SXM4-80GB" → A100. Matching is on whole
// words so "NVIDIA GH200 480GB" (a different machine) is not taken for an H200. Anything
// else becomes the sanitized name without the vendor prefix ("Tesla-V100-SXM2-16GB").
func Family(name string) string {
	words := strings.FieldsFunc(strings.ToUpper(name), func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	})
	for _, w := range words {
		for _, f := range knownFamilies {
			if w == f {
				return f
			}
		}
	}
	s := strings.TrimSpace(name)
	s = strings.TrimPrefix(s, "NVIDIA ")
	return sanitize(s)
}

// sanitize keeps letters, digits and single dashes: the label goes into cell ids, which use
// '.' as separator, and into directory names.
func sanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.TrimSuffix(b.String(), "-")
	if out == "" {
		return "GPU"
	}
	return out
}

// Label is the hardware part of a cell id: "<count>x<family>", e.g. "1xH100", "8xH200".
// Mixed devices, which a benchmark should not mix but a node can have, are listed per
// family in order of first appearance: "2xH100+1xA100". No devices give "".
func Label(devs []Device) string {
	var order []string
	count := map[string]int{}
	for _, d := range devs {
		f := d.Family
		if f == "" {
			f = Family(d.Name)
		}
		if count[f] == 0 {
			order = append(order, f)
		}
		count[f]++
	}
	parts := make([]string, len(order))
	for i, f := range order {
		parts[i] = strconv.Itoa(count[f]) + "x" + f
	}
	return strings.Join(parts, "+")
}

// resolveVisible applies CUDA_VISIBLE_DEVICES semantics to the node's devices, in the
// order given. Numbers are NVML indices (PCI bus order): the launcher must also set
// CUDA_DEVICE_ORDER=PCI_BUS_ID, or CUDA's default fastest-first order may differ on a node
// with mixed GPUs. Where CUDA silently stops at the first bad entry, this is an error: a
// cell measured on the wrong GPUs is worse than one that does not start.
func resolveVisible(all []Device, spec string) ([]Device, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return all, nil
	}
	fix := fmt.Sprintf("this node has %d GPU(s), indices 0-%d; `moecapd gpus` lists their indices and UUIDs", len(all), len(all)-1)
	var out []Device
	seen := map[int]bool{}
	for _, raw := range strings.Split(spec, ",") {
		e := strings.TrimSpace(raw)
		var d Device
		switch {
		case e == "":
			return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: empty entry; give comma-separated GPU indices or UUIDs (%s)", spec, fix)
		case strings.HasPrefix(strings.ToUpper(e), "MIG-"):
			return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: MIG instance %q is not supported; give whole GPUs by index or GPU-UUID", spec, e)
		case isInt(e):
			i, err := strconv.Atoi(e)
			if err != nil || i < 0 || i >= len(all) {
				return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: no GPU with index %s (%s)", spec, e, fix)
			}
			d = all[i]
			if d.Index != i {
				// all is normally indexed by position; be robust when it is not.
				found := false
				for _, c := range all {
					if c.Index == i {
						d, found = c, true
					}
				}
				if !found {
					return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: no GPU with index %s (%s)", spec, e, fix)
				}
			}
		case strings.HasPrefix(strings.ToUpper(e), "GPU-"):
			var matches []Device
			for _, c := range all {
				if strings.HasPrefix(strings.ToLower(c.UUID), strings.ToLower(e)) {
					matches = append(matches, c)
				}
			}
			switch len(matches) {
			case 0:
				return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: no GPU has a UUID starting with %q (%s)", spec, e, fix)
			case 1:
				d = matches[0]
			default:
				return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: %q matches %d GPUs; give more of the UUID", spec, e, len(matches))
			}
		default:
			return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: %q is neither a GPU index nor a GPU-UUID (%s)", spec, e, fix)
		}
		if seen[d.Index] {
			return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: GPU %d is listed twice", spec, d.Index)
		}
		seen[d.Index] = true
		out = append(out, d)
	}
	return out, nil
}

func isInt(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
