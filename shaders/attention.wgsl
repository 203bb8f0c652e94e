// Causal attention of the block's queries over the KV cache, one workgroup per (head, token) and,
// with SPLIT, per range of CHUNK keys (flash-decoding: a long context is spread over many
// workgroups even for one token; attention_merge.wgsl then combines the ranges). Token t at
// position pos0 + t sees keys 0..=pos0 + t. Keys are visited in tiles of WG with an online
// softmax, so any context length works with a fixed amount of workgroup memory.
// Grouped-query attention: query head h reads kv head h / (NH / NKV).
// Constants: HD, NH, NKV, QKV (row stride of q|k|v), DPT (output dims per invocation,
// ceil(HD / WG)), WG; with SPLIT also CHUNK and SPLITS (ranges per (token, head) in `parts`).
// Variants: KV_F16 reads keys and values stored as f16 pairs, else f32. SPLIT writes each range's
// running max, sum and unnormalized output to `parts` instead of the output.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
#ifdef KV_F16
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
fn k_pair(i: u32) -> vec2<f32> {
    return unpack2x16float(k_cache[i]);
}
fn v_pair(i: u32) -> vec2<f32> {
    return unpack2x16float(v_cache[i]);
}
#else
@group(0) @binding(2) var<storage, read> k_cache: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> v_cache: array<vec2<f32>>;
fn k_pair(i: u32) -> vec2<f32> {
    return k_cache[i];
}
fn v_pair(i: u32) -> vec2<f32> {
    return v_cache[i];
}
#endif
// [token][head][HD] outputs, or with SPLIT [token][head][split][max, sum, HD unnormalized].
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const SPAN: u32 = HD / 2u;

var<workgroup> q: array<vec2<f32>, SPAN>;
var<workgroup> p: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let kvh = h / (NH / NKV);
    let n_keys = step.pos0 + t + 1u;
#ifdef SPLIT
    let first = wid.z * CHUNK;
    let last = min(first + CHUNK, n_keys);
#else
    let first = 0u;
    let last = n_keys;
#endif
    let scale = inverseSqrt(f32(HD));
    for (var d = lid; d < SPAN; d += WG) {
        let at = t * QKV + h * HD + 2u * d;
        q[d] = vec2<f32>(qkv[at], qkv[at + 1u]) * scale;
    }
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var j0 = first; j0 < last; j0 += WG) {
        let count = min(WG, last - j0);
        var s = -3.0e38;
        if (lid < count) {
            let kb = ((j0 + lid) * NKV + kvh) * SPAN;
            s = 0.0;
            for (var d = 0u; d < SPAN; d++) {
                s += dot(q[d], k_pair(kb + d));
            }
        }
        p[lid] = s;
        workgroupBarrier();
        var m_new = m;
        for (var i = 0u; i < count; i++) {
            m_new = max(m_new, p[i]);
        }
        workgroupBarrier();
        p[lid] = select(0.0, exp(s - m_new), lid < count);
        workgroupBarrier();
        let correction = exp(m - m_new);
        l *= correction;
        for (var k = 0u; k < DPT; k++) {
            acc[k] *= correction;
        }
        for (var i = 0u; i < count; i++) {
            let pi = p[i];
            l += pi;
            let vb = ((j0 + i) * NKV + kvh) * SPAN;
            for (var k = 0u; k < DPT; k++) {
                let d = lid + k * WG;
                if (d < HD) {
                    let pair = v_pair(vb + d / 2u);
                    acc[k] += pi * select(pair.x, pair.y, (d & 1u) == 1u);
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
#ifdef SPLIT
    let base = ((t * NH + h) * SPLITS + wid.z) * (HD + 2u);
    if (lid == 0u) {
        out[base] = m;
        out[base + 1u] = l;
    }
    for (var k = 0u; k < DPT; k++) {
        let d = lid + k * WG;
        if (d < HD) {
            out[base + 2u + d] = acc[k];
        }
    }
#else
    for (var k = 0u; k < DPT; k++) {
        let d = lid + k * WG;
        if (d < HD) {
            out[t * NH * HD + h * HD + d] = acc[k] / l;
        }
    }
#endif
}
