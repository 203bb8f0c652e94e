// The f16 scale of each group of a quantized format (src/format.rs): one per group, two per u32,
// each row's padded to a whole u32. Constants: GROUPS (groups per row).
@group(0) @binding(9) var<storage, read> w_scales: array<u32>;

const SCALE_WORDS: u32 = (GROUPS + 1u) / 2u;

fn w_scale(r: u32, g: u32) -> f32 {
    let pair = unpack2x16float(w_scales[r * SCALE_WORDS + g / 2u]);
    return select(pair.x, pair.y, (g & 1u) == 1u);
}
