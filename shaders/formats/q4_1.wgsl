// q4_1 weights (Q4_1, src/format.rs): 32 four-bit values q per group (nibbles.wgsl), x = q * d +
// m with the group's f16 scale d and minimum m, one u32 per group. w_group(r, g): elements
// 32g..32g+31 of row r of the bound block, as 8 vec4, dequantized. Constants: GROUPS (groups
// per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> w_scales: array<u32>;
#include "formats/nibbles.wgsl"

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    var q = nibbles(w_data[r * GROUPS + g]);
    let dm = unpack2x16float(w_scales[r * GROUPS + g]);
    for (var i = 0u; i < 8u; i++) {
        q[i] = q[i] * dm.x + dm.y;
    }
    return q;
}
