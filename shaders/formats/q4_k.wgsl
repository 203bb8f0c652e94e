// q4_k weights (Q4_K, src/format.rs): 32 four-bit values q per group in q4's nibble order (byte i:
// element i low, element i + 16 high), x = d s q - dmin m with the super-block's scales
// (k_scales.wgsl). One 16-byte load per group. w_group(r, g): elements 32g..32g+31 of row r of
// the bound block, as 8 vec4, dequantized. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
#include "formats/k_scales.wgsl"

const LOW: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let w = w_data[r * GROUPS + g];
    let sm = k_scale_min(r, g);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w[i]);
        out[i] = vec4<f32>((word >> LOW) & vec4<u32>(15u)) * sm.x - sm.y;
        out[4u + i] = vec4<f32>((word >> (LOW + 4u)) & vec4<u32>(15u)) * sm.x - sm.y;
    }
    return out;
}
