// The 32 four-bit codes of a group of the 4-bit formats (src/format.rs): byte i of its 16 bytes
// holds element i in its low nibble and element i + 16 in its high nibble, so word w's low
// nibbles are elements 4w..4w+3 and its high nibbles elements 16+4w..16+4w+3 (no interleaving
// shuffles). nibbles(w): the codes 0..15 as 8 vec4, elements in order.
const LOW: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

fn nibbles(w: vec4<u32>) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(w[i]);
        out[i] = vec4<f32>((word >> LOW) & vec4<u32>(15u));
        out[4u + i] = vec4<f32>((word >> (LOW + 4u)) & vec4<u32>(15u));
    }
    return out;
}
