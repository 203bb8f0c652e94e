// q4_1 weights (Q4_1, src/format.rs): 32 four-bit values q per group in q4's nibble order (byte i:
// element i low, element i + 16 high), x = q * d + m with the group's f16 scale d and minimum m,
// one u32 per group. w_group(r, g): elements 32g..32g+31 of row r of the bound block, as 8 vec4,
// dequantized. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read> w_scales: array<u32>;

const LOW: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let w = w_data[r * GROUPS + g];
    let dm = unpack2x16float(w_scales[r * GROUPS + g]);
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w[i]);
        out[i] = vec4<f32>((word >> LOW) & vec4<u32>(15u)) * dm.x + dm.y;
        out[4u + i] = vec4<f32>((word >> (LOW + 4u)) & vec4<u32>(15u)) * dm.x + dm.y;
    }
    return out;
}
