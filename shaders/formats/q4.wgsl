// q4 weights (Q4_0, src/format.rs): 32 four-bit values q per group, x = (q - 8) * the group's f16
// scale. As in llama.cpp, byte i of a group holds element i in its low nibble and element i + 16
// in its high nibble: word w's low nibbles are elements 4w..4w+3, its high nibbles 16+4w..16+4w+3.
// One 16-byte load per group. w_group(r, g): elements 32g..32g+31 of row r of the bound block, as
// 8 vec4, dequantized. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
#include "formats/scales.wgsl"

const LOW: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    var w = w_data[r * GROUPS + g];
    let d = w_scale(r, g);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w[i]);
        out[i] = (vec4<f32>((word >> LOW) & vec4<u32>(15u)) - 8.0) * d;
        out[4u + i] = (vec4<f32>((word >> (LOW + 4u)) & vec4<u32>(15u)) - 8.0) * d;
    }
    return out;
}
