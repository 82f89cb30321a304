package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/configs"
)

// Hardware is one row of configs/hardware.yaml, per GPU.
type Hardware struct {
	Family       string  `yaml:"-"`
	Name         string  `yaml:"name"`
	HBMBandwidth float64 `yaml:"hbm_bandwidth"`
	BF16FLOPs    float64 `yaml:"bf16_flops"`
	FP8FLOPs     float64 `yaml:"fp8_flops"`
	MemoryBytes  float64 `yaml:"memory_bytes"`
	TDPWatts     float64 `yaml:"tdp_watts"`
	// MoECAPBF16FLOPs, MoECAPFP8FLOPs and MoECAPFP4FLOPs are the dense peaks upstream MoE-CAP divides by
	// (its table's value / 2), for the *_moecap utilisations only; 0: the ones above.
	MoECAPBF16FLOPs      float64 `yaml:"moecap_bf16_flops"`
	MoECAPFP8FLOPs       float64 `yaml:"moecap_fp8_flops"`
	MoECAPFP4FLOPs       float64 `yaml:"moecap_fp4_flops"`
	GPUHourUSD           float64 `yaml:"gpu_hour_usd"`
	ElectricityUSDPerKWh float64 `yaml:"electricity_usd_per_kwh"`
}

// Tables holds the model and hardware tables, and where models outside the table are
// looked up (Describe).
type Tables struct {
	Models   map[string]Model
	Hardware map[string]Hardware
	// Sources is set by cmd/moecapd: --model-config and the hub cache.
	Sources ModelSource
}

// tableEntry is one model of models.yaml: its id, its vllm quirk, and the fields of its
// config.json.
type tableEntry struct {
	HFID           string         `yaml:"hf_id"`
	ExpertPatching bool           `yaml:"expert_patching"`
	Config         map[string]any `yaml:"config"`
}

type modelsFile struct {
	Models map[string]tableEntry `yaml:"models"`
}

type hardwareFile struct {
	Hardware map[string]Hardware `yaml:"hardware"`
}

// ReadFile reads name from dir when it exists there, else from the copy built into the
// binary. It returns the path it read (for error messages).
func ReadFile(dir, name string) ([]byte, string, error) {
	if dir != "" {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err == nil {
			return b, p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, p, err
		}
	}
	b, err := configs.FS.ReadFile(name)
	if err != nil {
		return nil, name, fmt.Errorf("%s: not found in %q nor built in", name, dir)
	}
	return b, "configs/" + name + " (built in)", nil
}

// LoadTables reads models.yaml and hardware.yaml from dir (falling back to the built-in
// copies) and validates them.
func LoadTables(dir string) (*Tables, error) {
	t := &Tables{}
	b, path, err := ReadFile(dir, "models.yaml")
	if err != nil {
		return nil, err
	}
	var mf modelsFile
	if err := decodeStrict(path, b, &mf); err != nil {
		return nil, err
	}
	t.Models = map[string]Model{}
	for k, e := range mf.Models {
		if e.HFID == "" {
			return nil, &Error{File: path, Key: "models." + k + ".hf_id", Msg: "missing; expected the Hugging Face model id"}
		}
		raw, err := json.Marshal(e.Config)
		if err != nil {
			return nil, &Error{File: path, Key: "models." + k + ".config", Msg: err.Error()}
		}
		m, err := ParseHFConfig(raw, path+" models."+k+".config")
		if err != nil {
			return nil, &Error{File: path, Key: "models." + k + ".config", Msg: err.Error()}
		}
		m.Key, m.HFID, m.ExpertPatching = k, e.HFID, e.ExpertPatching
		m.Source = "built-in table (" + path + ", a cache of " + e.HFID + "'s config.json)"
		t.Models[k] = m
	}
	b, path, err = ReadFile(dir, "hardware.yaml")
	if err != nil {
		return nil, err
	}
	var hf hardwareFile
	if err := decodeStrict(path, b, &hf); err != nil {
		return nil, err
	}
	t.Hardware = map[string]Hardware{}
	for k, h := range hf.Hardware {
		h.Family = k
		if h.HBMBandwidth <= 0 || h.BF16FLOPs <= 0 || h.MemoryBytes <= 0 {
			return nil, &Error{File: path, Key: "hardware." + k,
				Msg: "hbm_bandwidth, bf16_flops and memory_bytes must be positive"}
		}
		// YAML has .inf and .nan: a peak of either makes every utilisation 0 or NaN.
		for name, v := range map[string]float64{"hbm_bandwidth": h.HBMBandwidth, "bf16_flops": h.BF16FLOPs, "fp8_flops": h.FP8FLOPs,
			"memory_bytes": h.MemoryBytes, "tdp_watts": h.TDPWatts, "moecap_bf16_flops": h.MoECAPBF16FLOPs, "moecap_fp8_flops": h.MoECAPFP8FLOPs,
			"moecap_fp4_flops": h.MoECAPFP4FLOPs, "gpu_hour_usd": h.GPUHourUSD, "electricity_usd_per_kwh": h.ElectricityUSDPerKWh} {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return nil, &Error{File: path, Key: "hardware." + k + "." + name, Msg: fmt.Sprintf("%v: want a finite number, 0 or more", v)}
			}
		}
		t.Hardware[k] = h
	}
	return t, nil
}

// ModelKeys lists the known model keys, sorted.
func (t *Tables) ModelKeys() []string {
	var ks []string
	for k := range t.Models {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ModelByID describes a model (Describe) and reports whether it could.
func (t *Tables) ModelByID(id string) (Model, bool) {
	m, err := t.Describe(id)
	return m, err == nil
}

// tableModel finds a table model by its Hugging Face id, its key, or the last path element
// of a local model directory named like the hub id.
func (t *Tables) tableModel(id string) (Model, bool) {
	if m, ok := t.Models[id]; ok {
		return m, true
	}
	for _, m := range t.Models {
		if m.HFID == id {
			return m, true
		}
	}
	base := filepath.Base(strings.TrimRight(id, "/"))
	for _, m := range t.Models {
		if strings.EqualFold(filepath.Base(m.HFID), base) {
			return m, true
		}
	}
	return Model{}, false
}

// HardwareFamily returns the hardware row for a family (H100, H200, A100).
func (t *Tables) HardwareFamily(family string) (Hardware, bool) {
	h, ok := t.Hardware[family]
	return h, ok
}
