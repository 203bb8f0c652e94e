//! Prefix reuse of the KV cache: a generation whose prompt starts with what the previous one fed
//! the model computes only the rest, and its output is Hugging Face's greedy continuation all
//! the same, on the CPU and GPU backends and for every strategy.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::adaptive::Setting;
use layerskip::gpu::GpuOptions;
use layerskip::{Completion, Device, GenerateOptions, Model, Strategy};

fn complete(model: &mut Model, prompt: &[u32], options: &GenerateOptions) -> Completion {
    pollster::block_on(model.complete_ids(prompt.to_vec(), options, &[], |_| true)).unwrap()
}

#[test]
fn a_continued_conversation_computes_only_what_is_new() {
    let auto = Strategy::SelfSpeculative {
        exit_layer: Setting::Auto,
        num_speculations: Setting::Auto,
    };
    for name in ["llama2_tiny", "llama32_tiny"] {
        let r = reference(name);
        for device in [cpu(), Device::Gpu(GpuOptions::default())] {
            let mut model = load(name, device.clone());
            for strategy in [Strategy::Autoregressive, Strategy::speculative(2, 3), auto] {
                for p in &r.prompts[..2] {
                    let greedy = &p.greedy.tokens;
                    let options = GenerateOptions {
                        // Auto speculates from the first step, as on a checkpoint trained for early exit.
                        trained_for_early_exit: true,
                        ignore_eos: true,
                        reuse_prefix: true,
                        ..GenerateOptions::greedy(strategy, 4)
                    };
                    let what = format!("{name} {device:?} {strategy:?} {:?}", p.text);
                    let first = complete(&mut model, &p.input_ids, &options);
                    assert_eq!(first.tokens, greedy[..4], "{what}");
                    // The next turn: the first turn's prompt and output, and more. Everything
                    // the first turn fed the model is kept (its last token was never fed).
                    let next: Vec<u32> = p.input_ids.iter().chain(&greedy[..8]).copied().collect();
                    let second = complete(&mut model, &next, &options);
                    assert_eq!(second.tokens, greedy[8..12], "{what}");
                    assert_eq!(
                        second.stats.cached_prompt_tokens,
                        p.input_ids.len() + 3,
                        "{what}"
                    );
                    // A prompt that leaves the cached ids early keeps only the shared part.
                    let mut other = next.clone();
                    other[p.input_ids.len() + 1] = if greedy[1] == 0 { 1 } else { greedy[1] - 1 };
                    let reused = complete(&mut model, &other, &options);
                    assert_eq!(
                        reused.stats.cached_prompt_tokens,
                        p.input_ids.len() + 1,
                        "{what}"
                    );
                    let fresh = complete(
                        &mut model,
                        &other,
                        &GenerateOptions {
                            reuse_prefix: false,
                            ..options.clone()
                        },
                    );
                    assert_eq!(fresh.stats.cached_prompt_tokens, 0, "{what}");
                    assert_eq!(reused.tokens, fresh.tokens, "{what}");
                    // The same prompt again: all but its last token are kept.
                    let again = complete(&mut model, &other, &options);
                    assert_eq!(again.stats.cached_prompt_tokens, other.len() - 1);
                    assert_eq!(again.tokens, fresh.tokens, "{what}");
                }
            }
        }
    }
}

/// Early exit writes only the layers below E, so what it computes is never kept: after an
/// early-exit turn only what the turn before it left is reused. Anything else run on the engine
/// (the logit lens here) leaves nothing to keep.
#[test]
fn only_what_every_layer_holds_is_kept() {
    let r = reference("llama32_tiny");
    let p = &r.prompts[0];
    let mut model = load("llama32_tiny", cpu());
    let plain = GenerateOptions {
        ignore_eos: true,
        reuse_prefix: true,
        ..GenerateOptions::greedy(Strategy::Autoregressive, 4)
    };
    let early = GenerateOptions {
        strategy: Strategy::EarlyExit { exit_layer: 2 },
        ..plain.clone()
    };
    let first = complete(&mut model, &p.input_ids, &plain);
    let next: Vec<u32> = p.input_ids.iter().chain(&first.tokens).copied().collect();
    let mut fresh = load("llama32_tiny", cpu());
    let second = complete(&mut model, &next, &early);
    assert_eq!(second.stats.cached_prompt_tokens, next.len() - 1);
    assert_eq!(second.tokens, complete(&mut fresh, &next, &early).tokens);
    let third = complete(&mut model, &next, &plain);
    assert_eq!(third.stats.cached_prompt_tokens, next.len() - 1);
    let expected = complete(&mut fresh, &next, &plain).tokens;
    assert_eq!(third.tokens, expected);
    // Early exit's own tokens are not kept: a prompt that continues them keeps only the prefix
    // the early-exit turn itself reused.
    let after_early = complete(&mut model, &next, &early);
    let longer: Vec<u32> = next.iter().chain(&after_early.tokens).copied().collect();
    let fourth = complete(&mut model, &longer, &plain);
    assert_eq!(fourth.stats.cached_prompt_tokens, next.len() - 1);
    assert_eq!(fourth.tokens, complete(&mut fresh, &longer, &plain).tokens);

    pollster::block_on(model.logit_lens("x")).unwrap();
    let fifth = complete(&mut model, &next, &plain);
    assert_eq!(fifth.stats.cached_prompt_tokens, 0);
    assert_eq!(fifth.tokens, expected);
}
