#!/usr/bin/env python3
"""Train a small LayerSkip Llama (or its plain baseline) on the Python standard library sources.

Offline tool, never run in CI. See tools/train/README.md for the exact commands.

Steps:
  tokenizer  train a byte-level BPE tokenizer on the training split (saved to --tokenizer-dir)
  train      train LlamaForCausalLM with the LayerSkip recipe (or --baseline) and save it in
             Hugging Face format (float16 safetensors, tied embeddings)

LayerSkip recipe (Elhoushi et al. 2024), as implemented here:
  * layer dropout per sample: layer l (0-based of L) is skipped for a sample with probability
    S(t) * D(l) * p_max, D(l) = exp(l ln2/(L-1)) - 1, and S(t) = exp(t ln2/(T-1)) - 1 (the
    from-scratch curriculum; --no-time-curriculum gives S(t) = 1, the continual-pretraining form).
  * early-exit loss through the shared exit head (final norm + lm_head) after every layer,
    weighted by e(l) = e_scale * sum_{i<=l} i (l < L-1), e(L-1) = L-1 + e_scale * sum_{i<=L-2} i,
    normalized over the layers enabled at this step.
  * rotational curriculum: at step t layer l gets exit loss iff (l + t) % R == 0; the last layer
    always gets loss.
  --baseline: no layer dropout (p_max 0) and last-layer loss only; same data order and seed.
"""
import argparse
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def cmd_tokenizer(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    root = common.stdlib_root()
    files = [rel for rel, split in common.list_corpus(root) if split == "train"]
    texts = [common.read_text(root, rel) for rel in files]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=[common.BOS, common.EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(common.BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{common.BOS} $A",
            pair=f"{common.BOS} $A {common.BOS} $B",
            special_tokens=[(common.BOS, bos_id)],
        ),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=common.BOS, eos_token=common.EOS,
        model_max_length=args.max_positions,
    )
    os.makedirs(args.tokenizer_dir, exist_ok=True)
    fast.save_pretrained(args.tokenizer_dir)
    smap = os.path.join(args.tokenizer_dir, "special_tokens_map.json")
    if os.path.exists(smap):
        os.remove(smap)  # everything needed is in tokenizer_config.json
    # A tokenizer_config.json that both transformers 4.x and 5.x read (5.x writes its own
    # "TokenizersBackend" class name, which 4.x does not know).
    with open(os.path.join(args.tokenizer_dir, "tokenizer_config.json"), "w") as fh:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": common.BOS,
            "eos_token": common.EOS,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": args.max_positions,
            "added_tokens_decoder": {
                str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                for t in (common.BOS, common.EOS)
            },
        }, fh, indent=2)
    print(json.dumps({"train_files": len(files), "vocab": tok.get_vocab_size(),
                      "bos_id": bos_id, "eos_id": tok.token_to_id(common.EOS)}))


def encode_split(tok, split):
    """Token stream of one split: BOS doc EOS BOS doc EOS ... (files in sorted path order)."""
    import numpy as np
    root = common.stdlib_root()
    files = [rel for rel, s in common.list_corpus(root) if s == split]
    bos, eos = tok.token_to_id(common.BOS), tok.token_to_id(common.EOS)
    texts = [common.read_text(root, rel) for rel in files]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids = []
    for e in encs:
        ids.append(bos)
        ids.extend(e.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32), files


def build_config(args, vocab, bos_id, eos_id):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        hidden_act="silu",
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5,
        rope_theta=args.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        initializer_range=0.02,
    )


def exit_weights(L, e_scale):
    w = [e_scale * sum(range(l + 1)) for l in range(L - 1)]
    w.append((L - 1) + e_scale * sum(range(L - 1)))
    return w


def cmd_train(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    tok = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(common.BOS), tok.token_to_id(common.EOS)
    t0 = time.time()
    stream, files = encode_split(tok, "train")
    print(f"train split: {len(files)} files, {len(stream)} tokens (encoded in {time.time()-t0:.1f}s)",
          flush=True)

    config = build_config(args, tok.get_vocab_size(), bos_id, eos_id)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params} ({n_params/1e6:.2f}M, tied embeddings)", flush=True)

    L = args.layers
    p_max = 0.0 if args.baseline else args.p_max
    D = [math.exp(l * math.log(2) / (L - 1)) - 1 for l in range(L)]
    ew = exit_weights(L, args.e_scale)
    T = args.steps
    B, C = args.batch, args.ctx

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warm = max(1, int(args.warmup * T))

    def lr_at(t):
        if t < warm:
            return args.lr * (t + 1) / warm
        prog = (t - warm) / max(1, T - warm)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    # Data order: a dedicated generator, identical for LayerSkip and baseline with the same seed.
    data_rng = np.random.default_rng(args.seed)
    drop_gen = torch.Generator().manual_seed(args.seed + 1)
    stream_t = torch.from_numpy(stream.astype(np.int64))
    n_windows = len(stream) - C - 1

    log = []
    t_start = time.time()
    tokens_seen = 0
    for t in range(T):
        for g in opt.param_groups:
            g["lr"] = lr_at(t)
        starts = data_rng.integers(0, n_windows, size=B)
        batch = torch.stack([stream_t[s:s + C + 1] for s in starts])
        x, y = batch[:, :-1], batch[:, 1:]

        S = 1.0 if (args.no_time_curriculum or T == 1) else math.exp(t * math.log(2) / (T - 1)) - 1
        h, pos, pe, mask = common.prepare(model, x)
        if args.baseline:
            enabled = [L - 1]
        else:
            enabled = [l for l in range(L) if (l + t) % args.rotation == 0 or l == L - 1]
        wsum = sum(ew[l] for l in enabled)
        loss = 0.0
        layer_losses = {}
        for l, layer in enumerate(model.model.layers):
            rate = S * D[l] * p_max
            if rate > 0:
                keep = torch.rand(B, generator=drop_gen) >= rate
                idx = keep.nonzero().squeeze(1)
                if idx.numel() == B:
                    h = common.layer_call(layer, h, mask, pos, pe)
                elif idx.numel() > 0:
                    sub = common.layer_call(layer, h[idx], mask, pos[idx],
                                            (pe[0][idx], pe[1][idx]))
                    h = h.index_copy(0, idx, sub)
                # else: the whole batch skips this layer
            else:
                h = common.layer_call(layer, h, mask, pos, pe)
            if l in enabled and ew[l] > 0:
                logits = common.exit_logits(model, h)
                ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
                loss = loss + (ew[l] / wsum) * ce
                layer_losses[l + 1] = ce.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        tokens_seen += B * C
        if t % args.log_every == 0 or t == T - 1:
            el = time.time() - t_start
            rec = {"step": t, "lr": round(lr_at(t), 6), "S": round(S, 4), "loss": round(loss.item(), 4),
                   "last_ce": round(layer_losses[L], 4), "exit_ce": {k: round(v, 3) for k, v in layer_losses.items()},
                   "gnorm": round(float(gn), 3), "tokens": tokens_seen, "elapsed_s": round(el, 1),
                   "tok_per_s": round(tokens_seen / el, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)

    train_s = time.time() - t_start
    os.makedirs(args.out, exist_ok=True)
    model.config.use_cache = True
    model = model.to(torch.float16 if args.dtype == "float16" else torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    # transformers 5 writes rope_parameters/dtype; also write the transformers-4 spelling
    # (rope_theta, rope_scaling, torch_dtype) so that either generation of readers finds them.
    cfg_path = os.path.join(args.out, "config.json")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    cfg.setdefault("rope_theta", args.rope_theta)
    cfg.setdefault("rope_scaling", None)
    cfg.setdefault("torch_dtype", args.dtype)
    cfg.setdefault("dtype", args.dtype)
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, do_sample=False,
                     max_new_tokens=64).save_pretrained(args.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(args.tokenizer_dir, f), "rb") as src, \
                open(os.path.join(args.out, f), "wb") as dst:
            dst.write(src.read())
    summary = {
        "args": {k: v for k, v in vars(args).items() if k != "fn"}, "params": n_params, "train_tokens_available": int(len(stream)),
        "tokens_seen": tokens_seen, "train_seconds": round(train_s, 1),
        "tok_per_s": round(tokens_seen / train_s, 1), "exit_weights": ew, "D": D, "log": log,
    }
    with open(args.log_json or os.path.join("/tmp", os.path.basename(args.out.rstrip("/")) + "_train_log.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"done: {T} steps, {tokens_seen} tokens in {train_s:.1f}s -> {args.out}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("tokenizer")
    a.add_argument("--tokenizer-dir", default="/tmp/ls_tokenizer")
    a.add_argument("--vocab-size", type=int, default=4096)
    a.add_argument("--max-positions", type=int, default=1024)
    a.set_defaults(fn=cmd_tokenizer)

    b = sub.add_parser("train")
    b.add_argument("--tokenizer-dir", default="/tmp/ls_tokenizer")
    b.add_argument("--out", required=True)
    b.add_argument("--log-json", default=None)
    b.add_argument("--seed", type=int, default=1234)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--steps", type=int, default=1000)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--ctx", type=int, default=256)
    b.add_argument("--lr", type=float, default=2e-3)
    b.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    b.add_argument("--weight-decay", type=float, default=0.1)
    b.add_argument("--clip", type=float, default=1.0)
    b.add_argument("--layers", type=int, default=8)
    b.add_argument("--hidden", type=int, default=256)
    b.add_argument("--intermediate", type=int, default=688)
    b.add_argument("--heads", type=int, default=8)
    b.add_argument("--kv-heads", type=int, default=2)
    b.add_argument("--max-positions", type=int, default=1024)
    b.add_argument("--rope-theta", type=float, default=10000.0)
    b.add_argument("--p-max", type=float, default=0.2)
    b.add_argument("--e-scale", type=float, default=1.0)
    b.add_argument("--rotation", type=int, default=2, help="R of the rotational early-exit curriculum")
    b.add_argument("--no-time-curriculum", action="store_true",
                   help="S(t)=1 (continual-pretraining form) instead of the from-scratch curriculum")
    b.add_argument("--baseline", action="store_true",
                   help="no layer dropout, last-layer loss only")
    b.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    b.add_argument("--log-every", type=int, default=25)
    b.set_defaults(fn=cmd_train)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
