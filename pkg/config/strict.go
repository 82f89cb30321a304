// Package config reads moecapd's YAML inputs: the MoE-CAP benchmark files and the model and
// hardware tables. Decoding is strict: an unknown key or a value of the wrong type is an
// error that names the file, the key and what was expected.
package config

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Error is a configuration problem in one file. Callers map it to exit code 2.
type Error struct {
	File string
	Key  string
	Line int
	Msg  string
}

func (e *Error) Error() string {
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
