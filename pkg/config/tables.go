package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moecapd/moecapd/configs"
)

// Model is one row of configs/models.yaml: the architecture numbers the roofline, the
// feasibility check and the S-MBU/S-MFU math need.
type Model struct {
	Key            string `yaml:"-"`
	HFID           string `yaml:"hf_id"`
	Layers         int    `yaml:"layers"`
	DModel         int    `yaml:"d_model"`
	Heads          int    `yaml:"heads"`
	KVHeads        int    `yaml:"kv_heads"`
	HeadDim        int    `yaml:"head_dim"`
	QKRopeHeadDim  int    `yaml:"qk_rope_head_dim"`
	KVLoraRank     int    `yaml:"kv_lora_rank"`
	QLoraRank      int    `yaml:"q_lora_rank"`
	Experts        int    `yaml:"experts"`
	TopK           int    `yaml:"top_k"`
	ExpertFFN      int    `yaml:"expert_ffn"`
	SharedExperts  int    `yaml:"shared_experts"`
	SharedFFN      int    `yaml:"shared_ffn"`
	DenseLayers    int    `yaml:"dense_layers"`
	DenseFFN       int    `yaml:"dense_ffn"`
	Vocab          int    `yaml:"vocab"`
	MaxPositions   int    `yaml:"max_positions"`
	Precision      string `yaml:"precision"`
	ExpertPatching bool   `yaml:"expert_patching"`
}

// MLA reports whether the model uses multi-head latent attention (compressed KV cache).
func (m Model) MLA() bool { return m.KVLoraRank > 0 }

// BytesPerParam is the weight size implied by the precision (fp8 → 1, bf16/fp16 → 2).
func (m Model) BytesPerParam() float64 {
	switch strings.ToLower(m.Precision) {
	case "fp8", "float8", "float8_e4m3fn":
		return 1
	case "float32", "fp32":
		return 4
	default:
		return 2
	}
}

// MoELayers is the number of layers whose FFN is a mixture of experts.
func (m Model) MoELayers() int { return m.Layers - m.DenseLayers }

// ExpertParams is the parameter count of one routed expert (gate, up and down matrices).
func (m Model) ExpertParams() float64 { return 3 * float64(m.ExpertFFN) * float64(m.DModel) }

// AttnParams is the parameter count of one attention block as MoE-CAP counts it:
// d_model·(H·d_head + 2·KV·d_head) + H·d_head·d_model.
func (m Model) AttnParams() float64 {
	d, h, kv, hd := float64(m.DModel), float64(m.Heads), float64(m.KVHeads), float64(m.HeadDim)
	return d*(h*hd+2*kv*hd) + h*hd*d
}

// KVBytesPerToken is the KV cache size of one token over all layers.
func (m Model) KVBytesPerToken() float64 {
	var elems float64
	if m.MLA() {
		elems = float64(m.Layers) * float64(m.KVLoraRank+m.QKRopeHeadDim)
	} else {
		elems = 2 * float64(m.Layers) * float64(m.HeadDim) * float64(m.KVHeads)
	}
	// KV cache stays in bf16 even for fp8 weights.
	return elems * 2
}

// TotalParams approximates the full weight count: attention, dense FFNs, all experts, shared
// experts, router and embeddings.
func (m Model) TotalParams() float64 {
	d := float64(m.DModel)
	p := float64(m.Layers) * m.AttnParams()
	p += float64(m.DenseLayers) * 3 * float64(m.DenseFFN) * d
	moe := float64(m.MoELayers())
	p += moe * (float64(m.Experts)*m.ExpertParams() + 3*float64(m.SharedFFN)*d + float64(m.Experts)*d)
	p += 2 * float64(m.Vocab) * d
	return p
}

// Hardware is one row of configs/hardware.yaml, per GPU.
type Hardware struct {
	Family               string  `yaml:"-"`
	Name                 string  `yaml:"name"`
	HBMBandwidth         float64 `yaml:"hbm_bandwidth"`
	BF16FLOPs            float64 `yaml:"bf16_flops"`
	FP8FLOPs             float64 `yaml:"fp8_flops"`
	MemoryBytes          float64 `yaml:"memory_bytes"`
	TDPWatts             float64 `yaml:"tdp_watts"`
	GPUHourUSD           float64 `yaml:"gpu_hour_usd"`
	ElectricityUSDPerKWh float64 `yaml:"electricity_usd_per_kwh"`
}

// PeakFLOPs is the dense peak for the model's precision.
func (h Hardware) PeakFLOPs(m Model) float64 {
	if m.BytesPerParam() == 1 && h.FP8FLOPs > 0 {
		return h.FP8FLOPs
	}
	return h.BF16FLOPs
}

// Tables holds the model and hardware tables.
type Tables struct {
	Models   map[string]Model
	Hardware map[string]Hardware
}

type modelsFile struct {
	Models map[string]Model `yaml:"models"`
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
	for k, m := range mf.Models {
		m.Key = k
		if err := m.validate(path); err != nil {
			return nil, err
		}
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
		t.Hardware[k] = h
	}
	return t, nil
}

func (m Model) validate(file string) error {
	req := map[string]int{"layers": m.Layers, "d_model": m.DModel, "heads": m.Heads,
		"kv_heads": m.KVHeads, "head_dim": m.HeadDim, "experts": m.Experts, "top_k": m.TopK,
		"expert_ffn": m.ExpertFFN}
	for k, v := range req {
		if v <= 0 {
			return &Error{File: file, Key: "models." + m.Key + "." + k, Msg: "must be a positive integer"}
		}
	}
	if m.HFID == "" {
		return &Error{File: file, Key: "models." + m.Key + ".hf_id", Msg: "missing; expected the Hugging Face model id"}
	}
	if m.TopK > m.Experts {
		return &Error{File: file, Key: "models." + m.Key + ".top_k", Msg: "larger than experts"}
	}
	return nil
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

// ModelByID finds a model by its Hugging Face id, its key, or the last path element of a
// local model directory named like the hub id.
func (t *Tables) ModelByID(id string) (Model, bool) {
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
