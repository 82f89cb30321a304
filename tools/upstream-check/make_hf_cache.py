#!/usr/bin/env python3
"""Build an offline Hugging Face cache entry for one model id: config.json (given) and a
byte-level tokenizer (one token per UTF-8 byte, as tools/gpuserver encodes text) with a ChatML
chat template, so AutoConfig/AutoTokenizer.from_pretrained(model_id) work with
HF_HUB_OFFLINE=1 and no download.

  make_hf_cache.py HF_HOME MODEL_ID CONFIG_JSON
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def main(hf_home, model_id, config_path):
    org, name = model_id.split("/", 1)
    repo = os.path.join(hf_home, "hub", "models--%s--%s" % (org, name))
    snap = os.path.join(repo, "snapshots", "0" * 40)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0" * 40)
    with open(config_path) as f:
        cfg = json.load(f)
    with open(os.path.join(snap, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for i, ch in enumerate(sorted(alphabet)):
        vocab[ch] = 3 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    fast.save_pretrained(snap)
    print("hf cache:", snap)


if __name__ == "__main__":
    main(*sys.argv[1:4])
