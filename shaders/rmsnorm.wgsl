// out[t] = x[row0 + t] / sqrt(mean(x^2) + EPS) * weight, one workgroup per token (grid y).
// Constants: H (hidden size), EPS.
#include "common.wgsl"
#include "reduce.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    let src = (step.row0 + t) * H;
    var s = 0.0;
    for (var i = lid; i < H; i += WG) {
        let v = x[src + i];
        s += v * v;
    }
    let inv = inverseSqrt(workgroup_sum(lid, s) / f32(H) + EPS);
    for (var i = lid; i < H; i += WG) {
        out[t * H + i] = x[src + i] * inv * weight[i];
    }
}
