#!/usr/bin/env python3
"""Evaluate LayerSkip / baseline checkpoints on the held-out split of the stdlib corpus.

For each model (loaded from its saved float16 files, computed in float32):
  * per exit layer E = 1..L: next-token accuracy and cross-entropy of the shared exit head
    (final norm + lm_head on the residual stream after layer E) over held-out windows;
  * greedy self-speculative decoding (layerskip.md), d draft tokens from layers 1..E + exit head,
    verified by the full model, longest agreeing prefix accepted + one bonus token per round:
    acceptance rate = accepted drafts / drafted tokens, for every E = 1..L-1, on fixed held-out
    prompts; d is clamped so a round never passes the token limit; no EOS stop (fixed length).
  * a greedy sample of the full model for the prompt `def fibonacci(n):`.

Exactness of the speculative simulation: with greedy decoding every accepted prefix equals the
full model's greedy continuation, and draft i of a round is computed on context = accepted
prefix + drafts 1..i-1, which is that same greedy continuation as long as the drafts before it
were accepted. Drafts after the first rejection are drafted (they count in the denominator) but
can't change the outcome. So one forward pass of the full greedy sequence, read at every layer,
gives every draft that matters, exactly. `--check` also runs the literal round-by-round
algorithm (recomputing drafts and verification without caches) and asserts identical counts.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def load(path):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    m.eval()
    return m


def heldout_data(tok, ctx, n_windows, n_prompts, prompt_len):
    import numpy as np
    root = common.stdlib_root()
    files = [rel for rel, s in common.list_corpus(root) if s == "heldout"]
    bos, eos = tok.token_to_id(common.BOS), tok.token_to_id(common.EOS)
    encs = [tok.encode(common.read_text(root, rel), add_special_tokens=False).ids for rel in files]
    stream = []
    for e in encs:
        stream += [bos] + e + [eos]
    stream = np.asarray(stream, dtype=np.int64)
    total = (len(stream) - 1) // (ctx + 1)
    # evenly spaced non-overlapping windows over the whole held-out stream
    pick = np.linspace(0, total - 1, num=min(n_windows, total)).round().astype(int)
    windows = np.stack([stream[i * (ctx + 1):(i + 1) * (ctx + 1)] for i in sorted(set(pick))])
    # prompts: prompt_len tokens from the middle of held-out files (deterministic)
    cands = [(rel, e) for rel, e in zip(files, encs) if len(e) >= 4 * prompt_len]
    step = max(1, len(cands) // n_prompts)
    prompts, prompt_files = [], []
    for rel, e in cands[::step][:n_prompts]:
        mid = len(e) // 2
        prompts.append(e[mid:mid + prompt_len])
        prompt_files.append(rel)
    return files, stream, windows, prompts, prompt_files


def per_layer_metrics(model, windows, batch=16):
    import torch
    import torch.nn.functional as F
    L = model.config.num_hidden_layers
    correct = [0] * L
    nll = [0.0] * L
    count = 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            w = torch.from_numpy(windows[i:i + batch])
            x, y = w[:, :-1], w[:, 1:]
            hs = common.all_layer_hidden(model, x)
            for l, h in enumerate(hs):
                logits = common.exit_logits(model, h).float()
                nll[l] += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                          reduction="sum").item()
                correct[l] += (logits.argmax(-1) == y).sum().item()
            count += y.numel()
    return [{"layer": l + 1, "acc": correct[l] / count, "ce": nll[l] / count} for l in range(L)], count


def greedy_full(model, prompts, n_new):
    """Batched greedy decoding with the full model (same-length prompts, no caches)."""
    import torch
    seq = torch.tensor(prompts, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n_new):
            h = common.all_layer_hidden(model, seq)[-1]
            nxt = common.exit_logits(model, h[:, -1]).argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    return seq


def spec_counts(draft_pred, seq, plen, n_new, d):
    """Greedy self-speculative rounds for one sequence and one exit layer.
    draft_pred[j] = exit-layer argmax after position j of the full greedy sequence `seq`."""
    n = plen  # number of tokens accepted so far (prompt + generated)
    drafted = accepted = rounds = 0
    while n < plen + n_new:
        remaining = plen + n_new - n
        dd = min(d, remaining - 1)  # a round yields accepted + 1 <= remaining tokens
        a = 0
        while a < dd and draft_pred[n - 1 + a] == seq[n + a]:
            a += 1
        drafted += dd
        accepted += a
        rounds += 1
        n += a + 1  # accepted drafts + bonus token from the full model
    return drafted, accepted, rounds


def spec_literal(model, prompt, E, d, n_new):
    """The literal algorithm (no caches): draft with layers 1..E, verify with the full model."""
    import torch
    seq = list(prompt)
    drafted = accepted = rounds = 0
    with torch.no_grad():
        while len(seq) < len(prompt) + n_new:
            remaining = len(prompt) + n_new - len(seq)
            dd = min(d, remaining - 1)
            drafts = []
            for _ in range(dd):
                h = common.all_layer_hidden(model, torch.tensor([seq + drafts]), upto=E)[-1]
                drafts.append(int(common.exit_logits(model, h[0, -1]).argmax()))
            h = common.all_layer_hidden(model, torch.tensor([seq + drafts]))[-1]
            p = common.exit_logits(model, h[0, len(seq) - 1:]).argmax(-1).tolist()  # dd+1 preds
            a = 0
            while a < dd and drafts[a] == p[a]:
                a += 1
            seq += drafts[:a] + [p[a]]
            drafted += dd
            accepted += a
            rounds += 1
    return drafted, accepted, rounds, seq


def spec_eval(model, prompts, n_new, d, check=False):
    import torch
    L = model.config.num_hidden_layers
    plen = len(prompts[0])
    seq = greedy_full(model, prompts, n_new)
    with torch.no_grad():
        hs = common.all_layer_hidden(model, seq)
        preds = [common.exit_logits(model, h).argmax(-1) for h in hs]  # [B, T] per layer
    rows = []
    for E in range(1, L):
        D = A = R = 0
        for b in range(len(prompts)):
            dr, ac, ro = spec_counts(preds[E - 1][b].tolist(), seq[b].tolist(), plen, n_new, d)
            D, A, R = D + dr, A + ac, R + ro
        rows.append({"exit_layer": E, "acceptance": A / D, "drafted": D, "accepted": A, "rounds": R,
                     "tokens_per_round": len(prompts) * n_new / R})
    checked = []
    if check:
        for E in sorted({1, L // 2, L - 1}):
            for b in range(min(2, len(prompts))):
                dr, ac, ro, s = spec_literal(model, prompts[b], E, d, n_new)
                ref = spec_counts(preds[E - 1][b].tolist(), seq[b].tolist(), plen, n_new, d)
                checked.append({"exit_layer": E, "prompt": b, "drafted": dr, "accepted": ac,
                                "rounds": ro, "counts_match": (dr, ac, ro) == ref,
                                "output_equals_greedy": s == seq[b].tolist()})
    return rows, checked, seq


def sample(model, tok_fast, prompt, n_new):
    import torch
    ids = tok_fast(prompt)["input_ids"]
    seq = list(ids)
    eos = tok_fast.eos_token_id
    with torch.no_grad():
        for _ in range(n_new):
            h = common.all_layer_hidden(model, torch.tensor([seq]))[-1]
            nxt = int(common.exit_logits(model, h[0, -1]).argmax())
            seq.append(nxt)
            if nxt == eos:
                break
        # cross-check against transformers' own generate (KV-cached path)
        ref = model.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)[0].tolist()
    return tok_fast.decode(seq[len(ids):]), seq, ref == seq


def head_layer_equiv(path):
    """Exit head (lm_head) weight count in units of one decoder layer's weight count."""
    with open(os.path.join(path, "config.json")) as fh:
        c = json.load(fh)
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c.get("head_dim") or H // c["num_attention_heads"]
    q = c["num_attention_heads"] * hd
    kv = c["num_key_value_heads"] * hd
    layer = H * q + 2 * H * kv + q * H + 3 * H * I + 2 * H
    return V * H / layer


def est_speedup(row, L, h, n_tokens):
    """Estimated greedy speedup under a weight-traffic cost model (batch 1 is memory bound, so a
    pass over k positions costs about as much as over one): autoregressive = L + h per token;
    a round = drafted * (E + h) (draft passes through layers 1..E + exit head) + L + h (the last
    draft through layers 1..E, layers E+1..L over all positions, one exit head pass)."""
    E = row["exit_layer"]
    return n_tokens * (L + h) / (row["drafted"] * (E + h) + row["rounds"] * (L + h))


def md_tables(res):
    names = list(res["models"].keys())
    out = ["| exit layer | " + " | ".join(f"{n} acc | {n} CE" for n in names) + " |",
           "|---:|" + "---:|---:|" * len(names)]
    L = len(res["models"][names[0]]["per_layer"])
    for l in range(L):
        cells = []
        for n in names:
            r = res["models"][n]["per_layer"][l]
            cells.append(f"{100 * r['acc']:.2f}% | {r['ce']:.3f}")
        out.append(f"| {l + 1} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| exit layer E | " + " | ".join(
        f"{n} acceptance | {n} tokens/round | {n} est. speedup" for n in names) + " |")
    out.append("|---:|" + "---:|---:|---:|" * len(names))
    a = res["args"]
    n_tok = a["prompts"] * a["new_tokens"]
    for i in range(L - 1):
        cells = []
        for n in names:
            m = res["models"][n]
            r = m["spec"][i]
            sp = est_speedup(r, L, head_layer_equiv(m["path"]), n_tok)
            cells.append(f"{100 * r['acceptance']:.1f}% | {r['tokens_per_round']:.2f} | {sp:.2f}x")
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=path pairs, e.g. layerskip=src/default_model")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--draft", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="also run the literal speculative algorithm")
    ap.add_argument("--sample-prompt", default="def fibonacci(n):")
    ap.add_argument("--out-json", default="/tmp/layerskip_eval.json")
    args = ap.parse_args()

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    res = {"args": vars(args), "models": {}}
    for spec in args.models:
        name, path = spec.split("=", 1)
        t0 = time.time()
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        tok_fast = AutoTokenizer.from_pretrained(path)
        files, stream, windows, prompts, pfiles = heldout_data(
            tok, args.ctx, args.windows, args.prompts, args.prompt_len)
        model = load(path)
        # sanity: manual forward == transformers forward
        with torch.no_grad():
            x = torch.from_numpy(windows[:2, :-1])
            ref = model(x).logits
            mine = common.exit_logits(model, common.all_layer_hidden(model, x)[-1])
            max_diff = (ref - mine).abs().max().item()
        assert max_diff < 1e-3, max_diff
        per_layer, n_tok = per_layer_metrics(model, windows)
        spec, checked, _ = spec_eval(model, prompts, args.new_tokens, args.draft, args.check)
        text, ids, gen_match = sample(model, tok_fast, args.sample_prompt, args.new_tokens)
        r = {
            "path": path, "heldout_files": len(files), "heldout_tokens": int(len(stream)),
            "eval_tokens": n_tok, "per_layer": per_layer, "spec": spec, "spec_literal_check": checked,
            "prompt_files": pfiles, "sample": text, "sample_matches_hf_generate": gen_match,
            "manual_vs_hf_max_abs_diff": max_diff, "seconds": round(time.time() - t0, 1),
        }
        res["models"][name] = r
        print(json.dumps({k: v for k, v in r.items() if k != "prompt_files"}, indent=1), flush=True)
    with open(args.out_json, "w") as fh:
        json.dump(res, fh, indent=1)
    print(md_tables(res))
    for n, r in res["models"].items():
        print(f"\n--- {n} sample ---\n{args.sample_prompt}{r['sample']}")


if __name__ == "__main__":
    main()
