//! How an agent picks its action from a row of its network's outputs: epsilon-greedy on
//! Q-values, or a sample from a policy network's softmax. Both the actors' acting loop
//! ([`crate::actor`]) and evaluation ([`crate::eval`], which the periodic evaluator and `play`
//! use) choose their actions here.

use rand::Rng;

/// How an agent picks its action from a row of the network's action values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActionPolicy {
    /// Q-values: with probability epsilon a uniform action, else the argmax.
    EpsilonGreedy(f64),
    /// Policy logits: a sample from their softmax (the actor-critic rules).
    Sample,
}

impl From<f64> for ActionPolicy {
    fn from(epsilon: f64) -> Self {
        ActionPolicy::EpsilonGreedy(epsilon)
    }
}

impl ActionPolicy {
    /// The action for `values` (`[num_actions]`: Q-values or logits).
    pub fn act(self, values: &[f32], rng: &mut impl Rng) -> usize {
        match self {
            ActionPolicy::EpsilonGreedy(e) => epsilon_greedy(values, e, rng),
            ActionPolicy::Sample => sample_softmax(values, rng),
        }
    }
}

/// An action drawn from `softmax(logits)` (computed stably: the largest logit is subtracted
/// first). Non-finite logits fall back to the argmax.
pub fn sample_softmax(logits: &[f32], rng: &mut impl Rng) -> usize {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Two passes over the logits instead of a vector of weights: no allocation per step.
    let weight = |l: f32| f64::from(l - max).exp();
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    if !total.is_finite() || total <= 0.0 {
        return argmax(logits);
    }
    let mut u = rng.gen::<f64>() * total;
    for (i, &l) in logits.iter().enumerate() {
        let w = weight(l);
        if u < w {
            return i;
        }
        u -= w;
    }
    logits.len() - 1
}

/// Greedy-or-random action: with probability `epsilon` a uniform action, else argmax of `q`.
pub fn epsilon_greedy(q: &[f32], epsilon: f64, rng: &mut impl Rng) -> usize {
    if explores(epsilon, rng) {
        rng.gen_range(0..q.len())
    } else {
        argmax(q)
    }
}

/// The first half of [`epsilon_greedy`], drawn before the Q-values are known: true (a random
/// action) with probability `epsilon`.
pub(crate) fn explores(epsilon: f64, rng: &mut impl Rng) -> bool {
    rng.gen::<f64>() < epsilon
}

/// Index of the largest value (the first of equals); 0 for an empty slice.
pub(crate) fn argmax(q: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in q.iter().enumerate() {
        if *v > q[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn sampling_follows_the_softmax() {
        let mut rng = StdRng::seed_from_u64(2);
        // Logits ln(1), ln(2), ln(7): probabilities 0.1, 0.2, 0.7 (any shift gives the same).
        let logits = [100.0f32, 100.0 + 2f32.ln(), 100.0 + 7f32.ln()];
        let n = 20_000;
        let mut seen = [0usize; 3];
        for _ in 0..n {
            seen[ActionPolicy::Sample.act(&logits, &mut rng)] += 1;
        }
        for (count, p) in seen.iter().zip([0.1, 0.2, 0.7]) {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((*count as f64 - n as f64 * p).abs() < 4.0 * sd, "{seen:?}");
        }
        // Non-finite logits fall back to the argmax instead of panicking.
        assert_eq!(sample_softmax(&[0.0, f32::NAN, 1.0], &mut rng), 2);
        assert_eq!(ActionPolicy::from(0.0).act(&[0.1, 0.9], &mut rng), 1);
    }

    #[test]
    fn epsilon_greedy_extremes() {
        let mut rng = StdRng::seed_from_u64(1);
        let q = [0.1, 0.9, 0.3];
        for _ in 0..100 {
            assert_eq!(epsilon_greedy(&q, 0.0, &mut rng), 1);
        }
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[epsilon_greedy(&q, 1.0, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
