//! `layerskip eval` (per-exit-layer cross-entropy and top-1 accuracy) against an independent
//! computation: the plain CPU reference's logit lens (all layers in one call, the exit head at the
//! last row) run on every prefix of every window, one prefix at a time, and the scores summed here. The reference's lens is itself checked against
//! Hugging Face in hf_reference.rs.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::gpu::GpuOptions;
use layerskip::{Call, Device, DirFiles, Engine, Head, Input, KvFormat, Model};

const TEXT: &str = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 1\n";
const WINDOW: usize = 6;

fn load(device: Device) -> Model {
    let mut options = options(device, 64);
    options.engine.kv_cache = KvFormat::F32;
    pollster::block_on(Model::load(
        &DirFiles::new(fixture("llama32_tiny")).unwrap(),
        &options,
        |_| {},
    ))
    .expect("fixture loads")
}

/// (cross-entropy, top-1 accuracy) per layer, from the reference's lens over each prefix.
fn expected(ids: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let mut model = load(Device::CpuReference);
    let layers = model.config().num_hidden_layers;
    let (mut nll, mut correct, mut n) = (vec![0f64; layers], vec![0usize; layers], 0);
    for start in (0..ids.len() - 1).step_by(WINDOW) {
        for p in start..(start + WINDOW).min(ids.len() - 1) {
            let call = Call::new(Input::Tokens(&ids[start..=p]), 0, 0..layers).head(Head::Lens);
            let lens = pollster::block_on(model.engine.run(&[call]))
                .unwrap()
                .remove(0)
                .logits;
            let target = ids[p + 1] as usize;
            for (l, logits) in lens.iter().enumerate() {
                let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
                let log_sum = logits
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
                nll[l] += max + log_sum - logits[target] as f64;
                let top = (0..logits.len())
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                    .unwrap();
                correct[l] += usize::from(top == target);
            }
            n += 1;
        }
    }
    (
        nll.iter().map(|s| s / n as f64).collect(),
        correct.iter().map(|&c| c as f64 / n as f64).collect(),
    )
}

#[test]
fn exit_layer_scores_equal_the_reference_lens_over_every_prefix() {
    let ids = load(Device::CpuReference).tokenizer.encode(TEXT).unwrap();
    assert!(
        ids.len() > 3 * WINDOW,
        "the text spans several windows and a partial one"
    );
    let (cross_entropy, accuracy) = expected(&ids);
    for (name, device) in [
        ("gpu", Device::Gpu(GpuOptions::default())),
        ("cpu", cpu()),
        ("cpu-reference", Device::CpuReference),
    ] {
        let mut model = load(device);
        let eval = pollster::block_on(model.evaluate(TEXT, WINDOW, None, |_, _| {})).unwrap();
        assert_eq!(
            eval.tokens,
            ids.len() - 1,
            "{name}: every token but the last predicted"
        );
        assert_eq!(eval.windows, (ids.len() - 1).div_ceil(WINDOW), "{name}");
        for (l, score) in eval.layers.iter().enumerate() {
            assert_eq!(score.layer, l + 1);
            assert!(
                (score.cross_entropy - cross_entropy[l]).abs() < 1e-4,
                "{name} layer {}: cross-entropy {} vs {}",
                l + 1,
                score.cross_entropy,
                cross_entropy[l]
            );
            assert!((score.perplexity - cross_entropy[l].exp()).abs() < 1e-3 * score.perplexity);
            assert_eq!(score.top1_accuracy, accuracy[l], "{name} layer {}", l + 1);
        }
    }
}

#[test]
fn windows_are_checked_against_the_context() {
    let mut model = load(cpu());
    for window in [0, 64] {
        let err = pollster::block_on(model.evaluate(TEXT, window, None, |_, _| {})).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }
}
