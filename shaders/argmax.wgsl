// Greedy pick per logits row (one workgroup per row, grid y): the first index of the maximum, as
// torch.argmax, and the softmax normaliser sum(exp(l - max)), so the host reads 8 bytes per row
// instead of the whole vocabulary. 1 / sum is the top token's probability.
// Constants: V (logits per row). MAP_IDS: the rows are a draft head's, whose index i scores
// token ids[i] (the draft vocabulary): the pick is that token id.
#include "common.wgsl"
#include "reduce.wgsl"
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> picks: array<vec2<u32>>;
#ifdef MAP_IDS
@group(0) @binding(3) var<storage, read> ids: array<u32>;
#endif

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    let base = t * V;
    var bv = -3.4e38;
    var bi = 0u;
    for (var i = lid; i < V; i += WG) {
        let v = logits[base + i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var span = WG / 2u; span > 0u; span >>= 1u) {
        if (lid < span) {
            let ov = best_v[lid + span];
            let oi = best_i[lid + span];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let top = best_v[0];
    var s = 0.0;
    for (var i = lid; i < V; i += WG) {
        s += exp(logits[base + i] - top);
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) {
#ifdef MAP_IDS
        let token = ids[best_i[0]];
#else
        let token = best_i[0];
#endif
        picks[step.out0 + t] = vec2<u32>(token, bitcast<u32>(total));
    }
}
