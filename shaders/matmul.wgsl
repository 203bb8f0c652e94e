// y[t, ROW0 + r] = sum_k x[t, k] * W[r, k] for the ROWS rows of one weight block and every token t.
// Mat-vec style: one workgroup per weight row, each invocation taking whole 32-element groups of
// it (dequantized by the format's w_group) for up to 4 tokens at a time, because decode and
// speculative verification feed 1..16 tokens and are bound by weight reads.
// Constants: K (inner size), GROUPS (ceil(K / 32)), ROWS, ROW0, N (row stride of y), WEIGHTS.
// Variants: ACCUMULATE adds into y (the residual stream); SWIGLU reads x as [gate | up] rows of
// width 2K and uses silu(gate) * up, fusing the MLP activation into the down projection.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#include WEIGHTS

const TB: u32 = 4u;

var<workgroup> partial: array<vec4<f32>, WG>;

fn x_at(t: u32, k: u32) -> f32 {
#ifdef SWIGLU
    let g = x[t * 2u * K + k];
    let u = x[t * 2u * K + K + k];
    return g / (1.0 + exp(-g)) * u;
#else
    return x[t * K + k];
#endif
}

// Four inputs of token t from k (a multiple of 4), zero past K (rows are padded to whole groups).
fn x4(t: u32, k: u32) -> vec4<f32> {
    if (k + 4u <= K) {
        return vec4<f32>(x_at(t, k), x_at(t, k + 1u), x_at(t, k + 2u), x_at(t, k + 3u));
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < K) {
            v[j] = x_at(t, k + j);
        }
    }
    return v;
}

// The dot product of group g of a weight row with token t's inputs.
fn group_dot(w: ptr<function, array<vec4<f32>, 8>>, t: u32, g: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        s += dot((*w)[i], x4(t, g * 32u + 4u * i));
    }
    return s;
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
        for (var g = lid; g < GROUPS; g += WG) {
            var w = w_group(r, g);
            for (var j = 0u; j < TB; j++) {
                if (t0 + j < n) {
                    acc[j] += group_dot(&w, t0 + j, g);
                }
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
