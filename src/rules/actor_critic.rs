//! What the actor-critic rules ([`super::a3c`], [`super::impala`]) share: the loss of the A3C
//! paper (Mnih et al. 2016, section 4 and Algorithm S3) over a batch of steps, and the
//! interval sums behind their metrics.
//!
//! For steps i with policy logits, value V(s_i), the action a_i taken, a value target R_i and
//! an advantage A_i (both fixed: no gradient flows through them),
//!
//! ```text
//! loss = mean_i [ -log pi(a_i|s_i) A_i ]                       policy loss
//!      + value_coef   * mean_i [ (R_i - V(s_i))^2 ]            value loss
//!      - entropy_coef * mean_i [ H(pi(.|s_i)) ]                entropy bonus
//! ```
//!
//! A3C takes R_i = the actor's n-step return and A_i = R_i - V(s_i); IMPALA takes R_i = the
//! V-trace target v_i and A_i = its policy-gradient advantage. The means run over the steps
//! that `mask` marks (IMPALA's segments are padded to `--unroll`).
//!
//! pi is a softmax over logits for discrete actions, or a diagonal Gaussian for continuous
//! ones (policy outputs `[mean (d), log_std (d)]`, see [`crate::model::HeadKind::Gaussian`]):
//! log pi(a|s) = sum_i [ -(a_i - mean_i)^2 / (2 std_i^2) - log std_i - ln(2 pi) / 2 ] and
//! H = sum_i [ log std_i + (1 + ln(2 pi)) / 2 ] (in nats).

use tch::{Kind, Tensor};

use super::RuleMetrics;
use crate::shm::Batch;

/// The actions a batch's steps took, on the learner's device.
pub enum Actions {
    /// Indices `[n]` i64.
    Discrete(Tensor),
    /// Continuous actions `[n, d]` f32 (as sampled, before the environment's clipping).
    Continuous(Tensor),
}

impl Actions {
    /// The first `n` steps' actions of `batch` (`n` rows of transitions, or `n` segment steps
    /// counting the padding), on `core`'s device.
    pub fn of(core: &super::LearnerCore, batch: &Batch, n: usize) -> Actions {
        let d = batch.layout().action_dims;
        Actions::upload(core, &batch.actions[..n], &batch.action_values[..n * d], d)
    }

    /// `indices` (discrete, `action_dims` 0) or `values` (`action_dims` = d per step) on
    /// `core`'s device: the one place that picks the kind from the slot layout's `action_dims`.
    pub fn upload(
        core: &super::LearnerCore,
        indices: &[i64],
        values: &[f32],
        action_dims: usize,
    ) -> Actions {
        if action_dims > 0 {
            let n = (values.len() / action_dims) as i64;
            Actions::Continuous(core.upload_slice(values).view([n, action_dims as i64]))
        } else {
            Actions::Discrete(core.upload_slice(indices))
        }
    }
}

impl Actions {
    /// The actions of the steps `idx` (`[m]` i64, on the same device).
    pub fn select(&self, idx: &Tensor) -> Actions {
        match self {
            Actions::Discrete(a) => Actions::Discrete(a.index_select(0, idx)),
            Actions::Continuous(a) => Actions::Continuous(a.index_select(0, idx)),
        }
    }
}

/// log pi(a_i | s_i) `[n]` of `actions` under the policy whose outputs are `policy` (logits
/// `[n, A]`, or `[n, 2d]` means and log standard deviations), and each step's entropy `[n]`
/// in nats.
pub fn log_prob_entropy(policy: &Tensor, actions: &Actions) -> (Tensor, Tensor) {
    match actions {
        Actions::Discrete(a) => {
            let log_pi = log_policy(policy);
            let log_pi_a = log_pi.gather(1, &a.unsqueeze(1), false).squeeze_dim(1);
            (log_pi_a, entropy(&log_pi))
        }
        Actions::Continuous(a) => {
            let d = a.size()[1];
            let mean = policy.narrow(1, 0, d);
            let log_std = policy.narrow(1, d, d);
            let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
            let z = (a - &mean) * (-&log_std).exp();
            let log_pi_a = (z.square() * -0.5 - &log_std - half_ln_2pi).sum_dim_intlist(
                -1,
                false,
                Kind::Float,
            );
            let entropy = (&log_std + (0.5 + half_ln_2pi)).sum_dim_intlist(-1, false, Kind::Float);
            (log_pi_a, entropy)
        }
    }
}

/// The loss of one update and its parts (0-dim f32 tensors; `total` is differentiable).
pub struct Loss {
    pub total: Tensor,
    pub policy: Tensor,
    pub value: Tensor,
    pub entropy: Tensor,
    /// Mean V(s) over the steps (detached).
    pub value_mean: Tensor,
}

/// Log-probabilities `[n, A]` of the policy whose logits are `logits` `[n, A]`.
pub fn log_policy(logits: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float)
}

/// Entropy in nats `[n]` of each row's policy, from its log-probabilities `[n, A]`:
/// `H = -sum_a pi(a) log pi(a)`.
pub fn entropy(log_pi: &Tensor) -> Tensor {
    -(log_pi.exp() * log_pi).sum_dim_intlist(-1, false, Kind::Float)
}

/// What the loss is computed from, for `n` steps: the policy outputs `logits` (`[n, A]`, or
/// `[n, 2d]` for a Gaussian policy) and `values` `[n]` from the network, `actions`, `targets`
/// R_i and `advantages` A_i `[n]`, `mask` `[n]` f32 (1 for a real step, 0 for padding; `None`:
/// every step counts).
pub struct Steps<'a> {
    pub logits: &'a Tensor,
    pub values: &'a Tensor,
    pub actions: &'a Actions,
    pub targets: &'a Tensor,
    pub advantages: &'a Tensor,
    pub mask: Option<&'a Tensor>,
}

/// The actor-critic loss (see the module docs) of `steps`, with the value loss weighted by
/// `value_coef` and the entropy by `entropy_coef`.
pub fn loss(steps: &Steps, value_coef: f64, entropy_coef: f64) -> Loss {
    let Steps {
        logits,
        values,
        actions,
        targets,
        advantages,
        mask,
    } = *steps;
    let (log_pi_a, entropies) = log_prob_entropy(logits, actions);
    let mean = |x: Tensor| match mask {
        Some(m) => (x * m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0),
        None => x.mean(Kind::Float),
    };
    let policy = mean(-(log_pi_a * advantages.detach()));
    let value = mean((targets.detach() - values).square());
    let entropy = mean(entropies);
    let value_mean = mean(values.detach());
    let total = &policy + &value * value_coef - &entropy * entropy_coef;
    Loss {
        total,
        policy,
        value,
        entropy,
        value_mean,
    }
}

/// Sums of the loss parts over the updates of one metrics interval (on the device: see
/// [`super::DeviceSums`]).
#[derive(Default)]
pub struct Sums {
    parts: super::DeviceSums,
    rho: f64,
    rho_n: u64,
}

impl Sums {
    /// Adds the parts of one applied update's `loss`.
    pub fn add(&mut self, loss: &Loss) {
        self.parts
            .add(&[&loss.policy, &loss.value, &loss.entropy, &loss.value_mean]);
    }

    /// Adds the mean clipped importance weight of one update (IMPALA).
    pub fn add_rho(&mut self, rho_mean: f64) {
        self.rho += rho_mean;
        self.rho_n += 1;
    }

    /// The interval's means as metrics (`None` without updates); resets the sums.
    pub fn take(&mut self) -> RuleMetrics {
        let parts = self.parts.take_means();
        let part = |i: usize| parts.as_ref().map(|p| p[i]);
        let rho = (self.rho_n > 0).then(|| self.rho / self.rho_n as f64);
        (self.rho, self.rho_n) = (0.0, 0);
        RuleMetrics {
            policy_loss: part(0),
            value_loss: part(1),
            entropy: part(2),
            value_mean: part(3),
            rho_mean: rho,
            ..RuleMetrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn log_softmax_and_entropy_match_their_closed_forms() {
        // Uniform over 4 actions: log pi = -ln 4, H = ln 4.
        let uniform = log_policy(&Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu)));
        assert!((uniform.double_value(&[0, 2]) + 4f64.ln()).abs() < 1e-6);
        assert!((entropy(&uniform).double_value(&[0]) - 4f64.ln()).abs() < 1e-6);
        // Logits (0, ln 3): pi = (1/4, 3/4); H = -(1/4 ln 1/4 + 3/4 ln 3/4).
        let lp = log_policy(&t(&[0.0, 3f32.ln()]).view([1, 2]));
        assert!((lp.double_value(&[0, 0]) - 0.25f64.ln()).abs() < 1e-6);
        assert!((lp.double_value(&[0, 1]) - 0.75f64.ln()).abs() < 1e-6);
        let h = -(0.25 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        assert!((entropy(&lp).double_value(&[0]) - h).abs() < 1e-6);
        // A near-deterministic policy has near-zero entropy; shifting logits changes nothing.
        let sharp = log_policy(&t(&[50.0, 0.0, 0.0, 10.0]).view([1, 4]));
        assert!(entropy(&sharp).double_value(&[0]) < 1e-6);
        let shifted = log_policy(&t(&[1000.0, 1000.0 + 3f32.ln()]).view([1, 2]));
        assert!((entropy(&shifted).double_value(&[0]) - h).abs() < 1e-5);
    }

    #[test]
    fn the_loss_worked_by_hand_with_a_padded_step() {
        // Two real steps and one padding step (which must change nothing).
        let logits = t(&[0.0, 3f32.ln(), 0.0, 0.0, 9.0, -9.0])
            .view([3, 2])
            .set_requires_grad(true);
        let values = t(&[1.0, 2.0, 7.0]).set_requires_grad(true);
        let actions = Actions::Discrete(Tensor::from_slice(&[1i64, 0, 1]));
        let targets = t(&[3.0, 1.0, -50.0]);
        let advantages = &targets - values.detach();
        let mask = t(&[1.0, 1.0, 0.0]);
        let l = loss(
            &Steps {
                logits: &logits,
                values: &values,
                actions: &actions,
                targets: &targets,
                advantages: &advantages,
                mask: Some(&mask),
            },
            0.5,
            0.01,
        );
        // Step 0: log pi(1) = ln 3/4, A = 2; step 1: log pi(0) = ln 1/2, A = -1.
        let policy = -(0.75f64.ln() * 2.0 - 0.5f64.ln()) / 2.0;
        let value = (4.0 + 1.0) / 2.0;
        let h0 = -(0.25 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        let entropy = (h0 + 2f64.ln()) / 2.0;
        let close = |a: &Tensor, b: f64| (a.double_value(&[]) - b).abs() < 1e-5;
        assert!(close(&l.policy, policy), "{}", l.policy.double_value(&[]));
        assert!(close(&l.value, value));
        assert!(close(&l.entropy, entropy));
        assert!(close(&l.value_mean, 1.5));
        assert!(close(&l.total, policy + 0.5 * value - 0.01 * entropy));
        // The advantage is a constant: the value's gradient comes from the value loss alone,
        // d/dV [0.5 * mean (R - V)^2] = -(R - V) / 2.
        l.total.backward();
        let g = values.grad();
        assert!((g.double_value(&[0]) + 1.0).abs() < 1e-5, "{g}");
        assert!((g.double_value(&[1]) - 0.5).abs() < 1e-5, "{g}");
        assert_eq!(g.double_value(&[2]), 0.0);
    }
}
