"""Writes the seed inputs of the `gguf` fuzz target (fuzz/corpus/gguf/): two minimal Llama GGUF
files, one with a SentencePiece vocabulary and one with a byte-level BPE one, small enough for
the fuzzer to mutate quickly.

    pip install gguf numpy && python3 tools/make_gguf_seeds.py
"""
import numpy as np
import gguf

H, FF, V = 32, 32, 24


def model(path, spm):
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(H // 2)
    if spm:
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(16)] + ["▁", "a", "b", "▁a", "ab"]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 19 + [-1.0, -2.0, -3.0, -4.0, -5.0])
        w.add_token_types([2, 3, 3] + [6] * 16 + [1] * 5)
        w.add_unk_token_id(0)
    else:
        tokens = ["a", "b", "c", "Ġ", "Ċ", "ab", "Ġa", "abc"] + [f"t{i}" for i in range(14)] + ["<|s|>", "<|e|>"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types([1] * 22 + [3, 3])
        w.add_token_merges(["a b", "Ġ a", "ab c"])
        w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_bos_token_id(1 if spm else 22)
    w.add_eos_token_id(2 if spm else 23)
    rng = np.random.default_rng(1)
    t = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float16)
    w.add_tensor("token_embd.weight", t(V, H))
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    for name, shape in [("attn_q", (H, H)), ("attn_k", (H // 2, H)), ("attn_v", (H // 2, H)),
                        ("attn_output", (H, H)), ("ffn_gate", (FF, H)), ("ffn_up", (FF, H)),
                        ("ffn_down", (H, FF))]:
        w.add_tensor(f"blk.0.{name}.weight", t(*shape))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(H, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(H, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


model("fuzz/corpus/gguf/seed-spm", True)
model("fuzz/corpus/gguf/seed-bpe", False)
