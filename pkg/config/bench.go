package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Bench is a MoE-CAP benchmark file (configs/fixed_*.yaml), in the runner's own format.
type Bench struct {
	DatasetNames       []string `yaml:"dataset_names"`
	Metrics            []string `yaml:"metrics"`
	ModelID            string   `yaml:"model_id"`
	Precision          string   `yaml:"precision"`
	DatasetSubset      string   `yaml:"dataset_subset"`
	DatasetSplit       string   `yaml:"dataset_split"`
	FixedLengthMode    bool     `yaml:"fixed_length_mode"`
	TargetInputTokens  int      `yaml:"target_input_tokens"`
	TargetOutputTokens int      `yaml:"target_output_tokens"`
	NumSamples         int      `yaml:"num_samples"`
	ProfilingOnly      bool     `yaml:"profiling_only"`

	// Path is where the file was read from (absolute when it came from disk).
	Path string `yaml:"-"`
	// Raw is the file as read, so a cell can keep (and hand the runner) the exact copy.
	Raw []byte `yaml:"-"`
}

// LoadBench reads and validates a benchmark file. A path that does not exist on disk but
// names a built-in config (e.g. "configs/fixed_4k_1k_qwen1_5.yaml") is read from the binary.
func LoadBench(path string) (*Bench, error) {
	b, err := os.ReadFile(path)
	shown := path
	if err != nil {
		if !os.IsNotExist(err) {
			return nil, &Error{File: path, Msg: err.Error()}
		}
		var rerr error
		b, shown, rerr = ReadFile("", filepath.Base(path))
		if rerr != nil {
			return nil, &Error{File: path, Msg: "no such file; pass --config with a benchmark YAML such as configs/fixed_4k_1k_qwen1_5.yaml"}
		}
	} else if abs, aerr := filepath.Abs(path); aerr == nil {
		shown = abs
	}
	var c Bench
	if err := decodeStrict(shown, b, &c); err != nil {
		return nil, err
	}
	c.Path = shown
	c.Raw = b
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the fields a benchmark run depends on.
func (c *Bench) Validate() error {
	bad := func(key, msg string) error { return &Error{File: c.Path, Key: key, Msg: msg} }
	if strings.TrimSpace(c.ModelID) == "" {
		return bad("model_id", "missing; expected the served model's Hugging Face id, e.g. Qwen/Qwen1.5-MoE-A2.7B-Chat")
	}
	if c.TargetInputTokens <= 0 {
		return bad("target_input_tokens", fmt.Sprintf("got %d, expected a positive token count such as 4000", c.TargetInputTokens))
	}
	if c.TargetOutputTokens <= 0 {
		return bad("target_output_tokens", fmt.Sprintf("got %d, expected a positive token count such as 1000", c.TargetOutputTokens))
	}
	if c.NumSamples <= 0 {
		return bad("num_samples", fmt.Sprintf("got %d, expected a positive number of requests such as 100", c.NumSamples))
	}
	// Upper bounds (strict.go): refused here, before any server starts.
	if err := CheckWorkload(c.Path, c.NumSamples, 0, c.TargetInputTokens, c.TargetOutputTokens); err != nil {
		return err
	}
	if len(c.DatasetNames) == 0 {
		return bad("dataset_names", "empty; expected a list such as [\"gsm8k\"]")
	}
	return nil
}

// Task is the cell id's task label, e.g. "4k-1k" for 4000 in / 1000 out.
func (c *Bench) Task() string { return TaskLabel(c.TargetInputTokens, c.TargetOutputTokens) }

// TaskLabel formats token counts the way the guide names tasks ("13k-1k").
func TaskLabel(in, out int) string { return tokLabel(in) + "-" + tokLabel(out) }

func tokLabel(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprintf("%d", n)
}

// Dataset is the first dataset name (the fixed-length configs use exactly one).
func (c *Bench) Dataset() string { return c.DatasetNames[0] }
