// Rotary embedding (the "rotate half" layout of transformers) for the block's queries in place,
// and for its keys, which are written with the values into the layer's KV cache at their positions.
// Invocations: for each query head, one per (token, head, pair i) rotating elements i and
// i + HD/2; for each kv head, one per (token, kv head, word w) writing elements 2w and 2w + 1 of
// the key and the value, so an f16 cache is written a whole u32 at a time. Both take HD/2
// invocations per head.
// Constants: HD (head dim), NH, NKV, QKV (row stride of the fused q|k|v projection).
// Variants: KV_F16 stores keys and values as f16 pairs, else f32.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
// cos and sin per (position, pair), computed on the host in the precision transformers uses.
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
#ifdef KV_F16
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;
#else
@group(0) @binding(3) var<storage, read_write> k_cache: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<vec2<f32>>;
#endif

const SPAN: u32 = HD / 2u;

// Element e of the rotated head that starts at `base`.
fn rotated(base: u32, e: u32, pos: u32) -> f32 {
    if (e < SPAN) {
        let cs = rope[pos * SPAN + e];
        return qkv[base + e] * cs.x - qkv[base + e + SPAN] * cs.y;
    }
    let i = e - SPAN;
    let cs = rope[pos * SPAN + i];
    return qkv[base + e] * cs.x + qkv[base + i] * cs.y;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = flat_workgroup(wid, nwg) * WG + lid;
    let per_token = (NH + NKV) * SPAN;
    if (idx >= step.n_tokens * per_token) {
        return;
    }
    let t = idx / per_token;
    let h = (idx % per_token) / SPAN;
    let i = idx % SPAN;
    let pos = step.pos0 + t;
    let base = t * QKV + h * HD;
    if (h < NH) {
        let cs = rope[pos * SPAN + i];
        let a = qkv[base + i];
        let b = qkv[base + i + SPAN];
        qkv[base + i] = a * cs.x - b * cs.y;
        qkv[base + i + SPAN] = b * cs.x + a * cs.y;
        return;
    }
    // Keys are read from qkv and never written there, so rotating them here races with nothing.
    let kh = h - NH;
    let key = vec2<f32>(rotated(base, 2u * i, pos), rotated(base, 2u * i + 1u, pos));
    let vb = t * QKV + (NH + NKV + kh) * HD + 2u * i;
    let value = vec2<f32>(qkv[vb], qkv[vb + 1u]);
    let at = (pos * NKV + kh) * SPAN + i;
#ifdef KV_F16
    k_cache[at] = pack2x16float(key);
    v_cache[at] = pack2x16float(value);
#else
    k_cache[at] = key;
    v_cache[at] = value;
#endif
}
