//! `--algorithm impala`: the actor-critic of "IMPALA" (Espeholt et al. 2018), whose V-trace
//! corrects for actors that act on stale snapshots of the weights.
//!
//! Actor half ([`Unroll`]): each environment's last up to `--unroll` steps (20 in the paper)
//! with the behaviour policy's log-probability `log mu(a_t|s_t)` of each action taken (the
//! snapshot's softmax, from which the actor sampled it). A segment is pushed when it holds
//! `--unroll` steps, or at a terminal state or a truncation, with its `len + 1` observations
//! stored as frames (see [`crate::shm::SegmentShape`]): the next segment starts from the state
//! this one bootstraps from.
//!
//! Learner half ([`Learner`]): on every full batch of `--batch-size` segments, the current
//! weights value every state and score every action; [`super::vtrace`] turns them into value
//! targets `v_t` and advantages `rho_t (r_t + gamma v_t+1 - V(s_t))` (clipped at `--vtrace-rho`
//! and `--vtrace-c`), and [`super::actor_critic`]'s loss takes one step. A segment that ends in
//! a terminal state has discount 0 on its last step (nothing is bootstrapped past it); one cut
//! by `--unroll` or a truncation bootstraps from V(s_len).

use crate::policy::Action;
use tch::{Device, Kind, Tensor};

use super::actor_critic::{self, Sums};
use super::vtrace::{vtrace, Clip};
use super::{
    Adder, ExperienceSink, Family, Head, HeldBatch, LearnerCore, LearnerRule, NonFinite,
    RuleMetrics, RuleSpec, StepEnd, UpdateStats, ValuesOf,
};
use crate::config::Config;
use crate::env::ObsSpec;
use crate::shm::{Batch, PushError, Segment, SlotLayout};

/// `--algorithm impala`.
pub static SPEC: RuleSpec = RuleSpec {
    name: "impala",
    about: "IMPALA (Espeholt et al. 2018): the actor pushes whole segments with its behaviour policy's log-probabilities; the learner corrects for the lag with V-trace",
    head: Head::ActorCritic,
    reads: &[Family::ActorCritic, Family::Segments, Family::VTrace],
    horizon: |cfg| format!("segments of {} steps", cfg.rule.segments.unroll),
    adder: |cfg, obs| Box::new(Unroll::new(segments_layout(cfg, obs))),
    slot_layout: segments_layout,
    learner: |core, cfg| Box::new(Learner::new(core, cfg)),
    publish_every_update: false,
    check: super::spec::no_checks,
};

/// IMPALA's slots: segments of `--unroll` steps, stored as frames.
pub fn segments_layout(cfg: &Config, obs: ObsSpec) -> SlotLayout {
    SlotLayout::segments(
        obs.bytes(),
        cfg.rule.segments.unroll,
        super::frame_bytes(obs),
    )
}

/// The actor half: one environment's segment in the making.
pub struct Unroll {
    unroll: usize,
    stack: usize,
    frame_bytes: usize,
    /// `stack + len` frames once a step has begun (empty between segments).
    frames: Vec<u8>,
    actions: Vec<u32>,
    /// Continuous actions, each step's values in turn (empty for discrete actions).
    action_values: Vec<f32>,
    rewards: Vec<f32>,
    logp: Vec<f32>,
}

impl Unroll {
    /// Segments for a queue of `layout` (a segment layout: see [`super::slot_layout`]).
    pub fn new(layout: SlotLayout) -> Self {
        let shape = layout.segment.expect("impala pushes segments");
        let stack = layout.stack();
        Unroll {
            unroll: shape.unroll,
            stack,
            frame_bytes: shape.frame_bytes,
            frames: Vec::with_capacity((stack + shape.unroll) * shape.frame_bytes),
            actions: Vec::with_capacity(shape.unroll),
            action_values: Vec::with_capacity(shape.unroll * layout.action_dims),
            rewards: Vec::with_capacity(shape.unroll),
            logp: Vec::with_capacity(shape.unroll),
        }
    }

    fn flush(&mut self, terminal: bool, sink: &mut dyn ExperienceSink) -> Result<(), PushError> {
        let result = sink.push_segment(&Segment {
            frames: &self.frames,
            actions: &self.actions,
            action_values: &self.action_values,
            rewards: &self.rewards,
            behaviour_logp: &self.logp,
            terminal,
        });
        self.frames.clear();
        self.actions.clear();
        self.action_values.clear();
        self.rewards.clear();
        self.logp.clear();
        result
    }
}

impl Adder for Unroll {
    fn needs_values(&self) -> bool {
        true
    }

    fn begin(
        &mut self,
        obs: &[u8],
        action: Action<'_>,
        q: Option<&[f32]>,
        _sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        let out = q.expect("an actor-critic actor computes every step's policy");
        if self.actions.is_empty() {
            self.frames.clear();
            self.frames.extend_from_slice(obs);
        }
        // The outputs are the policy's (logits, or means and log stds), then V(s).
        self.logp
            .push(crate::policy::log_prob(&out[..out.len() - 1], action));
        self.actions.push(action.index());
        self.action_values.extend_from_slice(action.values());
        Ok(())
    }

    fn end(
        &mut self,
        reward: f32,
        end: StepEnd,
        next_obs: &[u8],
        _values: &mut ValuesOf<'_>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        let fb = self.frame_bytes;
        debug_assert!(
            end == StepEnd::Terminal
                || self.stack == 1
                || next_obs[..(self.stack - 1) * fb]
                    == self.frames[self.frames.len() - (self.stack - 1) * fb..],
            "consecutive observations share all but their newest frame"
        );
        self.rewards.push(reward);
        // The new observation's newest frame. (After a terminal state the stack may have been
        // refilled; its value is never bootstrapped.)
        self.frames
            .extend_from_slice(&next_obs[(self.stack - 1) * fb..]);
        match end {
            StepEnd::Continue if self.actions.len() < self.unroll => Ok(()),
            StepEnd::Continue | StepEnd::Truncated => self.flush(false, sink),
            StepEnd::Terminal => self.flush(true, sink),
        }
    }
}

/// The learner half: V-trace and one actor-critic step on every full batch of segments.
pub struct Learner {
    core: LearnerCore,
    held: HeldBatch,
    gamma: f32,
    clip: Clip,
    value_coef: f64,
    entropy_coef: f64,
    sums: Sums,
}

impl Learner {
    pub fn new(core: LearnerCore, cfg: &Config) -> Self {
        let layout = super::slot_layout(cfg, core.obs, core.action_dims);
        let (rho, c) = (
            cfg.rule.vtrace.vtrace_rho as f32,
            cfg.rule.vtrace.vtrace_c as f32,
        );
        Learner {
            core,
            held: HeldBatch::new(cfg.learner.batch_size, layout),
            gamma: cfg.learner.gamma,
            clip: Clip {
                rho_bar: rho,
                c_bar: c,
                pg_rho_bar: rho,
            },
            value_coef: cfg.rule.actor_critic.value_coef,
            entropy_coef: cfg.rule.actor_critic.entropy_coef,
            sums: Sums::default(),
        }
    }
}

/// The `T + 1` stacked observations of each of the first `n` segments of `batch` (T =
/// `--unroll`), `[n * (T + 1), ...]` on `core`'s device (row `i * (T + 1) + t` is segment i's
/// observation t), built from the stored frames without copying each one `stack` times on
/// the host. Rows past a segment's length hold whatever the slot had (padding).
pub fn segment_states(core: &LearnerCore, batch: &Batch, n: usize) -> Tensor {
    let layout = batch.layout();
    let t1 = (layout.steps() + 1) as i64;
    let stack = layout.stack();
    let frames = layout.stack() + layout.steps();
    let rows = &batch.obs[..n * frames * layout.segment.map_or(0, |s| s.frame_bytes)];
    let n = n as i64;
    let c = core;
    match c.obs {
        ObsSpec::Frames([_, h, w]) => {
            let (h, w) = (h as i64, w as i64);
            // [n, stack + T, h, w] -> windows of `stack` frames along dim 1:
            // [n, T + 1, h, w, stack] -> [n * (T + 1), stack, h, w].
            let f = c.upload_slice(rows).view([n, frames as i64, h, w]);
            let s = f
                .unfold(1, stack as i64, 1)
                .permute([0, 1, 4, 2, 3])
                .reshape([n * t1, stack as i64, h, w]);
            if c.device == Device::Cpu {
                crate::model::channels_last(&s)
            } else {
                s
            }
        }
        ObsSpec::Vector(k) => c.upload(Tensor::from_data_size(
            rows,
            &[n * t1, k as i64],
            Kind::Float,
        )),
    }
}

impl LearnerRule for Learner {
    fn insert(&mut self, batch: &mut Batch, _frames: u64) -> usize {
        if !self.held.take(batch) {
            return 0;
        }
        self.held.steps()
    }

    fn ready(&mut self, _frames: u64) -> bool {
        self.held.is_ready()
    }

    fn update(&mut self, lr: f64) -> Result<Option<UpdateStats>, NonFinite> {
        let n = self.held.len();
        let t_max = self.held.layout().steps();
        let t1 = t_max + 1;
        let states = segment_states(&self.core, &self.held, n);
        let (logits, values) = self
            .core
            .model
            .policy_value(&states)
            .expect("impala builds an actor-critic network");
        let a = logits.size()[1];
        // Steps 0..T of each segment: logits [n, T, A] -> [n * T, A]; values [n, T + 1].
        let logits = logits
            .view([n as i64, t1 as i64, a])
            .narrow(1, 0, t_max as i64)
            .reshape([(n * t_max) as i64, a]);
        let values = values.view([n as i64, t1 as i64]);
        let actions = actor_critic::Actions::of(&self.core, &self.held, n * t_max);
        let target_logp = actor_critic::log_prob_entropy(&logits, &actions)
            .0
            .detach()
            .to_device(Device::Cpu);
        let target_logp: Vec<f32> = Vec::try_from(&target_logp).expect("f32 log-probabilities");
        let v_all: Vec<f32> =
            Vec::try_from(&values.detach().to_device(Device::Cpu).view([-1])).expect("f32 values");
        // V-trace per segment, on the host (n * T numbers).
        let b = &self.held;
        let mut vs = vec![0f32; n * t_max];
        let mut adv = vec![0f32; n * t_max];
        let mut mask = vec![0f32; n * t_max];
        let (mut rho_sum, mut steps) = (0f64, 0usize);
        for i in 0..n {
            let len = b.lens[i] as usize;
            let row = i * t_max..i * t_max + len;
            let log_rhos: Vec<f32> = target_logp[row.clone()]
                .iter()
                .zip(&b.behaviour_logp[row.clone()])
                .map(|(p, m)| p - m)
                .collect();
            let mut discounts = vec![self.gamma; len];
            if b.terminal[i] {
                discounts[len - 1] = 0.0;
            }
            let v = vtrace(
                &log_rhos,
                &discounts,
                &b.rewards[row],
                &v_all[i * t1..i * t1 + len + 1],
                self.clip,
            );
            vs[i * t_max..i * t_max + len].copy_from_slice(&v.vs);
            adv[i * t_max..i * t_max + len].copy_from_slice(&v.pg_advantages);
            mask[i * t_max..i * t_max + len].fill(1.0);
            rho_sum += v.clipped_rhos.iter().map(|r| f64::from(*r)).sum::<f64>();
            steps += len;
        }
        let to_dev = |v: &[f32]| self.core.upload_slice(v);
        let values_t = values
            .narrow(1, 0, t_max as i64)
            .reshape([(n * t_max) as i64]);
        let (vs, adv, mask) = (to_dev(&vs), to_dev(&adv), to_dev(&mask));
        let loss = actor_critic::loss(
            &actor_critic::Steps {
                logits: &logits,
                values: &values_t,
                actions: &actions,
                targets: &vs,
                advantages: &adv,
                mask: Some(&mask),
            },
            self.value_coef,
            self.entropy_coef,
        );
        let result = self.core.step(&loss.total, &loss.value_mean, lr);
        if result.is_ok() {
            self.sums.add(&loss);
            self.sums.add_rho(rho_sum / steps.max(1) as f64);
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
#[path = "impala_tests.rs"]
mod tests;
