// The scales of q4_k and q5_k (src/format.rs): per super-block of 8 groups, 4 u32: f16 d and
// dmin, then twelve bytes packing a 6-bit scale s and minimum m per group (GGUF's layout). A
// group's values are d s q - dmin m. Constants: GROUPS (groups per row).
@group(0) @binding(9) var<storage, read> w_scales: array<u32>;

const SUPER_BLOCKS: u32 = (GROUPS + 7u) / 8u;

// (d s, dmin m) of group g of row r.
fn k_scale_min(r: u32, g: u32) -> vec2<f32> {
    let base = (r * SUPER_BLOCKS + g / 8u) * 4u;
    let dm = unpack2x16float(w_scales[base]);
    let j = g % 8u;
    // Byte k of the twelve packed bytes.
    var sc: u32;
    var m: u32;
    if (j < 4u) {
        sc = k_byte(base, j) & 63u;
        m = k_byte(base, j + 4u) & 63u;
    } else {
        sc = (k_byte(base, j + 4u) & 15u) | ((k_byte(base, j - 4u) >> 6u) << 4u);
        m = (k_byte(base, j + 4u) >> 4u) | ((k_byte(base, j) >> 6u) << 4u);
    }
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(m));
}

fn k_byte(base: u32, k: u32) -> u32 {
    return (w_scales[base + 1u + k / 4u] >> (8u * (k % 4u))) & 255u;
}
