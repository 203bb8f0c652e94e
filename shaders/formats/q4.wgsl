// q4 weights (Q4_0, src/format.rs): 32 four-bit values q per group, eight per u32 (element 8i + j
// in bits 4j..4j+3 of word i), x = (q - 8) * the group's f16 scale. One 16-byte load per group.
// w_group(r, g): elements 32g..32g+31 of row r of the bound block, as 8 vec4, dequantized.
// Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
#include "formats/scales.wgsl"

// The four nibbles of `w` from bit `shift` up, as q - 8.
fn q4x4(w: u32, shift: u32) -> vec4<f32> {
    let q = (vec4<u32>(w) >> vec4<u32>(shift, shift + 4u, shift + 8u, shift + 12u)) & vec4<u32>(15u);
    return vec4<f32>(q) - 8.0;
}

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    var w = w_data[r * GROUPS + g];
    let d = w_scale(r, g);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        out[2u * i] = q4x4(w[i], 0u) * d;
        out[2u * i + 1u] = q4x4(w[i], 16u) * d;
    }
    return out;
}
