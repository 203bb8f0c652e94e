// q5_k weights (Q5_K, src/format.rs): per group 5 u32: four of low nibbles in q4's order (byte i:
// element i low, element i + 16 high) and one of fifth bits (bit i for element i); x = d s q -
// dmin m with the super-block's scales (k_scales.wgsl). w_group(r, g): elements 32g..32g+31 of
// row r of the bound block, as 8 vec4, dequantized. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<u32>;
#include "formats/k_scales.wgsl"
#include "formats/nibbles.wgsl"

const BIT: vec4<u32> = vec4<u32>(0u, 1u, 2u, 3u);

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let base = (r * GROUPS + g) * 5u;
    let high = w_data[base + 4u];
    let sm = k_scale_min(r, g);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w_data[base + i]);
        // Elements 4i..4i+3 (low nibbles) and 16+4i.. (high nibbles), each with its fifth bit.
        let lo = ((word >> LOW) & vec4<u32>(15u)) | (((vec4<u32>(high) >> (BIT + 4u * i)) & vec4<u32>(1u)) << vec4<u32>(4u));
        let hi = ((word >> (LOW + 4u)) & vec4<u32>(15u)) | (((vec4<u32>(high) >> (BIT + 16u + 4u * i)) & vec4<u32>(1u)) << vec4<u32>(4u));
        out[i] = vec4<f32>(lo) * sm.x - sm.y;
        out[4u + i] = vec4<f32>(hi) * sm.x - sm.y;
    }
    return out;
}
