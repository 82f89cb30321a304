# Sourced by tools/gpu-e2e.sh and tools/gpu-physics.sh: a conda-shaped root with one env whose
# `python -m moe_cap.systems.sglang` runs tools/gpuserver/server.py and whose
# `python -m moe_cap.runner.openai_api_profile` runs `moecapd bench`, so launch-and-bench goes
# through the real activation path (source conda.sh, conda activate, exec) on a machine with
# no conda, SGLang or vLLM.
#   make_conda_root ROOT ENV REPO MOECAPD   (exports GPU_E2E_CONDA_ROOT=ROOT)
make_conda_root() {
  local root=$1 env=$2 repo=$3 moecapd=$4 realpy
  mkdir -p "$root/etc/profile.d" "$root/envs/$env/bin" "$root/envs/$env/etc/conda/activate.d"
  cat >"$root/etc/profile.d/conda.sh" <<'EOF'
conda() {
  [ "$1" = activate ] || return 1
  case "$2" in /*) p="$2" ;; *) p="$GPU_E2E_CONDA_ROOT/envs/$2" ;; esac
  [ -d "$p" ] || { echo "EnvironmentNameNotFound: $2" >&2; return 1; }
  export CONDA_PREFIX="$p" PATH="$p/bin:$PATH"
  for f in "$p"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done
  return 0
}
EOF
  echo 'export GPU_E2E_ACTIVATED=1' >"$root/envs/$env/etc/conda/activate.d/e2e.sh"
  realpy=$(command -v python3)
  cat >"$root/envs/$env/bin/python" <<EOF
#!/bin/sh
[ "\$GPU_E2E_ACTIVATED" = 1 ] || { echo "not activated" >&2; exit 97; }
if [ "\$1" = -m ]; then
  mod="\$2"; shift 2
  case "\$mod" in
    moe_cap.systems.sglang) exec "$realpy" -u "$repo/tools/gpuserver/server.py" "\$@" ;;
    # The torch server has no /tokenize (the upstream prompt style needs the chat template):
    # exact token ids.
    moe_cap.runner.openai_api_profile) exec "$moecapd" bench --log-format json --datasets random --offline --prompt-style exact-ids "\$@" ;;
  esac
fi
exec "$realpy" "\$@"
EOF
  chmod +x "$root/envs/$env/bin/python"
  export GPU_E2E_CONDA_ROOT=$root
}

# gpu_preflight NAME: what both GPU scripts need before they start, each missing piece named.
# Sets moecapd (MOECAPD or bin/moecapd, made absolute: the env's python execs it from the cell
# directory) and out (OUTDIR or a new temp dir). Needs repo set.
gpu_preflight() {
  local name=$1
  moecapd=${MOECAPD:-$repo/bin/moecapd}
  out=${OUTDIR:-$(mktemp -d)}
  mkdir -p "$out"
  [ -x "$moecapd" ] || { echo "$name: $moecapd missing: run make build" >&2; exit 2; }
  moecapd=$(cd "$(dirname "$moecapd")" && pwd)/$(basename "$moecapd")
  command -v nvidia-smi >/dev/null || { echo "$name: no nvidia-smi: this needs a CUDA machine" >&2; exit 2; }
  python3 -c 'import torch, transformers, aiohttp; assert torch.cuda.is_available()' ||
    { echo "$name: python3 needs torch (with CUDA), transformers and aiohttp" >&2; exit 2; }
}

# write_bench_yaml FILE OUT_DEFAULT SAMPLES_DEFAULT [MODEL_ID]: the GPU scripts' fixed-length
# benchmark file, for Qwen1.5-MoE unless MODEL_ID says (IN_TOKENS, OUT_TOKENS and SAMPLES
# override the lengths and count).
write_bench_yaml() {
  cat >"$1" <<EOF
dataset_names: ["gsm8k"]
metrics: []
model_id: ${4:-Qwen/Qwen1.5-MoE-A2.7B-Chat}
fixed_length_mode: true
target_input_tokens: ${IN_TOKENS:-1024}
target_output_tokens: ${OUT_TOKENS:-$2}
num_samples: ${SAMPLES:-$3}
EOF
}
