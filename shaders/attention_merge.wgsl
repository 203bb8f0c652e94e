// Combines the key ranges attention.wgsl (SPLIT) computed for each (head, token): with M the
// largest running max, out = sum_s acc_s exp(m_s - M) / sum_s l_s exp(m_s - M). Ranges past a
// token's keys hold l = 0 and count for nothing. One workgroup per (head, token).
// Constants: HD, NH, CHUNK, SPLITS, WG.
#include "common.wgsl"
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let used = min((step.pos0 + t + 1u + CHUNK - 1u) / CHUNK, SPLITS);
    let base = (t * NH + h) * SPLITS * (HD + 2u);
    var top = -3.0e38;
    for (var s = 0u; s < used; s++) {
        top = max(top, parts[base + s * (HD + 2u)]);
    }
    var total = 0.0;
    for (var s = 0u; s < used; s++) {
        let at = base + s * (HD + 2u);
        total += parts[at + 1u] * exp(parts[at] - top);
    }
    for (var d = lid; d < HD; d += WG) {
        var sum = 0.0;
        for (var s = 0u; s < used; s++) {
            let at = base + s * (HD + 2u);
            sum += parts[at + 2u + d] * exp(parts[at] - top);
        }
        out[t * NH * HD + h * HD + d] = sum / total;
    }
}
