// Shared by every kernel. `step` describes the block of positions the current forward call works on;
// it lives in a uniform buffer bound with a dynamic offset, one slot per call within a submit.
struct Step {
    // Rows (tokens) in the block.
    n_tokens: u32,
    // Absolute position of the block's first token (KV cache index, RoPE angle).
    pos0: u32,
    // First source row for kernels that read a sub-range of rows (the exit head).
    row0: u32,
    // Offset into the token id buffer of the block's first token.
    tok0: u32,
    // First output row for kernels that append to a shared result buffer (picks).
    out0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> step: Step;

// Workgroup index of a 1D grid folded into 2D (past 65535 workgroups per dimension).
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
