// Package settings merges a command's flags with MOECAP_* variables and a settings file
// (flag > MOECAP_* env > moecapd.yaml (--settings) > default), each value parsed by its
// flag's own type, and reads typed values out of the merged flags. The commands of
// cmd/moecapd call it before anything runs.
package settings

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/moecapd/moecapd/pkg/config"
	"github.com/moecapd/moecapd/pkg/exitcode"
)

// Settings: flag > MOECAP_* env > moecapd.yaml (--settings) > default, merged once per
// command into its flags, each value parsed by its flag's own type, before anything runs.
// A value that does not parse is a usage error (exit 2) naming where it came from and the
// key: `grace: 600` (no unit), `grace: abc` and `num-samples: eight` are refused, never
// read as 600 ns or 0. The commands then read typed values (launchOpts, matrixOpts) once;
// nothing writes back into the flags or a viper afterwards, and no viper is shared with
// goroutines.

// EnvName is the MOECAP_* variable of a flag: MOECAP_ + upper case, '-' as '_'.
func EnvName(flag string) string {
	return "MOECAP_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Load merges MOECAP_* env and the settings file (--settings, or ./moecapd.yaml when
// present) into the command's flags and returns a read-only viper over them, for the
// commands that read values by name.
func Load(cmd *cobra.Command) (*viper.Viper, error) {
	if err := Merge(cmd, true); err != nil {
		return nil, err
	}
	return Viper(cmd)
}

// Bind is Load without the settings file (flags and MOECAP_* only): `moecapd
// bench` takes the runner's --config-file, and its keys are no settings.
func Bind(cmd *cobra.Command) (*viper.Viper, error) {
	if err := Merge(cmd, false); err != nil {
		return nil, err
	}
	return Viper(cmd)
}

// Viper is a viper that reads the command's (merged) flags and nothing else: no env,
// no file, so it cannot disagree with them. IsSet is true for a flag the command line,
// the env or the file gave.
func Viper(cmd *cobra.Command) (*viper.Viper, error) {
	v := viper.New()
	if err := v.BindPFlags(cmd.Flags()); err != nil {
		return nil, err
	}
	if err := v.BindPFlags(cmd.InheritedFlags()); err != nil {
		return nil, err
	}
	return v, nil
}

// Merge sets every flag the command line left unset from MOECAP_* or, failing
// that, the settings file. It is idempotent: a second call finds every merged flag set
// and changes nothing.
func Merge(cmd *cobra.Command, withFile bool) error {
	flags := map[string]*pflag.Flag{}
	cli := map[string]bool{}
	add := func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" {
			return // cobra's own; never a setting
		}
		flags[f.Name] = f
		if f.Changed {
			cli[f.Name] = true
		}
	}
	cmd.InheritedFlags().VisitAll(add)
	cmd.Flags().VisitAll(add)

	type source struct{ where, value string }
	from := map[string]source{}
	if withFile {
		path := ""
		if f := flags["settings"]; f != nil {
			path = f.Value.String()
			if v, ok := os.LookupEnv(EnvName("settings")); ok && !f.Changed {
				path = v
			}
		}
		if path == "" {
			if _, err := os.Stat("moecapd.yaml"); err == nil {
				path = "moecapd.yaml"
			}
		}
		if path != "" {
			vals, err := readSettingsFile(path, cmd, flags)
			if err != nil {
				return err
			}
			for k, val := range vals {
				from[k] = source{fmt.Sprintf("%s: key %q", path, k), val}
			}
		}
	}
	for name := range flags {
		if val, ok := os.LookupEnv(EnvName(name)); ok {
			from[name] = source{fmt.Sprintf("%s=%q", EnvName(name), val), val}
		}
	}
	names := make([]string, 0, len(from))
	for n := range from {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if cli[name] {
			continue
		}
		s := from[name]
		f := flags[name]
		set := cmd.Flags().Set
		if cmd.Flags().Lookup(name) == nil {
			set = func(_, v string) error {
				f.Changed = true
				return f.Value.Set(v)
			}
		}
		if err := set(name, s.value); err != nil {
			return exitcode.Usagef("%s: got %q, expected %s (%v)", s.where, s.value, Expectation(f), err)
		}
	}
	return nil
}

// Expectation says what a flag's value must look like.
func Expectation(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		return "a duration with a unit, such as 30s, 10m or 2h (a bare number has no unit and is refused)"
	case "int", "int64", "int32", "uint", "uint64":
		return "an integer"
	case "float64", "float32":
		return "a number"
	case "bool":
		return "true or false"
	case "intSlice":
		return "a list of integers"
	case "stringSlice", "stringArray":
		return "a list of strings"
	}
	return "a " + f.Value.Type()
}

// readSettingsFile reads a settings file: a YAML mapping of the command's flag names to
// scalar values (lists for list flags). Duplicate keys, unknown keys, nested mappings and
// empty values are errors naming the key.
func readSettingsFile(path string, cmd *cobra.Command, flags map[string]*pflag.Flag) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, exitcode.Usagef("settings file %s: no such file; fix --settings", path)
		}
		return nil, exitcode.Usagef("settings file %s: %v", path, err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, exitcode.Usagef("settings file %s: not valid YAML: %v", path, err)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return map[string]string{}, nil
	}
	if err := config.CheckDuplicateKeys(path, &root); err != nil {
		return nil, exitcode.New(exitcode.Usage, err)
	}
	m := root.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, exitcode.Usagef("settings file %s: expected a mapping of flag names to values, e.g. \"grace: 30s\"", path)
	}
	out := map[string]string{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, val := m.Content[i], m.Content[i+1]
		where := fmt.Sprintf("%s:%d: key %q", path, k.Line, k.Value)
		f := flags[k.Value]
		if f == nil || k.Value == "settings" {
			return nil, exitcode.Usagef("%s: unknown key for %q; keys are the command's flag names (see moecapd %s --help)", where, cmd.Name(), cmd.Name())
		}
		list := strings.HasSuffix(f.Value.Type(), "Slice") || strings.HasSuffix(f.Value.Type(), "Array")
		switch {
		case val.Kind == yaml.ScalarNode && val.Tag == "!!null":
			return nil, exitcode.Usagef("%s: no value; expected %s (or remove the key)", where, Expectation(f))
		case val.Kind == yaml.ScalarNode:
			out[k.Value] = val.Value
		case val.Kind == yaml.SequenceNode && list:
			parts := make([]string, 0, len(val.Content))
			for _, e := range val.Content {
				if e.Kind != yaml.ScalarNode || strings.Contains(e.Value, ",") {
					return nil, exitcode.Usagef("%s: list items must be plain values without commas", where)
				}
				parts = append(parts, e.Value)
			}
			out[k.Value] = strings.Join(parts, ",")
		default:
			return nil, exitcode.Usagef("%s: expected %s, got a YAML %s", where, Expectation(f), kindName(val.Kind))
		}
	}
	return out, nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	case yaml.AliasNode:
		return "alias"
	}
	return "value"
}

// Reader reads typed values out of a merged flag set. A flag the command does not have
// reads as its zero value (the matrix lacks launch-and-bench's per-cell flags). Err is the
// first error a read met.
type Reader struct {
	fs  *pflag.FlagSet
	err error
}

// NewReader reads fs.
func NewReader(fs *pflag.FlagSet) *Reader { return &Reader{fs: fs} }

// Err is the first error a read met, or nil.
func (r *Reader) Err() error { return r.err }

func (r *Reader) Has(name string) bool { return r.fs.Lookup(name) != nil }

func (r *Reader) keep(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

func (r *Reader) Str(name string) string {
	if !r.Has(name) {
		return ""
	}
	v, err := r.fs.GetString(name)
	r.keep(err)
	return v
}

func (r *Reader) Int(name string) int {
	if !r.Has(name) {
		return 0
	}
	v, err := r.fs.GetInt(name)
	r.keep(err)
	return v
}

func (r *Reader) Int64(name string) int64 {
	if !r.Has(name) {
		return 0
	}
	v, err := r.fs.GetInt64(name)
	r.keep(err)
	return v
}

func (r *Reader) Bool(name string) bool {
	if !r.Has(name) {
		return false
	}
	v, err := r.fs.GetBool(name)
	r.keep(err)
	return v
}

func (r *Reader) Dur(name string) time.Duration {
	if !r.Has(name) {
		return 0
	}
	v, err := r.fs.GetDuration(name)
	r.keep(err)
	return v
}

func (r *Reader) Float(name string) float64 {
	if !r.Has(name) {
		return 0
	}
	v, err := r.fs.GetFloat64(name)
	r.keep(err)
	return v
}

func (r *Reader) Floats(name string) []float64 {
	if !r.Has(name) {
		return nil
	}
	v, err := r.fs.GetFloat64Slice(name)
	r.keep(err)
	return v
}

// OptFloat is nil unless the flag was given (command line, env or file).
func (r *Reader) OptFloat(name string) *float64 {
	if !r.Changed(name) {
		return nil
	}
	v, err := r.fs.GetFloat64(name)
	r.keep(err)
	return &v
}

func (r *Reader) Changed(name string) bool { return r.Has(name) && r.fs.Changed(name) }
