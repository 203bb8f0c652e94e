// y[t, ROW0 + r] = sum_k x[t, k] * W[r, k] for a block of many tokens (prompt chunks): a tiled
// matrix product. Each workgroup computes TM = 64 weight rows x TN = 32 tokens; for each
// 32-element group of K it stages the tile's weights (dequantized by the format's w_group) and
// its tokens' inputs in workgroup memory, so each weight is read once per 32 tokens, not once per
// 4 as in matvec.wgsl. 256 invocations, each computing 4 rows x 2 tokens.
// Constants: K, GROUPS, ROWS, ROW0, N (row stride of y), WEIGHTS.
// Variants: ACCUMULATE, SWIGLU (as matvec.wgsl).
#include "common.wgsl"
#include "inputs.wgsl"
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#include WEIGHTS

const TM: u32 = 64u;
const TN: u32 = 32u;

var<workgroup> ws: array<array<f32, 32>, TM>;
var<workgroup> xs: array<array<f32, 32>, TN>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.x * TM;
    let tok0 = wid.y * TN;
    let n = step.n_tokens;
    let tr = lid / 16u;
    let tc = lid % 16u;
    var acc: array<array<f32, 2>, 4>;
    for (var g = 0u; g < GROUPS; g++) {
        if (lid < TM) {
            let r = row0 + lid;
            var w: array<vec4<f32>, 8>;
            if (r < ROWS) {
                w = w_group(r, g);
            }
            for (var i = 0u; i < 8u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    ws[lid][4u * i + j] = w[i][j];
                }
            }
        }
        for (var e = 0u; e < 4u; e++) {
            let idx = lid * 4u + e;
            let t = idx / 32u;
            let k = idx % 32u;
            let kk = g * 32u + k;
            var v = 0.0;
            if (tok0 + t < n && kk < K) {
                v = x_at(tok0 + t, kk);
            }
            xs[t][k] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < 32u; k++) {
            let x0 = xs[tc * 2u][k];
            let x1 = xs[tc * 2u + 1u][k];
            for (var i = 0u; i < 4u; i++) {
                let wv = ws[tr * 4u + i][k];
                acc[i][0] += wv * x0;
                acc[i][1] += wv * x1;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 2u; j++) {
            let r = row0 + tr * 4u + i;
            let t = tok0 + tc * 2u + j;
            if (r < ROWS && t < n) {
                let at = t * N + ROW0 + r;
#ifdef ACCUMULATE
                y[at] += acc[i][j];
#else
                y[at] = acc[i][j];
#endif
            }
        }
    }
}
