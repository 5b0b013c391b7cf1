//! `--algorithm ppo` and `--algorithm appo`: proximal policy optimization's clipped objective
//! (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 and 9) over the
//! actors' segments, trained for several epochs over minibatches of each batch, as the PPO
//! paper's Atari settings and CleanRL's `ppo_atari.py` do it: advantages normalised per
//! minibatch, the value's change clipped like the ratio, an entropy bonus, the learning rate
//! annealed linearly (`--lr-decay`).
//!
//! Actor half: IMPALA's ([`super::impala::Unroll`]): segments of up to `--unroll` steps with
//! the behaviour policy's log-probability `log mu(a_t|s_t)` of each action taken.
//!
//! Learner half ([`Learner`]): on every full batch of `--batch-size` segments, the current
//! weights value every state once (`V_old`); the advantages `A_t` and value targets `R_t` are
//! computed from them, on the host, and held fixed; then `--ppo-epochs` passes, each over the
//! batch's steps shuffled and split into `--minibatches` minibatches (every step once per
//! epoch, [`minibatches`]), one optimizer step per minibatch on [`clipped_loss`]:
//!
//! ```text
//! ratio_t = exp(log pi(a_t|s_t) - log mu(a_t|s_t))
//! policy  = mean_t max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps))      eps = --ppo-clip
//! value   = 0.5 mean_t max((V - R_t)^2, (V_old + clip(V - V_old, -eps, eps) - R_t)^2)
//! loss    = policy + value_coef * value - entropy_coef * mean_t H(pi(.|s_t))
//! ```
//!
//! (`--value-clip false`: `value = 0.5 mean (V - R)^2`; `--normalize-advantages`: each
//! minibatch's `A_t` shifted and scaled to mean 0 and standard deviation 1 first.) The loss is
//! written in terms of the log-probabilities and entropies of the actions taken, so a head
//! other than a softmax (a Gaussian's) needs only those two.
//!
//! The two rules differ in the targets and in what they do with data of older policies:
//!
//! - **ppo** is on-policy, up to a lag of `--max-policy-lag` updates. The learner publishes a
//!   snapshot after every update (whatever `--sync-frames` says), and a segment stamped with a
//!   version more than `--max-policy-lag` older than the newest published one is dropped when
//!   it is taken from the queue ([`LearnerRule::acting`]). With 0, PPO waits for fresh data:
//!   but the actors keep acting while an update trains, and what they push meanwhile is
//!   dropped (about half the frames on 2 cores). The default, 1, trains on those segments
//!   too: a segment's stamp is the snapshot of its last step, its earlier steps may be a
//!   version older still, and the clipped ratio against the actor's own `log mu` accounts for
//!   the lag, as it does within PPO's epochs. `A_t` is generalized
//!   advantage estimation (Schulman et al. 2016, [`gae`], `--gae-lambda`), `R_t = A_t + V_old`.
//! - **appo** keeps every segment and corrects for the lag with V-trace (Espeholt et al. 2018,
//!   [`super::vtrace`], `--vtrace-rho`, `--vtrace-c`), as Sample Factory's and RLlib's APPO do:
//!   `R_t = v_t`, the V-trace target, and `A_t = min(rho-bar, pi/mu) (r_t + gamma v_t+1 -
//!   V_old(s_t))`, its policy-gradient advantage, both from the weights at the update's start;
//!   the ratio of the clipped surrogate is still taken against the behaviour policy mu. It
//!   also publishes after every update, so the lag is what the queue holds.
//!
//! A segment that ends in a terminal state has discount 0 on its last step; one cut by
//! `--unroll` or a truncation bootstraps from `V_old(s_len)`.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use tch::{Kind, Tensor};

use super::actor_critic::{self, Sums};
use super::impala::{segment_states, segments_layout, Unroll};
use super::vtrace::{vtrace, Clip};
use super::{
    Family, Head, HeldBatch, LearnerCore, LearnerRule, NonFinite, RuleMetrics, RuleSpec,
    UpdateStats,
};
use crate::config::Config;
use crate::shm::Batch;

/// `--algorithm ppo`.
pub static PPO: RuleSpec = RuleSpec {
    name: "ppo",
    about: "PPO (Schulman et al. 2017): clipped surrogate, epochs over minibatches, GAE; publishes every update and drops segments acted by snapshots older than --max-policy-lag",
    head: Head::ActorCritic,
    reads: &[Family::ActorCritic, Family::Segments, Family::Ppo, Family::Gae],
    horizon: |cfg| format!("segments of {} steps", cfg.rule.segments.unroll),
    adder: |cfg, obs| Box::new(Unroll::new(segments_layout(cfg, obs))),
    slot_layout: segments_layout,
    learner: |core, cfg| Box::new(Learner::new(core, cfg, Rule::Ppo)),
    publish_every_update: true,
    check: super::spec::no_checks,
};

/// `--algorithm appo`.
pub static APPO: RuleSpec = RuleSpec {
    name: "appo",
    about: "APPO (Sample Factory, RLlib): PPO's clipped surrogate with V-trace targets for actors acting on stale snapshots",
    reads: &[
        Family::ActorCritic,
        Family::Segments,
        Family::VTrace,
        Family::Ppo,
    ],
    learner: |core, cfg| Box::new(Learner::new(core, cfg, Rule::Appo)),
    ..PPO
};

/// Which of the two rules a [`Learner`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// GAE targets; segments of older snapshots dropped.
    Ppo,
    /// V-trace targets; every segment kept.
    Appo,
}

/// The advantages and value targets of one segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// `A_t` `[n]`.
    pub advantages: Vec<f32>,
    /// `R_t` `[n]`.
    pub returns: Vec<f32>,
}

/// Generalized advantage estimation (Schulman et al. 2016, eq. 16) of one segment of
/// `n = rewards.len()` steps: `discounts[t]` = gamma (0 when s_t+1 is terminal), `values` =
/// V(s_0..s_n) (`n + 1` entries: the last is the bootstrap), `lambda` in [0, 1]. With
/// `delta_t = r_t + discounts[t] V(s_t+1) - V(s_t)`, computed backwards:
///
/// ```text
/// A_t = delta_t + discounts[t] * lambda * A_t+1      (A_n = 0)
/// R_t = A_t + V(s_t)                                 (the value target, CleanRL's `returns`)
/// ```
///
/// Panics if the lengths disagree.
pub fn gae(rewards: &[f32], discounts: &[f32], values: &[f32], lambda: f32) -> Targets {
    let n = rewards.len();
    assert!(
        discounts.len() == n && values.len() == n + 1,
        "gae: {n} rewards, {} discounts, {} values (want n, n, n + 1)",
        discounts.len(),
        values.len()
    );
    let mut advantages = vec![0f32; n];
    let mut acc = 0f32;
    for t in (0..n).rev() {
        let delta = rewards[t] + discounts[t] * values[t + 1] - values[t];
        acc = delta + discounts[t] * lambda * acc;
        advantages[t] = acc;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    Targets {
        advantages,
        returns,
    }
}

/// One epoch's minibatches of `n` samples: `0..n` shuffled by `rng` and split into
/// `min(k, n)` minibatches (none when `n` is 0) whose sizes differ by at most one, so each sample is in exactly
/// one (CleanRL takes `n / k` each; here the remainder is spread, not dropped).
pub fn minibatches(n: usize, k: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let k = k.clamp(1, n.max(1));
    let (size, extra) = (n / k, n % k);
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let len = size + usize::from(i < extra);
        out.push(order[start..start + len].to_vec());
        start += len;
    }
    out
}

/// The settings of [`clipped_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipSettings {
    /// `--ppo-clip`, eps.
    pub clip: f64,
    /// `--value-clip`.
    pub value_clip: bool,
    /// `--normalize-advantages`.
    pub normalize_advantages: bool,
    /// `--value-coef`.
    pub value_coef: f64,
    /// `--entropy-coef`.
    pub entropy_coef: f64,
}

/// What the clipped loss of `n` steps is computed from (f32 tensors `[n]`, on one device):
/// from the network being trained, `log_pi_a` (log pi(a_t|s_t) of the actions taken),
/// `entropy` (H(pi(.|s_t)), nats) and `values` (V(s_t)), all differentiable; fixed:
/// `behaviour_log_pi_a` (log mu(a_t|s_t), the acting policy's), `old_values` (V_old(s_t)),
/// `returns` (R_t) and `advantages` (A_t, before any normalisation).
pub struct Clipped<'a> {
    pub log_pi_a: &'a Tensor,
    pub entropy: &'a Tensor,
    pub values: &'a Tensor,
    pub behaviour_log_pi_a: &'a Tensor,
    pub old_values: &'a Tensor,
    pub returns: &'a Tensor,
    pub advantages: &'a Tensor,
}

/// PPO's clipped loss of one minibatch (see the module docs), with its parts: `policy` the
/// clipped surrogate (negated), `value` the (clipped) value loss with its factor 0.5, `entropy`
/// the mean entropy, `value_mean` the mean V(s) (detached). Advantage normalisation needs two
/// steps or more (a single step's advantage is left as it is).
pub fn clipped_loss(s: &Clipped, c: &ClipSettings) -> actor_critic::Loss {
    let adv = s.advantages.detach();
    let adv = if c.normalize_advantages && adv.size()[0] > 1 {
        (&adv - adv.mean(Kind::Float)) / (adv.std(true) + 1e-8)
    } else {
        adv
    };
    let ratio = (s.log_pi_a - s.behaviour_log_pi_a.detach()).exp();
    let unclipped = -(&adv) * &ratio;
    let clipped = -(&adv) * ratio.clamp(1.0 - c.clip, 1.0 + c.clip);
    let policy = unclipped.maximum(&clipped).mean(Kind::Float);
    let returns = s.returns.detach();
    let value_sq = (s.values - &returns).square();
    let value = if c.value_clip {
        let old = s.old_values.detach();
        let v_clipped = &old + (s.values - &old).clamp(-c.clip, c.clip);
        0.5 * value_sq
            .maximum(&(v_clipped - &returns).square())
            .mean(Kind::Float)
    } else {
        0.5 * value_sq.mean(Kind::Float)
    };
    let entropy = s.entropy.mean(Kind::Float);
    let value_mean = s.values.detach().mean(Kind::Float);
    let total = &policy + &value * c.value_coef - &entropy * c.entropy_coef;
    actor_critic::Loss {
        total,
        policy,
        value,
        entropy,
        value_mean,
    }
}

/// The learner half of ppo and appo; see the module docs.
pub struct Learner {
    core: LearnerCore,
    held: HeldBatch,
    rule: Rule,
    gamma: f32,
    lambda: f32,
    vtrace: Clip,
    loss: ClipSettings,
    epochs: usize,
    minibatches: usize,
    rng: StdRng,
    /// ppo: the version the actors act with now (segments of versions more than `max_lag`
    /// older are dropped).
    acting: Option<u32>,
    /// ppo: `--max-policy-lag`.
    max_lag: u32,
    /// ppo: segments dropped for being acted by an older snapshot, over the run.
    dropped: u64,
    sums: Sums,
}

impl Learner {
    /// The learner half of `rule` around `core`, with `cfg`'s settings.
    pub fn new(core: LearnerCore, cfg: &Config, rule: Rule) -> Self {
        let layout = super::slot_layout(cfg, core.obs, core.action_dims);
        let r = &cfg.rule;
        let (rho, c) = (r.vtrace.vtrace_rho as f32, r.vtrace.vtrace_c as f32);
        Learner {
            core,
            held: HeldBatch::new(cfg.learner.batch_size, layout),
            rule,
            gamma: cfg.learner.gamma,
            lambda: r.gae.gae_lambda as f32,
            vtrace: Clip {
                rho_bar: rho,
                c_bar: c,
                pg_rho_bar: rho,
            },
            loss: ClipSettings {
                clip: r.ppo.ppo_clip,
                value_clip: r.ppo.value_clip,
                normalize_advantages: r.ppo.normalize_advantages,
                value_coef: r.actor_critic.value_coef,
                entropy_coef: r.actor_critic.entropy_coef,
            },
            epochs: r.ppo.ppo_epochs,
            minibatches: r.ppo.minibatches,
            rng: StdRng::seed_from_u64(cfg.run.seed ^ 0x990_990),
            acting: None,
            max_lag: r.gae.max_policy_lag,
            dropped: 0,
            sums: Sums::default(),
        }
    }

    /// Segments dropped so far for being acted by an older snapshot (ppo).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The held batch's steps as flat host vectors, one entry per real step (segment by
    /// segment, in order): the row of its state in [`segment_states`], the action, the
    /// behaviour's log-probability, A_t, R_t and V_old(s_t); `values` holds V_old of every
    /// state row `[n * (T + 1)]`, `target_logp` log pi_old(a|s) of every step slot
    /// `[n * T]` (appo only). Also the sum of the clipped rhos (appo).
    fn targets(&self, values: &[f32], target_logp: &[f32]) -> (Steps, f64) {
        let b = &self.held;
        let n = b.len();
        let t_max = b.layout().steps();
        let t1 = t_max + 1;
        let mut s = Steps::default();
        let mut rho_sum = 0f64;
        for i in 0..n {
            let len = b.lens[i] as usize;
            let row = i * t_max..i * t_max + len;
            let mut discounts = vec![self.gamma; len];
            if b.terminal[i] {
                discounts[len - 1] = 0.0;
            }
            let v = &values[i * t1..i * t1 + len + 1];
            let t = match self.rule {
                Rule::Ppo => gae(&b.rewards[row.clone()], &discounts, v, self.lambda),
                Rule::Appo => {
                    let log_rhos: Vec<f32> = target_logp[row.clone()]
                        .iter()
                        .zip(&b.behaviour_logp[row.clone()])
                        .map(|(p, m)| p - m)
                        .collect();
                    let vt = vtrace(
                        &log_rhos,
                        &discounts,
                        &b.rewards[row.clone()],
                        v,
                        self.vtrace,
                    );
                    rho_sum += vt.clipped_rhos.iter().map(|r| f64::from(*r)).sum::<f64>();
                    Targets {
                        advantages: vt.pg_advantages,
                        returns: vt.vs,
                    }
                }
            };
            s.state_rows.extend((0..len).map(|k| (i * t1 + k) as i64));
            s.actions.extend_from_slice(&b.actions[row.clone()]);
            let d = b.layout().action_dims;
            s.action_values
                .extend_from_slice(&b.action_values[row.start * d..row.end * d]);
            s.behaviour_logp.extend_from_slice(&b.behaviour_logp[row]);
            s.advantages.extend_from_slice(&t.advantages);
            s.returns.extend_from_slice(&t.returns);
            s.old_values.extend_from_slice(&v[..len]);
        }
        (s, rho_sum)
    }
}

/// The real steps of a batch, flattened (see [`Learner::targets`]).
#[derive(Default)]
struct Steps {
    state_rows: Vec<i64>,
    actions: Vec<i64>,
    /// Continuous actions, `action_dims` per step (empty for discrete actions).
    action_values: Vec<f32>,
    behaviour_logp: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
    old_values: Vec<f32>,
}

impl LearnerRule for Learner {
    fn insert(&mut self, batch: &mut Batch, _frames: u64) -> usize {
        if let (Rule::Ppo, Some(v)) = (self.rule, self.acting) {
            let (versions, max_lag) = (batch.versions.clone(), self.max_lag);
            // Versions are the low 32 bits of a counter: the lag is the wrapping difference.
            self.dropped += batch.retain(|i| v.wrapping_sub(versions[i]) <= max_lag) as u64;
        }
        if !self.held.take(batch) {
            return 0;
        }
        self.held.steps()
    }

    fn ready(&mut self, _frames: u64) -> bool {
        self.held.is_ready()
    }

    fn acting(&mut self, version: u32) {
        self.acting = Some(version);
    }

    fn update(&mut self, lr: f64) -> Result<Option<UpdateStats>, NonFinite> {
        let n = self.held.len();
        let t_max = self.held.layout().steps();
        let t1 = t_max + 1;
        let states = segment_states(&self.core, &self.held, n);
        // V_old and log pi_old, once, with the weights at the update's start.
        let (values, target_logp) = {
            let _guard = tch::no_grad_guard();
            let (logits, values) = self
                .core
                .model
                .policy_value(&states)
                .expect("ppo builds an actor-critic network");
            let values: Vec<f32> =
                Vec::try_from(values.to_device(tch::Device::Cpu).view([-1])).expect("f32 values");
            let target_logp: Vec<f32> = if self.rule == Rule::Appo {
                let a = logits.size()[1];
                let logits = logits
                    .view([n as i64, t1 as i64, a])
                    .narrow(1, 0, t_max as i64)
                    .reshape([(n * t_max) as i64, a]);
                let actions = actor_critic::Actions::of(&self.core, &self.held, n * t_max);
                let lp = actor_critic::log_prob_entropy(&logits, &actions)
                    .0
                    .to_device(tch::Device::Cpu);
                Vec::try_from(&lp).expect("f32 log-probabilities")
            } else {
                Vec::new()
            };
            (values, target_logp)
        };
        let (steps, rho_sum) = self.targets(&values, &target_logp);
        let m = steps.actions.len();
        let c = &self.core;
        let state_rows = c.upload_slice(&steps.state_rows);
        let actions = actor_critic::Actions::upload(
            c,
            &steps.actions,
            &steps.action_values,
            self.held.layout().action_dims,
        );
        let behaviour = c.upload_slice(&steps.behaviour_logp);
        let advantages = c.upload_slice(&steps.advantages);
        let returns = c.upload_slice(&steps.returns);
        let old_values = c.upload_slice(&steps.old_values);
        let (mut loss_sum, mut value_sum, mut count) = (None::<Tensor>, None::<Tensor>, 0);
        let mut failed = None;
        'epochs: for _ in 0..self.epochs {
            for mb in minibatches(m, self.minibatches, &mut self.rng) {
                let idx: Vec<i64> = mb.iter().map(|&j| j as i64).collect();
                let idx = self.core.upload_slice(&idx);
                let obs = states.index_select(0, &state_rows.index_select(0, &idx));
                let (logits, v) = self
                    .core
                    .model
                    .policy_value(&obs)
                    .expect("ppo builds an actor-critic network");
                let (log_pi_a, entropy) =
                    actor_critic::log_prob_entropy(&logits, &actions.select(&idx));
                let loss = clipped_loss(
                    &Clipped {
                        log_pi_a: &log_pi_a,
                        entropy: &entropy,
                        values: &v.view([-1]),
                        behaviour_log_pi_a: &behaviour.index_select(0, &idx),
                        old_values: &old_values.index_select(0, &idx),
                        returns: &returns.index_select(0, &idx),
                        advantages: &advantages.index_select(0, &idx),
                    },
                    &self.loss,
                );
                match self.core.step(&loss.total, &loss.value_mean, lr) {
                    Ok(s) => {
                        self.sums.add(&loss);
                        loss_sum = Some(loss_sum.map_or(s.loss.shallow_clone(), |t| t + &s.loss));
                        value_sum =
                            Some(value_sum.map_or(s.q_mean.shallow_clone(), |t| t + &s.q_mean));
                        count += 1;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break 'epochs;
                    }
                }
            }
        }
        if self.rule == Rule::Appo && m > 0 {
            self.sums.add_rho(rho_sum / m as f64);
        }
        self.held.release();
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(loss_sum.zip(value_sum).map(|(l, v)| UpdateStats {
            loss: l / count as f64,
            q_mean: v / count as f64,
        }))
    }

    fn core(&self) -> &LearnerCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut LearnerCore {
        &mut self.core
    }

    fn metrics(&mut self) -> RuleMetrics {
        self.sums.take()
    }
}

#[cfg(test)]
#[path = "ppo_tests.rs"]
mod tests;
