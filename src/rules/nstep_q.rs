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
//!
//! With `--target-update-frames F` (q only; 0, the default, is the above), the paper's
//! separate target network theta-: the actor pushes each held step i of a segment that ends
//! at s_t as `(s_i, a_i, sum_{k=i}^{t-1} gamma^(k-i) r_k, gamma^(t-i), s_t)` (discount 0 at a
//! terminal), and the learner bootstraps `R_i = G_i + gamma^(t-i) max_a Q(s_t, a; theta-)`,
//! the same return as Algorithm S2's with theta- in place of the snapshot. theta- is copied
//! from the online network every F frames (the paper's I_target, 40,000 frames) and kept in
//! checkpoints (`target/...`); the snapshot then only chooses the actors' actions.

use crate::policy::Action;
use tch::{Kind, Tensor};

use super::{
    Adder, ExperienceSink, Family, Head, HeldBatch, LearnerCore, LearnerRule, NonFinite,
    RuleMetrics, RuleSpec, StepEnd, UpdateStats, ValuesOf,
};
use crate::config::Config;
use crate::env::ObsSpec;
use crate::model::AgentNetwork;

use crate::returns::{n_step_returns, Bootstrap};
use crate::shm::{Batch, PushError, SlotLayout, Transition};

/// `--algorithm q`: asynchronous n-step Q-learning.
pub static Q: RuleSpec = RuleSpec {
    name: "q",
    about: "Asynchronous n-step Q-learning: the actor bootstraps with max_a Q(s', a; snapshot)",
    head: Head::Q,
    reads: &[
        Family::NStep,
        Family::QValue,
        Family::QTarget,
        Family::Exploration,
    ],
    horizon: n_step_horizon,
    adder: |cfg, obs| Box::new(Segment::new(cfg, obs.bytes(), Bootstrap::MaxQ)),
    slot_layout: q_layout,
    learner: |core, cfg| Box::new(Learner::new(core, cfg)),
    publish_every_update: false,
    check: super::spec::no_checks,
};

/// `--algorithm sarsa`: n-step SARSA, the same learner with the action taken next.
pub static SARSA: RuleSpec = RuleSpec {
    name: "sarsa",
    about: "n-step SARSA: the actor bootstraps with Q(s', a') for the action a' taken next",
    adder: |cfg, obs| Box::new(Segment::new(cfg, obs.bytes(), Bootstrap::ActionTaken)),
    check: |cfg, e| {
        let f = cfg.rule.q_target.target_update_frames;
        if f > 0 {
            e.push(format!(
                "--target-update-frames {f}: only --algorithm q bootstraps from a target network (n-step SARSA's bootstrap Q(s', a') needs the action taken next, which the learner does not see); use 0 with sarsa"
            ));
        }
    },
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

/// n-step Q's slots: complete returns, or with `--target-update-frames` the discounted reward
/// sums with the observation the learner bootstraps from.
fn q_layout(cfg: &Config, obs: ObsSpec) -> SlotLayout {
    SlotLayout::transitions(obs.bytes(), cfg.rule.q_target.target_update_frames > 0)
}

/// The last n steps an actor holds before it can compute their returns.
pub struct Segment {
    n: usize,
    gamma: f32,
    bootstrap: Bootstrap,
    /// `--target-update-frames` > 0: the learner bootstraps (the transitions carry the
    /// bootstrap observation and `gamma^k`).
    learner_bootstraps: bool,
    obs: Vec<Vec<u8>>,
    actions: Vec<u32>,
    /// Continuous actions (a3c on a Box action space), each step's values in turn; empty
    /// for discrete actions.
    action_values: Vec<f32>,
    rewards: Vec<f32>,
    returns: Vec<f32>,
}

impl Segment {
    /// A segment of up to `--n-step` steps of `obs_bytes`-byte observations, bootstrapped
    /// with `bootstrap` (or by the learner, with `--target-update-frames`).
    pub fn new(cfg: &Config, obs_bytes: usize, bootstrap: Bootstrap) -> Self {
        let n = cfg.rule.n_step.n_step;
        Segment {
            n,
            gamma: cfg.learner.gamma,
            bootstrap,
            learner_bootstraps: cfg.rule.q_target.target_update_frames > 0,
            obs: (0..n).map(|_| vec![0u8; obs_bytes]).collect(),
            actions: Vec::with_capacity(n),
            action_values: Vec::new(),
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
        let d = self.action_values.len() / n.max(1);
        for i in 0..n {
            sink.push(&Transition {
                obs: &self.obs[i],
                action: self.actions[i],
                action_values: &self.action_values[i * d..(i + 1) * d],
                ret: self.returns[i],
                discount: 0.0,
                next_obs: None,
            })?;
        }
        self.actions.clear();
        self.action_values.clear();
        self.rewards.clear();
        Ok(())
    }

    /// Pushes the held steps for the learner to bootstrap from `next` (`terminal`: not at
    /// all): step i of the `len` held gets the reward sum up to `next` and discount
    /// `gamma^(len - i)` (0 when `terminal`), oldest first.
    fn flush_for_learner(
        &mut self,
        next: &[u8],
        terminal: bool,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        let n = self.len();
        n_step_returns(&self.rewards, 0.0, self.gamma, &mut self.returns[..n]);
        for i in 0..n {
            let discount = if terminal {
                0.0
            } else {
                self.gamma.powi((n - i) as i32)
            };
            sink.push(&Transition {
                obs: &self.obs[i],
                action: self.actions[i],
                action_values: &[],
                ret: self.returns[i],
                discount,
                next_obs: Some(next),
            })?;
        }
        self.actions.clear();
        self.rewards.clear();
        Ok(())
    }
}

impl Adder for Segment {
    fn needs_values(&self) -> bool {
        self.len() == self.n && !self.learner_bootstraps
    }

    fn begin(
        &mut self,
        obs: &[u8],
        action: Action<'_>,
        q: Option<&[f32]>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        if self.len() == self.n && self.learner_bootstraps {
            self.flush_for_learner(obs, false, sink)?;
        } else if self.len() == self.n {
            // A full segment bootstraps from this state: max_a Q(s, a), or Q(s, a) of the
            // action just chosen for SARSA (or V(s) for a3c).
            let q = q.expect("needs_values() asked for the Q-values of a full segment");
            self.flush(self.bootstrap.value(q, action.index() as usize), sink)?;
        }
        let i = self.actions.len();
        self.obs[i].copy_from_slice(obs);
        self.actions.push(action.index());
        self.action_values.extend_from_slice(action.values());
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
            StepEnd::Terminal | StepEnd::Truncated if self.learner_bootstraps => {
                self.flush_for_learner(next_obs, end == StepEnd::Terminal, sink)
            }
            StepEnd::Terminal => self.flush(0.0, sink),
            StepEnd::Truncated => {
                // A time limit is not a terminal state: bootstrap from the last observation.
                let (q, next) = values(next_obs);
                self.flush(self.bootstrap.value(&q, next), sink)
            }
        }
    }
}

/// n-step Q's target network theta- and when it is next refreshed.
struct Target {
    net: AgentNetwork,
    /// `--target-update-frames`.
    every: u64,
    /// The frame count at which theta- is next copied from the online network (set at the
    /// first insertion of this run).
    next_copy: Option<u64>,
}

/// The learner half: one regression step on every full batch, in arrival order.
pub struct Learner {
    core: LearnerCore,
    /// The batch being trained on next, swapped in from the queue's when full.
    held: HeldBatch,
    /// With `--target-update-frames`: the target network the learner bootstraps from.
    target: Option<Target>,
}

impl Learner {
    pub fn new(core: LearnerCore, cfg: &Config) -> Self {
        let layout = super::slot_layout(cfg, core.obs, core.action_dims);
        let every = cfg.rule.q_target.target_update_frames;
        let target = (every > 0).then(|| {
            let m = &core.model;
            let mut net = AgentNetwork::new(m.spec(), core.obs, m.num_actions(), core.device);
            net.copy_from(m);
            Target {
                net,
                every,
                next_copy: None,
            }
        });
        Learner {
            core,
            held: HeldBatch::new(cfg.learner.batch_size, layout),
            target,
        }
    }

    /// Copies the online network to theta- when `frames` has reached the next refresh.
    fn refresh_target(&mut self, frames: u64) {
        let Some(t) = &mut self.target else { return };
        match t.next_copy {
            None => t.next_copy = Some(frames + t.every),
            Some(at) if frames >= at => {
                t.net.copy_from(&self.core.model);
                t.next_copy = Some(frames + t.every);
            }
            Some(_) => {}
        }
    }
}

impl LearnerRule for Learner {
    fn insert(&mut self, batch: &mut Batch, frames: u64) -> usize {
        self.refresh_target(frames);
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
        let mut returns = c.upload_slice(&b.returns[..n]);
        if let Some(t) = &self.target {
            // R_i = G_i + gamma^k max_a Q(s_t, a; theta-).
            let next = c.obs_tensor(&b.next_obs, n);
            let discounts = c.upload_slice(&b.discounts[..n]);
            returns = tch::no_grad(|| {
                let q_next: Tensor = t.net.forward(&next).max_dim(1, false).0;
                &returns + &discounts * q_next
            });
        }
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

    fn extra_tensors(&self) -> Vec<(String, Tensor)> {
        self.target.as_ref().map_or_else(Vec::new, |t| {
            t.net
                .params()
                .iter()
                .map(|(n, p)| (format!("target/{n}"), p.detach()))
                .collect()
        })
    }

    /// Restores the online network and, with a target network, theta- (a checkpoint of a run
    /// without one gives theta- the online weights).
    fn restore(&mut self, ckpt: &crate::checkpoint::Checkpoint) -> Result<(), super::RestoreError> {
        self.core.restore(ckpt)?;
        if let Some(t) = &mut self.target {
            let saved = super::strip_prefix(&ckpt.extra, "target");
            if saved.is_empty() {
                t.net.copy_from(&self.core.model);
            } else {
                t.net
                    .load_named(&saved)
                    .map_err(super::RestoreError::Target)?;
            }
        }
        Ok(())
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
            seg.begin(
                &[t],
                crate::policy::Action::Discrete(t as u32),
                None,
                &mut out,
            )
            .unwrap();
            seg.end(r, StepEnd::Continue, &[t + 1], &mut never, &mut out)
                .unwrap();
        }
        assert!(seg.needs_values());
        // Q(s_2) = [4, 8]: max 8. R1 = 0 + 0.5*8 = 4, R0 = 1 + 0.5*4 = 3.
        seg.begin(
            &[2],
            crate::policy::Action::Discrete(0),
            Some(&[4.0, 8.0]),
            &mut out,
        )
        .unwrap();
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
        seg.begin(&[0], crate::policy::Action::Discrete(0), None, &mut out)
            .unwrap();
        seg.end(1.0, StepEnd::Truncated, &[9], &mut values, &mut out)
            .unwrap();
        // SARSA takes Q(s', a') = 2: R = 1 + 0.5*2 = 2.
        assert_eq!(out.0, vec![(0, 0, 2.0, 0.0)]);
    }

    /// Collects pushed transitions with their next observations.
    #[derive(Default)]
    struct CollectNext(Vec<(u8, u32, f32, f32, Vec<u8>)>);

    impl ExperienceSink for CollectNext {
        fn push(&mut self, t: &Transition) -> Result<(), PushError> {
            let next = t
                .next_obs
                .expect("the learner bootstraps from a next observation");
            self.0
                .push((t.obs[0], t.action, t.ret, t.discount, next.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn with_a_target_network_the_actor_leaves_the_bootstrap_to_the_learner() {
        let mut cfg = cfg(2);
        cfg.rule.q_target.target_update_frames = 40_000;
        let mut seg = Segment::new(&cfg, 1, Bootstrap::MaxQ);
        let mut out = CollectNext::default();
        let mut never = |_: &[u8]| -> (Vec<f32>, usize) { panic!("no values on the actor") };
        for (t, r) in [(0u8, 1.0f32), (1, 2.0)] {
            seg.begin(
                &[t],
                crate::policy::Action::Discrete(t as u32),
                None,
                &mut out,
            )
            .unwrap();
            seg.end(r, StepEnd::Continue, &[t + 1], &mut never, &mut out)
                .unwrap();
        }
        assert!(
            !seg.needs_values(),
            "the snapshot's Q-values are not needed"
        );
        seg.begin(&[2], crate::policy::Action::Discrete(0), None, &mut out)
            .unwrap();
        // G_0 = 1 + 0.5 * 2 = 2 with gamma^2 = 0.25; G_1 = 2 with gamma = 0.5; both from s_2.
        assert_eq!(
            out.0,
            vec![(0, 0, 2.0, 0.25, vec![2]), (1, 1, 2.0, 0.5, vec![2])]
        );
        // A terminal: nothing bootstrapped; a truncation: from its last observation.
        seg.end(3.0, StepEnd::Terminal, &[3], &mut never, &mut out)
            .unwrap();
        assert_eq!(out.0[2], (2, 0, 3.0, 0.0, vec![3]));
        seg.begin(&[4], crate::policy::Action::Discrete(1), None, &mut out)
            .unwrap();
        seg.end(1.0, StepEnd::Truncated, &[5], &mut never, &mut out)
            .unwrap();
        assert_eq!(out.0[3], (4, 1, 1.0, 0.5, vec![5]));
    }

    #[test]
    fn sarsa_refuses_a_target_network() {
        let sarsa = Config::from_flags(["--algorithm", "sarsa", "--target-update-frames", "40000"])
            .unwrap();
        let err = sarsa.validate().unwrap_err().to_string();
        assert!(
            err.contains("--target-update-frames 40000: only --algorithm q"),
            "{err}"
        );
        let q =
            Config::from_flags(["--algorithm", "q", "--target-update-frames", "40000"]).unwrap();
        q.validate().unwrap();
    }

    /// The learner regresses towards G + gamma^k max_a Q(s', a; theta-), with theta- frozen
    /// between refreshes every --target-update-frames frames.
    #[test]
    fn the_learner_bootstraps_from_the_target_network_refreshed_by_frames() {
        use crate::model::Network;
        tch::manual_seed(0);
        let mut cfg = cfg(5);
        cfg.rule.q_target.target_update_frames = 100;
        cfg.rule.q.loss = crate::rules::Loss::Mse;
        cfg.learner.batch_size = 1;
        cfg.net.network = Network::Mlp;
        let obs = ObsSpec::Vector(4);
        let net = crate::rules::net_spec(&cfg, obs, &crate::env::ActionSpec::Discrete(2)).unwrap();
        let core = LearnerCore::new(&cfg, net, obs, 2, tch::Device::Cpu);
        let mut l = Learner::new(core, &cfg);
        let layout = crate::rules::slot_layout(&cfg, obs, 0);
        assert!(layout.next_obs);
        let bytes = |v: [f32; 4]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
        let (s, s2) = (bytes([0.1, 0.2, -0.3, 0.4]), bytes([0.5, -0.1, 0.2, 0.0]));
        let x = |b: &[u8]| crate::model::obs_tensor(obs, b, 1);
        let push = |batch: &mut Batch| {
            batch
                .push(&Transition {
                    obs: &s,
                    action: 1,
                    action_values: &[],
                    ret: 1.0,
                    discount: 0.5,
                    next_obs: Some(&s2),
                })
                .unwrap();
        };
        let mut batch = Batch::new(1, layout);
        let mut step = |l: &mut Learner, frames: u64| -> f64 {
            push(&mut batch);
            assert_eq!(l.insert(&mut batch, frames), 1);
            l.update(1e-3).unwrap().unwrap().loss.double_value(&[])
        };
        // Before any refresh theta- is the initial online network.
        let (q_sa, q_next) = (
            l.core.model.forward(&x(&s)).double_value(&[0, 1]),
            l.core.model.forward(&x(&s2)).max().double_value(&[]),
        );
        let loss = step(&mut l, 0);
        assert!(
            (loss - (q_sa - (1.0 + 0.5 * q_next)).powi(2)).abs() < 1e-4 * (1.0 + loss),
            "{loss}"
        );
        // Frame 50: the online network moved, theta- did not.
        let frozen = q_next;
        let online_next = l.core.model.forward(&x(&s2)).max().double_value(&[]);
        assert!(
            (online_next - frozen).abs() > 1e-6,
            "the update moved the online network"
        );
        let q_sa = l.core.model.forward(&x(&s)).double_value(&[0, 1]);
        let loss = step(&mut l, 50);
        assert!(
            (loss - (q_sa - (1.0 + 0.5 * frozen)).powi(2)).abs() < 1e-4 * (1.0 + loss),
            "{loss}"
        );
        // Frame 100: refreshed from the online network before the update.
        let (q_sa, q_next) = (
            l.core.model.forward(&x(&s)).double_value(&[0, 1]),
            l.core.model.forward(&x(&s2)).max().double_value(&[]),
        );
        let loss = step(&mut l, 100);
        assert!(
            (loss - (q_sa - (1.0 + 0.5 * q_next)).powi(2)).abs() < 1e-4 * (1.0 + loss),
            "{loss}"
        );
        // The checkpoint keeps theta-.
        assert!(l
            .extra_tensors()
            .iter()
            .all(|(n, _)| n.starts_with("target/")));
        assert!(!l.extra_tensors().is_empty());
    }
}
