//! Repetition controls against an independent loop: every step runs the whole sequence through
//! the CPU reference, penalizes the last row's logits by the formulas written out here (Hugging
//! Face's repetition_penalty, OpenAI's frequency and presence penalties) and takes the argmax, or
//! enumerates the exact penalized distribution. Every strategy, greedy and sampled, on the CPU
//! backends and the GPU, must produce that.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::adaptive::Setting;
use layerskip::gpu::GpuOptions;
use layerskip::sampler::distribution;
use layerskip::{
    generate, Call, Device, Engine, Flow, GenerateOptions, Input, Model, Penalties, SamplingParams,
    Strategy,
};
use std::collections::HashMap;

/// Penalties that encourage repeating (the tiny random fixtures rarely repeat on their own, so
/// discouraging penalties alone might change nothing), and ones that discourage it.
const SETTINGS: [Penalties; 2] = [
    Penalties {
        repetition: 0.5,
        frequency: -1.0,
        presence: -0.5,
    },
    Penalties {
        repetition: 1.3,
        frequency: 0.4,
        presence: 0.3,
    },
];

/// The penalized logits of the full model after `prompt` + `generated`, computed from scratch.
fn penalized(model: &mut Model, prompt: &[u32], generated: &[u32], p: &Penalties) -> Vec<f32> {
    let layers = model.engine.config().num_hidden_layers;
    let ids: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let out = pollster::block_on(
        model
            .engine
            .run(&[Call::new(Input::Tokens(&ids), 0, 0..layers).logits(true)]),
    )
    .unwrap();
    let mut logits = out[0].logits[0].clone();
    for (id, l) in logits.iter_mut().enumerate() {
        let id = id as u32;
        let count = generated.iter().filter(|&&t| t == id).count() as f32;
        if count > 0.0 || prompt.contains(&id) {
            *l = if *l > 0.0 {
                *l / p.repetition
            } else {
                *l * p.repetition
            };
        }
        if count > 0.0 {
            *l -= count * p.frequency + p.presence;
        }
    }
    logits
}

fn first_max(v: &[f32]) -> u32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == max).unwrap() as u32
}

fn run(model: &mut Model, prompt: &[u32], options: &GenerateOptions) -> Vec<u32> {
    pollster::block_on(generate(&mut model.engine, prompt, options, |_, _| {
        Flow::Continue
    }))
    .unwrap()
    .tokens
}

#[test]
fn penalized_greedy_decoding_matches_the_independent_loop() {
    let n = 12;
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        let mut oracle = load(name, Device::CpuReference);
        let layers = oracle.engine.config().num_hidden_layers;
        for (p, penalties) in r.prompts[..2].iter().zip(SETTINGS) {
            let mut expected = vec![];
            for _ in 0..n {
                let logits = penalized(&mut oracle, &p.input_ids, &expected, &penalties);
                expected.push(first_max(&logits));
            }
            if penalties.frequency < 0.0 {
                // They change the output, or this test would not see them.
                assert_ne!(expected, p.greedy.tokens[..n], "{name}");
            }
            for device in [
                Device::CpuReference,
                cpu(),
                Device::Gpu(GpuOptions::default()),
            ] {
                let mut model = load(name, device.clone());
                let mut strategies = vec![Strategy::Autoregressive];
                for e in [1, layers / 2, layers - 1] {
                    strategies.push(Strategy::speculative(e, 1));
                    strategies.push(Strategy::speculative(e, 4));
                }
                strategies.push(Strategy::SelfSpeculative {
                    exit_layer: Setting::Auto,
                    num_speculations: Setting::Auto,
                });
                for strategy in strategies {
                    let options = GenerateOptions {
                        // Auto speculates from the first step, as on a checkpoint trained for early exit.
                        trained_for_early_exit: true,
                        ignore_eos: true,
                        penalties,
                        ..GenerateOptions::greedy(strategy, n)
                    };
                    assert_eq!(
                        run(&mut model, &p.input_ids, &options),
                        expected,
                        "{name} {device:?} {strategy:?}"
                    );
                }
            }
        }
    }
}

/// The exact distribution of the first `n` sampled tokens with `penalties`, by enumerating every
/// prefix (top-k keeps the tree small).
fn exact(
    model: &mut Model,
    prompt: &[u32],
    params: &SamplingParams,
    penalties: &Penalties,
    n: usize,
) -> HashMap<u32, f64> {
    let mut frontier = vec![(vec![], 1.0f64)];
    for _ in 0..n {
        let mut next = vec![];
        for (prefix, p) in frontier {
            let logits = penalized(model, prompt, &prefix, penalties);
            for (t, &q) in distribution(&logits, params).iter().enumerate() {
                if q > 0.0 {
                    let mut longer: Vec<u32> = prefix.clone();
                    longer.push(t as u32);
                    next.push((longer, p * q as f64));
                }
            }
        }
        frontier = next;
    }
    // The distribution of the last token.
    let mut last = HashMap::new();
    for (seq, p) in frontier {
        *last.entry(seq[n - 1]).or_default() += p;
    }
    last
}

/// Speculative sampling with penalties keeps the penalized model's distribution: the third
/// token's (whose penalties depend on the first two, drafts included) empirical distribution
/// over 2000 seeds is within sampling noise of the exact one, and far from the unpenalized one.
#[test]
fn penalized_sampling_keeps_the_penalized_distribution() {
    let r = reference("llama32_tiny");
    let prompt = &r.prompts[0].input_ids;
    let mut model = load("llama32_tiny", Device::CpuReference);
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 6,
        top_p: 1.0,
        seed: 0,
    };
    // Strong enough to move the distribution, mild enough not to make one token certain (then
    // every rule would look right).
    let strong = Penalties {
        repetition: 0.8,
        frequency: -0.6,
        presence: -0.4,
    };
    let n = 3;
    let want = exact(&mut model, prompt, &params, &strong, n);
    let unpenalized = exact(&mut model, prompt, &params, &Penalties::default(), n);
    const THRESHOLD: f64 = 0.1;
    assert!(
        tv(&want, &unpenalized) > 2.0 * THRESHOLD,
        "the penalties barely change the distribution: the test could not see them"
    );
    let layers = model.engine.config().num_hidden_layers;
    for strategy in [
        Strategy::Autoregressive,
        Strategy::speculative(1, 2),
        // Drafts from the last layer but one: more of them accepted than from layer 1.
        Strategy::speculative(layers - 1, 2),
        Strategy::SelfSpeculative {
            exit_layer: Setting::Auto,
            num_speculations: Setting::Auto,
        },
    ] {
        let samples: Vec<u32> = (0..2000)
            .map(|seed| {
                let options = GenerateOptions {
                    // Auto speculates from the first step, as on a checkpoint trained for early exit.
                    trained_for_early_exit: true,
                    sampling: Some(SamplingParams { seed, ..params }),
                    ignore_eos: true,
                    penalties: strong,
                    // One more token than counted: the first round may draft 2 (a round never
                    // drafts past the budget), so the third token's verifier row counts a draft.
                    ..GenerateOptions::greedy(strategy, n + 1)
                };
                run(&mut model, prompt, &options)[n - 1]
            })
            .collect();
        let d = tv(&empirical(samples.into_iter()), &want);
        assert!(d < THRESHOLD, "{strategy:?}: TV {d}");
    }
}
