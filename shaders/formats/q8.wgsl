// q8 weights (Q8_0, src/format.rs): 32 signed bytes per group, four per u32 (element 4i in the
// lowest byte), times the group's f16 scale. w_group(r, g): elements 32g..32g+31 of row r of the
// bound block, as 8 vec4, dequantized. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
#include "formats/scales.wgsl"

// Four signed bytes, sign-extended by an arithmetic shift.
fn i8x4(w: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w));
    return vec4<f32>(v >> vec4<u32>(24u));
}

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let base = (r * GROUPS + g) * 2u;
    let d = w_scale(r, g);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 2u; i++) {
        let w = w_data[base + i];
        out[4u * i] = i8x4(w.x) * d;
        out[4u * i + 1u] = i8x4(w.y) * d;
        out[4u * i + 2u] = i8x4(w.z) * d;
        out[4u * i + 3u] = i8x4(w.w) * d;
    }
    return out;
}
