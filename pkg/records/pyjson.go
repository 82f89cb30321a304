package records

import "bytes"

var (
	pyNaN    = []byte("NaN")
	pyInf    = []byte("Infinity")
	pyNegInf = []byte("-Infinity")
	jsonNull = []byte("null")
)

// PythonJSON returns b with the NaN, Infinity and -Infinity that Python's json module
// writes for non-finite floats (allow_nan is its default: a mean of no samples, a rate over
// no time) turned into null, which Go's decoder reads and which moecapd reads as absent
// (unknown is absent, never 0). Text inside strings is left alone. b itself is returned when
// it holds none of them.
func PythonJSON(b []byte) []byte {
	if !bytes.Contains(b, pyNaN) && !bytes.Contains(b, pyInf) {
		return b
	}
	out := make([]byte, 0, len(b))
	inStr, esc := false, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			out = append(out, c)
			continue
		}
		var tok []byte
		switch {
		case c == '"':
			inStr = true
		case bytes.HasPrefix(b[i:], pyNaN):
			tok = pyNaN
		case bytes.HasPrefix(b[i:], pyInf):
			tok = pyInf
		case bytes.HasPrefix(b[i:], pyNegInf):
			tok = pyNegInf
		}
		if tok != nil {
			out = append(out, jsonNull...)
			i += len(tok) - 1
			continue
		}
		out = append(out, c)
	}
	return out
}
