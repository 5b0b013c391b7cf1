//! `--algorithm a3c`: the advantage actor-critic of "Asynchronous Methods for Deep
//! Reinforcement Learning" (Mnih et al. 2016, Algorithm S3), with the gradient step on the
//! learner as everywhere in this project.
//!
//! Actor half: the n-step segment of [`super::nstep_q::Segment`]. The actor samples its
//! actions from the snapshot's policy (softmax of the logits; no epsilon), holds up to
//! `--n-step` steps (t_max, 5 in the paper), bootstraps `R = V(s_t+n; snapshot)` (0 at a
//! terminal state; a time-limit truncation bootstraps), walks back `R_i = r_i + gamma R_i+1`
//! and pushes `(s_i, a_i, R_i)`.
//!
//! Learner half ([`Learner`]): on every full batch, in arrival order, one step on the loss of
//! [`super::actor_critic`] with `R_i` as the value target and `R_i - V(s_i)` (current weights,
//! not differentiated) as the advantage.

use super::actor_critic::{self, Sums};
use super::nstep_q::{n_step_horizon, returns_layout, Segment};
use super::{
    Family, Head, HeldBatch, LearnerCore, LearnerRule, NonFinite, RuleMetrics, RuleSpec,
    UpdateStats,
};
use crate::config::Config;
use crate::returns::Bootstrap;
use crate::shm::Batch;

/// `--algorithm a3c`.
pub static SPEC: RuleSpec = RuleSpec {
    name: "a3c",
    about: "Advantage actor-critic (A3C, Mnih et al. 2016): the actor samples from the snapshot's policy and bootstraps n-step returns with its V(s')",
    head: Head::ActorCritic,
    reads: &[Family::NStep, Family::ActorCritic],
    horizon: n_step_horizon,
    // The actor computes its n-step returns as n-step Q's does, bootstrapped with V(s').
    adder: |cfg, obs| Box::new(Segment::new(cfg, obs.bytes(), Bootstrap::Value)),
    slot_layout: returns_layout,
    learner: |core, cfg| Box::new(Learner::new(core, cfg)),
    publish_every_update: false,
    check: super::spec::no_checks,
};

/// The learner half: one actor-critic step on every full batch of n-step returns.
pub struct Learner {
    core: LearnerCore,
    held: HeldBatch,
    value_coef: f64,
    entropy_coef: f64,
    sums: Sums,
}

impl Learner {
    pub fn new(core: LearnerCore, cfg: &Config) -> Self {
        let layout = super::slot_layout(cfg, core.obs, core.action_dims);
        Learner {
            core,
            held: HeldBatch::new(cfg.learner.batch_size, layout),
            value_coef: cfg.rule.actor_critic.value_coef,
            entropy_coef: cfg.rule.actor_critic.entropy_coef,
            sums: Sums::default(),
        }
    }
}

impl LearnerRule for Learner {
    fn insert(&mut self, batch: &mut Batch, _frames: u64) -> usize {
        if !self.held.take(batch) {
            return 0;
        }
        self.held.len()
    }

    fn ready(&mut self, _frames: u64) -> bool {
        self.held.is_ready()
    }

    fn update(&mut self, lr: f64) -> Result<Option<UpdateStats>, NonFinite> {
        let b = &self.held;
        let n = b.len();
        let c = &self.core;
        let obs = c.obs_tensor(&b.obs, n);
        let actions = actor_critic::Actions::of(c, b, n);
        let returns = c.upload_slice(&b.returns[..n]);
        let (logits, values) = c
            .model
            .policy_value(&obs)
            .expect("a3c builds an actor-critic network");
        let advantages = &returns - values.detach();
        let loss = actor_critic::loss(
            &actor_critic::Steps {
                logits: &logits,
                values: &values,
                actions: &actions,
                targets: &returns,
                advantages: &advantages,
                mask: None,
            },
            self.value_coef,
            self.entropy_coef,
        );
        let result = self.core.step(&loss.total, &loss.value_mean, lr);
        if result.is_ok() {
            self.sums.add(&loss);
        }
        self.held.release();
        result.map(Some)
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
mod tests {
    use super::super::nstep_q::Segment;
    use super::super::{Adder, ExperienceSink, StepEnd};
    use crate::config::Config;
    use crate::returns::Bootstrap;
    use crate::shm::{PushError, Transition};

    #[derive(Default)]
    struct Collect(Vec<(u8, u32, f32)>);

    impl ExperienceSink for Collect {
        fn push(&mut self, t: &Transition) -> Result<(), PushError> {
            self.0.push((t.obs[0], t.action, t.ret));
            Ok(())
        }
    }

    /// The paper's targets by hand: R = V(s_t+n) from the snapshot's outputs (logits, then
    /// V), walked back with gamma; 0 after a terminal; V(s') after a truncation.
    #[test]
    fn n_step_advantage_targets_bootstrap_with_the_snapshots_value() {
        let cfg =
            Config::from_flags(["--algorithm", "a3c", "--n-step", "3", "--gamma", "0.5"]).unwrap();
        let mut seg = Segment::new(&cfg, 1, Bootstrap::Value);
        let mut out = Collect::default();
        let mut never = |_: &[u8]| -> (Vec<f32>, usize) { panic!("no truncation here") };
        // Outputs of 2 actions: logits, then V(s). The logits must not matter.
        let row = |v: f32| [9.0f32, -9.0, v];
        for (t, r) in [(0u8, 1.0f32), (1, 0.0), (2, 2.0)] {
            seg.begin(
                &[t],
                crate::policy::Action::Discrete(u32::from(t % 2)),
                Some(&row(100.0)),
                &mut out,
            )
            .unwrap();
            seg.end(r, StepEnd::Continue, &[t + 1], &mut never, &mut out)
                .unwrap();
        }
        // V(s_3) = 8: R2 = 2 + 0.5*8 = 6, R1 = 0 + 0.5*6 = 3, R0 = 1 + 0.5*3 = 2.5.
        seg.begin(
            &[3],
            crate::policy::Action::Discrete(1),
            Some(&row(8.0)),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.0, vec![(0, 0, 2.5), (1, 1, 3.0), (2, 0, 6.0)]);
        // A terminal: no bootstrap. R3 = -1.
        seg.end(-1.0, StepEnd::Terminal, &[4], &mut never, &mut out)
            .unwrap();
        assert_eq!(out.0[3], (3, 1, -1.0));
        // A truncation bootstraps from V(s') computed on demand: R = 1 + 0.5*4 = 3.
        let mut values = |o: &[u8]| -> (Vec<f32>, usize) {
            assert_eq!(o, &[6]);
            (vec![0.0, 0.0, 4.0], 0)
        };
        seg.begin(
            &[5],
            crate::policy::Action::Discrete(0),
            Some(&row(0.0)),
            &mut out,
        )
        .unwrap();
        seg.end(1.0, StepEnd::Truncated, &[6], &mut values, &mut out)
            .unwrap();
        assert_eq!(out.0[4], (5, 0, 3.0));
    }
}
