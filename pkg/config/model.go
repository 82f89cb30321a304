package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Model describes one MoE model: the architecture numbers the pass-cost model
// (pkg/passcost), the feasibility check and the S-MBU/S-MFU math need. Every value comes
// from the model's config.json (ParseHFConfig); configs/models.yaml is a cache of the
// config.json fields of the guide's five models, read through the same parser.
type Model struct {
	Key    string // short name used in cell ids (qwen1_5, or derived from the model id)
	HFID   string // Hugging Face id (org/name) or the path the model was served from
	Family string // config.json model_type: qwen2_moe, qwen3_moe, mixtral, deepseek_v2, deepseek_v3, olmoe
	// Source says where the description came from (a config.json path or the built-in table).
	Source string

	Layers  int // transformer blocks
	DModel  int // hidden size
	Heads   int // query heads
	KVHeads int // key/value heads (GQA); MLA models: = Heads, unused
	// HeadDim is config.json's head_dim, else hidden_size/heads (what MoE-CAP calls d_head).
	HeadDim int

	// Multi-head latent attention (DeepSeek-V2/V3): KVLoraRank > 0.
	QLoraRank     int
	KVLoraRank    int
	QKNopeHeadDim int
	QKRopeHeadDim int
	VHeadDim      int

	Experts   int // routed experts per MoE layer
	TopK      int // routed experts per token
	ExpertFFN int // intermediate size of one routed expert (gate, up, down)
	// SharedExperts counts the always-active shared experts; SharedFFN is their total
	// intermediate size.
	SharedExperts int
	SharedFFN     int
	DenseLayers   int // layers with a dense FFN instead of experts
	DenseFFN      int // their intermediate size

	Vocab          int
	TiedEmbeddings bool
	MaxPositions   int // the context window (max_position_embeddings)

	// Precision is the served precision: the checkpoint's quantization_config method (fp8)
	// when it has one, else its torch_dtype.
	Precision string
	// WeightBytes is the size of one weight of the checkpoint (fp8 → 1, bf16 → 2); the
	// embedding and LM head count at the same width (a small under-count for fp8
	// checkpoints that keep them in bf16, so floors stay lower bounds).
	WeightBytes float64
	// ExpertWeightBytes is the width of a routed expert's weight when the checkpoint
	// quantizes the experts apart (MXFP4: 4.25 bits); 0: WeightBytes.
	ExpertWeightBytes float64
	// SlidingLayers of the layers attend only to the last SlidingWindow positions (GPT-OSS);
	// their KV cache holds at most that many tokens per sequence.
	SlidingLayers int
	SlidingWindow int
	// KVElemBytes is the width of one KV-cache element: bf16 (2) unless the server is told
	// otherwise, also for fp8 checkpoints.
	KVElemBytes float64
	// FP8Linear: the linear layers run on fp8 tensor cores (fp8 checkpoint); attention
	// stays bf16.
	FP8Linear bool

	// ExpertPatching: whether vllm's MOE_CAP_ENABLE_EXPERT_PATCHING works (it breaks Mixtral).
	ExpertPatching bool
}

// MLA reports whether the model uses multi-head latent attention (compressed KV cache).
func (m Model) MLA() bool { return m.KVLoraRank > 0 }

// MoELayers is the number of layers whose FFN is a mixture of experts.
func (m Model) MoELayers() int { return m.Layers - m.DenseLayers }

// BytesPerParam is the weight width (see WeightBytes).
func (m Model) BytesPerParam() float64 { return m.WeightBytes }

// QKHeadDim and VDim are the per-head query/key and value widths of the attention
// (MLA: nope+rope and v_head_dim; GQA: head_dim for both).
func (m Model) QKHeadDim() int {
	if m.MLA() {
		return m.QKNopeHeadDim + m.QKRopeHeadDim
	}
	return m.HeadDim
}

// VDim is the value head width.
func (m Model) VDim() int {
	if m.MLA() {
		return m.VHeadDim
	}
	return m.HeadDim
}

// hfConfig is the subset of a Hugging Face config.json moecapd reads. Pointers tell "absent"
// from 0.
type hfConfig struct {
	ModelType          string   `json:"model_type"`
	Architectures      []string `json:"architectures"`
	HiddenSize         *int     `json:"hidden_size"`
	NumHiddenLayers    *int     `json:"num_hidden_layers"`
	NumAttentionHeads  *int     `json:"num_attention_heads"`
	NumKeyValueHeads   *int     `json:"num_key_value_heads"`
	HeadDim            *int     `json:"head_dim"`
	IntermediateSize   *int     `json:"intermediate_size"`
	MoEIntermediate    *int     `json:"moe_intermediate_size"`
	SharedExpertInter  *int     `json:"shared_expert_intermediate_size"`
	NumExperts         *int     `json:"num_experts"`
	NumLocalExperts    *int     `json:"num_local_experts"`
	NRoutedExperts     *int     `json:"n_routed_experts"`
	NumExpertsPerTok   *int     `json:"num_experts_per_tok"`
	NSharedExperts     *int     `json:"n_shared_experts"`
	FirstKDense        *int     `json:"first_k_dense_replace"`
	MoELayerFreq       *int     `json:"moe_layer_freq"`
	MLPOnlyLayers      []int    `json:"mlp_only_layers"`
	DecoderSparseStep  *int     `json:"decoder_sparse_step"`
	QLoraRank          *int     `json:"q_lora_rank"`
	KVLoraRank         *int     `json:"kv_lora_rank"`
	QKNopeHeadDim      *int     `json:"qk_nope_head_dim"`
	QKRopeHeadDim      *int     `json:"qk_rope_head_dim"`
	VHeadDim           *int     `json:"v_head_dim"`
	VocabSize          *int     `json:"vocab_size"`
	TieWordEmbeddings  *bool    `json:"tie_word_embeddings"`
	MaxPositions       *int     `json:"max_position_embeddings"`
	TorchDType         string   `json:"torch_dtype"`
	DType              string   `json:"dtype"`
	SlidingWindow      *int     `json:"sliding_window"`
	UseSlidingWindow   *bool    `json:"use_sliding_window"`
	LayerTypes         []string `json:"layer_types"`
	QuantizationConfig *struct {
		QuantMethod string `json:"quant_method"`
	} `json:"quantization_config"`
}

// Families ParseHFConfig understands (config.json model_type).
var Families = []string{"qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3", "olmoe", "gpt_oss"}

// ParseHFConfig describes a model from its config.json. source names the file for errors.
// It fails, naming the missing or unsupported fields, for a model it cannot describe (not
// a mixture of experts, sliding-window attention it does not model, a field it needs
// absent).
func ParseHFConfig(data []byte, source string) (Model, error) {
	var c hfConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return Model{}, fmt.Errorf("%s: not a config.json (%w)", source, err)
	}
	fam := c.ModelType
	m := Model{Family: fam, Source: source, KVElemBytes: 2}
	var missing []string
	need := func(name string, p *int) int {
		if p == nil || *p <= 0 {
			missing = append(missing, name)
			return 0
		}
		return *p
	}
	opt := func(p *int, def int) int {
		if p == nil {
			return def
		}
		return *p
	}
	// Sliding-window attention is described for GPT-OSS (layer_types says which layers);
	// a window in any other family is refused rather than guessed at.
	sliding := fam != "gpt_oss" && (c.UseSlidingWindow != nil && *c.UseSlidingWindow || slices.Contains(c.LayerTypes, "sliding_attention"))
	if fam == "mixtral" && c.SlidingWindow != nil && *c.SlidingWindow > 0 && *c.SlidingWindow < opt(c.MaxPositions, 0) {
		sliding = true // Mixtral has no use_sliding_window switch: a window set is a window used
	}
	if sliding {
		return Model{}, fmt.Errorf("%s: model_type %q uses sliding-window attention (window %d), which the pass-cost model does not describe; its CAP numbers stay absent", source, fam, opt(c.SlidingWindow, 0))
	}
	m.Layers = need("num_hidden_layers", c.NumHiddenLayers)
	m.DModel = need("hidden_size", c.HiddenSize)
	m.Heads = need("num_attention_heads", c.NumAttentionHeads)
	m.KVHeads = opt(c.NumKeyValueHeads, m.Heads)
	m.HeadDim = opt(c.HeadDim, 0)
	if m.HeadDim <= 0 && m.Heads > 0 {
		m.HeadDim = m.DModel / m.Heads
	}
	m.Vocab = need("vocab_size", c.VocabSize)
	m.MaxPositions = opt(c.MaxPositions, 0)
	if c.TieWordEmbeddings != nil {
		m.TiedEmbeddings = *c.TieWordEmbeddings
	}
	switch {
	case c.NRoutedExperts != nil:
		m.Experts = *c.NRoutedExperts
	case c.NumLocalExperts != nil:
		m.Experts = *c.NumLocalExperts
	case c.NumExperts != nil:
		m.Experts = *c.NumExperts
	}
	m.TopK = opt(c.NumExpertsPerTok, 0)
	if m.Experts <= 0 || m.TopK <= 0 {
		return Model{}, fmt.Errorf("%s: no routed experts (num_experts / num_local_experts / n_routed_experts and num_experts_per_tok): not a mixture-of-experts model; its CAP numbers stay absent", source)
	}
	if m.TopK > m.Experts {
		return Model{}, fmt.Errorf("%s: num_experts_per_tok %d is larger than the %d experts", source, m.TopK, m.Experts)
	}
	if c.MoEIntermediate != nil {
		m.ExpertFFN = *c.MoEIntermediate
	} else {
		m.ExpertFFN = need("intermediate_size (expert FFN)", c.IntermediateSize)
	}

	isMoE := func(int) bool { return true }
	switch fam {
	case "deepseek_v2", "deepseek_v3":
		first, freq := opt(c.FirstKDense, 0), max(opt(c.MoELayerFreq, 1), 1)
		isMoE = func(i int) bool { return i >= first && i%freq == 0 }
		m.SharedExperts = opt(c.NSharedExperts, 0)
		m.SharedFFN = m.SharedExperts * m.ExpertFFN
		m.KVLoraRank = need("kv_lora_rank", c.KVLoraRank)
		m.QLoraRank = opt(c.QLoraRank, 0)
		m.QKNopeHeadDim = need("qk_nope_head_dim", c.QKNopeHeadDim)
		m.QKRopeHeadDim = need("qk_rope_head_dim", c.QKRopeHeadDim)
		m.VHeadDim = need("v_head_dim", c.VHeadDim)
		m.KVHeads = m.Heads
	case "qwen2_moe", "qwen3_moe":
		step := max(opt(c.DecoderSparseStep, 1), 1)
		only := map[int]bool{}
		for _, l := range c.MLPOnlyLayers {
			only[l] = true
		}
		isMoE = func(i int) bool { return !only[i] && (i+1)%step == 0 }
		if c.SharedExpertInter != nil && *c.SharedExpertInter > 0 {
			m.SharedExperts, m.SharedFFN = 1, *c.SharedExpertInter
		}
	case "mixtral", "olmoe":
	case "gpt_oss":
		for _, lt := range c.LayerTypes {
			if lt == "sliding_attention" {
				m.SlidingLayers++
			}
		}
		if m.SlidingLayers > 0 {
			m.SlidingWindow = need("sliding_window", c.SlidingWindow)
		}
	default:
		if c.KVLoraRank != nil {
			return Model{}, fmt.Errorf("%s: model_type %q has latent attention but is not a DeepSeek family moecapd knows (%s)", source, fam, strings.Join(Families, ", "))
		}
		// An unknown family with the generic fields is described as experts in every
		// layer, no shared experts; Source says so.
		m.Source += fmt.Sprintf(" (model_type %q read with the generic MoE rules: every layer MoE, no shared experts)", fam)
	}
	if m.Layers > maxLayers {
		return Model{}, fmt.Errorf("%s: num_hidden_layers %d: more than %d, no model's; the file is corrupt or not a model's config.json", source, m.Layers, maxLayers)
	}
	for i := 0; i < m.Layers; i++ {
		if !isMoE(i) {
			m.DenseLayers++
		}
	}
	if m.DenseLayers > 0 {
		m.DenseFFN = need("intermediate_size (dense layers)", c.IntermediateSize)
	}
	if m.DenseLayers == m.Layers && m.Layers > 0 {
		return Model{}, fmt.Errorf("%s: no layer is a mixture of experts (mlp_only_layers/decoder_sparse_step/first_k_dense_replace)", source)
	}
	if len(missing) > 0 {
		return Model{}, fmt.Errorf("%s: model_type %q: missing %s; pass --model-config with a complete config.json", source, fam, strings.Join(missing, ", "))
	}
	if err := m.plausible(); err != nil {
		return Model{}, fmt.Errorf("%s: %v; the file is corrupt or not a model's config.json", source, err)
	}
	if m.Heads > 0 && m.KVHeads > 0 && m.Heads%m.KVHeads != 0 {
		return Model{}, fmt.Errorf("%s: %d attention heads are not a multiple of %d key/value heads", source, m.Heads, m.KVHeads)
	}

	dtype := strings.ToLower(c.TorchDType)
	if dtype == "" {
		dtype = strings.ToLower(c.DType)
	}
	if dtype == "" {
		dtype = "bfloat16"
	}
	m.Precision, m.WeightBytes = dtype, dtypeBytes(dtype)
	if q := c.QuantizationConfig; q != nil && q.QuantMethod != "" {
		switch qm := strings.ToLower(q.QuantMethod); qm {
		case "fp8":
			m.Precision, m.WeightBytes, m.FP8Linear = "fp8", 1, true
		case "mxfp4":
			// GPT-OSS: the routed experts in MXFP4 (4-bit values, one 8-bit scale per 32:
			// 4.25 bits); attention, router, embedding and LM head stay at torch_dtype. No
			// fp4 tensor cores on H100/H200/A100: the compute runs in bf16.
			m.Precision, m.ExpertWeightBytes = "mxfp4", 4.25/8
		default:
			return Model{}, fmt.Errorf("%s: quantization %q is not described by the pass-cost model (fp8 and unquantized checkpoints are)", source, qm)
		}
	}
	return m, nil
}

// maxLayers bounds num_hidden_layers (DeepSeek-V3 has 61).
const maxLayers = 1 << 12

// plausible bounds the sizes a config.json gives: far past every real model (DeepSeek-V3:
// 7168 hidden, 256 experts, 129280 vocab), so a corrupt or hostile file cannot make the
// pass-cost arithmetic overflow or the memory model promise exabytes; negative sizes are
// no sizes.
func (m Model) plausible() error {
	for _, b := range []struct {
		name string
		v    int
		max  int
	}{
		{"num_hidden_layers", m.Layers, maxLayers},
		{"hidden_size", m.DModel, 1 << 18},
		{"num_attention_heads", m.Heads, 1 << 12},
		{"num_key_value_heads", m.KVHeads, 1 << 12},
		{"head_dim", m.HeadDim, 1 << 14},
		{"vocab_size", m.Vocab, 1 << 24},
		{"max_position_embeddings", m.MaxPositions, 1 << 30},
		{"routed experts", m.Experts, 1 << 16},
		{"num_experts_per_tok", m.TopK, 1 << 16},
		{"expert intermediate_size", m.ExpertFFN, 1 << 20},
		{"dense intermediate_size", m.DenseFFN, 1 << 20},
		{"shared experts", m.SharedExperts, 1 << 10},
		{"shared expert intermediate size", m.SharedFFN, 1 << 24},
		{"kv_lora_rank", m.KVLoraRank, 1 << 16},
		{"q_lora_rank", m.QLoraRank, 1 << 16},
		{"qk_nope_head_dim", m.QKNopeHeadDim, 1 << 14},
		{"qk_rope_head_dim", m.QKRopeHeadDim, 1 << 14},
		{"v_head_dim", m.VHeadDim, 1 << 14},
		{"sliding_window", m.SlidingWindow, 1 << 30},
	} {
		if b.v < 0 || b.v > b.max {
			return fmt.Errorf("%s %d is outside 0..%d", b.name, b.v, b.max)
		}
	}
	return nil
}

func dtypeBytes(dtype string) float64 {
	switch dtype {
	case "float32", "fp32":
		return 4
	case "fp8", "float8", "float8_e4m3fn":
		return 1
	default:
		return 2
	}
}

// ExpertBytes is the width of one routed-expert weight.
func (m Model) ExpertBytes() float64 {
	if m.ExpertWeightBytes > 0 {
		return m.ExpertWeightBytes
	}
	return m.WeightBytes
}

// ModelSource says where model descriptions are looked up besides the built-in table.
// cmd/moecapd fills it from flags and the environment.
type ModelSource struct {
	// ConfigFile is --model-config: a config.json for the cell's model (wins over all).
	ConfigFile string
	// HubCache is the Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub, or
	// ~/.cache/huggingface/hub); "" disables the lookup.
	HubCache string
}

// HubCacheDir is the hub cache the Hugging Face libraries use, from the values of
// $HF_HUB_CACHE, $HF_HOME and $HOME.
func HubCacheDir(hfHubCache, hfHome, home string) string {
	switch {
	case hfHubCache != "":
		return hfHubCache
	case hfHome != "":
		return filepath.Join(hfHome, "hub")
	case home != "":
		return filepath.Join(home, ".cache", "huggingface", "hub")
	}
	return ""
}

// UnknownModelError says why a model could not be described. A cell of such a model still
// runs; its CAP numbers are absent with this reason.
type UnknownModelError struct {
	ID     string
	Reason string
}

func (e *UnknownModelError) Error() string {
	return fmt.Sprintf("model %q cannot be described: %s", e.ID, e.Reason)
}

// Describe finds a model's description, in order: --model-config, a local model directory
// holding config.json, the Hugging Face hub cache (offline: snapshots already downloaded),
// the built-in table. The key of a table model is its table key; any other model's key is
// derived from its id (ModelKey).
func (t *Tables) Describe(id string) (Model, error) {
	var tried []string
	fromFile := func(path, hfid string) (Model, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return Model{}, err
		}
		m, err := ParseHFConfig(b, path)
		if err != nil {
			return Model{}, err
		}
		m.HFID = hfid
		m.Key = ModelKey(hfid)
		// A table model read from elsewhere keeps its short key and its vllm quirk.
		if tm, ok := t.tableModel(hfid); ok {
			m.Key, m.ExpertPatching = tm.Key, tm.ExpertPatching
		} else {
			m.ExpertPatching = m.Family != "mixtral"
		}
		return m, nil
	}
	if f := t.Sources.ConfigFile; f != "" {
		m, err := fromFile(f, id)
		if err != nil {
			return Model{}, &UnknownModelError{ID: id, Reason: fmt.Sprintf("--model-config %s: %v", f, err)}
		}
		return m, nil
	}
	if st, err := os.Stat(filepath.Join(id, "config.json")); err == nil && !st.IsDir() {
		m, err := fromFile(filepath.Join(id, "config.json"), id)
		if err != nil {
			return Model{}, &UnknownModelError{ID: id, Reason: err.Error()}
		}
		return m, nil
	}
	if p, err := hubConfig(t.Sources.HubCache, id); p != "" {
		m, err := fromFile(p, id)
		if err != nil {
			return Model{}, &UnknownModelError{ID: id, Reason: err.Error()}
		}
		return m, nil
	} else if err != nil {
		tried = append(tried, err.Error())
	} else if t.Sources.HubCache != "" {
		tried = append(tried, fmt.Sprintf("no snapshot with config.json under %s", filepath.Join(t.Sources.HubCache, hubDirName(id))))
	}
	if m, ok := t.tableModel(id); ok {
		return m, nil
	}
	tried = append(tried, "not in the built-in table ("+strings.Join(t.ModelKeys(), ", ")+")")
	return Model{}, &UnknownModelError{ID: id, Reason: strings.Join(tried, "; ") + "; pass --model-config FILE with the model's config.json"}
}

func hubDirName(id string) string { return "models--" + strings.ReplaceAll(id, "/", "--") }

// hubConfig finds config.json of id in the hub cache: the snapshot refs/main names, else
// the newest snapshot that has one. "" when there is none.
func hubConfig(cache, id string) (string, error) {
	if cache == "" || !strings.Contains(id, "/") || strings.HasPrefix(id, "/") || strings.HasPrefix(id, ".") {
		return "", nil
	}
	dir := filepath.Join(cache, hubDirName(id))
	if ref, err := os.ReadFile(filepath.Join(dir, "refs", "main")); err == nil {
		p := filepath.Join(dir, "snapshots", strings.TrimSpace(string(ref)), "config.json")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "snapshots"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("hub cache %s: %w", dir, err)
	}
	type cand struct {
		path string
		mod  int64
	}
	var cs []cand
	for _, e := range ents {
		p := filepath.Join(dir, "snapshots", e.Name(), "config.json")
		if st, err := os.Stat(p); err == nil {
			cs = append(cs, cand{p, st.ModTime().UnixNano()})
		}
	}
	if len(cs) == 0 {
		return "", nil
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].mod > cs[j].mod })
	return cs[0].path, nil
}

var keyChars = regexp.MustCompile(`[^a-z0-9_-]+`)

// ModelKey is the short name of a model outside the built-in table, for cell ids: the last
// element of its id, lower case, with anything but letters, digits, '_' and '-' (a dot
// would split the cell id) turned into '_'.
func ModelKey(id string) string {
	base := strings.ToLower(filepath.Base(strings.TrimRight(id, "/")))
	k := strings.Trim(keyChars.ReplaceAllString(base, "_"), "_")
	if k == "" {
		return "model"
	}
	return k
}

// KVCacheBytes reads a server argv's --kv-cache-dtype (SGLang and vLLM both take it):
// fp8 variants store one byte per KV element, auto/bf16/fp16 two. ok is false when the argv
// does not set it (the KV cache is then bf16, also for fp8 checkpoints).
func KVCacheBytes(argv []string) (bytes float64, ok bool) {
	for i, a := range argv {
		name, val, has := strings.Cut(a, "=")
		if name != "--kv-cache-dtype" {
			continue
		}
		if !has && i+1 < len(argv) {
			val = argv[i+1]
		}
		switch v := strings.ToLower(val); {
		case strings.HasPrefix(v, "fp8"):
			bytes, ok = 1, true
		case v == "auto" || v == "bfloat16" || v == "bf16" || v == "float16" || v == "fp16" || v == "half":
			bytes, ok = 2, true
		}
	}
	return bytes, ok
}
