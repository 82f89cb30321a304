// Package config reads moecapd's YAML inputs: the MoE-CAP benchmark files and the model and
// hardware tables. Decoding is strict: an unknown key or a value of the wrong type is an
// error that names the file, the key and what was expected.
package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is a configuration problem in one file, or, with File empty and Key a flag
// ("--batch-size"), on the command line. Callers map it to exit code 2.
type Error struct {
	File string
	Key  string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.File == "" && strings.HasPrefix(e.Key, "-") {
		return e.Key + ": " + e.Msg // a flag: the command line is the file
	}
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": key %q", e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// IsConfigError reports whether err is (or wraps) a configuration error.
func IsConfigError(err error) bool {
	var ce *Error
	return errors.As(err, &ce)
}

// decodeStrict decodes data into out (a pointer to a struct tagged with yaml names) and
// rejects unknown keys and mistyped values with an *Error naming file, key and expectation.
func decodeStrict(file string, data []byte, out any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return &Error{File: file, Msg: fmt.Sprintf("not valid YAML: %v", err)}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return &Error{File: file, Msg: "file is empty; expected a YAML mapping"}
	}
	if err := CheckDuplicateKeys(file, &root); err != nil {
		return err
	}
	return decodeNode(file, "", root.Content[0], reflect.ValueOf(out).Elem())
}

func decodeNode(file, path string, n *yaml.Node, v reflect.Value) error {
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return &Error{File: file, Key: path, Line: n.Line, Msg: "expected a mapping of keys"}
		}
		fields := map[string]reflect.Value{}
		var names []string
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = v.Field(i)
			names = append(names, tag)
		}
		sort.Strings(names)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := joinKey(path, k.Value)
			f, ok := fields[k.Value]
			if !ok {
				return &Error{File: file, Key: key, Line: k.Line,
					Msg: fmt.Sprintf("unknown key; expected one of: %s", strings.Join(names, ", "))}
			}
			if err := decodeNode(file, key, val, f); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return &Error{File: file, Key: path, Line: n.Line, Msg: "expected a mapping"}
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := decodeNode(file, joinKey(path, k.Value), val, elem); err != nil {
				return err
			}
			v.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		return nil
	case reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		if err := decodeNode(file, path, n, elem.Elem()); err != nil {
			return err
		}
		v.Set(elem)
		return nil
	default:
		if err := n.Decode(v.Addr().Interface()); err != nil {
			return &Error{File: file, Key: path, Line: n.Line,
				Msg: fmt.Sprintf("got %q, expected %s", n.Value, describeKind(v.Type()))}
		}
		return nil
	}
}

func joinKey(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func describeKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(describeKind(t.Elem()), "an "), "a ") + "s"
	default:
		return t.String()
	}
}

// DecodeStrict is decodeStrict for other packages' YAML inputs (the experiment matrix), so
// every file moecapd reads rejects typos the same way and names file, key and line.
func DecodeStrict(file string, data []byte, out any) error { return decodeStrict(file, data, out) }

// CheckDuplicateKeys rejects a mapping anywhere in the document that names one key twice.
// YAML says keys are unique, yet a decoder into nodes keeps both and a map keeps the last:
// a matrix group or a benchmark setting would vanish without a word.
func CheckDuplicateKeys(file string, n *yaml.Node) error {
	return checkDup(file, "", n)
}

func checkDup(file, path string, n *yaml.Node) error {
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			if err := checkDup(file, p, c); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			key := joinKey(path, k.Value)
			if k.Kind == yaml.ScalarNode && k.Value != "<<" {
				if line, dup := seen[k.Value]; dup {
					return &Error{File: file, Key: key, Line: k.Line,
						Msg: fmt.Sprintf("duplicate key (first at line %d); each key may appear once in a mapping: merge the two or rename one", line)}
				}
				seen[k.Value] = k.Line
			}
			if err := checkDup(file, key, n.Content[i+1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// Bounds of the numbers a user can give (flags, MOECAP_* env, moecapd.yaml, benchmark and
// matrix files). A value outside is an *Error naming the key and the limit (exit 2), caught
// before any server starts. They are far beyond the guide's matrix, and small enough that
// nothing downstream overflows or allocates without bound.
const (
	MaxBatchSize  = 4096      // concurrent requests per cell (the guide goes to 128)
	MaxTP         = 64        // GPUs per server
	MaxNumSamples = 1_000_000 // requests per cell
	MaxWarmup     = 10_000    // warm-up requests
	MaxTokens     = 1 << 20   // target input or output tokens of one request (1,048,576)
	// MaxWorkloadTokens caps (num_samples + warmup) × (input + output tokens): the native
	// client builds every prompt's token ids and request body up front and keeps every
	// request's chunk times for the whole run — 14.4 bytes per prompt token measured (random
	// prompts and their bodies), about 16 per output token by its data structures, so about
	// 1 GiB at this cap.
	MaxWorkloadTokens = 64 << 20
	MaxPort           = 65535
	MaxRetries        = 10
	MaxSlots          = 1024
	MaxUSD            = 1e6 // any price
)

// CheckInt is an *Error unless min ≤ v ≤ max. what says what the number counts.
func CheckInt(file, key string, v, min, max int64, what string) error {
	if v < min || v > max {
		return &Error{File: file, Key: key, Msg: fmt.Sprintf("got %d, expected %d to %d (%s)", v, min, max, what)}
	}
	return nil
}

// CheckDuration is an *Error unless min ≤ d ≤ max.
func CheckDuration(file, key string, d, min, max time.Duration) error {
	if d < min || d > max {
		return &Error{File: file, Key: key, Msg: fmt.Sprintf("got %s, expected %s to %s", d, min, max)}
	}
	return nil
}

// CheckFloat is an *Error unless v is a finite number with min ≤ v ≤ max.
func CheckFloat(file, key string, v, min, max float64) error {
	if math.IsNaN(v) || v < min || v > max {
		return &Error{File: file, Key: key, Msg: fmt.Sprintf("got %g, expected %g to %g", v, min, max)}
	}
	return nil
}

// CheckWorkload bounds a cell's whole workload: requests, warm-up and tokens each, and
// their product (MaxWorkloadTokens), so memory is bounded before any server starts.
func CheckWorkload(file string, numSamples, warmup, in, out int) error {
	if err := CheckInt(file, "num_samples", int64(numSamples), 1, MaxNumSamples, "requests"); err != nil {
		return err
	}
	if err := CheckInt(file, "warmup", int64(warmup), 0, MaxWarmup, "warm-up requests"); err != nil {
		return err
	}
	if err := CheckInt(file, "target_input_tokens", int64(in), 1, MaxTokens, "tokens per prompt"); err != nil {
		return err
	}
	if err := CheckInt(file, "target_output_tokens", int64(out), 1, MaxTokens, "tokens per output"); err != nil {
		return err
	}
	// Each factor is ≤ 2^20, so the product fits in int64.
	if w := int64(numSamples+warmup) * int64(in+out); w > MaxWorkloadTokens {
		return &Error{File: file, Key: "num_samples",
			Msg: fmt.Sprintf("%d requests (+%d warm-up) × %d tokens (%d in + %d out) = %d tokens, more than the limit of %d a cell may send; lower num_samples or split the run into cells",
				numSamples, warmup, in+out, in, out, w, MaxWorkloadTokens)}
	}
	return nil
}
