// q4_k weights (Q4_K, src/format.rs): 32 four-bit values q per group (nibbles.wgsl), x = d s q -
// dmin m with the super-block's scales (k_scales.wgsl). One 16-byte load per group.
// w_group(r, g): elements 32g..32g+31 of row r of the bound block, as 8 vec4, dequantized.
// Constants: GROUPS (groups per row).
@group(0) @binding(8) var<storage, read> w_data: array<vec4<u32>>;
#include "formats/k_scales.wgsl"
#include "formats/nibbles.wgsl"

fn w_group(r: u32, g: u32) -> array<vec4<f32>, 8> {
    var q = nibbles(w_data[r * GROUPS + g]);
    let sm = k_scale_min(r, g);
    for (var i = 0u; i < 8u; i++) {
        q[i] = q[i] * sm.x - sm.y;
    }
    return q;
}
