// Weight matrices are stored row-major in their checkpoint format. Half formats keep two values per
// u32 (low half first, as the little-endian file has them) and are unpacked here, so they run on
// adapters without `shader-f16`. `w_pair(i)` returns elements 2i and 2i+1.
#ifdef F32
@group(0) @binding(2) var<storage, read> w: array<vec2<f32>>;
fn w_pair(i: u32) -> vec2<f32> {
    return w[i];
}
#endif
#ifdef F16
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn w_pair(i: u32) -> vec2<f32> {
    return unpack2x16float(w[i]);
}
#endif
#ifdef BF16
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn w_pair(i: u32) -> vec2<f32> {
    let v = w[i];
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
#endif
