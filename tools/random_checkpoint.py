"""Write a random Llama checkpoint of a real shape in Hugging Face format.

For load, memory and speed tests of the runtime at real sizes (Llama 3.2 1B, Llama 2 7B,
Llama 3 8B), where downloading the real weights is not wanted. The output directory gets
config.json, generation_config.json, a small byte-level BPE tokenizer.json, and the weights as
one model.safetensors or as shards plus model.safetensors.index.json. The values are random but
finite and of a sane size, so the runtime loads them and produces (meaningless) text.

Stdlib only, and fast: random bytes come from random.Random.randbytes, and each value's sign,
exponent and mantissa bits are then fixed with bytes.translate on the byte lanes that hold
them, which runs at C speed (about 0.5 GB/s). Tensors are streamed in 8 MiB chunks, so memory
stays small whatever the shape. The same --seed gives byte-identical files.

    python3 tools/random_checkpoint.py --shape llama-3.2-1b --dtype bf16 --out /tmp/rand-1b
    python3 tools/random_checkpoint.py --shape tiny --dtype f32 --out /tmp/rand-tiny \\
        --max-shard-bytes 4194304 --exit-layer 2 --late-scale 0
"""

import argparse
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 8 << 20  # a multiple of every dtype's width, so chunks split no value

SHAPES = {
    "tiny": dict(
        num_hidden_layers=4, hidden_size=256, intermediate_size=688, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, vocab_size=4096, tie_word_embeddings=True,
        rope_theta=500000.0, rope_scaling=None, max_position_embeddings=2048,
    ),
    "llama-3.2-1b": dict(
        num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        max_position_embeddings=131072,
    ),
    "llama-2-7b": dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
        num_key_value_heads=32, head_dim=128, vocab_size=32000, tie_word_embeddings=False,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=4096,
    ),
    "llama-3-8b": dict(
        num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        rope_theta=500000.0, rope_scaling=None, max_position_embeddings=8192,
    ),
}


@dataclass(frozen=True)
class Format:
    """An IEEE binary float format: its safetensors and torch names and its bit layout."""

    safetensors: str
    torch: str
    width: int  # bytes per value
    exponent_bits: int

    @property
    def bias(self):
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def mantissa_bits_in_top16(self):
        """Mantissa bits in the value's top 16 bits (after the sign and the exponent)."""
        return 15 - self.exponent_bits


FORMATS = {
    "bf16": Format("BF16", "bfloat16", 2, 8),
    "f16": Format("F16", "float16", 2, 5),
    "f32": Format("F32", "float32", 4, 8),
}

# Matrix weights have magnitudes in [2^-6, 2^-5) = [0.0156, 0.0313) (std about 0.024) with a
# random sign. One fixed exponent lets the tables set every exponent bit (bf16 and f32 keep the
# lowest one in the second byte), so --late-scale 2^k is an exact multiplication.
MATRIX_LOG2 = -6
# Norm weights are 1 + noise in [0, 1/16): the top 4 mantissa bits are forced to zero.
NORM_ZERO_MANTISSA_BITS = 4


def lane_tables(fmt, fixed_mask, fixed_value):
    """Translate tables that force the bits of `fixed_mask` (over a value's top 16 bits) to
    `fixed_value` and leave the other bits random, as (byte lane, table) pairs.

    Little-endian: the top 16 bits are the value's last two bytes. Every bit that decides the
    sign and the exponent lives there in all three formats, so the lower lanes stay random."""
    tables = []
    for lane, shift in ((fmt.width - 1, 8), (fmt.width - 2, 0)):
        mask = (fixed_mask >> shift) & 0xFF
        if mask:
            value = (fixed_value >> shift) & 0xFF
            tables.append((lane, bytes((b & ~mask) | value for b in range(256))))
    return tables


def matrix_tables(fmt, log2_scale):
    """Tables for matrix weights times 2^log2_scale: the exponent is fixed, sign and mantissa
    are random."""
    exponent = MATRIX_LOG2 + log2_scale + fmt.bias
    # 0 would be zero/subnormal and all ones Inf/NaN: excluding both is what keeps every value
    # finite (and the scaling exact).
    if not 0 < exponent < (1 << fmt.exponent_bits) - 1:
        raise ValueError(f"2^{log2_scale} moves {fmt.torch} weights out of the normal range")
    shift = fmt.mantissa_bits_in_top16
    exponent_mask = ((1 << fmt.exponent_bits) - 1) << shift
    return lane_tables(fmt, exponent_mask, exponent << shift)


def norm_tables(fmt):
    """Tables for RMSNorm weights: sign 0, exponent 0 (so 1.x), the top mantissa bits 0."""
    shift = fmt.mantissa_bits_in_top16
    fixed_mask = 0xFFFF & ~((1 << (shift - NORM_ZERO_MANTISSA_BITS)) - 1)
    return lane_tables(fmt, fixed_mask, fmt.bias << shift)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    tables: list | None  # None: all zeros

    @property
    def numel(self):
        return math.prod(self.shape)


def layer_tensors(layer, cfg, fmt, late):
    """One decoder layer's tensors in HF order. `late` is the log2 scale of o_proj and
    down_proj (None for zeros), or 0 for an unscaled layer."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    kv_dim = cfg["num_key_value_heads"] * cfg["head_dim"]
    weights, norm = matrix_tables(fmt, 0), norm_tables(fmt)
    output = None if late is None else matrix_tables(fmt, late)
    p = f"model.layers.{layer}."
    return [
        Tensor(p + "input_layernorm.weight", (h,), norm),
        Tensor(p + "self_attn.q_proj.weight", (q_dim, h), weights),
        Tensor(p + "self_attn.k_proj.weight", (kv_dim, h), weights),
        Tensor(p + "self_attn.v_proj.weight", (kv_dim, h), weights),
        Tensor(p + "self_attn.o_proj.weight", (h, q_dim), output),
        Tensor(p + "post_attention_layernorm.weight", (h,), norm),
        Tensor(p + "mlp.gate_proj.weight", (inter, h), weights),
        Tensor(p + "mlp.up_proj.weight", (inter, h), weights),
        Tensor(p + "mlp.down_proj.weight", (h, inter), output),
    ]


def model_tensors(cfg, fmt, exit_layer, late_log2):
    """All tensors in the usual HF order. Layers from `exit_layer` on (0-based) get o_proj and
    down_proj scaled by 2^late_log2 (zeros when late_log2 is None)."""
    h, vocab = cfg["hidden_size"], cfg["vocab_size"]
    tensors = [Tensor("model.embed_tokens.weight", (vocab, h), matrix_tables(fmt, 0))]
    for layer in range(cfg["num_hidden_layers"]):
        late = late_log2 if exit_layer is not None and layer >= exit_layer else 0
        tensors += layer_tensors(layer, cfg, fmt, late)
    tensors.append(Tensor("model.norm.weight", (h,), norm_tables(fmt)))
    if not cfg["tie_word_embeddings"]:
        tensors.append(Tensor("lm_head.weight", (vocab, h), matrix_tables(fmt, 0)))
    return tensors


def tensor_chunks(tensor, fmt, seed):
    """The tensor's bytes, CHUNK_BYTES at a time.

    Each tensor has its own random stream (seeded by the seed and its name), so its bytes do
    not depend on sharding or on other tensors being zeroed, and a --late-scale tensor is
    exactly the unscaled one times the scale."""
    remaining = tensor.numel * fmt.width
    if tensor.tables is None:
        zeros = bytes(min(remaining, CHUNK_BYTES))
        while remaining:
            n = min(remaining, CHUNK_BYTES)
            yield memoryview(zeros)[:n]
            remaining -= n
        return
    rng = random.Random(f"{seed}/{tensor.name}")
    while remaining:
        n = min(remaining, CHUNK_BYTES)
        buf = bytearray(rng.randbytes(n))
        for lane, table in tensor.tables:
            buf[lane::fmt.width] = buf[lane::fmt.width].translate(table)
        yield buf
        remaining -= n


def plan_shards(tensors, fmt, max_bytes):
    """Tensors grouped into files, in order, each group's data at most max_bytes."""
    shards, current, size = [], [], 0
    for t in tensors:
        nbytes = t.numel * fmt.width
        if nbytes > max_bytes:
            sys.exit(f"--max-shard-bytes {max_bytes} is smaller than {t.name} ({nbytes} bytes)")
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    shards.append(current)
    return shards


def safetensors_header(tensors, fmt):
    """The 8-byte length plus the JSON header, padded with spaces to a multiple of 8 so that
    the data section starts aligned."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        end = offset + t.numel * fmt.width
        header[t.name] = {"dtype": fmt.safetensors, "shape": list(t.shape),
                          "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path, tensors, fmt, seed):
    with open(path, "wb") as f:
        f.write(safetensors_header(tensors, fmt))
        for t in tensors:
            for chunk in tensor_chunks(t, fmt, seed):
                f.write(chunk)


def shard_names(count):
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_weights(out, shards, fmt, seed):
    """The weight files and, when sharded, the index. Returns the paths written."""
    names = shard_names(len(shards))
    written = []
    for name, group in zip(names, shards):
        write_safetensors(out / name, group, fmt, seed)
        written.append(out / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel * fmt.width for g in shards for t in g)},
            "weight_map": {t.name: n for n, group in zip(names, shards) for t in group},
        }
        written.append(write_json(out / "model.safetensors.index.json", index))
    return written


def remove_stale_weights(out):
    """Delete weight files an earlier run left in `out`: a leftover index or shard set would
    otherwise be read instead of (or mixed with) the new weights."""
    for path in out.iterdir():
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", path.name):
            path.unlink()


def config_json(shape, fmt):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "torch_dtype": fmt.torch,
        "use_cache": True,
        **SHAPES[shape],
    }


def generation_config_json(exit_layer):
    config = {"bos_token_id": 0, "eos_token_id": 1}
    if exit_layer is not None:
        config["assistant_early_exit"] = exit_layer
    return config


# --- tokenizer -----------------------------------------------------------------------------

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]  # ids 0 (BOS) and 1 (EOS)
MERGES = 150
# Merges are learned from this fixed text, so the tokenizer never changes and has tokens for
# the indentation, keywords and English the tests prompt with.
MERGE_CORPUS = '''
def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


for i in range(10):
    print(i, fibonacci(i))

The quick brown fox jumps over the lazy dog. The model reads the prompt and then writes the
rest of the text one token at a time. It is the first and the last of these, and there is
more in the middle of the story than at the end of it.
'''


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def pretokenize(text):
    """Words as the ByteLevel pre-tokenizer cuts them (GPT-2's regex, for ASCII text)."""
    return re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+"
                      r"|\s+(?!\S)|\s+", text)


def learn_merges(text, count):
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties broken by the
    pair itself, so the result is deterministic)."""
    alphabet = bytes_to_unicode()
    words = Counter(tuple(alphabet[b] for b in w.encode()) for w in pretokenize(text))
    merges = []
    while len(merges) < count:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = Counter({merge_pair(word, best): n for word, n in words.items()})
    return merges


def merge_pair(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def tokenizer_json():
    """A byte-level BPE tokenizer: the 2 specials, the 256 byte characters, then the merges."""
    merges = learn_merges(MERGE_CORPUS, MERGES)
    vocab = {}
    # The specials are in the model's vocab too: `tokenizers` gives an added token that the
    # model lacks an id after the model's, whatever id added_tokens says. Two merges can spell
    # the same token; it gets one id, and the ids stay contiguous.
    for token in [*SPECIAL_TOKENS, *bytes_to_unicode().values(), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bos = SPECIAL_TOKENS[0]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": token, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i, token in enumerate(SPECIAL_TOKENS)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [0], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", **byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
            "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": [list(m) for m in merges],
        },
    }


# --- command line --------------------------------------------------------------------------


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def late_scale_log2(text):
    """--late-scale as log2 (None for 0). Only 0 and powers of two: multiplying by 2^k just
    moves the exponent, which a translate table does exactly; any other factor would need
    per-value arithmetic."""
    scale = float(text)
    if scale == 0:
        return None
    mantissa, exponent = math.frexp(scale)
    if scale < 0 or mantissa != 0.5:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or a power of two")
    return exponent - 1


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Write a random Llama checkpoint of a real shape (Hugging Face format).",
        epilog="Layers from --exit-layer E on (0-based index >= E) get o_proj and down_proj "
               "multiplied by --late-scale S, so the exit head after layer E predicts like the "
               "full model: S = 0 writes zeros (identical predictions), larger S lowers the "
               "agreement. S must be 0 or a power of two (1, 0.5, 0.25, ...) that keeps the "
               "weights normal floats: 2^-8 to 2^21 for f16, 2^-120 to 2^133 for bf16 and f32. "
               "The scaled tensors are exactly S times the unscaled ones of the same seed.")
    p.add_argument("--shape", required=True, choices=SHAPES)
    p.add_argument("--dtype", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path,
                   help="output directory, created if missing; weight files of an earlier run "
                        "in it are deleted")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--max-shard-bytes", type=int, default=5_000_000_000,
                   help="largest weight file (tensor bytes); above it, shards (default 5e9)")
    p.add_argument("--exit-layer", type=int, metavar="E",
                   help="written as generation_config.json's assistant_early_exit")
    p.add_argument("--late-scale", type=late_scale_log2, metavar="S", default="1",
                   dest="late_log2",
                   help="scale of o_proj and down_proj in layers >= E (default 1: unscaled)")
    args = p.parse_args(argv)
    layers = SHAPES[args.shape]["num_hidden_layers"]
    if args.exit_layer is not None and not 1 <= args.exit_layer < layers:
        p.error(f"--exit-layer must be in 1..{layers - 1} for {args.shape}")
    if args.exit_layer is None and args.late_log2 != 0:
        p.error("--late-scale needs --exit-layer")
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    fmt, cfg = FORMATS[args.dtype], SHAPES[args.shape]
    try:
        tensors = model_tensors(cfg, fmt, args.exit_layer, args.late_log2)
    except ValueError as e:
        sys.exit(f"--late-scale: {e}")
    shards = plan_shards(tensors, fmt, args.max_shard_bytes)
    tokenizer = tokenizer_json()
    assert len(tokenizer["model"]["vocab"]) <= cfg["vocab_size"]

    args.out.mkdir(parents=True, exist_ok=True)
    remove_stale_weights(args.out)
    written = [
        write_json(args.out / "config.json", config_json(args.shape, fmt)),
        write_json(args.out / "generation_config.json", generation_config_json(args.exit_layer)),
        write_json(args.out / "tokenizer.json", tokenizer),
        *write_weights(args.out, shards, fmt, args.seed),
    ]

    for path in written:
        print(f"{path.stat().st_size:>15,}  {path}")
    params = sum(t.numel for t in tensors)
    print(f"{params:,} parameters, {params * fmt.width:,} bytes of {fmt.torch} weights, "
          f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
