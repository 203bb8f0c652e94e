//! Each WGSL kernel run on its own against the plain CPU implementation, on sizes that are not
//! multiples of the workgroup size (64) nor of the 4-token matmul tile.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::checkpoint::DType;
use layerskip::cpu;
use layerskip::gpu::kernels::{run_once, Access, Defines, Grid, Shader};
use layerskip::gpu::GpuContext;

fn weight_bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => f32_bytes(values),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16_bits(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
    }
}

fn format(dtype: DType) -> Defines {
    Defines::new().flag(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
    })
}

fn run(
    ctx: &GpuContext,
    shader: Shader,
    defines: &Defines,
    step: [u32; 5],
    buffers: &[(Access, &[u8])],
    grid: Grid,
) -> Vec<Vec<u8>> {
    pollster::block_on(run_once(ctx, shader, defines, step, buffers, grid)).unwrap()
}

#[test]
fn matmul_all_formats_and_variants() {
    let ctx = gpu();
    let mut rng = Rng::new(1);
    let (k, rows, row0, n, t) = (150, 37, 3, 43, 5);
    let w = rng.values(rows * k);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for variant in [None, Some("ACCUMULATE"), Some("SWIGLU")] {
            let width = if variant == Some("SWIGLU") { 2 * k } else { k };
            let x = rng.values(t * width);
            let y0 = rng.values(t * n);
            let mut defines = format(dtype)
                .u32("K", k)
                .u32("ROWS", rows)
                .u32("ROW0", row0)
                .u32("N", n);
            if let Some(v) = variant {
                defines = defines.flag(v);
            }
            let out = run(
                &ctx,
                Shader::Matmul,
                &defines,
                [t as u32, 0, 0, 0, 0],
                &[
                    (Access::Read, &f32_bytes(&x)),
                    (Access::Read, &weight_bytes(&w, dtype)),
                    (Access::Write, &f32_bytes(&y0)),
                ],
                Grid::Fixed(rows as u32),
            );
            let input = match variant {
                Some("SWIGLU") => x
                    .chunks(2 * k)
                    .flat_map(|row| cpu::swiglu(&row[..k], &row[k..]))
                    .collect(),
                _ => x.clone(),
            };
            let product = cpu::matmul(&input, &w, k);
            let mut expected = y0.clone();
            for ti in 0..t {
                for r in 0..rows {
                    let at = ti * n + row0 + r;
                    let v = product[ti * rows + r];
                    expected[at] = if variant == Some("ACCUMULATE") {
                        expected[at] + v
                    } else {
                        v
                    };
                }
            }
            let got = floats(&out[2]);
            let err = max_abs_diff(&got, &expected);
            assert!(err < 1e-4, "{dtype:?} {variant:?}: max error {err}");
        }
    }
}

#[test]
fn rmsnorm_reads_rows_from_row0() {
    let ctx = gpu();
    let mut rng = Rng::new(2);
    let (h, rows, row0, t) = (70, 5, 2, 3);
    let x = rng.values(rows * h);
    let weight = rng.values(h);
    let out = run(
        &ctx,
        Shader::RmsNorm,
        &Defines::new().u32("H", h).f32("EPS", 1e-5),
        [t as u32, 0, row0 as u32, 0, 0],
        &[
            (Access::Read, &f32_bytes(&x)),
            (Access::Read, &f32_bytes(&weight)),
            (Access::Write, &f32_bytes(&vec![0.0; t * h])),
        ],
        Grid::PerToken(1),
    );
    let expected = cpu::rms_norm(&x[row0 * h..(row0 + t) * h], &weight, 1e-5);
    let err = max_abs_diff(&floats(&out[2]), &expected);
    assert!(err < 1e-5, "max error {err}");
}

#[test]
fn embed_gathers_rows_of_its_block_only() {
    let ctx = gpu();
    let mut rng = Rng::new(3);
    let (h, row0, rows) = (70, 10, 20);
    let table = rng.values(rows * h);
    let tokens = [99u32, 12, 5, 29, 10, 30];
    let x0 = rng.values(5 * h);
    for dtype in [DType::F32, DType::BF16] {
        let out = run(
            &ctx,
            Shader::Embed,
            &format(dtype)
                .u32("H", h)
                .u32("ROW0", row0)
                .u32("ROWS", rows),
            [5, 0, 0, 1, 0],
            &[
                (Access::Read, &u32_bytes(&tokens)),
                (Access::Read, &weight_bytes(&table, dtype)),
                (Access::Write, &f32_bytes(&x0)),
            ],
            Grid::Threads((h / 2) as u32),
        );
        let got = floats(&out[2]);
        for (t, &id) in tokens[1..].iter().enumerate() {
            let row = &got[t * h..(t + 1) * h];
            let id = id as usize;
            if (row0..row0 + rows).contains(&id) {
                assert_eq!(
                    row,
                    &table[(id - row0) * h..(id - row0 + 1) * h],
                    "{dtype:?} token {id}"
                );
            } else {
                assert_eq!(
                    row,
                    &x0[t * h..(t + 1) * h],
                    "{dtype:?} token {id} is another block's"
                );
            }
        }
    }
}

#[test]
fn rope_rotates_queries_and_fills_the_kv_cache() {
    let ctx = gpu();
    let mut rng = Rng::new(4);
    let (hd, nh, nkv, t, pos0, capacity) = (18, 3, 2, 3, 4, 10);
    let qkv_dim = (nh + 2 * nkv) * hd;
    let qkv = rng.values(t * qkv_dim);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let table: Vec<f32> = (0..capacity)
        .flat_map(|p| {
            inv_freq.iter().flat_map(move |&f| {
                let (c, s) = cpu::rope_cos_sin(p, f);
                [c, s]
            })
        })
        .collect();
    let cache0 = rng.values(capacity * nkv * hd);
    let out = run(
        &ctx,
        Shader::Rope,
        &Defines::new()
            .u32("HD", hd)
            .u32("NH", nh)
            .u32("NKV", nkv)
            .u32("QKV", qkv_dim),
        [t as u32, pos0 as u32, 0, 0, 0],
        &[
            (Access::Write, &f32_bytes(&qkv)),
            (Access::Read, &f32_bytes(&table)),
            (Access::Write, &f32_bytes(&cache0)),
            (Access::Write, &f32_bytes(&cache0)),
        ],
        Grid::Threads(((nh + nkv) * hd / 2) as u32),
    );
    let (got_qkv, got_k, got_v) = (floats(&out[0]), floats(&out[2]), floats(&out[3]));
    let (mut k_cache, mut v_cache) = (cache0.clone(), cache0.clone());
    for ti in 0..t {
        let row = &qkv[ti * qkv_dim..(ti + 1) * qkv_dim];
        let mut q = row[..nh * hd].to_vec();
        let mut k = row[nh * hd..(nh + nkv) * hd].to_vec();
        cpu::rope(&mut q, nh, hd, pos0 + ti, &inv_freq);
        cpu::rope(&mut k, nkv, hd, pos0 + ti, &inv_freq);
        let err = max_abs_diff(&got_qkv[ti * qkv_dim..ti * qkv_dim + nh * hd], &q);
        assert!(err < 1e-5, "queries of token {ti}: {err}");
        let at = (pos0 + ti) * nkv * hd;
        k_cache[at..at + nkv * hd].copy_from_slice(&k);
        v_cache[at..at + nkv * hd].copy_from_slice(&row[(nh + nkv) * hd..]);
    }
    assert!(max_abs_diff(&got_k, &k_cache) < 1e-5, "keys");
    assert_eq!(
        got_v, v_cache,
        "values are copied unchanged, other positions untouched"
    );
}

#[test]
fn attention_over_several_tiles_with_gqa_and_mqa() {
    let ctx = gpu();
    let mut rng = Rng::new(5);
    // (head_dim, heads, kv heads, block rows, first position): 133 keys span three 64-key tiles;
    // head_dim 130 gives each invocation three output dims.
    for (hd, nh, nkv, t, pos0) in [(18, 6, 2, 3, 130), (130, 2, 1, 2, 5), (20, 4, 4, 1, 0)] {
        let qkv_dim = (nh + 2 * nkv) * hd;
        let capacity = pos0 + t;
        let qkv = rng.values(t * qkv_dim);
        let k_cache = rng.values(capacity * nkv * hd);
        let v_cache = rng.values(capacity * nkv * hd);
        let out = run(
            &ctx,
            Shader::Attention,
            &Defines::new()
                .u32("HD", hd)
                .u32("NH", nh)
                .u32("NKV", nkv)
                .u32("QKV", qkv_dim)
                .u32("DPT", hd.div_ceil(64)),
            [t as u32, pos0 as u32, 0, 0, 0],
            &[
                (Access::Read, &f32_bytes(&qkv)),
                (Access::Read, &f32_bytes(&k_cache)),
                (Access::Read, &f32_bytes(&v_cache)),
                (Access::Write, &f32_bytes(&vec![0.0; t * nh * hd])),
            ],
            Grid::PerToken(nh as u32),
        );
        let q: Vec<f32> = qkv
            .chunks(qkv_dim)
            .flat_map(|row| row[..nh * hd].to_vec())
            .collect();
        let expected = cpu::attention(&q, &k_cache, &v_cache, pos0, nh, nkv, hd);
        let err = max_abs_diff(&floats(&out[3]), &expected);
        assert!(err < 1e-5, "hd {hd} nh {nh} nkv {nkv}: max error {err}");
    }
}

#[test]
fn argmax_picks_the_first_maximum_and_the_normaliser() {
    let ctx = gpu();
    let mut rng = Rng::new(6);
    let (v, t, out0) = (333, 3, 2);
    let mut logits = rng.values(t * v);
    // Row 1: a tie between 300 and 7 goes to the first index, as torch.argmax does.
    logits[v + 300] = 5.0;
    logits[v + 7] = 5.0;
    let out = run(
        &ctx,
        Shader::Argmax,
        &Defines::new().u32("V", v),
        [t as u32, 0, 0, 0, out0 as u32],
        &[
            (Access::Read, &f32_bytes(&logits)),
            (Access::Write, &u32_bytes(&[0; 12])),
        ],
        Grid::PerToken(1),
    );
    let picks = words(&out[1]);
    assert_eq!(&picks[..4], &[0, 0, 0, 0], "rows before out0 untouched");
    for row in 0..t {
        let expected = cpu::pick(&logits[row * v..(row + 1) * v]);
        let (token, sum) = (
            picks[(out0 + row) * 2],
            f32::from_bits(picks[(out0 + row) * 2 + 1]),
        );
        assert_eq!(token, expected.token, "row {row}");
        assert!(
            (sum - expected.sum_exp).abs() < 1e-4 * expected.sum_exp,
            "row {row}: {sum} vs {}",
            expected.sum_exp
        );
    }
    assert_eq!(picks[(out0 + 1) * 2], 7);
}
