// x[t, :] = embedding[tokens[tok0 + t], :], for the tokens whose id falls in this row block.
// One invocation per pair of hidden values. Constants: H (hidden size), ROW0, ROWS (the block).
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
#include "weights.wgsl"
@group(0) @binding(3) var<storage, read_write> x: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    let pairs = H / 2u;
    if (i >= step.n_tokens * pairs) {
        return;
    }
    let t = i / pairs;
    let id = tokens[step.tok0 + t];
    if (id < ROW0 || id >= ROW0 + ROWS) {
        return;
    }
    x[i] = w_pair((id - ROW0) * pairs + i % pairs);
}
