// Rotary embedding (the "rotate half" layout of transformers) for the block's queries in place,
// and for its keys, which are written with the values into the layer's KV cache at their positions.
// One invocation per (token, head, pair), heads 0..NH are queries and NH..NH+NKV keys.
// Constants: HD (head dim), NH, NKV, QKV (row stride of the fused q|k|v projection).
#include "common.wgsl"
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
// cos and sin per (position, pair), computed on the host in the precision transformers uses.
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = flat_workgroup(wid, nwg) * WG + lid;
    let span = HD / 2u;
    if (idx >= step.n_tokens * (NH + NKV) * span) {
        return;
    }
    let i = idx % span;
    let h = (idx / span) % (NH + NKV);
    let t = idx / (span * (NH + NKV));
    let pos = step.pos0 + t;
    let cs = rope[pos * span + i];
    let base = t * QKV + h * HD;
    let a = qkv[base + i];
    let b = qkv[base + i + span];
    let ra = a * cs.x - b * cs.y;
    let rb = b * cs.x + a * cs.y;
    if (h < NH) {
        qkv[base + i] = ra;
        qkv[base + i + span] = rb;
    } else {
        let kh = h - NH;
        let at = (pos * NKV + kh) * HD;
        k_cache[at + i] = ra;
        k_cache[at + i + span] = rb;
        let v = t * QKV + (NH + NKV + kh) * HD;
        v_cache[at + i] = qkv[v + i];
        v_cache[at + i + span] = qkv[v + i + span];
    }
}
