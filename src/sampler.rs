//! Sampling on the host from exit-head logits: temperature, then top-k, then top-p (the order of
//! Hugging Face's logits warpers), with a seeded generator so a seed reproduces a generation.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "temperature must be positive, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast and good enough for sampling; the same seed gives the same stream on
/// every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Indices of `values` from the largest down, ties to the lower index (torch's order).
pub fn ranked(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order
}

/// The index of the largest value, the first of equals (torch's argmax); 0 when empty.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if v.total_cmp(&values[best]).is_gt() {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest values with their indices, largest first (the logit lens's top tokens).
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    ranked(values)
        .into_iter()
        .take(k)
        .map(|i| (i, values[i]))
        .collect()
}

/// The distribution a token is drawn from: softmax(logits / temperature) restricted to the
/// top-k and top-p set and renormalised.
pub fn distribution(logits: &[f32], params: &SamplingParams) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f32> = logits
        .iter()
        .map(|l| ((l - max) / params.temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_k > 0 || params.top_p < 1.0 {
        let order = ranked(&probs);
        let mut keep = if params.top_k > 0 {
            params.top_k.min(order.len())
        } else {
            order.len()
        };
        let mut cumulative = 0.0;
        for (i, &t) in order[..keep].iter().enumerate() {
            cumulative += probs[t];
            if cumulative >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        for &t in &order[keep..] {
            probs[t] = 0.0;
        }
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    probs
}

/// Draws an index from a distribution whose entries sum to (about) one.
pub fn draw(probs: &[f32], rng: &mut Rng) -> u32 {
    let mut u = rng.uniform() * probs.iter().sum::<f32>();
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            if u < p {
                return i as u32;
            }
            u -= p;
        }
    }
    last as u32
}

/// Speculative sampling's correction for a rejected draft: normalize(max(0, p - q)). When p and q
/// agree everywhere (nothing to correct) it falls back to p.
pub fn residual(p: &[f32], q: &[f32]) -> Vec<f32> {
    let r: Vec<f32> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    let total: f32 = r.iter().sum();
    if total > 0.0 {
        r.into_iter().map(|x| x / total).collect()
    } else {
        p.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            seed: 0,
        }
    }

    #[test]
    fn filters_follow_hugging_face_semantics() {
        let logits = [2.0f32.ln(), 4.0f32.ln(), 1.0f32.ln(), 3.0f32.ln()]; // probs .2 .4 .1 .3
        let p = distribution(&logits, &params(0, 1.0));
        assert!((p[1] - 0.4).abs() < 1e-6 && (p[2] - 0.1).abs() < 1e-6);
        let p = distribution(&logits, &params(2, 1.0));
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        assert!((p[1] - 4.0 / 7.0).abs() < 1e-6);
        // top_p 0.65: .4 + .3 = .7 reaches it, so two tokens stay.
        let p = distribution(&logits, &params(0, 0.65));
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        let cold = distribution(
            &logits,
            &SamplingParams {
                temperature: 0.01,
                ..params(0, 1.0)
            },
        );
        assert!(cold[1] > 0.999);
    }

    #[test]
    fn draws_match_the_distribution() {
        let probs = [0.1, 0.0, 0.6, 0.3];
        let mut rng = Rng::new(42);
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[draw(&probs, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f32 / 20000.0 - p).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn residual_is_the_normalised_excess() {
        let r = residual(&[0.5, 0.3, 0.2], &[0.2, 0.6, 0.2]);
        assert!((r[0] - 1.0).abs() < 1e-6 && r[1] == 0.0 && r[2] == 0.0);
        assert_eq!(residual(&[0.5, 0.5], &[0.5, 0.5]), vec![0.5, 0.5]);
    }
}
