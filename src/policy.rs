//! How an agent picks its action from a row of its network's outputs: epsilon-greedy on
//! Q-values, a sample from a policy network's softmax, or (continuous actions) a sample from
//! its diagonal Gaussian. Both the actors' acting loop ([`crate::actor`]) and evaluation
//! ([`crate::eval`], which the periodic evaluator and `play` use) choose their actions here.
//!
//! A diagonal Gaussian policy over d action dimensions is a row `[mean (d), log_std (d)]` of
//! the network's outputs (see [`crate::model::HeadKind::Gaussian`]): the action is drawn from
//! `N(mean, exp(log_std)^2)` per dimension and given to the environment unclipped, which clips
//! it to its bounds (CleanRL's `ppo_continuous_action.py` with Gymnasium's `ClipAction`; Schulman
//! et al. 2017, section 6.1). The log-probability the learner uses is that of the unclipped
//! sample.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// An action as an agent took it: a discrete index, or a continuous vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action<'a> {
    /// An index in `0..num_actions`.
    Discrete(u32),
    /// A vector of the action space's dimensions (before the environment's clipping).
    Continuous(&'a [f32]),
}

impl<'a> Action<'a> {
    /// The discrete index (0 for a continuous action).
    pub fn index(self) -> u32 {
        match self {
            Action::Discrete(a) => a,
            Action::Continuous(_) => 0,
        }
    }

    /// The continuous values (empty for a discrete action).
    pub fn values(self) -> &'a [f32] {
        match self {
            Action::Discrete(_) => &[],
            Action::Continuous(v) => v,
        }
    }
}

/// `ln(2 pi) / 2`, the constant of a standard normal's log-density.
const HALF_LN_2PI: f32 = 0.918_938_5;

/// log pi(action | s) of the policy whose outputs (without V(s)) are `policy`: the logits
/// `[num_actions]` for a discrete action (log softmax, computed stably), or `[mean (d), log_std
/// (d)]` for a continuous one (the sum over dimensions of the Gaussian log-densities).
/// A continuous action whose length is not half the row's gives NaN (which the queue's slot
/// check refuses); a discrete index out of range likewise.
pub fn log_prob(policy: &[f32], action: Action) -> f32 {
    match action {
        Action::Discrete(a) => {
            let Some(&la) = policy.get(a as usize) else {
                return f32::NAN;
            };
            let max = policy.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = policy.iter().map(|l| (l - max).exp()).sum();
            la - max - sum.ln()
        }
        Action::Continuous(x) => {
            let d = x.len();
            if policy.len() != 2 * d {
                return f32::NAN;
            }
            let (mean, log_std) = policy.split_at(d);
            (0..d)
                .map(|i| {
                    let z = (x[i] - mean[i]) * (-log_std[i]).exp();
                    -0.5 * z * z - log_std[i] - HALF_LN_2PI
                })
                .sum()
        }
    }
}

/// Draws a continuous action from the diagonal Gaussian `policy = [mean (d), log_std (d)]`
/// into `out` (`d` long). Non-finite parameters give the mean (or 0).
pub fn sample_gaussian(policy: &[f32], out: &mut [f32], rng: &mut impl Rng) {
    let d = out.len();
    let (mean, log_std) = policy.split_at(d.min(policy.len()));
    for (i, o) in out.iter_mut().enumerate() {
        let m = mean
            .get(i)
            .copied()
            .filter(|m| m.is_finite())
            .unwrap_or(0.0);
        let noise: f32 = StandardNormal.sample(rng);
        let s = log_std
            .get(i)
            .map(|l| l.exp())
            .filter(|s| s.is_finite())
            .unwrap_or(0.0);
        *o = m + s * noise;
    }
}

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

/// A uniformly random continuous action of `spec` into `out` (resized to its dimensions):
/// uniform within each finite `[low, high]`, standard normal where a bound is infinite; for a
/// discrete `spec`, `out` is left empty.
pub fn sample_uniform(spec: &crate::env::ActionSpec, out: &mut Vec<f32>, rng: &mut impl Rng) {
    out.clear();
    if let crate::env::ActionSpec::Box { low, high } = spec {
        out.extend(low.iter().zip(high).map(|(&l, &h)| {
            if l.is_finite() && h.is_finite() && h > l {
                rng.gen_range(l..=h)
            } else if l.is_finite() && h.is_finite() {
                l
            } else {
                StandardNormal.sample(rng)
            }
        }));
    }
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
