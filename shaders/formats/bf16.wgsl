// bf16 weights (src/format.rs): the checkpoint's halves, two per u32, element 2i in the low half;
// a bfloat16 is the top half of an f32. w_group(r, g): elements 32g..32g+31 of row r of the bound
// block, as 8 vec4. Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;

fn bf16x2(v: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    let base = (r * GROUPS + g) * 4u;
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let w = w_data[base + i];
        out[2u * i] = vec4<f32>(bf16x2(w.x), bf16x2(w.y));
        out[2u * i + 1u] = vec4<f32>(bf16x2(w.z), bf16x2(w.w));
    }
    return out;
}
