//! `--algorithm dqn`: deep Q-learning from a replay memory with a target network (Mnih et al.
//! 2015), fed by many actors as in Ape-X (Horgan et al. 2018, "Distributed Prioritized
//! Experience Replay"), with double Q (van Hasselt et al. 2016), the dueling network (Wang et
//! al. 2016; `--dueling`, see [`crate::model`]) and proportional prioritized replay (Schaul et
//! al. 2016; `--prioritized`).
//!
//! Actor half ([`NStepWindow`], Acme's n-step transition adder): a sliding window over the
//! last n steps. Each step emits the transition of the step n back,
//! `(s_t, a_t, G_t = sum_{k<n} gamma^k r_t+k, gamma^n, s_t+n)`; at a terminal state every held
//! step is emitted with discount 0, at a time-limit truncation with `gamma^k` and the last
//! observation (a truncation bootstraps). The actor does not bootstrap: its snapshot only
//! chooses actions.
//!
//! Learner half ([`Learner`]): every transition popped from the queue goes into the replay
//! memory; updates sample batches from it. The target is
//!
//! ```text
//! y = G + discount * Q(s', argmax_a Q(s', a; theta); theta-)   (double Q, the default)
//! y = G + discount * max_a Q(s', a; theta-)                    (--double-q false)
//! ```
//!
//! with the target network theta-, a copy of the online network theta made every
//! `--target-update` updates. The loss is the Huber (or squared) error of Q(s, a; theta)
//! towards y, weighted by the importance-sampling weights with `--prioritized` (whose
//! priorities become `(|y - Q(s, a)| + 1e-6)^alpha` after each update). `--replay-ratio R`
//! holds the learner to R sampled transitions per transition inserted, in both directions, as
//! Reverb's SampleToInsertRatio limiter does: ahead, it waits for the actors (pops from the
//! queue); behind, it trains without popping, and the full queue makes the actors wait.

use rand::{rngs::StdRng, SeedableRng};
use tch::{Kind, Tensor};

use super::{
    Adder, ExperienceSink, Family, Head, LearnerCore, LearnerRule, NonFinite, RuleMetrics,
    RuleSpec, StepEnd, UpdateStats, ValuesOf,
};
use crate::config::Config;
use crate::env::ObsSpec;
use crate::model::AgentNetwork;
use crate::replay::{Priorities, ReplayCompression, ReplayMemory, Sample};
use crate::schedule::LinearSchedule;
use crate::shm::{Batch, PushError, SlotLayout, Transition};

/// `--algorithm dqn`.
pub static SPEC: RuleSpec = RuleSpec {
    name: "dqn",
    about: "DQN from a replay memory with a target network (double Q by default; prioritized with --prioritized): the learner bootstraps",
    head: Head::Q,
    reads: &[
        Family::NStep,
        Family::QValue,
        Family::Exploration,
        Family::Replay,
    ],
    horizon: super::nstep_q::n_step_horizon,
    adder: |cfg, obs| {
        Box::new(NStepWindow::new(
            cfg.rule.n_step.n_step,
            cfg.learner.gamma,
            obs.bytes(),
        ))
    },
    slot_layout: |_cfg, obs: ObsSpec| SlotLayout::transitions(obs.bytes(), true),
    learner: |core, cfg| Box::new(Learner::new(core, cfg)),
    publish_every_update: false,
    check: super::spec::no_checks,
};

/// The actor half: a sliding window of the last n steps of one environment.
pub struct NStepWindow {
    n: usize,
    gamma: f32,
    /// Ring of n observation buffers; the window is `len` steps starting at `start`.
    obs: Vec<Vec<u8>>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    start: usize,
    len: usize,
}

impl NStepWindow {
    /// A window of `n` steps (n >= 1) of `obs_bytes`-byte observations, discounting by `gamma`.
    pub fn new(n: usize, gamma: f32, obs_bytes: usize) -> Self {
        assert!(n >= 1, "an n-step window needs n >= 1");
        NStepWindow {
            n,
            gamma,
            obs: (0..n).map(|_| vec![0u8; obs_bytes]).collect(),
            actions: vec![0; n],
            rewards: vec![0.0; n],
            start: 0,
            len: 0,
        }
    }

    /// Emits the oldest held step: its discounted reward sum over the window, bootstrapped
    /// from `next_obs` with `gamma^len` (or not at all when `terminal`).
    fn emit_oldest(
        &mut self,
        terminal: bool,
        next_obs: &[u8],
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        let mut ret = 0.0f32;
        let mut discount = 1.0f32;
        for k in 0..self.len {
            ret += discount * self.rewards[(self.start + k) % self.n];
            discount *= self.gamma;
        }
        let i = self.start;
        sink.push(&Transition {
            obs: &self.obs[i],
            action: self.actions[i],
            action_values: &[],
            ret,
            discount: if terminal { 0.0 } else { discount },
            next_obs: Some(next_obs),
        })?;
        self.start = (self.start + 1) % self.n;
        self.len -= 1;
        Ok(())
    }
}

impl Adder for NStepWindow {
    fn needs_values(&self) -> bool {
        false
    }

    fn begin(
        &mut self,
        obs: &[u8],
        action: crate::policy::Action<'_>,
        _q: Option<&[f32]>,
        _sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError> {
        debug_assert!(self.len < self.n, "end() empties a full window");
        let i = (self.start + self.len) % self.n;
        self.obs[i].copy_from_slice(obs);
        // dqn's network has Q-values of discrete actions (a Box space is refused: net_spec).
        self.actions[i] = action.index();
        self.len += 1;
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
        self.rewards[(self.start + self.len - 1) % self.n] = reward;
        match end {
            StepEnd::Continue => {
                if self.len == self.n {
                    self.emit_oldest(false, next_obs, sink)?;
                }
            }
            StepEnd::Terminal | StepEnd::Truncated => {
                while self.len > 0 {
                    self.emit_oldest(end == StepEnd::Terminal, next_obs, sink)?;
                }
            }
        }
        Ok(())
    }
}

/// Double Q or not: the value of the next state from the target network's Q-values
/// `q_target [B, A]`, with the action chosen by the online network's `q_online [B, A]` when
/// given (van Hasselt et al. 2016), else the target network's max.
pub fn bootstrap_values(q_target: &Tensor, q_online: Option<&Tensor>) -> Tensor {
    match q_online {
        Some(q) => q_target.gather(1, &q.argmax(1, true), false).squeeze_dim(1),
        None => q_target.max_dim(1, false).0,
    }
}

/// What a metrics row reports of the interval.
#[derive(Default)]
struct Interval {
    inserted: u64,
    sampled: u64,
    priority_sum: f64,
    weight_sum: f64,
    batches: u64,
}

/// The learner half; see the module documentation.
pub struct Learner {
    core: LearnerCore,
    target: AgentNetwork,
    memory: ReplayMemory,
    sample: Sample,
    rng: StdRng,
    batch_size: usize,
    replay_ratio: f64,
    learning_starts: u64,
    target_update: u64,
    double_q: bool,
    beta: Option<LinearSchedule>,
    /// Frames at the first insertion of this run (learning starts `learning_starts` later).
    first_frames: Option<u64>,
    /// Transitions inserted when learning started (the limiter counts from there).
    inserted_at_start: Option<u64>,
    /// Transitions sampled for updates since learning started.
    sampled: u64,
    updates: u64,
    frames: u64,
    interval: Interval,
}

impl Learner {
    pub fn new(core: LearnerCore, cfg: &Config) -> Self {
        let target = AgentNetwork::new(
            core.model.spec(),
            core.obs,
            core.model.num_actions(),
            core.device,
        );
        let mut target = target;
        target.copy_from(&core.model);
        let replay = &cfg.rule.replay;
        let prioritized = replay.prioritized.then_some(Priorities {
            alpha: replay.priority_alpha,
            epsilon: 1e-6,
        });
        Learner {
            memory: ReplayMemory::new(
                core.obs,
                replay.replay_size,
                prioritized,
                replay.replay_compression == ReplayCompression::Lz4,
            ),
            target,
            core,
            sample: Sample::default(),
            rng: StdRng::seed_from_u64(cfg.run.seed ^ 0xD0_0D),
            batch_size: cfg.learner.batch_size,
            replay_ratio: replay.replay_ratio,
            learning_starts: replay.learning_starts,
            target_update: replay.target_update,
            double_q: replay.double_q,
            beta: replay
                .prioritized
                .then(|| LinearSchedule::new(replay.priority_beta, 1.0, cfg.run.max_frames)),
            first_frames: None,
            inserted_at_start: None,
            sampled: 0,
            updates: 0,
            frames: 0,
            interval: Interval::default(),
        }
    }

    /// The replay memory (for tests and measurements).
    pub fn memory(&self) -> &ReplayMemory {
        &self.memory
    }

    /// Whether learning has started, starting it (and the limiter's count) when it may.
    fn learning(&mut self) -> bool {
        if self.inserted_at_start.is_some() {
            return true;
        }
        let Some(first) = self.first_frames else {
            return false;
        };
        if self.frames.saturating_sub(first) >= self.learning_starts
            && self.memory.len() >= self.batch_size
        {
            self.inserted_at_start = Some(self.memory.inserted());
            return true;
        }
        false
    }
}

impl LearnerRule for Learner {
    fn insert(&mut self, batch: &mut Batch, frames: u64) -> usize {
        self.frames = frames;
        let n = batch.len();
        if n == 0 {
            return 0;
        }
        self.first_frames.get_or_insert(frames);
        for i in 0..n {
            self.memory.insert(
                batch.obs_row(i),
                batch.actions[i] as u32,
                batch.returns[i],
                batch.discounts[i],
                batch.next_obs_row(i),
            );
        }
        self.interval.inserted += n as u64;
        batch.clear();
        n
    }

    fn ready(&mut self, frames: u64) -> bool {
        self.frames = frames;
        if !self.learning() {
            return false;
        }
        let since = self.memory.inserted() - self.inserted_at_start.unwrap_or(0);
        // One batch of slack, so the first update runs as soon as learning starts.
        (self.sampled + self.batch_size as u64) as f64
            <= self.replay_ratio * since as f64 + self.batch_size as f64
    }

    fn update(&mut self, lr: f64) -> Result<Option<UpdateStats>, NonFinite> {
        let beta = self.beta.map_or(1.0, |b| b.value(self.frames));
        if !self
            .memory
            .sample(self.batch_size, beta, &mut self.rng, &mut self.sample)
        {
            return Ok(None);
        }
        let s = &self.sample;
        let b = s.indices.len();
        let c = &self.core;
        let obs = c.obs_tensor(&s.obs, b);
        let next = c.obs_tensor(&s.next_obs, b);
        let actions = c.upload_slice(&s.actions);
        let returns = c.upload_slice(&s.returns);
        let discounts = c.upload_slice(&s.discounts);
        let weights = c.upload_slice(&s.weights);
        let target = tch::no_grad(|| {
            let q_target = self.target.forward(&next);
            let q_online = self.double_q.then(|| c.model.forward(&next));
            &returns + &discounts * bootstrap_values(&q_target, q_online.as_ref())
        });
        let q = c.model.forward(&obs);
        let q_sa = q.gather(1, &actions.unsqueeze(1), false).squeeze_dim(1);
        let loss = (c.elementwise_loss(&q_sa, &target) * &weights).mean(Kind::Float);
        let q_mean = q.detach().max_dim(1, false).0.mean(Kind::Float);
        // |TD errors| for the new priorities, read back only when prioritized.
        let abs_td = self.beta.is_some().then(|| (q_sa.detach() - &target).abs());
        let stats = self.core.step(&loss, &q_mean, lr)?;
        if let Some(abs_td) = abs_td {
            let td: Vec<f32> =
                Vec::try_from(abs_td.to_device(tch::Device::Cpu)).expect("TD errors are f32");
            self.memory.update_priorities(&self.sample.indices, &td);
        }
        self.interval.priority_sum += self.sample.priority_mean;
        self.interval.weight_sum += self
            .sample
            .weights
            .iter()
            .map(|w| f64::from(*w))
            .sum::<f64>()
            / b as f64;
        self.interval.batches += 1;
        self.interval.sampled += b as u64;
        self.sampled += b as u64;
        self.updates += 1;
        if self.updates.is_multiple_of(self.target_update) {
            self.target.copy_from(&self.core.model);
        }
        Ok(Some(stats))
    }

    fn core(&self) -> &LearnerCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut LearnerCore {
        &mut self.core
    }

    fn extra_tensors(&self) -> Vec<(String, Tensor)> {
        self.target
            .params()
            .iter()
            .map(|(n, p)| (format!("target/{n}"), p.detach()))
            .collect()
    }

    fn restore(&mut self, ckpt: &crate::checkpoint::Checkpoint) -> Result<(), super::RestoreError> {
        self.core.restore(ckpt)?;
        let target = super::strip_prefix(&ckpt.extra, "target");
        self.target
            .load_named(&target)
            .map_err(super::RestoreError::Target)?;
        self.updates = ckpt.state.updates;
        Ok(())
    }

    fn metrics(&mut self) -> RuleMetrics {
        let i = std::mem::take(&mut self.interval);
        let per_batch = |sum: f64| (i.batches > 0).then(|| sum / i.batches as f64);
        RuleMetrics {
            replay_size: Some(self.memory.len() as u64),
            replay_ratio: (i.inserted > 0).then(|| i.sampled as f64 / i.inserted as f64),
            priority_mean: self.beta.and(per_batch(i.priority_sum)),
            is_weight_mean: self.beta.and(per_batch(i.weight_sum)),
            ..RuleMetrics::default()
        }
    }

    fn save_replay(&self, path: &std::path::Path) -> anyhow::Result<bool> {
        self.memory.save(path)?;
        Ok(true)
    }

    fn load_replay(&mut self, path: &std::path::Path) -> anyhow::Result<bool> {
        self.memory.load(path, self.core.model.num_actions())?;
        // A restored memory is past --learning-starts already.
        self.first_frames = Some(0);
        self.inserted_at_start = None;
        self.learning_starts = 0;
        Ok(true)
    }
}

#[cfg(test)]
#[path = "dqn_tests.rs"]
mod tests;
