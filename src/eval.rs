//! `layerskip eval`: what each exit layer predicts on a text, measured by the runtime itself.
//! For every layer L the shared exit head is applied to the hidden state after layer L at every
//! position of non-overlapping windows of the text; cross-entropy (nats per token), perplexity
//! and top-1 accuracy of the next token are reported per layer. This is how a weight format's
//! cost in quality is measured, per exit layer (the LayerSkip question).
//!
//! Each block of positions runs one layer at a time: layer l reads the hidden states layer l - 1
//! left in the exit-query cache and writes its own there, so no layer is computed twice.

use crate::engine::{Call, Engine, Head, Input};
use crate::error::{Error, Result};
use serde::Serialize;

/// One exit layer's scores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerScore {
    pub layer: usize,
    pub cross_entropy: f64,
    pub perplexity: f64,
    pub top1_accuracy: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    /// Tokens whose next token was predicted.
    pub tokens: usize,
    pub windows: usize,
    pub window: usize,
    pub layers: Vec<LayerScore>,
}

/// -log softmax(logits)[target], computed stably.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Scores every exit layer on `ids`, in windows of `window` predicted tokens (each window starts
/// at position 0), at most `max_windows` of them.
pub async fn evaluate<E: Engine>(
    engine: &mut E,
    ids: &[u32],
    window: usize,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Evaluation> {
    let layers = engine.config().num_hidden_layers;
    if window == 0 || window + 1 > engine.max_context() {
        return Err(Error::Invalid(format!(
            "the window ({window} tokens) must be at least 1 and fit the context ({} positions, one more for the last target)",
            engine.max_context()
        )));
    }
    if ids.len() < 2 {
        return Err(Error::Invalid(
            "the text encodes to fewer than 2 tokens".into(),
        ));
    }
    let starts: Vec<usize> = (0..ids.len() - 1)
        .step_by(window)
        .take(max_windows.unwrap_or(usize::MAX))
        .collect();
    let block = engine.max_rows();
    let mut nll_sum = vec![0f64; layers];
    let mut correct = vec![0usize; layers];
    let mut tokens = 0;
    for (w, &start) in starts.iter().enumerate() {
        let end = (start + window).min(ids.len() - 1);
        let (inputs, targets) = (&ids[start..end], &ids[start + 1..end + 1]);
        for b0 in (0..inputs.len()).step_by(block) {
            let rows = &inputs[b0..(b0 + block).min(inputs.len())];
            for l in 0..layers {
                let input = match l {
                    0 => Input::Tokens(rows),
                    _ => Input::ExitCache { rows: rows.len() },
                };
                let call = Call::new(input, b0, l..l + 1)
                    .save(0)
                    .head(Head::All)
                    .logits(true);
                let out = engine.run(&[call]).await?.remove(0);
                for (i, logits) in out.logits.iter().enumerate() {
                    let target = targets[b0 + i];
                    nll_sum[l] += nll(logits, target);
                    correct[l] += usize::from(out.picks[i].token == target);
                }
            }
            tokens += rows.len();
        }
        progress(w + 1, starts.len());
    }
    let n = tokens.max(1) as f64;
    Ok(Evaluation {
        tokens,
        windows: starts.len(),
        window,
        layers: (0..layers)
            .map(|l| LayerScore {
                layer: l + 1,
                cross_entropy: nll_sum[l] / n,
                perplexity: (nll_sum[l] / n).exp(),
                top1_accuracy: correct[l] as f64 / n,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_log_likelihood_is_stable() {
        let logits = [1000.0f32, 0.0, 1000.0];
        assert!((nll(&logits, 0) - std::f64::consts::LN_2).abs() < 1e-9);
        assert!((nll(&[0.0, 0.0], 1) - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
