// f32 weights (src/format.rs): 32 values per group, rows padded to whole groups.
// w_group(r, g): elements 32g..32g+31 of row r of the bound block, as 8 vec4.
// Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let base = (r * GROUPS + g) * 8u;
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        out[i] = bitcast<vec4<f32>>(w_data[base + i]);
    }
    return out;
}
