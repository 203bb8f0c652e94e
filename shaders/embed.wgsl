// x[t, :] = embedding[tokens[tok0 + t], :], for the tokens whose id falls in this row block.
// One invocation per (token, 32-element group), dequantized by the format's w_group.
// Constants: H (hidden size), GROUPS (ceil(H / 32)), ROW0, ROWS (the block), WEIGHTS.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
#include WEIGHTS

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= step.n_tokens * GROUPS) {
        return;
    }
    let t = i / GROUPS;
    let g = i % GROUPS;
    let id = tokens[step.tok0 + t];
    if (id < ROW0 || id >= ROW0 + ROWS) {
        return;
    }
    var w = w_group(id - ROW0, g);
    for (var e = 0u; e < 32u; e++) {
        let k = g * 32u + e;
        if (k < H) {
            x[t * H + k] = w[e / 4u][e % 4u];
        }
    }
}
