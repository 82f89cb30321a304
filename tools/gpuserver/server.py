#!/usr/bin/env python3
"""GPU-backed test server for moecapd's GPU end-to-end test.

A random-weight Qwen2-MoE model (transformers' Qwen2MoeForCausalLM, a few layers, no
download: the weights are initialised in place) is held on the GPU(s) and serves the API of
moecapd's simulated server with real forward passes, so telemetry, energy, per-process GPU
memory and teardown can be checked on real hardware without SGLang or vLLM.

  python tools/gpuserver/server.py --model-path moecap/random-qwen2moe --port 30000 \
      --host 127.0.0.1 --tp-size 2 --max-running-requests 32

It accepts the sglang wrapper's flags (unknown ones are ignored, so the launcher's full
argv works) and vLLM's names for the same things. Endpoints: GET /health, GET /v1/models,
GET /get_model_info, POST /v1/completions (streaming SSE and not, with usage, ignore_eos,
prompt as text or token ids), and the SGLang wrapper's expert-distribution endpoints with its
record semantics: every forward pass since start-up is kept (warm-up and readiness probes
included, never cleared), and /dump_expert_distribution_record writes them as JSON lines to
$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR/<model path>/expert_distribution_record.jsonl
(~/expert_records when unset) with the wrapper's fields: forward_pass_id, batch_size, latency,
seq_lens_sum (the batch's running context), forward_mode, expert_activation (distinct experts
the router picked per MoE layer, measured with hooks), gpu_num, gpu_raw_type, per_req_info
(prefill) or req_ids (decode), scheduled_tokens. That lets the upstream MoE-CAP runner run
against this server unchanged.

--tp-size N puts one full replica on each of N GPUs and spreads requests over them: every
GPU holds memory and does work, which is what the test checks. It is not tensor parallelism
(no collective communication). With --worker-processes each replica runs in a child process,
as SGLang's and vLLM's workers do, so the server's GPU memory is held by its children;
otherwise everything runs in this one process (threads).

Tokenization is byte-level (one token per UTF-8 byte of a text prompt) because no tokenizer
is downloaded; token-id prompts are used as given.

Requires torch, transformers (with Qwen2MoE, >= 4.40) and aiohttp. No internet.
"""

import argparse
import asyncio
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid

READY_LINE = "The server is fired up and ready to roll!"
PAD_ID = 0
EOS_ID = 1
BYTE_OFFSET = 3  # ids 3..258 are the bytes of a text prompt


def log(*a):
    # Unbuffered, timestamped lines: the supervisor pushes its load deadline back on output.
    print(time.strftime("%H:%M:%S"), "[gpuserver]", *a, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", "--model", dest="model_path", default="moecap/random-qwen2moe",
                   help="name served in /v1/models (nothing is loaded from it)")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1)
    p.add_argument("--max-running-requests", "--max-num-seqs", dest="max_running", type=int, default=32)
    # Model shape: small, but big enough to show in GPU memory and power.
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--expert-ffn", type=int, default=1408)
    p.add_argument("--shared-ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument("--kv-heads", type=int, default=0, help="key/value heads (0: --heads)")
    p.add_argument("--dense-ffn", type=int, default=0, help="intermediate_size (0: --shared-ffn)")
    p.add_argument("--config-json", default="",
                   help="a Hugging Face config.json of a Qwen2-MoE (qwen2_moe) or DeepSeek-V2 (deepseek_v2, MLA + "
                        "MoE) model (tools/gpuserver/configs/): build the model's real architecture at real size "
                        "from it (random weights) instead of the small default shape, so the cell's CAP numbers "
                        "describe what ran")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oom-at-start-rank", type=int, default=-1,
                   help="this rank asks CUDA for more memory than its GPU has right after loading "
                        "(a real torch.cuda.OutOfMemoryError, for the OOM classification test)")
    p.add_argument("--worker-processes", action="store_true",
                   help="run each replica in a child process (like SGLang/vLLM workers)")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        log("ignoring flags:", " ".join(unknown))
    if args.config_json:
        apply_config_json(p, args)
    if args.tp_size < 1:
        p.error("--tp-size must be at least 1")
    if args.max_running < 1:
        p.error("--max-running-requests must be at least 1")
    if args.top_k > args.experts:
        p.error("--top-k cannot exceed --experts")
    if not args.config_json:
        args.arch, args.hf_config = "qwen2_moe", None
    return args


# The architectures --config-json can build, by config.json model_type.
ARCHS = ("qwen2_moe", "deepseek_v2")


def apply_config_json(p, args):
    """Take the model from a Hugging Face config.json: Qwen2-MoE (transformers'
    Qwen2MoeForCausalLM) or DeepSeek-V2 (DeepseekV2ForCausalLM: MLA attention, shared and
    routed experts, the first first_k_dense_replace layers dense)."""
    try:
        with open(args.config_json) as f:
            c = json.load(f)
    except (OSError, ValueError) as e:
        p.error(f"--config-json {args.config_json}: {e}")
    mt = c.get("model_type")
    if mt not in ARCHS:
        p.error(f"--config-json {args.config_json}: model_type {mt!r}; the test server builds {', '.join(ARCHS)}")
    args.arch, args.hf_config = mt, c
    try:
        args.layers = int(c["num_hidden_layers"])
        args.hidden = int(c["hidden_size"])
        args.heads = int(c["num_attention_heads"])
        args.kv_heads = int(c.get("num_key_value_heads", args.heads))
        args.top_k = int(c["num_experts_per_tok"])
        args.expert_ffn = int(c["moe_intermediate_size"])
        args.dense_ffn = int(c["intermediate_size"])
        args.vocab = int(c["vocab_size"])
        if mt == "qwen2_moe":
            if c.get("decoder_sparse_step", 1) != 1 or c.get("mlp_only_layers"):
                p.error(f"--config-json {args.config_json}: dense layers (decoder_sparse_step/mlp_only_layers) "
                        "are not supported for qwen2_moe by the test server")
            args.experts = int(c["num_experts"])
            args.shared_ffn = int(c["shared_expert_intermediate_size"])
        else:
            args.experts = int(c["n_routed_experts"])
            args.shared_ffn = int(c["moe_intermediate_size"]) * int(c.get("n_shared_experts") or 0)
            if int(c.get("moe_layer_freq", 1)) != 1:
                p.error(f"--config-json {args.config_json}: moe_layer_freq {c.get('moe_layer_freq')} is not supported")
    except (KeyError, TypeError, ValueError) as e:
        p.error(f"--config-json {args.config_json}: missing or bad field {e}")
    if args.vocab <= BYTE_OFFSET + 256:
        p.error(f"--config-json {args.config_json}: vocab_size {args.vocab} too small for byte tokens")


# ---------------------------------------------------------------------------------------
# Worker: one model replica on one GPU. The same function runs in a thread or in a child
# process; it talks only through the two queues.
#   in:  {"id", "ids", "max_tokens", "ignore_eos", "temperature"}  or None to stop
#   out: ("ready", rank, info) | ("error", rank, text) | ("step", rank, [(id, tok, finish)])
# ---------------------------------------------------------------------------------------

def model_config(args):
    """The transformers config of the model to build: the small default Qwen2-MoE shape, or
    the architecture --config-json names with its published values (token ids are the test
    server's own: it has no tokenizer)."""
    ids = {"pad_token_id": PAD_ID, "eos_token_id": EOS_ID, "bos_token_id": EOS_ID, "use_cache": True,
           "tie_word_embeddings": False}
    if args.arch == "deepseek_v2":
        try:
            from transformers import DeepseekV2Config
        except ImportError as e:
            raise RuntimeError("this transformers has no DeepseekV2 (deepseek_v2 needs transformers >= 4.57): "
                               f"{e}") from e
        skip = {"architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "model_type"}
        kw = {k: v for k, v in args.hf_config.items() if k not in skip}
        kw.update(ids)
        try:
            return DeepseekV2Config(**kw)
        except (TypeError, ValueError, KeyError) as e:
            # A transformers that cannot take the published rope scaling (YaRN) builds the same
            # weights and the same work without it.
            log(f"DeepseekV2Config refused the published rope scaling ({e}); building with plain RoPE")
            kw.pop("rope_scaling", None)
            return DeepseekV2Config(**kw)
    from transformers import Qwen2MoeConfig
    return Qwen2MoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.dense_ffn or args.shared_ffn,
        moe_intermediate_size=args.expert_ffn,
        shared_expert_intermediate_size=args.shared_ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=args.max_model_len,
        output_router_logits=False,
        **ids,
    )


def build_model(args, device):
    import torch

    dtype = getattr(torch, args.dtype)
    cfg = model_config(args)
    try:
        return build_from(cfg, args, device, dtype)
    except (TypeError, ValueError, KeyError) as e:
        if args.arch != "deepseek_v2" or "rope_scaling" not in (args.hf_config or {}):
            raise
        # The published YaRN scaling changes no weight and no work; a transformers whose rope
        # code cannot take it builds the same model with plain RoPE.
        log(f"building with the published rope scaling failed ({type(e).__name__}: {e}); building with plain RoPE")
        args.hf_config = {k: v for k, v in args.hf_config.items() if k != "rope_scaling"}
        return build_from(model_config(args), args, device, dtype)


def build_from(cfg, args, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    # Build directly on the GPU: random init there takes seconds, on the CPU much longer.
    with torch.device(device):
        # transformers 5 names it dtype, 4.x torch_dtype; older ones lack attn_implementation.
        model = None
        for kw in ({"dtype": dtype, "attn_implementation": "sdpa"},
                   {"torch_dtype": dtype, "attn_implementation": "sdpa"},
                   {"torch_dtype": dtype}):
            try:
                model = AutoModelForCausalLM.from_config(cfg, **kw)
                break
            except (TypeError, ValueError):
                continue
        if model is None:
            model = AutoModelForCausalLM.from_config(cfg)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model


class Replica:
    def __init__(self, args, rank):
        import torch

        self.torch = torch
        self.args = args
        self.rank = rank
        n = torch.cuda.device_count()
        if n == 0:
            raise RuntimeError("no CUDA device visible (check CUDA_VISIBLE_DEVICES and the driver)")
        if rank >= n:
            raise RuntimeError(f"--tp-size {args.tp_size} needs {args.tp_size} GPUs but only {n} are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")
        self.device = torch.device("cuda", rank)
        torch.cuda.set_device(self.device)
        # cuDNN's SDPA builds a new graph for every new KV length, ~16 ms of CPU per layer
        # per decode step (measured on H100, torch 2.11): decode would be CPU bound at
        # ~75 ms/step. The memory-efficient kernel has no such cost and takes the padding mask.
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.model = build_model(args, self.device)
        self.params = sum(p.numel() for p in self.model.parameters())
        # Expert activation, as the SGLang wrapper records it: distinct experts the router
        # picked in each MoE layer during one pass, summed over MoE layers and divided by all
        # layers (dense ones included, as SGLang averages it). Summed on the GPU and read once
        # per pass (no extra synchronisation per layer).
        self.active = torch.zeros((), dtype=torch.float32, device=self.device)
        self.layers = args.layers
        k, e = args.top_k, args.experts

        def count(idx):
            self.active += (torch.bincount(idx.flatten().long(), minlength=e) > 0).sum()

        # transformers 5's experts modules take (hidden, top_k_index, top_k_weights) (DeepSeek-V2's
        # router is no module call, so only the experts see the choice); older Qwen2-MoE
        # routers are an nn.Linear "mlp.gate" whose logits the top-k is taken from.
        experts = [m for n, m in self.model.named_modules() if n.endswith("mlp.experts") and not isinstance(m, torch.nn.ModuleList)]
        self.moe_layers = len(experts)
        if experts:
            def pre(_mod, a, kw):
                idx = [t for t in list(a[1:]) + [kw.get("top_k_index")]
                       if isinstance(t, torch.Tensor) and not t.is_floating_point()]
                if idx:
                    count(idx[0])
            for m in experts:
                m.register_forward_pre_hook(pre, with_kwargs=True)
        else:
            gates = [m for n, m in self.model.named_modules() if n.endswith("mlp.gate")]
            self.moe_layers = len(gates)

            def hook(_mod, _inp, out):
                logits = out[0] if isinstance(out, tuple) else out
                count(logits.reshape(-1, logits.shape[-1]).topk(k, dim=-1).indices)
            for g in gates:
                g.register_forward_hook(hook)
        if self.moe_layers == 0:
            raise RuntimeError("found no MoE layer to measure expert activation on (transformers changed its module names?)")
        self.gpu_name = torch.cuda.get_device_name(self.device)
        self.verbose = False  # the warm-up batch is not worth a line

    def forward(self, input_ids, attn, pos, past):
        # The base model then lm_head on the last position only: full-sequence logits of a
        # batch of long prompts would take gigabytes (B × L × vocab).
        out = self.model.model(input_ids=input_ids, attention_mask=attn, position_ids=pos,
                               past_key_values=past, use_cache=True)
        logits = self.model.lm_head(out.last_hidden_state[:, -1, :]).float()
        return logits, out.past_key_values

    def pick(self, logits, temps):
        torch = self.torch
        greedy = logits.argmax(dim=-1)
        if all(t <= 0 for t in temps):
            return greedy
        t = torch.tensor([max(x, 1e-5) for x in temps], device=logits.device).unsqueeze(1)
        sampled = torch.multinomial(torch.softmax(logits / t, dim=-1), 1).squeeze(1)
        use = torch.tensor([x > 0 for x in temps], device=logits.device)
        return torch.where(use, sampled, greedy)

    def pass_record(self, mode, reqs, ctx_lens, latency, done):
        act = float(self.active.item()) / max(1, self.layers)
        self.active.zero_()
        live = [i for i in range(len(reqs)) if not done[i]]
        rec = {"batch_size": len(live), "latency": latency,
               "seq_lens_sum": int(sum(ctx_lens[i] for i in live)), "forward_mode": mode,
               "expert_activation": act, "gpu_num": self.args.tp_size, "gpu_raw_type": self.gpu_name}
        if mode == "prefill":
            rec["per_req_info"] = [{"req_id": reqs[i]["rid"], "extend_len": ctx_lens[i], "total_len": ctx_lens[i],
                                    "prompt_len": ctx_lens[i], "orig_len": ctx_lens[i], "is_last_chunk": True}
                                   for i in live]
            rec["scheduled_tokens"] = int(sum(ctx_lens[i] for i in live))
        else:
            rec["req_ids"] = [reqs[i]["rid"] for i in live]
            rec["scheduled_tokens"] = len(live)
        return rec

    def run_batch(self, reqs, emit, record=None):
        """Static batch: left-padded prefill, then decode until every request finished.
        record(rec) gets one wrapper-shaped record per forward pass."""
        torch = self.torch
        dev = self.device
        b = len(reqs)
        longest = max(len(r["ids"]) for r in reqs)
        input_ids = torch.full((b, longest), PAD_ID, dtype=torch.long)
        attn = torch.zeros((b, longest), dtype=torch.long)
        for i, r in enumerate(reqs):
            n = len(r["ids"])
            input_ids[i, longest - n:] = torch.tensor(r["ids"], dtype=torch.long)
            attn[i, longest - n:] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        temps = [float(r.get("temperature") or 0.0) for r in reqs]
        done = [False] * b
        produced = [0] * b
        ctx = [len(r["ids"]) for r in reqs]
        t0 = time.perf_counter()
        steps = 0
        with torch.inference_mode():
            self.active.zero_()
            logits, past = self.forward(input_ids, attn, pos, None)
            t_prefill = None
            t_pass = t0
            while True:
                nxt = self.pick(logits, temps)
                toks = nxt.tolist()  # one sync per step; streaming needs the tokens anyway
                now = time.perf_counter()
                if record is not None:
                    record(self.pass_record("prefill" if t_prefill is None else "decode", reqs, ctx, now - t_pass, done))
                if t_prefill is None:
                    t_prefill = now - t0
                else:
                    ctx = [c + 1 for c in ctx]
                steps += 1
                events = []
                for i, r in enumerate(reqs):
                    if done[i]:
                        continue
                    produced[i] += 1
                    finish = None
                    if toks[i] == EOS_ID and not r.get("ignore_eos"):
                        finish = "stop"
                    elif produced[i] >= r["max_tokens"]:
                        finish = "length"
                    if finish:
                        done[i] = True
                    events.append((r["id"], toks[i], finish))
                emit(events)
                if all(done):
                    if self.verbose:
                        dt = time.perf_counter() - t0 - t_prefill
                        log(f"replica {self.rank}: batch of {b} ({longest} tokens): prefill {t_prefill * 1e3:.0f} ms, "
                            f"{steps - 1} decode steps at {dt / max(1, steps - 1) * 1e3:.1f} ms/step")
                    return
                attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=dev)], dim=1)
                pos = pos[:, -1:] + 1
                t_pass = time.perf_counter()
                logits, past = self.forward(nxt.unsqueeze(1), attn, pos, past)

    def warmup(self):
        self.run_batch([{"id": "warmup", "rid": -1, "ids": list(range(BYTE_OFFSET, BYTE_OFFSET + 16)),
                         "max_tokens": 2, "ignore_eos": True}], lambda ev: None, self.warm_record)
        self.torch.cuda.synchronize(self.device)


def worker_main(args, rank, inq, outq):
    try:
        rep = Replica(args, rank)
        rep.warm_record = lambda rec: outq.put(("pass", rank, rec))
        if rank == args.oom_at_start_rank:
            free, total = rep.torch.cuda.mem_get_info(rep.device)
            log(f"replica {rank}: allocating {2 * total / 2**30:.0f} GiB on purpose (--oom-at-start-rank)")
            rep.torch.empty(2 * total, dtype=rep.torch.uint8, device=rep.device)
        rep.warmup()
        rep.verbose = True
        mem = rep.torch.cuda.memory_allocated(rep.device)
        outq.put(("ready", rank, {"device": str(rep.device), "params": rep.params, "bytes": mem,
                                  "name": rep.torch.cuda.get_device_name(rep.device), "pid": os.getpid()}))
    except Exception:  # noqa: BLE001 - reported to the parent, which exits with it
        outq.put(("error", rank, traceback.format_exc()))
        return
    max_batch = max(1, args.max_running // args.tp_size + (1 if args.max_running % args.tp_size > rank else 0))
    while True:
        item = inq.get()
        if item is None:
            return
        batch = [item]
        stop = False
        # Requests sent together by a concurrent client arrive a few ms apart (tens of ms for
        # a wave the client sends as the previous one ends): gather them into one batch
        # instead of running the first ones alone and the rest as a short batch after.
        deadline = time.monotonic() + 0.05
        while len(batch) < max_batch:
            try:
                it = inq.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if it is None:
                stop = True
                break
            batch.append(it)
        try:
            rep.run_batch(batch, lambda ev: outq.put(("step", rank, ev)), lambda rec: outq.put(("pass", rank, rec)))
        except Exception as e:  # noqa: BLE001 - fail these requests, keep serving
            msg = f"{type(e).__name__}: {e}"
            log(f"replica {rank}: batch of {len(batch)} failed: {msg}")
            if "out of memory" in str(e).lower():
                rep.torch.cuda.empty_cache()
            outq.put(("step", rank, [(r["id"], None, "error:" + msg) for r in batch]))
        if stop:
            return


# ---------------------------------------------------------------------------------------
# HTTP front end (aiohttp) in the main thread.
# ---------------------------------------------------------------------------------------

def encode_text(s):
    return [BYTE_OFFSET + b for b in s.encode("utf-8")]


def token_text(tok):
    if BYTE_OFFSET <= tok < BYTE_OFFSET + 256:
        return bytes([tok - BYTE_OFFSET]).decode("latin-1")
    return f" t{tok}"


class Server:
    def __init__(self, args):
        self.args = args
        self.streams = {}  # request id → asyncio.Queue of (tok, finish)
        self.records = []  # every forward pass since start-up, as the SGLang wrapper keeps them
        self.records_lock = threading.Lock()
        self.next_rid = 0
        self.next_replica = 0
        # /metrics (SGLang's names): tokens counted before the client can see them, so a scrape
        # right after the client's last token has them all.
        self.prompt_tokens = 0
        self.gen_tokens = 0
        self.loop = None
        self.created = int(time.time())
        if args.worker_processes:
            import multiprocessing as mp

            # spawn, not fork: CUDA cannot be used in a forked child of a CUDA process, and
            # a clean interpreter per worker is what the real servers do.
            ctx = mp.get_context("spawn")
            self.outq = ctx.Queue()
            self.inqs = [ctx.Queue() for _ in range(args.tp_size)]
            self.workers = [ctx.Process(target=worker_main, args=(args, r, self.inqs[r], self.outq),
                                        name=f"gpuserver-replica-{r}", daemon=True)
                            for r in range(args.tp_size)]
        else:
            self.outq = queue.Queue()
            self.inqs = [queue.Queue() for _ in range(args.tp_size)]
            self.workers = [threading.Thread(target=worker_main, args=(args, r, self.inqs[r], self.outq),
                                             name=f"replica-{r}", daemon=True)
                            for r in range(args.tp_size)]

    def start_workers(self):
        for w in self.workers:
            w.start()
        ready = 0
        while ready < len(self.workers):
            try:
                kind, rank, info = self.outq.get(timeout=5)
            except queue.Empty:
                dead = [w for w in self.workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"replica worker {dead[0].name} died while loading")
                log("still loading the model...")
                continue
            if kind == "error":
                raise RuntimeError(f"replica {rank} failed to load:\n{info}")
            if kind == "pass":
                self.keep_record(info)
                continue
            if kind == "ready":
                ready += 1
                log(f"replica {rank} ready on {info['device']} ({info['name']}, pid {info['pid']}): "
                    f"{info['params'] / 1e6:.0f}M parameters, {info['bytes'] / 2**30:.2f} GiB allocated")

    def dispatch(self):
        """Thread: moves worker events onto the event loop."""
        while True:
            msg = self.outq.get()
            if msg is None:
                return
            kind, _rank, payload = msg
            if kind == "step":
                self.loop.call_soon_threadsafe(self.deliver, payload)
            elif kind == "pass":
                self.keep_record(payload)
            elif kind == "error":
                log(f"replica {_rank} error: {payload}")

    def deliver(self, events):
        self.gen_tokens += sum(1 for _rid, tok, _f in events if tok is not None)
        for rid, tok, finish in events:
            q = self.streams.get(rid)
            if q is not None:  # the client may have gone away
                q.put_nowait((tok, finish))

    def keep_record(self, rec):
        with self.records_lock:
            rec["forward_pass_id"] = len(self.records)
            self.records.append(rec)

    async def dump_records(self, request):
        from aiohttp import web
        base = os.environ.get("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR") or os.path.join(os.path.expanduser("~"), "expert_records")
        path = os.path.join(os.path.abspath(base), self.args.model_path, "expert_distribution_record.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with self.records_lock:
            lines = [json.dumps(r) + "\n" for r in self.records]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
        log(f"dumped {len(lines)} pass records to {path}")
        return web.json_response({"success": True, "path": path, "records": len(lines)})

    def submit(self, req):
        self.prompt_tokens += len(req["ids"])
        req["rid"] = self.next_rid
        self.next_rid += 1
        q = asyncio.Queue()
        self.streams[req["id"]] = q
        r = self.next_replica
        self.next_replica = (r + 1) % len(self.inqs)
        self.inqs[r].put(req)
        return q

    # --- handlers ---

    async def health(self, request):
        from aiohttp import web
        return web.Response(status=200, text="")

    async def models(self, request):
        from aiohttp import web
        return web.json_response({"object": "list", "data": [{
            "id": self.args.model_path, "object": "model", "created": self.created,
            "owned_by": "moecapd-gpuserver", "root": self.args.model_path,
            "max_model_len": self.args.max_model_len}]})

    async def model_info(self, request):
        from aiohttp import web
        return web.json_response({"model_path": self.args.model_path, "tokenizer_path": None,
                                  "is_generation": True})

    async def metrics(self, request):
        """Prometheus text under SGLang's names (--enable-metrics): running requests and the
        prompt and generation token counters, for moecapd's triangulation of the client's
        output tokens."""
        from aiohttp import web
        lines = []
        for name, typ, v in (("sglang:num_running_reqs", "gauge", len(self.streams)),
                             ("sglang:prompt_tokens_total", "counter", self.prompt_tokens),
                             ("sglang:generation_tokens_total", "counter", self.gen_tokens)):
            lines += [f"# TYPE {name} {typ}", f'{name}{{model_name="{self.args.model_path}"}} {v}']
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def noop(self, request):
        from aiohttp import web
        return web.json_response({"success": True})

    def bad(self, msg, status=400):
        from aiohttp import web
        return web.json_response({"object": "error", "message": msg, "type": "BadRequestError",
                                  "code": status}, status=status)

    async def completions(self, request):
        from aiohttp import web
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.bad("request body is not JSON")
        if not isinstance(body, dict):
            return self.bad("request body must be a JSON object")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = encode_text(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if t < 0 or t >= self.args.vocab]
            if bad:
                return self.bad(f"token id {bad[0]} out of range [0, {self.args.vocab})")
        else:
            return self.bad("prompt must be a string, a list of token ids, or a list of one of those")
        if not ids:
            return self.bad("prompt is empty")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return self.bad("max_tokens must be a positive integer")
        if len(ids) + max_tokens > self.args.max_model_len:
            return self.bad(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the maximum "
                            f"context length {self.args.max_model_len}; lower max_tokens or start with a larger --max-model-len")
        temperature = body.get("temperature", 0.0)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
            return self.bad("temperature must be a non-negative number")
        rid = "cmpl-" + uuid.uuid4().hex
        model = body.get("model") or self.args.model_path
        req = {"id": rid, "ids": ids, "max_tokens": max_tokens,
               "ignore_eos": bool(body.get("ignore_eos", False)), "temperature": float(temperature)}
        q = self.submit(req)
        created = int(time.time())
        usage = lambda n: {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
        try:
            if not body.get("stream"):
                text, n, finish = [], 0, None
                while finish is None:
                    tok, finish = await q.get()
                    if tok is not None:
                        n += 1
                        text.append(token_text(tok))
                if finish.startswith("error:"):
                    return self.bad(finish[len("error:"):], status=500)
                return web.json_response({
                    "id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": finish}],
                    "usage": usage(n)})

            resp = web.StreamResponse(status=200, headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)

            async def send(obj):
                await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

            n, finish = 0, None
            while finish is None:
                tok, finish = await q.get()
                if finish is not None and finish.startswith("error:"):
                    await send({"object": "error", "message": finish[len("error:"):], "code": 500})
                    break
                n += 1
                await send({"id": rid, "object": "text_completion", "created": created, "model": model,
                            "choices": [{"index": 0, "text": token_text(tok), "logprobs": None,
                                         "finish_reason": finish}],
                            "usage": None})
            await send({"id": rid, "object": "text_completion", "created": created, "model": model,
                        "choices": [], "usage": usage(n)})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.streams.pop(rid, None)

    async def serve(self):
        from aiohttp import web

        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self.dispatch, name="dispatch", daemon=True).start()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.completions)
        for path in ("/start_expert_distribution_record", "/stop_expert_distribution_record", "/flush_cache"):
            app.router.add_route("*", path, self.noop)
        app.router.add_route("*", "/dump_expert_distribution_record", self.dump_records)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.args.host, self.args.port)
        try:
            await site.start()
        except OSError as e:
            # The launcher recognises this wording as port_in_use.
            log(f"ERROR: [Errno {e.errno}] error while attempting to bind on address "
                f"({self.args.host!r}, {self.args.port}): address already in use" if e.errno == 98 else f"ERROR: {e}")
            await runner.cleanup()
            raise SystemExit(1)
        log(f"serving {self.args.model_path} on http://{self.args.host}:{self.args.port} "
            f"({self.args.tp_size} GPU replica(s), up to {self.args.max_running} running requests)")
        print(READY_LINE, flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log("shutting down")
        await runner.cleanup()

    def shutdown(self):
        for q in self.inqs:
            q.put(None)
        for w in self.workers:
            w.join(timeout=10)
            if self.args.worker_processes and w.is_alive():
                w.terminate()
        self.outq.put(None)


def main(argv):
    args = parse_args(argv)
    log(f"building a random-weight {args.arch}: {args.layers} layers, hidden {args.hidden}, "
        f"{args.experts} experts top-{args.top_k}, {args.dtype}, {args.tp_size} replica(s)"
        f"{' in worker processes' if args.worker_processes else ''}")
    srv = Server(args)
    try:
        srv.start_workers()
        asyncio.run(srv.serve())
    except RuntimeError as e:
        log(f"ERROR: {e}")
        srv.shutdown()
        return 1
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
