// y[t, ROW0 + r] = sum_k x[t, k] * W[r, k] for the ROWS rows of one weight block and every token t.
// Mat-vec style: one workgroup per weight row, reading the row once for up to 4 tokens at a time,
// because decode and speculative verification feed 1..16 tokens and are bound by weight reads.
// Constants: K (inner size, even), ROWS, ROW0, N (row stride of y).
// Variants: ACCUMULATE adds into y (the residual stream); SWIGLU reads x as [gate | up] rows of
// width 2K and uses silu(gate) * up, fusing the MLP activation into the down projection.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> x: array<vec2<f32>>;
#include "weights.wgsl"
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const TB: u32 = 4u;
const KP: u32 = K / 2u;

var<workgroup> partial: array<vec4<f32>, WG>;

fn x_pair(t: u32, p: u32) -> vec2<f32> {
#ifdef SWIGLU
    let g = x[t * 2u * KP + p];
    let u = x[t * 2u * KP + KP + p];
    return g / (1.0 + exp(-g)) * u;
#else
    return x[t * KP + p];
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = flat_workgroup(wid, nwg);
    if (r >= ROWS) {
        return;
    }
    let n = step.n_tokens;
    for (var t0 = 0u; t0 < n; t0 += TB) {
        var acc = vec4<f32>(0.0);
        for (var p = lid; p < KP; p += WG) {
            let wv = w_pair(r * KP + p);
            acc.x += dot(wv, x_pair(t0, p));
            if (t0 + 1u < n) {
                acc.y += dot(wv, x_pair(t0 + 1u, p));
            }
            if (t0 + 2u < n) {
                acc.z += dot(wv, x_pair(t0 + 2u, p));
            }
            if (t0 + 3u < n) {
                acc.w += dot(wv, x_pair(t0 + 3u, p));
            }
        }
        partial[lid] = acc;
        workgroupBarrier();
        for (var span = WG / 2u; span > 0u; span >>= 1u) {
            if (lid < span) {
                partial[lid] += partial[lid + span];
            }
            workgroupBarrier();
        }
        if (lid < TB && t0 + lid < n) {
            let at = (t0 + lid) * N + ROW0 + r;
#ifdef ACCUMULATE
            y[at] += partial[0][lid];
#else
            y[at] = partial[0][lid];
#endif
        }
        workgroupBarrier();
    }
}
