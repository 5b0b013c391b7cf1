//! Asynchronous n-step Q-learning and n-step SARSA (Mnih et al. 2016, Algorithm S2), in the
//! form of the Keras/Theano reference variant: the actor bootstraps and computes the returns
//! (see [`crate::returns`]); the learner regresses Q(s_i, a_i) towards R_i on each batch as it
//! arrives, every transition once, in order.
//!
//! Actor half ([`Segment`]): the last n (observation, action, clipped reward). When n are held,
//! or a terminal state is reached, it bootstraps `R = max_a Q(s_t+n, a; snapshot)` (SARSA:
//! `Q(s_t+n, a_t+n)`; 0 at a terminal; a time-limit truncation bootstraps), walks back
//! `R = r_i + gamma R` and pushes one transition per held step, with `discount = 0` (the return
//! is complete). The snapshot plays the role of the target network.

use tch::Kind;

use super::{
    Adder, ExperienceSink, Family, Head, HeldBatch, LearnerCore, LearnerRule, NonFinite,
    RuleMetrics, RuleSpec, StepEnd, UpdateStats, ValuesOf,
};
use crate::config::Config;
use crate::env::ObsSpec;

use crate::returns::{n_step_returns, Bootstrap};
use crate::shm::{Batch, PushError, SlotLayout, Transition};

/// `--algorithm q`: asynchronous n-step Q-learning.
pub static Q: RuleSpec = RuleSpec {
    name: "q",
    about: "Asynchronous n-step Q-learning: the actor bootstraps with max_a Q(s', a; snapshot)",
    head: Head::Q,
    reads: &[Family::NStep, Family::QValue, Family::Exploration],
    horizon: n_step_horizon,
    adder: |cfg, obs| Box::new(Segment::new(cfg, obs.bytes(), Bootstrap::MaxQ)),
    slot_layout: returns_layout,
    learner: |core, cfg| Box::new(Learner::new(core, cfg)),
    publish_every_update: false,
};

/// `--algorithm sarsa`: n-step SARSA, the same learner with the action taken next.
pub static SARSA: RuleSpec = RuleSpec {
    name: "sarsa",
    about: "n-step SARSA: the actor bootstraps with Q(s', a') for the action a' taken next",
    adder: |cfg, obs| Box::new(Segment::new(cfg, obs.bytes(), Bootstrap::ActionTaken)),
    ..Q
};

/// `n-step N`, the horizon of the rules whose actors compute n-step returns.
pub fn n_step_horizon(cfg: &Config) -> String {
    format!("n-step {}", cfg.rule.n_step.n_step)
}

/// The slots of the rules whose actors push complete returns: no next observation.
pub fn returns_layout(_cfg: &Config, obs: ObsSpec) -> SlotLayout {
    SlotLayout::transitions(obs.bytes(), false)
}

/// The last n steps an actor holds before it can compute their returns.
pub struct Segment {
    n: usize,
    gamma: f32,
    bootstrap: Bootstrap,
    obs: Vec<Vec<u8>>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    returns: Vec<f32>,
}

impl Segment {
    /// A segment of up to `--n-step` steps of `obs_bytes`-byte observations, bootstrapped
    /// with `bootstrap`.
    pub fn new(cfg: &Config, obs_bytes: usize, bootstrap: Bootstrap) -> Self {
        let n = cfg.rule.n_step.n_step;
        Segment {
            n,
            gamma: cfg.learner.gamma,
            bootstrap,
            obs: (0..n).map(|_| vec![0u8; obs_bytes]).collect(),
            actions: Vec::with_capacity(n),
            rewards: Vec::with_capacity(n),
            returns: vec![0.0; n],
        }
    }

    fn len(&self) -> usize {
        self.actions.len()
    }

    /// Computes the held steps' returns with `bootstrap` and pushes them, oldest first.
    fn flush(&mut self, bootstrap: f32, sink: &mut dyn ExperienceSink) -> Result<(), PushError> {
        let n = self.len();
        n_step_returns(&self.rewards, bootstrap, self.gamma, &mut self.returns[..n]);
        for i in 0..n {
            sink.push(&Transition {
                obs: &self.obs[i],
                action: self.actions[i],
                ret: self.returns[i],
                discount: 0.0,
                next_obs: None,
            })?;
        }
        self.actions.clear();
        self.rewards.clear();
        Ok(())
    }
}

impl Adder for Segment {
    fn needs_values(&self) -> bool {
        self.len() == self.n
    }

    fn begin(
        &mut self,
        obs: &[u8],
        action: u32,
        q: Option<&[f32]>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        if self.len() == self.n {
            // A full segment bootstraps from this state: max_a Q(s, a), or Q(s, a) of the
            // action just chosen for SARSA.
            let q = q.expect("needs_values() asked for the Q-values of a full segment");
            self.flush(self.bootstrap.value(q, action as usize), sink)?;
        }
        let i = self.actions.len();
        self.obs[i].copy_from_slice(obs);
        self.actions.push(action);
        Ok(())
    }

    fn end(
        &mut self,
        reward: f32,
        end: StepEnd,
        next_obs: &[u8],
        values: &mut ValuesOf<'_>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        debug_assert_eq!(self.rewards.len() + 1, self.actions.len());
        self.rewards.push(reward);
        match end {
            StepEnd::Continue => Ok(()),
            StepEnd::Terminal => self.flush(0.0, sink),
            StepEnd::Truncated => {
                // A time limit is not a terminal state: bootstrap from the last observation.
                let (q, next) = values(next_obs);
                self.flush(self.bootstrap.value(&q, next), sink)
            }
        }
    }
}

/// The learner half: one regression step on every full batch, in arrival order.
pub struct Learner {
    core: LearnerCore,
    /// The batch being trained on next, swapped in from the queue's when full.
    held: HeldBatch,
}

impl Learner {
    pub fn new(core: LearnerCore, cfg: &Config) -> Self {
        let layout = super::slot_layout(cfg, core.obs);
        Learner {
            core,
            held: HeldBatch::new(cfg.learner.batch_size, layout),
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
        let actions = c.upload_slice(&b.actions[..n]);
        let returns = c.upload_slice(&b.returns[..n]);
        let q = c.model.forward(&obs);
        let q_sa = q.gather(1, &actions.unsqueeze(1), false).squeeze_dim(1);
        let loss = c.elementwise_loss(&q_sa, &returns).mean(Kind::Float);
        let q_mean = q.detach().max_dim(1, false).0.mean(Kind::Float);
        let result = self.core.step(&loss, &q_mean, lr);
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
        RuleMetrics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects pushed transitions as (obs[0], action, ret).
    #[derive(Default)]
    struct Collect(Vec<(u8, u32, f32, f32)>);

    impl ExperienceSink for Collect {
        fn push(&mut self, t: &Transition) -> Result<(), PushError> {
            assert!(t.next_obs.is_none());
            self.0.push((t.obs[0], t.action, t.ret, t.discount));
            Ok(())
        }
    }

    fn cfg(n: usize) -> Config {
        Config::from_flags(["--n-step", &n.to_string(), "--gamma", "0.5"]).unwrap()
    }

    #[test]
    fn a_full_segment_bootstraps_from_the_next_state_and_a_terminal_does_not() {
        let mut seg = Segment::new(&cfg(2), 1, Bootstrap::MaxQ);
        let mut out = Collect::default();
        let mut never = |_: &[u8]| -> (Vec<f32>, usize) { panic!("no truncation here") };
        for (t, r) in [(0u8, 1.0f32), (1, 0.0)] {
            assert!(!seg.needs_values());
            seg.begin(&[t], t as u32, None, &mut out).unwrap();
            seg.end(r, StepEnd::Continue, &[t + 1], &mut never, &mut out)
                .unwrap();
        }
        assert!(seg.needs_values());
        // Q(s_2) = [4, 8]: max 8. R1 = 0 + 0.5*8 = 4, R0 = 1 + 0.5*4 = 3.
        seg.begin(&[2], 0, Some(&[4.0, 8.0]), &mut out).unwrap();
        assert_eq!(out.0, vec![(0, 0, 3.0, 0.0), (1, 1, 4.0, 0.0)]);
        seg.end(2.0, StepEnd::Terminal, &[3], &mut never, &mut out)
            .unwrap();
        assert_eq!(out.0[2], (2, 0, 2.0, 0.0));
    }

    #[test]
    fn sarsa_bootstraps_with_the_next_action_after_a_truncation() {
        let mut seg = Segment::new(&cfg(3), 1, Bootstrap::ActionTaken);
        let mut out = Collect::default();
        let mut values = |o: &[u8]| -> (Vec<f32>, usize) {
            assert_eq!(o, &[9]);
            (vec![10.0, 2.0], 1)
        };
        seg.begin(&[0], 0, None, &mut out).unwrap();
        seg.end(1.0, StepEnd::Truncated, &[9], &mut values, &mut out)
            .unwrap();
        // SARSA takes Q(s', a') = 2: R = 1 + 0.5*2 = 2.
        assert_eq!(out.0, vec![(0, 0, 2.0, 0.0)]);
    }
}
