//! Self-speculative decoding: greedy output identical to autoregressive greedy (and so to Hugging
//! Face's), sampling that keeps the full model's distribution, and the stopping rules.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::adaptive::Setting;
use layerskip::gpu::GpuOptions;
use layerskip::sampler::distribution;
use layerskip::{
    generate, Call, Device, DirFiles, Engine, Flow, GenerateOptions, Input, Model, SamplingParams,
    StopReason, Strategy, TokenKind,
};
use std::collections::HashMap;

fn run(model: &mut Model, prompt: &[u32], options: &GenerateOptions) -> layerskip::Generation {
    pollster::block_on(generate(&mut model.engine, prompt, options, |_, _| {
        Flow::Continue
    }))
    .unwrap()
}

fn speculative(
    exit_layer: usize,
    num_speculations: usize,
    max_new_tokens: usize,
) -> GenerateOptions {
    GenerateOptions {
        ignore_eos: true,
        ..GenerateOptions::greedy(
            Strategy::speculative(exit_layer, num_speculations),
            max_new_tokens,
        )
    }
}

/// Every exit layer and depth 1..8 on the CPU reference, on every prompt; the GPU on a subset
/// (software Vulkan is slow per dispatch), including the confidence cut-off.
#[test]
fn greedy_self_speculative_equals_hugging_face_greedy() {
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        for (device, depths, prompts) in [
            (cpu(), vec![1, 2, 3, 4, 5, 6, 7, 8], r.prompts.len()),
            (Device::Gpu(GpuOptions::default()), vec![1, 3, 8], 1),
        ] {
            let mut model = load(name, device.clone());
            let layers = model.engine.config().num_hidden_layers;
            for p in &r.prompts[..prompts] {
                for e in 1..layers {
                    for &d in &depths {
                        let g = run(
                            &mut model,
                            &p.input_ids,
                            &speculative(e, d, p.greedy.tokens.len()),
                        );
                        assert_eq!(g.tokens, p.greedy.tokens, "{name} {device:?} E={e} D={d}");
                        assert!(g.stats.rounds > 0 && g.stats.accepted <= g.stats.drafted);
                        // Greedy rounds are one submit each: drafts, last draft, verification.
                        assert_eq!(g.stats.submits_per_round, 1.0, "{name} E={e} D={d}");
                        let confident = GenerateOptions {
                            draft_confidence: Some(0.5),
                            ..speculative(e, d, p.greedy.tokens.len())
                        };
                        assert_eq!(
                            run(&mut model, &p.input_ids, &confident).tokens,
                            p.greedy.tokens,
                            "{name} E={e} D={d} confidence"
                        );
                    }
                }
            }
        }
    }
}

/// `auto` exit layer, depth or both: greedy output equal to Hugging Face's greedy on every prompt
/// of both fixtures on the CPU backends, and on the GPU for a subset; the stats' histograms
/// account for every round.
#[test]
fn greedy_auto_equals_hugging_face_greedy() {
    use Setting::{Auto, Fixed};
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        for (device, prompts) in [
            (cpu(), r.prompts.len()),
            (Device::CpuReference, r.prompts.len()),
            (Device::Gpu(GpuOptions::default()), 2),
        ] {
            let mut model = load(name, device.clone());
            for p in &r.prompts[..prompts] {
                for (exit_layer, num_speculations) in
                    [(Auto, Auto), (Auto, Fixed(3)), (Fixed(1), Auto)]
                {
                    let options = GenerateOptions {
                        // Auto speculates from the first step, as on a checkpoint trained for early exit.
                        trained_for_early_exit: true,
                        ignore_eos: true,
                        ..GenerateOptions::greedy(
                            Strategy::SelfSpeculative {
                                exit_layer,
                                num_speculations,
                            },
                            p.greedy.tokens.len(),
                        )
                    };
                    let g = run(&mut model, &p.input_ids, &options);
                    let case = format!("{name} {device:?} E={exit_layer} D={num_speculations}");
                    assert_eq!(g.tokens, p.greedy.tokens, "{case}");
                    let a = g.stats.adaptive.expect("adaptive stats");
                    assert_eq!(
                        a.exit_layers.values().sum::<usize>(),
                        g.stats.rounds,
                        "{case}"
                    );
                    let plain = a.depths.get(&0).copied().unwrap_or(0);
                    assert_eq!(a.depths.values().sum::<usize>(), g.stats.rounds + plain);
                    if let Fixed(e) = exit_layer {
                        assert!(a.exit_layers.keys().all(|&k| k == e), "{case}");
                    }
                    if let Fixed(d) = num_speculations {
                        // Fewer (or a plain step) only where the token budget clamps a round.
                        assert!(a.depths.keys().all(|&k| k <= d), "{case}");
                    }
                    assert!(
                        a.costs.is_some()
                            && a.acceptance
                                .iter()
                                .flatten()
                                .all(|x| (0.0..=1.0).contains(x))
                    );
                }
            }
        }
    }
}

/// The picks a call makes after a shadow exit layer are the exit head's argmax at that layer:
/// checked on the fast CPU backend and the GPU against the CPU reference's logits of calls that
/// stop there, for a block from the first layer and one resumed from the exit-query cache.
#[test]
fn shadow_picks_are_the_exit_heads_argmax_at_their_layer() {
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        let ids = &r.prompts[1].input_ids;
        let mut oracle = load(name, Device::CpuReference);
        let layers = oracle.config().num_hidden_layers;
        let logits_at = |oracle: &mut Model, e: usize| {
            let call = Call::new(Input::Tokens(ids), 0, 0..e)
                .head(layerskip::Head::All)
                .logits(true);
            pollster::block_on(oracle.engine.run(&[call]))
                .unwrap()
                .remove(0)
                .logits
        };
        let expected: Vec<Vec<Vec<f32>>> = (1..layers).map(|e| logits_at(&mut oracle, e)).collect();
        let all: Vec<usize> = (1..layers).collect();
        let upper: Vec<usize> = (3..layers).collect();
        for device in [cpu(), Device::Gpu(GpuOptions::default())] {
            let mut model = load(name, device.clone());
            let n = ids.len();
            let from_start = Call::new(Input::Tokens(ids), 0, 0..layers)
                .head(layerskip::Head::All)
                .shadow(&all, false);
            let first = Call::new(Input::Tokens(ids), 0, 0..2)
                .head(layerskip::Head::None)
                .save(0);
            let resumed = Call::new(Input::ExitCache { rows: n }, 0, 2..layers)
                .head(layerskip::Head::All)
                .shadow(&upper, false);
            let out = pollster::block_on(model.engine.run(&[from_start, first, resumed])).unwrap();
            for (layers_probed, shadow) in [(&all, &out[0].shadow), (&upper, &out[2].shadow)] {
                assert_eq!(shadow.len(), layers_probed.len());
                for (&e, picks) in layers_probed.iter().zip(shadow) {
                    assert_eq!(picks.len(), n);
                    for (row, pick) in picks.iter().enumerate() {
                        // Equal to the argmax, or a near tie with it.
                        let l = &expected[e - 1][row];
                        let top = l.iter().copied().fold(f32::MIN, f32::max);
                        assert!(
                            l[pick.token as usize] >= top - 1e-3 * top.abs().max(1.0),
                            "{name} {device:?} exit layer {e} row {row}: picked {} ({}) but the top logit is {top}",
                            pick.token,
                            l[pick.token as usize]
                        );
                    }
                }
            }
        }
    }
}

fn load_with_draft_vocab(name: &str, device: Device, n: usize) -> Model {
    pollster::block_on(Model::load(
        &DirFiles::new(fixture(name)).unwrap(),
        &layerskip::LoadOptions {
            draft_vocab: Some(n),
            ..options(device, 128)
        },
        |_| {},
    ))
    .unwrap()
}

/// A draft head over N token ids picks the argmax of the full head's logits among those ids,
/// and returns those logits: the fast CPU backend and the GPU against the CPU reference's full
/// logits. Shadow picks use the draft head too.
#[test]
fn the_draft_head_scores_only_the_draft_vocabulary() {
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        let ids = &r.prompts[0].input_ids;
        let mut oracle = load(name, Device::CpuReference);
        let layers = oracle.config().num_hidden_layers;
        let vocab = oracle.config().vocab_size;
        let full_at = |oracle: &mut Model, e: usize| {
            let call = Call::new(Input::Tokens(ids), 0, 0..e)
                .head(layerskip::Head::All)
                .logits(true);
            pollster::block_on(oracle.engine.run(&[call]))
                .unwrap()
                .remove(0)
                .logits
        };
        let full: Vec<Vec<Vec<f32>>> = (1..=layers).map(|e| full_at(&mut oracle, e)).collect();
        for device in [cpu(), Device::Gpu(GpuOptions::default())] {
            let mut model = load_with_draft_vocab(name, device.clone(), vocab / 5);
            let draft: Vec<u32> = model.engine.draft_vocab().unwrap().to_vec();
            assert_eq!(draft.len(), vocab / 5);
            assert!(
                model.eos_token_ids.iter().all(|e| draft.contains(e)),
                "EOS is draftable"
            );
            let shadow = [1];
            let call = Call::new(Input::Tokens(ids), 0, 0..layers)
                .head(layerskip::Head::All)
                .logits(true)
                .draft_vocab(true)
                .shadow(&shadow, true);
            let out = pollster::block_on(model.engine.run(&[call]))
                .unwrap()
                .remove(0);
            for (layer, picks, logits) in [
                (layers, &out.picks, Some(&out.logits)),
                (1, &out.shadow[0], None),
            ] {
                for (row, pick) in picks.iter().enumerate() {
                    let want = &full[layer - 1][row];
                    let best = draft
                        .iter()
                        .map(|&id| want[id as usize])
                        .fold(f32::MIN, f32::max);
                    assert!(
                        draft.contains(&pick.token),
                        "{name} {device:?}: {} not drafted",
                        pick.token
                    );
                    assert!(
                        want[pick.token as usize] >= best - 1e-3 * best.abs().max(1.0),
                        "{name} {device:?} layer {layer} row {row}: {} is not the best draft id",
                        pick.token
                    );
                    if let Some(logits) = logits {
                        let got = &logits[row];
                        assert_eq!(got.len(), draft.len());
                        let expected: Vec<f32> =
                            draft.iter().map(|&id| want[id as usize]).collect();
                        let err = max_abs_diff(got, &expected);
                        assert!(
                            err < 2e-2,
                            "{name} {device:?} row {row}: logits off by {err}"
                        );
                    }
                }
            }
        }
    }
}

/// On a model not known to be trained for early exit (the fixture), auto's first generation
/// decodes as autoregression does for its first 100 steps and then measures costs; a shorter
/// one never measures, and says so; a generation that starts with measured costs speculates
/// from its first step only where the budget allows, and every one of them gives the
/// autoregressive tokens.
#[test]
fn auto_takes_plain_steps_before_measuring_costs() {
    use Setting::Auto;
    let mut model = load("llama32_tiny", cpu());
    let prompt = &reference("llama32_tiny").prompts[0].input_ids;
    let options = |strategy, n| GenerateOptions {
        ignore_eos: true,
        ..GenerateOptions::greedy(strategy, n)
    };
    let auto = Strategy::SelfSpeculative {
        exit_layer: Auto,
        num_speculations: Auto,
    };
    let plain = run(&mut model, prompt, &options(Strategy::Autoregressive, 110)).tokens;
    let short = run(&mut model, prompt, &options(auto, 40));
    assert_eq!(short.tokens, plain[..40]);
    assert!(short.learned.is_none());
    let a = short.stats.adaptive.expect("adaptive stats");
    // The prefill gives the first token, 39 plain steps the rest.
    assert_eq!((a.steps_before_calibration, a.costs), (39, None));
    assert_eq!(short.stats.rounds, 0);

    let long = run(&mut model, prompt, &options(auto, 110));
    assert_eq!(long.tokens, plain);
    let a = long.stats.adaptive.expect("adaptive stats");
    assert_eq!(a.steps_before_calibration, 100);
    assert!(a.costs.is_some() && a.calibration_ms > 0.0, "{a:?}");

    let next = run(
        &mut model,
        prompt,
        &GenerateOptions {
            learned: long.learned,
            ..options(auto, 100)
        },
    );
    assert_eq!(next.tokens, plain[..100]);
    let a = next.stats.adaptive.expect("adaptive stats");
    assert_eq!((a.steps_before_calibration, a.calibration_ms), (0, 0.0));
}

/// Drafting over a reduced vocabulary never changes greedy output: fixed and `auto` exit
/// layers, on the CPU and the GPU, against Hugging Face's greedy tokens.
#[test]
fn greedy_output_with_a_draft_vocabulary_equals_hugging_face_greedy() {
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        for (device, prompts) in [
            (cpu(), r.prompts.len()),
            (Device::Gpu(GpuOptions::default()), 2),
        ] {
            let vocab = load(name, Device::CpuReference).config().vocab_size;
            for n in [16, vocab / 4] {
                let mut model = load_with_draft_vocab(name, device.clone(), n);
                for p in &r.prompts[..prompts] {
                    for strategy in [
                        Strategy::speculative(1, 4),
                        Strategy::speculative(2, 2),
                        Strategy::SelfSpeculative {
                            exit_layer: Setting::Auto,
                            num_speculations: Setting::Auto,
                        },
                    ] {
                        let options = GenerateOptions {
                            // Auto speculates from the first step, as on a checkpoint trained for early exit.
                            trained_for_early_exit: true,
                            ignore_eos: true,
                            ..GenerateOptions::greedy(strategy, p.greedy.tokens.len())
                        };
                        let g = run(&mut model, &p.input_ids, &options);
                        assert_eq!(
                            g.tokens, p.greedy.tokens,
                            "{name} {device:?} N={n} {strategy:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rounds_never_pass_the_token_budget_and_stop_at_eos() {
    // llama2_tiny's greedy continuation of its first prompt has EOS (id 2) as the 4th token.
    let r = reference("llama2_tiny");
    let p = &r.prompts[0];
    assert_eq!(p.greedy.tokens[3], 2);
    let mut model = load("llama2_tiny", Device::Gpu(GpuOptions::default()));
    for n in [1, 2, 5] {
        let g = run(&mut model, &p.input_ids, &speculative(2, 8, n));
        assert_eq!(g.tokens, p.greedy.tokens[..n], "budget {n}");
    }
    let options = GenerateOptions {
        ignore_eos: false,
        eos_token_ids: model.eos_token_ids.clone(),
        ..speculative(1, 6, 12)
    };
    let g = run(&mut model, &p.input_ids, &options);
    assert_eq!(g.tokens, p.greedy.tokens[..4]);
    assert_eq!(g.stats.stop_reason, StopReason::Eos);
}

#[test]
fn stop_strings_cut_the_text() {
    let r = reference("llama32_tiny");
    let p = &r.prompts[3];
    assert_eq!(p.greedy.text, "+Y\u{fffd}S\u{fffd}ulen%scl self\u{10}");
    let mut model = load("llama32_tiny", Device::Gpu(GpuOptions::default()));
    for strategy in [Strategy::Autoregressive, Strategy::speculative(2, 3)] {
        let options = GenerateOptions::greedy(strategy, 12);
        let mut streamed = String::new();
        let c = pollster::block_on(model.complete("x", &options, &["len".to_string()], |s| {
            if s.kind != TokenKind::Rejected {
                streamed.push_str(s.text);
            }
            true
        }))
        .unwrap();
        assert_eq!(c.text, "+Y\u{fffd}S\u{fffd}u", "{strategy:?}");
        assert_eq!(
            streamed, c.text,
            "{strategy:?}: streamed text stops before the stop string"
        );
        assert_eq!(c.stats.stop_reason, StopReason::StopString);
    }
}

fn sampled(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: 8,
        top_p: 1.0,
        seed,
    }
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let r = reference("llama32_tiny");
    let prompt = &r.prompts[1].input_ids;
    let mut model = load("llama32_tiny", Device::Gpu(GpuOptions::default()));
    for strategy in [
        Strategy::Autoregressive,
        Strategy::EarlyExit { exit_layer: 2 },
        Strategy::speculative(2, 3),
    ] {
        let options = |seed| GenerateOptions {
            sampling: Some(sampled(1.5, seed)),
            ignore_eos: true,
            ..GenerateOptions::greedy(strategy, 10)
        };
        let a = run(&mut model, prompt, &options(7)).tokens;
        assert_eq!(
            a,
            run(&mut model, prompt, &options(7)).tokens,
            "{strategy:?}: same seed, same output"
        );
        assert!(
            (8..12).any(|s| run(&mut model, prompt, &options(s)).tokens != a),
            "{strategy:?}: seeds matter"
        );
    }
}

/// The exact distribution of the first `n` sampled tokens under autoregressive sampling with the
/// full model, by enumerating every prefix (top-k keeps the tree small).
fn exact_distribution(
    model: &mut Model,
    prompt: &[u32],
    params: &SamplingParams,
    n: usize,
    layers: usize,
) -> HashMap<Vec<u32>, f64> {
    let mut frontier = vec![(vec![], 1.0f64)];
    for _ in 0..n {
        let mut next = vec![];
        for (prefix, p) in frontier {
            let ids: Vec<u32> = prompt.iter().chain(&prefix).copied().collect();
            let out = pollster::block_on(
                model
                    .engine
                    .run(&[Call::new(Input::Tokens(&ids), 0, 0..layers).logits(true)]),
            )
            .unwrap();
            for (t, &q) in distribution(&out[0].logits[0], params).iter().enumerate() {
                if q > 0.0 {
                    let mut longer: Vec<u32> = prefix.clone();
                    longer.push(t as u32);
                    next.push((longer, p * q as f64));
                }
            }
        }
        frontier = next;
    }
    frontier.into_iter().collect()
}

/// Total variation distance between the empirical distribution of `samples` and `exact`, over the
/// token at `index`.
fn tv_at(samples: &[Vec<u32>], exact: &HashMap<Vec<u32>, f64>, index: usize) -> f64 {
    let mut want: HashMap<u32, f64> = HashMap::new();
    for (seq, p) in exact {
        *want.entry(seq[index]).or_default() += p;
    }
    tv(&empirical(samples.iter().map(|s| s[index])), &want)
}

#[test]
fn speculative_sampling_keeps_the_full_models_distribution() {
    let r = reference("llama32_tiny");
    let prompt = &r.prompts[0].input_ids;
    let mut model = load("llama32_tiny", Device::CpuReference);
    let layers = model.engine.config().num_hidden_layers;
    let params = sampled(1.0, 0);
    let exact = exact_distribution(&mut model, prompt, &params, 3, layers);
    let runs = 3000;
    let mut sample = |strategy| -> Vec<Vec<u32>> {
        (0..runs)
            .map(|seed| {
                let options = GenerateOptions {
                    // Auto speculates from the first step, as on a checkpoint trained for early exit.
                    trained_for_early_exit: true,
                    sampling: Some(SamplingParams { seed, ..params }),
                    ignore_eos: true,
                    ..GenerateOptions::greedy(strategy, 3)
                };
                run(&mut model, prompt, &options).tokens
            })
            .collect()
    };
    let speculative = sample(Strategy::speculative(1, 2));
    // Exit layer and depth chosen every round (with the confidence cut-off, as sampling uses).
    let adaptive = sample(Strategy::SelfSpeculative {
        exit_layer: Setting::Auto,
        num_speculations: Setting::Auto,
    });
    let autoregressive = sample(Strategy::Autoregressive);
    // Drafts from a reduced head (zero probability outside 64 ids): still the full model's.
    let mut reduced = load_with_draft_vocab("llama32_tiny", Device::CpuReference, 64);
    let draft_vocab: Vec<Vec<u32>> = (0..runs)
        .map(|seed| {
            let options = GenerateOptions {
                sampling: Some(SamplingParams { seed, ..params }),
                ignore_eos: true,
                ..GenerateOptions::greedy(Strategy::speculative(1, 2), 3)
            };
            run(&mut reduced, prompt, &options).tokens
        })
        .collect();
    // A wrong rule that keeps every draft would follow the early-exit model instead.
    let drafts_only = sample(Strategy::EarlyExit { exit_layer: 1 });
    // With 3000 samples over a few dozen tokens the sampling noise in TV is about 0.03-0.06.
    const THRESHOLD: f64 = 0.1;
    for index in 1..3 {
        let auto = tv_at(&adaptive, &exact, index);
        assert!(
            auto < THRESHOLD,
            "auto self-speculative sampling is off: {auto}"
        );
        let reduced = tv_at(&draft_vocab, &exact, index);
        assert!(
            reduced < THRESHOLD,
            "sampling with a draft vocabulary is off: {reduced}"
        );
        let (spec, ar, wrong) = (
            tv_at(&speculative, &exact, index),
            tv_at(&autoregressive, &exact, index),
            tv_at(&drafts_only, &exact, index),
        );
        println!("token {index}: TV to the exact distribution: self-speculative {spec:.3}, autoregressive {ar:.3}, drafts only {wrong:.3}");
        assert!(ar < THRESHOLD, "autoregressive sampling is off: {ar}");
        assert!(
            spec < THRESHOLD,
            "self-speculative sampling does not match the full model: {spec}"
        );
        assert!(
            wrong > 2.0 * THRESHOLD,
            "the test could not tell a wrong rule apart: {wrong}"
        );
    }
}

/// On the fast CPU backend a verification block reads every weight once, however many rows it
/// has: the exact bytes read by a block of 1 row and of 6 rows through the same layers are equal.
#[test]
fn cpu_verification_blocks_read_each_weight_once() {
    let mut model = load("llama32_tiny", cpu());
    let layers = model.config().num_hidden_layers;
    let mut bytes_for = |rows: usize| {
        let ids: Vec<u32> = (0..rows as u32).map(|i| 10 + i).collect();
        let before = match &model.engine {
            layerskip::AnyEngine::Cpu(m) => m.math().weight_bytes_read(),
            _ => unreachable!(),
        };
        let call = Call::new(Input::Tokens(&ids), 0, 0..layers).head(layerskip::Head::All);
        pollster::block_on(model.engine.run(&[call])).unwrap();
        match &model.engine {
            layerskip::AnyEngine::Cpu(m) => m.math().weight_bytes_read() - before,
            _ => unreachable!(),
        }
    };
    let (one, six) = (bytes_for(1), bytes_for(6));
    println!("weight bytes read: {one} for 1 row, {six} for 6 rows");
    assert!(one > 0);
    assert_eq!(one, six);
}
