// q6_k weights (Q6_K, src/format.rs): per group 6 u32: four of low nibbles in q4's order (byte i:
// element i low, element i + 16 high) and two of 2-bit high parts (bits 2i..2i+1 of the first
// for element i, of the second for element 16 + i); x = d scale (q - 32), with a signed 8-bit
// scale per 16 elements. Scales per super-block of 8 groups: 5 u32, the sixteen scales then f16
// d. w_group(r, g): elements 32g..32g+31 of row r of the bound block, as 8 vec4, dequantized.
// Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<u32>;
@group(0) @binding(9) var<storage, read> w_scales: array<u32>;
#include "formats/nibbles.wgsl"

const SUPER_BLOCKS: u32 = (GROUPS + 7u) / 8u;
const PAIR: vec4<u32> = vec4<u32>(0u, 2u, 4u, 6u);

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let base = (r * GROUPS + g) * 6u;
    let sbase = (r * SUPER_BLOCKS + g / 8u) * 5u;
    let d = unpack2x16float(w_scales[sbase + 4u]).x;
    // Scales 2j and 2j + 1 (j = g % 8): bytes 2j, 2j + 1 of the first four words, sign-extended.
    let pair = w_scales[sbase + (g % 8u) / 2u] >> (16u * (g % 2u));
    let s_lo = f32(bitcast<i32>(pair << 24u) >> 24u) * d;
    let s_hi = f32(bitcast<i32>(pair << 16u) >> 24u) * d;
    let h0 = vec4<u32>(w_data[base + 4u]);
    let h1 = vec4<u32>(w_data[base + 5u]);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w_data[base + i]);
        let lo = ((word >> LOW) & vec4<u32>(15u)) | (((h0 >> (PAIR + 8u * i)) & vec4<u32>(3u)) << vec4<u32>(4u));
        let hi = ((word >> (LOW + 4u)) & vec4<u32>(15u)) | (((h1 >> (PAIR + 8u * i)) & vec4<u32>(3u)) << vec4<u32>(4u));
        out[i] = (vec4<f32>(lo) - 32.0) * s_lo;
        out[4u + i] = (vec4<f32>(hi) - 32.0) * s_hi;
    }
    return out;
}
