// The input rows x of a matrix product, read as the weights' K columns see them. Variant SWIGLU:
// x holds [gate | up] rows of width 2K and the input is silu(gate) * up, fusing the MLP's
// activation into the down projection. Variant X_VEC4 (when K is a multiple of 4): x is read 16
// bytes at a time. Constants: K.
#ifdef X_VEC4
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;

// Inputs k..k+3 of token t (k a multiple of 4), zero past K (weight rows are padded to whole
// groups of 32).
fn x4(t: u32, k: u32) -> vec4<f32> {
    if (k >= K) {
        return vec4<f32>(0.0);
    }
#ifdef SWIGLU
    let g = x[(t * 2u * K + k) / 4u];
    let u = x[(t * 2u * K + K + k) / 4u];
    return g / (1.0 + exp(-g)) * u;
#else
    return x[(t * K + k) / 4u];
#endif
}

fn x_at(t: u32, k: u32) -> f32 {
    return x4(t, k & ~3u)[k & 3u];
}
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;

fn x_at(t: u32, k: u32) -> f32 {
#ifdef SWIGLU
    let g = x[t * 2u * K + k];
    let u = x[t * 2u * K + K + k];
    return g / (1.0 + exp(-g)) * u;
#else
    return x[t * K + k];
#endif
}

// Inputs k..k+3 of token t (k a multiple of 4), zero past K.
fn x4(t: u32, k: u32) -> vec4<f32> {
    if (k + 4u <= K) {
        return vec4<f32>(x_at(t, k), x_at(t, k + 1u), x_at(t, k + 2u), x_at(t, k + 3u));
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < K) {
            v[j] = x_at(t, k + j);
        }
    }
    return v;
}
#endif
