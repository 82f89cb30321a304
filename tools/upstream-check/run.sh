#!/usr/bin/env bash
# Upstream check: the upstream MoE-CAP runner, run from its own source, as the client of
# `moecapd launch-and-bench` cells, and moecapd's manifest compared with the runner's files
# and with the wall clock. Two cells: the sim backend (no GPU needed for the server; the
# runner itself calls torch.cuda.synchronize, so a CUDA machine is needed for the client) and,
# when a GPU is there, tools/gpuserver (a real forward pass per request on the GPU, with the
# SGLang wrapper's record file).
#
#   tools/upstream-check/run.sh UPSTREAM_SRC [OUT]
#
# UPSTREAM_SRC is a checkout of Auto-CAP/MoE-CAP (the directory holding moe_cap/); nothing of
# it is copied into this project. Offline: the model's config.json and a byte-level tokenizer
# go into a private HF cache (make_hf_cache.py), and shims/ stands in for `datasets` and
# GPUtil, which the GPU machine lacks. Needs python3 with torch (CUDA), transformers,
# tokenizers, aiohttp, pandas, requests, tqdm, PyYAML; bin/moecapd (make build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
src=$(cd "${1:?usage: run.sh UPSTREAM_SRC [OUT]}" && pwd)
out=${2:-$(mktemp -d)}
mkdir -p "$out"
moecapd=${MOECAPD:-$repo/bin/moecapd}
[ -d "$src/moe_cap" ] || { echo "upstream-check: $src has no moe_cap/" >&2; exit 2; }
[ -x "$moecapd" ] || { echo "upstream-check: $moecapd missing: run make build" >&2; exit 2; }
realpy=$(command -v python3)
"$realpy" -c 'import torch, transformers, tokenizers, aiohttp, pandas, requests, tqdm, yaml' ||
  { echo "upstream-check: python3 lacks one of torch transformers tokenizers aiohttp pandas requests tqdm yaml" >&2; exit 2; }
model=Qwen/Qwen1.5-MoE-A2.7B-Chat
hf=$out/hf
"$realpy" "$here/make_hf_cache.py" "$hf" "$model" "$here/qwen1_5_moe_chat.config.json"

root=$out/conda
env=sglang
mkdir -p "$root/etc/profile.d" "$root/envs/$env/bin" "$root/envs/$env/etc/conda/activate.d"
cat >"$root/etc/profile.d/conda.sh" <<'EOS'
conda() {
  [ "$1" = activate ] || return 1
  case "$2" in /*) p="$2" ;; *) p="$UPSTREAM_CHECK_CONDA_ROOT/envs/$2" ;; esac
  [ -d "$p" ] || { echo "EnvironmentNameNotFound: $2" >&2; return 1; }
  export CONDA_PREFIX="$p" PATH="$p/bin:$PATH"
  for f in "$p"/etc/conda/activate.d/*.sh; do [ -f "$f" ] && . "$f"; done
  return 0
}
EOS
cat >"$root/envs/$env/etc/conda/activate.d/upstream.sh" <<EOS
export PYTHONPATH="$src:$here/shims\${PYTHONPATH:+:\$PYTHONPATH}" HF_HOME="$hf" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
EOS
cat >"$root/envs/$env/bin/python" <<EOS
#!/bin/sh
if [ "\$1" = -m ] && [ "\$2" = moe_cap.systems.sglang ]; then
  shift 2
  exec "$realpy" -u "$repo/tools/gpuserver/server.py" "\$@"
fi
exec "$realpy" "\$@"
EOS
chmod +x "$root/envs/$env/bin/python"
export UPSTREAM_CHECK_CONDA_ROOT=$root

cfg=$out/upstream_check.yaml
cat >"$cfg" <<EOS
dataset_names: ["gsm8k"]
metrics: []
model_id: $model
fixed_length_mode: true
target_input_tokens: ${IN_TOKENS:-512}
target_output_tokens: ${OUT_TOKENS:-64}
num_samples: ${SAMPLES:-16}
EOS

rc_sim=0 rc_gpu=skipped
echo "== sim cell, upstream runner as the client"
"$moecapd" launch-and-bench --backend sim --sim-hardware H200 --client moe-cap --config "$cfg" \
  --batch-size "${BATCH:-8}" --conda-root "$root" --env "$env" --port 0 --results "$out/results-sim" \
  --grace 10s --log-format console || rc_sim=$?
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "== GPU cell (tools/gpuserver), upstream runner as the client"
  rc_gpu=0
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$moecapd" launch-and-bench --backend sglang --client moe-cap \
    --config "$cfg" --batch-size "${BATCH:-8}" --conda-root "$root" --env "$env" --port 0 \
    --results "$out/results-gpu" --require-gpu --grace 20s --log-format console || rc_gpu=$?
fi
echo "== compare (sim exit $rc_sim, gpu exit $rc_gpu)"
"$realpy" "$here/compare.py" "$out" "$rc_sim" "$rc_gpu"
