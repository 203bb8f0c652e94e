//! Each WGSL kernel run on its own against the plain CPU implementation, on sizes that are not
//! multiples of the workgroup size (64) nor of the 4-token matmul tile.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::cpu;
use layerskip::format::{f16_to_f32, f32_to_f16};
use layerskip::format::{Layout, Packed};
use layerskip::gpu::context::MatvecShape;
use layerskip::gpu::kernels::{Kernel, KernelRunner};
use layerskip::gpu::ops::{self, Attention, Product, Split, Variant};
use layerskip::gpu::tensor::Matrix;
use layerskip::gpu::{GpuContext, GpuOptions};
use layerskip::{Format, KvFormat};

const FORMATS: [Format; 9] = Format::ALL;

fn run(ctx: &GpuContext, kernel: &Kernel, step: [u32; 5], buffers: &[&[u8]]) -> Vec<Vec<u8>> {
    pollster::block_on(KernelRunner::new(ctx).run(kernel, step, buffers)).unwrap()
}

/// A matrix of `values` (rows x cols) in `format` on the GPU, with its packed bytes.
fn matrix(ctx: &GpuContext, format: Format, values: &[f32], cols: usize) -> (Matrix, Packed) {
    let rows = values.len() / cols;
    let packed = format.pack(values, cols).unwrap();
    let layout = Layout::uniform(format, rows, cols);
    (Matrix::new(ctx, "w", &layout).unwrap(), packed)
}

/// The kernels a product can run on: mat-vec with subgroup sums (where the adapter has them),
/// mat-vec with workgroup-memory sums, and the tiled kernel; each with the token counts it is used
/// for, across its edges (the 4-token pass, the 32-token tile).
fn product_kernels(ctx: &GpuContext) -> Vec<(&'static str, Product, Vec<usize>)> {
    let matvec = |subgroups: bool| Product::Matvec {
        workgroup_size: 256,
        shape: MatvecShape {
            rows_per_workgroup: 4,
            subgroups,
        },
    };
    let mut kernels = vec![("matvec", matvec(false), vec![1, 3, 4, 5, 8])];
    if ctx.tuning.matvec(8).subgroups || ctx.tuning.subgroups {
        kernels.push(("matvec+subgroups", matvec(true), vec![1, 3, 4, 5, 8]));
    }
    kernels.push(("gemm", Product::Gemm, vec![1, 3, 31, 32, 33, 128, 130]));
    kernels
}

const PLAIN: Variant = Variant {
    swiglu: false,
    accumulate: false,
};
const ACCUMULATE: Variant = Variant {
    swiglu: false,
    accumulate: true,
};
const SWIGLU: Variant = Variant {
    swiglu: true,
    accumulate: false,
};

/// y (t x n) after a product of `w` (rows x k) with x in `variant`, starting from y0.
fn expected_product(
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    y0: &[f32],
    variant: Variant,
) -> Vec<f32> {
    let rows = w.len() / k;
    let input: Vec<f32> = match variant.swiglu {
        true => x
            .chunks(2 * k)
            .flat_map(|row| cpu::swiglu(&row[..k], &row[k..]))
            .collect(),
        false => x.to_vec(),
    };
    let product = cpu::matmul(&input, w, k);
    let mut expected = y0.to_vec();
    for (t, out) in expected.chunks_mut(n).enumerate() {
        for r in 0..rows {
            let v = product[t * rows + r];
            out[r] = if variant.accumulate { out[r] + v } else { v };
        }
    }
    expected
}

/// Every format's products on every kernel against f32 math on the CPU's dequantization of the
/// same weights, with a width that is not a multiple of the 32-element group (150), for each
/// variant and token counts across each kernel's edges. Output rows are wider than the matrix
/// (`N`): the columns past it stay untouched.
#[test]
fn products_in_every_format_and_kernel() {
    let ctx = gpu();
    println!("adapter subgroups: {}", ctx.tuning.subgroups);
    let mut runner = KernelRunner::new(&ctx);
    let mut rng = Rng::new(1);
    let rows = 45;
    let n = rows + 6;
    // 150: scalar input loads and a partial last group; 160: 16-byte input loads (X_VEC4).
    for (k, format) in FORMATS.iter().flat_map(|&f| [(150, f), (160, f)]) {
        let w = rng.values(rows * k);
        let (m, packed) = matrix(&ctx, format, &w, k);
        let dequantized = format.unpack(&packed, rows, k);
        for (name, product, counts) in product_kernels(&ctx) {
            for variant in [PLAIN, ACCUMULATE, SWIGLU] {
                for &t in &counts {
                    let width = if variant.swiglu { 2 * k } else { k };
                    let x = rng.values(t * width);
                    let y0 = rng.values(t * n);
                    let out = pollster::block_on(runner.run_matrix(
                        |b| ops::product(product, variant, k, n, b),
                        [t as u32, 0, 0, 0, 0],
                        &[&f32_bytes(&x), &f32_bytes(&y0)],
                        &m,
                        &packed,
                    ))
                    .unwrap();
                    let expected = expected_product(&x, &dequantized, k, n, &y0, variant);
                    let err = max_abs_diff(&floats(&out[1]), &expected);
                    assert!(
                        err < 1e-4,
                        "{format:?} {name} {variant:?} {t} tokens: max error {err}"
                    );
                }
            }
        }
    }
}

/// Matrices split into row blocks under a small binding limit: each block's dispatch writes its
/// own rows, for every format and kernel.
#[test]
fn products_over_row_blocks() {
    let mut rng = Rng::new(11);
    let (k, rows) = (150, 300);
    let n = rows + 2;
    let w = rng.values(rows * k);
    for format in FORMATS {
        let limit = (format.row_data_bytes(k) as u64 * 100).max(8192);
        let ctx = gpu_with(GpuOptions {
            max_binding_override: Some(limit),
            ..GpuOptions::default()
        });
        let mut runner = KernelRunner::new(&ctx);
        let (m, packed) = matrix(&ctx, format, &w, k);
        assert!(m.blocks.len() >= 3, "{format:?}: {} blocks", m.blocks.len());
        let dequantized = format.unpack(&packed, rows, k);
        for (name, product, _) in product_kernels(&ctx) {
            for t in [1, 5, 33]
                .into_iter()
                .filter(|&t| t <= 8 || product == Product::Gemm)
            {
                let x = rng.values(t * k);
                let y0 = rng.values(t * n);
                let out = pollster::block_on(runner.run_matrix(
                    |b| ops::product(product, ACCUMULATE, k, n, b),
                    [t as u32, 0, 0, 0, 0],
                    &[&f32_bytes(&x), &f32_bytes(&y0)],
                    &m,
                    &packed,
                ))
                .unwrap();
                let expected = expected_product(&x, &dequantized, k, n, &y0, ACCUMULATE);
                let err = max_abs_diff(&floats(&out[1]), &expected);
                assert!(
                    err < 1e-4,
                    "{format:?} {name} {t} tokens over {} blocks: {err}",
                    m.blocks.len()
                );
            }
        }
    }
}

#[test]
fn embed_gathers_rows_of_every_format_and_block() {
    let ctx = gpu_with(GpuOptions {
        max_binding_override: Some(2048),
        ..GpuOptions::default()
    });
    let mut runner = KernelRunner::new(&ctx);
    let mut rng = Rng::new(3);
    let (h, rows) = (70, 200);
    let table = rng.values(rows * h);
    let tokens = [99u32, 12, 5, 199, 0, 130];
    for format in FORMATS {
        let (m, packed) = matrix(&ctx, format, &table, h);
        assert!(m.blocks.len() > 1, "{format:?}: split into blocks");
        let dequantized = format.unpack(&packed, rows, h);
        let x0 = rng.values(5 * h);
        let out = pollster::block_on(runner.run_matrix(
            |b| ops::embed(h, b),
            [5, 0, 0, 1, 0],
            &[&u32_bytes(&tokens), &f32_bytes(&x0)],
            &m,
            &packed,
        ))
        .unwrap();
        let got = floats(&out[1]);
        for (t, &id) in tokens[1..].iter().enumerate() {
            let id = id as usize;
            assert_eq!(
                &got[t * h..(t + 1) * h],
                &dequantized[id * h..(id + 1) * h],
                "{format:?} token {id}"
            );
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
        &ops::rms_norm(h, 1e-5),
        [t as u32, 0, row0 as u32, 0, 0],
        &[
            &f32_bytes(&x),
            &f32_bytes(&weight),
            &f32_bytes(&vec![0.0; t * h]),
        ],
    );
    let expected = cpu::rms_norm(&x[row0 * h..(row0 + t) * h], &weight, 1e-5);
    let err = max_abs_diff(&floats(&out[2]), &expected);
    assert!(err < 1e-5, "max error {err}");
}

/// A KV cache's bytes in `format`: f32, or f16 pairs in u32 words.
fn kv_bytes(values: &[f32], format: KvFormat) -> Vec<u8> {
    match format {
        KvFormat::F32 => f32_bytes(values),
        KvFormat::F16 => values
            .iter()
            .flat_map(|&v| f32_to_f16(v).to_le_bytes())
            .collect(),
    }
}

/// A KV cache's values read back from `format`.
fn kv_values(bytes: &[u8], format: KvFormat) -> Vec<f32> {
    match format {
        KvFormat::F32 => floats(bytes),
        KvFormat::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
    }
}

fn shape(head_dim: usize, query_heads: usize, kv_heads: usize, kv: KvFormat) -> Attention {
    Attention {
        head_dim,
        query_heads,
        kv_heads,
        kv,
    }
}

/// Queries rotated in place; keys rotated and values copied into the cache at their positions,
/// stored in both KV formats (f16 within half an f16 ulp of the f32 result), other positions
/// untouched. Head dim 18 has an odd number of pairs per half.
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
                let (c, s) = layerskip::config::rope_cos_sin(p, f);
                [c, s]
            })
        })
        .collect();
    for format in [KvFormat::F32, KvFormat::F16] {
        let cache0: Vec<f32> = rng
            .values(capacity * nkv * hd)
            .iter()
            .map(|&v| format.round(v))
            .collect();
        let out = run(
            &ctx,
            &ops::rope(&shape(hd, nh, nkv, format)),
            [t as u32, pos0 as u32, 0, 0, 0],
            &[
                &f32_bytes(&qkv),
                &f32_bytes(&table),
                &kv_bytes(&cache0, format),
                &kv_bytes(&cache0, format),
            ],
        );
        let (got_qkv, got_k, got_v) = (
            floats(&out[0]),
            kv_values(&out[2], format),
            kv_values(&out[3], format),
        );
        let (mut k_cache, mut v_cache) = (cache0.clone(), cache0.clone());
        for ti in 0..t {
            let row = &qkv[ti * qkv_dim..(ti + 1) * qkv_dim];
            let mut q = row[..nh * hd].to_vec();
            let mut k = row[nh * hd..(nh + nkv) * hd].to_vec();
            cpu::rope(&mut q, nh, hd, pos0 + ti, &inv_freq);
            cpu::rope(&mut k, nkv, hd, pos0 + ti, &inv_freq);
            let err = max_abs_diff(&got_qkv[ti * qkv_dim..ti * qkv_dim + nh * hd], &q);
            assert!(err < 1e-5, "{format:?} queries of token {ti}: {err}");
            let at = (pos0 + ti) * nkv * hd;
            k_cache[at..at + nkv * hd].copy_from_slice(&k);
            v_cache[at..at + nkv * hd].copy_from_slice(&row[(nh + nkv) * hd..]);
        }
        // Values here are below 4 in magnitude: an f16 ulp there is at most 2^-9.
        let tolerance = match format {
            KvFormat::F32 => 1e-5,
            KvFormat::F16 => 2f32.powi(-10) + 1e-5,
        };
        assert!(
            max_abs_diff(&got_k, &k_cache) < tolerance,
            "{format:?} keys"
        );
        let v_err = max_abs_diff(&got_v, &v_cache);
        assert!(v_err <= tolerance, "{format:?} values {v_err}");
        for p in (0..capacity).filter(|p| !(pos0..pos0 + t).contains(p)) {
            let at = p * nkv * hd..(p + 1) * nkv * hd;
            assert_eq!(
                got_v[at.clone()],
                cache0[at],
                "{format:?}: position {p} untouched"
            );
        }
    }
}

#[test]
fn attention_over_several_tiles_with_gqa_and_mqa() {
    let ctx = gpu();
    let mut rng = Rng::new(5);
    // (head_dim, heads, kv heads, block rows, first position): 133 keys span three 64-key tiles;
    // head_dim 130 gives each invocation three output dims.
    for format in [KvFormat::F32, KvFormat::F16] {
        for (hd, nh, nkv, t, pos0) in [(18, 6, 2, 3, 130), (130, 2, 1, 2, 5), (20, 4, 4, 1, 0)] {
            let qkv_dim = (nh + 2 * nkv) * hd;
            let capacity = pos0 + t;
            let qkv = rng.values(t * qkv_dim);
            // The cache holds what the format can: the reference reads the same values.
            let k_cache: Vec<f32> = rng
                .values(capacity * nkv * hd)
                .iter()
                .map(|&v| format.round(v))
                .collect();
            let v_cache: Vec<f32> = rng
                .values(capacity * nkv * hd)
                .iter()
                .map(|&v| format.round(v))
                .collect();
            let out = run(
                &ctx,
                &ops::attention(&shape(hd, nh, nkv, format)),
                [t as u32, pos0 as u32, 0, 0, 0],
                &[
                    &f32_bytes(&qkv),
                    &kv_bytes(&k_cache, format),
                    &kv_bytes(&v_cache, format),
                    &f32_bytes(&vec![0.0; t * nh * hd]),
                ],
            );
            let q: Vec<f32> = qkv
                .chunks(qkv_dim)
                .flat_map(|row| row[..nh * hd].to_vec())
                .collect();
            let expected = cpu::attention(
                &q,
                &cpu::KvRows::f32(&k_cache).unwrap(),
                &cpu::KvRows::f32(&v_cache).unwrap(),
                pos0,
                cpu::Heads {
                    query: nh,
                    kv: nkv,
                    dim: hd,
                },
            );
            let err = max_abs_diff(&floats(&out[3]), &expected);
            assert!(
                err < 1e-5,
                "{format:?} hd {hd} nh {nh} nkv {nkv}: max error {err}"
            );
        }
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
        &ops::argmax(v, false),
        [t as u32, 0, 0, 0, out0 as u32],
        &[&f32_bytes(&logits), &u32_bytes(&[0; 12])],
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

/// Attention split over ranges of CHUNK keys, then merged, equals the whole-context reference at
/// key counts just below, at and just above each range boundary (and with more ranges than a
/// token needs, which must count for nothing), in both KV formats.
#[test]
fn split_attention_matches_at_every_range_boundary() {
    let ctx = gpu();
    let mut runner = KernelRunner::new(&ctx);
    let mut rng = Rng::new(9);
    let (hd, nh, nkv, chunk, splits) = (20, 4, 2, 16, 8);
    let qkv_dim = (nh + 2 * nkv) * hd;
    let mut cases = 0;
    for format in [KvFormat::F32, KvFormat::F16] {
        // (first position, block rows): the last token sees pos0 + t keys.
        for (pos0, t) in [
            (12, 3),
            (13, 3),
            (14, 3),
            (29, 3),
            (30, 5),
            (47, 2),
            (48, 1),
            (100, 4),
        ] {
            let capacity = pos0 + t;
            let qkv = rng.values(t * qkv_dim);
            let k_cache: Vec<f32> = rng
                .values(capacity * nkv * hd)
                .iter()
                .map(|&v| format.round(v))
                .collect();
            let v_cache: Vec<f32> = rng
                .values(capacity * nkv * hd)
                .iter()
                .map(|&v| format.round(v))
                .collect();
            let a = shape(hd, nh, nkv, format);
            let split = Split { chunk, splits };
            let step = [t as u32, pos0 as u32, 0, 0, 0];
            let parts = pollster::block_on(runner.run(
                &ops::attention_split(&a, split),
                step,
                &[
                    &f32_bytes(&qkv),
                    &kv_bytes(&k_cache, format),
                    &kv_bytes(&v_cache, format),
                    &f32_bytes(&vec![0.0; t * nh * splits * (hd + 2)]),
                ],
            ))
            .unwrap()
            .remove(3);
            let out = pollster::block_on(runner.run(
                &ops::attention_merge(&a, split),
                step,
                &[&parts, &f32_bytes(&vec![0.0; t * nh * hd])],
            ))
            .unwrap();
            let q: Vec<f32> = qkv
                .chunks(qkv_dim)
                .flat_map(|row| row[..nh * hd].to_vec())
                .collect();
            let expected = cpu::attention(
                &q,
                &cpu::KvRows::f32(&k_cache).unwrap(),
                &cpu::KvRows::f32(&v_cache).unwrap(),
                pos0,
                cpu::Heads {
                    query: nh,
                    kv: nkv,
                    dim: hd,
                },
            );
            let err = max_abs_diff(&floats(&out[1]), &expected);
            assert!(
                err < 1e-5,
                "{format:?} pos0 {pos0} rows {t}: max error {err}"
            );
            cases += 1;
        }
    }
    println!("split attention: {cases} cases");
}
