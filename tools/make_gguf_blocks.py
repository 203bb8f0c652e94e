"""Writes tests/fixtures/gguf/blocks.gguf: random blocks of every GGUF tensor type the runtime
reads, each beside its values as llama.cpp's gguf-py dequantizes them (an independent reference
for the runtime's regrouping and dequantization).

    pip install gguf numpy && python3 tools/make_gguf_blocks.py

For each type T there are two tensors: `T` (3 rows of 512 elements of random blocks, scales set
to finite values of realistic size) and `T.expected` (the same rows as F32, from
gguf.quants.dequantize).
"""
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

ROWS, COLS = 3, 512
rng = np.random.default_rng(7)

# Byte offsets of each type's f16 scales inside a block, and the scales' magnitude.
SCALES = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}

w = gguf.GGUFWriter("tests/fixtures/gguf/blocks.gguf", "llama")
for t in [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[t]
    blocks = ROWS * COLS // block_elems
    if t == Q.F32:
        raw = rng.standard_normal(ROWS * COLS).astype(np.float32).view(np.uint8)
    elif t == Q.F16:
        raw = rng.standard_normal(ROWS * COLS).astype(np.float16).view(np.uint8)
    elif t == Q.BF16:
        raw = (rng.standard_normal(ROWS * COLS).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
        for at in SCALES[t]:
            # Signed scales of about 1e-3..1e-2, as trained weights have; minimums may be negative.
            d = (rng.uniform(1e-3, 1e-2, blocks) * rng.choice([-1, 1], blocks)).astype(np.float16)
            raw[:, at:at + 2] = d.view(np.uint8).reshape(blocks, 2)
    raw = np.ascontiguousarray(raw).reshape(ROWS, -1)
    w.add_tensor(t.name, raw, raw_dtype=t)
    values = dequantize(raw, t).astype(np.float32).reshape(ROWS, COLS)
    w.add_tensor(t.name + ".expected", values)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
