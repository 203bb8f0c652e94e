// y[t, ROW0 + r] = sum_k x[t, k] * W[r, k] for the ROWS rows of one weight block and the few
// tokens of a decode step or a verification block, which are bound by reading the weights.
// Each workgroup computes RPW rows with TPR = WG / RPW invocations per row; each invocation
// takes whole 32-element groups of its row (dequantized by the format's w_group: one 16-byte load
// per group in q4) for up to 4 tokens per pass over the weights. A row's partial sums are added
// with subgroup operations where the adapter has them (SUBGROUPS, when TPR is a multiple of every
// subgroup size it may use), else through workgroup memory.
// Constants: K, GROUPS (ceil(K / 32)), ROWS, ROW0, N (row stride of y), WEIGHTS, WG, RPW.
// Variants: ACCUMULATE adds into y (the residual stream); SWIGLU (see inputs.wgsl); SUBGROUPS
// (natively only: wgpu's naga takes subgroup builtins without an `enable subgroups;`, which it
// does not parse yet, and wgpu's web backend does not offer subgroups).
#include "common.wgsl"
#include "inputs.wgsl"
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#include WEIGHTS

const TB: u32 = 4u;
const TPR: u32 = WG / RPW;

var<workgroup> partial: array<vec4<f32>, WG>;

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
        @builtin(local_invocation_index) lid: u32
#ifdef SUBGROUPS
        , @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32
#endif
        ) {
    let row = lid / TPR;
    let lane = lid % TPR;
    let r = flat_workgroup(wid, nwg) * RPW + row;
    let live = r < ROWS;
    let n = step.n_tokens;
    for (var t0 = 0u; t0 < n; t0 += TB) {
        var acc = vec4<f32>(0.0);
        if (live) {
            for (var g = lane; g < GROUPS; g += TPR) {
                var w = w_group(r, g);
                for (var j = 0u; j < TB; j++) {
                    if (t0 + j < n) {
                        acc[j] += group_dot(&w, t0 + j, g);
                    }
                }
            }
        }
#ifdef SUBGROUPS
        // Subgroups of consecutive invocations lie within one row (TPR is a multiple of them).
        let s = subgroupAdd(acc);
        if (sg_lane == 0u) {
            partial[lid / sg_size] = s;
        }
        workgroupBarrier();
        var total = vec4<f32>(0.0);
        if (lane == 0u) {
            for (var i = 0u; i < TPR / sg_size; i++) {
                total += partial[row * TPR / sg_size + i];
            }
        }
#else
        partial[lid] = acc;
        workgroupBarrier();
        for (var span = TPR / 2u; span > 0u; span >>= 1u) {
            if (lane < span) {
                partial[lid] += partial[lid + span];
            }
            workgroupBarrier();
        }
        let total = partial[row * TPR];
#endif
        if (live && lane == 0u) {
            for (var j = 0u; j < TB; j++) {
                if (t0 + j < n) {
                    let at = (t0 + j) * N + ROW0 + r;
#ifdef ACCUMULATE
                    y[at] += total[j];
#else
                    y[at] = total[j];
#endif
                }
            }
        }
        // `partial` is written again by the next pass.
        workgroupBarrier();
    }
}
