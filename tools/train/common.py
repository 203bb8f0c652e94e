"""Shared helpers for tools/train/train.py and tools/train/eval.py.

Corpus: the Python standard library's own .py sources (sysconfig stdlib path), with a
file-level held-out split decided by a hash of each file's path relative to the stdlib root.
"""
import hashlib
import os
import sysconfig

# Directories (relative path components) that are not part of the corpus:
# third-party packages, test suites, machine-generated tables.
SKIP_DIRS = {
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
    "encodings", "pydoc_data", "turtledemo",
}
SKIP_PREFIXES = ("config-", "lib-dynload")
HELDOUT_PERCENT = 5

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"


def stdlib_root():
    return sysconfig.get_paths()["stdlib"]


def is_heldout(rel):
    h = hashlib.sha1(rel.encode("utf-8")).digest()
    return int.from_bytes(h[:4], "little") % 100 < HELDOUT_PERCENT


def list_corpus(root=None):
    """Return sorted list of (relpath, split) with split in {"train", "heldout"}."""
    root = root or stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP_DIRS and not d.startswith(SKIP_PREFIXES)
        )
        for f in sorted(filenames):
            if not f.endswith(".py") or f.startswith("_sysconfigdata"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            out.append((rel, "heldout" if is_heldout(rel) else "train"))
    out.sort()
    return out


def read_text(root, rel):
    with open(os.path.join(root, rel), "rb") as fh:
        return fh.read().decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# Manual forward over model.model.layers (needed to skip layers and read every layer's output).

def causal_mask(T, dtype, device):
    import torch
    m = torch.full((T, T), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return m[None, None]


def layer_call(layer, h, mask, pos, pe):
    out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
    return out[0] if isinstance(out, tuple) else out


def prepare(model, input_ids):
    """Embeddings, position ids, rotary (cos, sin) and the attention mask for a full causal pass."""
    import torch
    B, T = input_ids.shape
    h = model.model.embed_tokens(input_ids)
    pos = torch.arange(T, device=input_ids.device)[None].expand(B, T)
    pe = model.model.rotary_emb(h, pos)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        mask = None  # sdpa path uses is_causal=True when no mask is given
    else:
        mask = causal_mask(T, h.dtype, h.device)
    return h, pos, pe, mask


def exit_logits(model, h):
    """The shared exit head: final RMSNorm + (tied) lm_head."""
    return model.lm_head(model.model.norm(h))


def all_layer_hidden(model, input_ids, upto=None):
    """Residual stream after each decoder layer 1..upto (list of [B,T,H]); no dropout."""
    h, pos, pe, mask = prepare(model, input_ids)
    outs = []
    layers = model.model.layers if upto is None else model.model.layers[:upto]
    for layer in layers:
        h = layer_call(layer, h, mask, pos, pe)
        outs.append(h)
    return outs
