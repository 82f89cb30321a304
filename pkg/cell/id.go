package cell

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxPartLen is the longest a cell-id part may be (a sanitized NVML name fits easily).
const MaxPartLen = 100

// PartCharset says in words what a cell-id part may hold, for error messages.
const PartCharset = "letters, digits, '_', '-' and '+', starting with a letter or digit, at most 100 characters"

// ValidPart reports whether s may be one part of a cell id (model key, hardware label, task,
// backend). Cell ids name directories under the results root and use '.' between parts, so
// a part holds no '.', '/', '\\', space, newline or control character: nothing a part says
// can climb out of the results root or split into two parts.
func ValidPart(s string) bool {
	if s == "" || len(s) > MaxPartLen || !alnum(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '_' && c != '-' && c != '+' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// PartError is a cell-id part that fails ValidPart: a usage or config error (exit 2).
type PartError struct {
	What  string // "model key", "hardware label", "task", "backend"
	Value string
}

func (e *PartError) Error() string {
	return fmt.Sprintf("%s %s cannot be part of a cell id (it names a directory under the results root): allowed are %s",
		e.What, strconv.Quote(e.Value), PartCharset)
}

// MakeID is ID with every part validated, and the load's part (Load.IDPart) appended for
// an open loop: <model>.<hardware>.<task>.bs<N>.<backend>[.<load>]. The closed loop (the
// zero Load, or an SLO alone) keeps the guide's five parts, so its results keep their ids.
func MakeID(model, hardware, task string, bs int, backend string, load Load) (string, error) {
	for _, p := range []struct{ what, v string }{{"model key", model}, {"hardware label", hardware}, {"task", task}, {"backend", backend}} {
		if !ValidPart(p.v) {
			return "", &PartError{What: p.what, Value: p.v}
		}
	}
	if bs <= 0 {
		return "", &PartError{What: "batch size", Value: strconv.Itoa(bs)}
	}
	id := ID(model, hardware, task, bs, backend)
	if lp := load.IDPart(); lp != "" {
		if !ValidPart(lp) {
			return "", &PartError{What: "load", Value: lp}
		}
		id += "." + lp
	}
	return id, nil
}

// ValidID reports whether id is a well-formed cell id: dot-separated valid parts, the
// directory name a Layout accepts.
func ValidID(id string) bool {
	parts := strings.Split(id, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if !ValidPart(p) {
			return false
		}
	}
	return true
}
