//! Learning rules, one module each, every rule in two halves behind the seams that the actor
//! and learner loops call (docs/ARCHITECTURE.md, "The seams"):
//!
//! - the actor half, an [`Adder`] (Acme's name): per environment, turns the steps the actor
//!   takes into the transitions it pushes (n-step returns bootstrapped by the actor, or
//!   discounted reward sums with the observation the learner bootstraps from);
//! - the learner half, a [`LearnerRule`]: takes what the queue delivers, decides when an update
//!   can run, owns its loss and its extra state (a target network, a replay memory) and what of
//!   it a checkpoint keeps.
//!
//! Each rule declares itself once, in its module, as a [`RuleSpec`] (its name, head, the
//! families of settings it reads, the constructors of its halves); [`RULES`] lists them. The
//! loops know no rule by name: [`adder`], [`slot_layout`] and [`learner`] call the halves of
//! the config's rule. Rules: [`nstep_q`] (`--algorithm q|sarsa`, Mnih et al. 2016), [`dqn`]
//! (`--algorithm dqn`: replay memory, target network, double Q, prioritized replay), [`a3c`]
//! (`--algorithm a3c`, the advantage actor-critic of Mnih et al. 2016) and [`impala`]
//! (`--algorithm impala`, V-trace, Espeholt et al. 2018) and [`ppo`] (`--algorithm ppo|appo`,
//! PPO's clipped objective, Schulman et al. 2017, with GAE or V-trace targets);
//! [`actor_critic`] holds what the actor-critic rules share and [`vtrace`] the V-trace
//! targets.

pub mod a3c;
pub mod actor_critic;
#[cfg(test)]
mod continuous_tests;
pub mod dqn;
pub mod impala;
pub mod nstep_q;
pub mod ppo;
mod settings;
mod spec;
pub mod vtrace;

pub use settings::{
    ActorCriticSettings, ExplorationSettings, GaeSettings, Loss, NStepSettings, PpoSettings,
    QTargetSettings, QValueSettings, ReplaySettings, RuleSettings, SegmentSettings, VTraceSettings,
};
pub use spec::{Algorithm, Family, Head, RuleSpec, UnknownRule, RULES};

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Tensor};

use crate::config::Config;
use crate::env::{ActionSpec, ObsSpec};
use crate::model::{AgentNetwork, HeadKind, LoadError, NetSpec, NetworkMismatch};
use crate::optim::StateError;
use crate::shm::{Batch, PushError, Segment, SlotLayout, Transition};

/// Why a checkpoint's tensors do not fit a rule's learner half (see [`LearnerRule::restore`]).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The online network's parameters: one missing or mis-shaped.
    #[error(transparent)]
    Params(#[from] LoadError),
    /// The optimizer state does not fit the parameters.
    #[error(transparent)]
    Optimizer(#[from] StateError),
    /// The target network's parameters (`target/...`): one missing or mis-shaped.
    #[error("target network: {0}")]
    Target(LoadError),
}

/// Where an actor's experience goes: the transport seam. The shared-memory queue's lane is the
/// local implementation ([`LaneSink`]).
pub trait ExperienceSink {
    /// Pushes one transition; blocks while the transport is full. `Err(PushError::Closed)`
    /// means the learner is stopping.
    fn push(&mut self, t: &Transition) -> Result<(), PushError>;

    /// Pushes one segment of consecutive steps (IMPALA); blocks like [`ExperienceSink::push`].
    /// A sink that carries only transitions refuses it with `PushError::Shape`.
    fn push_segment(&mut self, _s: &Segment) -> Result<(), PushError> {
        Err(PushError::Shape(
            "this sink carries single transitions".into(),
        ))
    }
}

/// The lane of the shared-memory queue that an actor owns. Everything pushed is stamped with
/// `version`, the weight snapshot the actor acts with (the learner's snapshot age).
pub struct LaneSink<'a> {
    pub queue: &'a crate::shm::ExperienceQueue,
    pub lane: usize,
    /// The acting snapshot's version (its low 32 bits).
    pub version: u32,
}

impl ExperienceSink for LaneSink<'_> {
    fn push(&mut self, t: &Transition) -> Result<(), PushError> {
        self.queue.push_stamped(self.lane, t, self.version)
    }

    fn push_segment(&mut self, s: &Segment) -> Result<(), PushError> {
        self.queue.push_segment(self.lane, s, self.version)
    }
}

/// How an agent step ended, for the rule's bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// The episode goes on.
    Continue,
    /// A terminal state for training (game over, or a lost life): no bootstrap past it.
    Terminal,
    /// A time limit: not a terminal state, so the return bootstraps from the last observation.
    Truncated,
}

/// The snapshot's outputs for an observation computed on demand (a row of
/// [`AgentNetwork::act_outputs`]), and the action the actor's policy would take there (SARSA's
/// bootstrap after a truncation).
pub type ValuesOf<'a> = dyn FnMut(&[u8]) -> (Vec<f32>, usize) + 'a;

/// The actor half of a learning rule, one per environment: turns the steps taken into
/// transitions (Acme's `Adder`). The actor calls [`Adder::begin`] before each step and
/// [`Adder::end`] after it.
pub trait Adder {
    /// Whether the step about to be taken needs the snapshot's Q-values of the current
    /// observation even when the action is random (n-step Q: a full segment bootstraps there).
    fn needs_values(&self) -> bool;

    /// The agent is about to take `action` (an index, or a continuous vector for the
    /// actor-critic rules on a Box action space) from `obs` (`obs_bytes` long); `q` holds the
    /// snapshot's outputs for `obs` when they were computed (always when
    /// [`Adder::needs_values`] said so, and always for an actor-critic network): a row of
    /// [`AgentNetwork::act_outputs`], the Q-values `[num_actions]`, or the policy's outputs
    /// (logits, or means and log standard deviations) followed by V(s). May push transitions.
    fn begin(
        &mut self,
        obs: &[u8],
        action: crate::policy::Action<'_>,
        q: Option<&[f32]>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError>;

    /// The step ended with the clipped `reward`, as `end` says, in observation `next_obs`;
    /// `values` computes the snapshot's Q-values of an observation when the rule needs them
    /// (a truncation). May push transitions.
    fn end(
        &mut self,
        reward: f32,
        end: StepEnd,
        next_obs: &[u8],
        values: &mut ValuesOf<'_>,
        sink: &mut dyn ExperienceSink,
    ) -> Result<(), PushError>;
}

/// The actor half of `cfg`'s rule for observations `obs`.
pub fn adder(cfg: &Config, obs: ObsSpec) -> Box<dyn Adder> {
    (cfg.learner.algorithm.adder)(cfg, obs)
}

/// Bytes of one frame of a stacked observation: a frame of `[c, h, w]` frames, the whole
/// vector otherwise.
pub fn frame_bytes(obs: ObsSpec) -> usize {
    match obs {
        ObsSpec::Frames([_, h, w]) => h * w,
        ObsSpec::Vector(_) => obs.bytes(),
    }
}

/// The queue's slot layout for `cfg`'s rule: rules that bootstrap on the learner carry the
/// next observation; IMPALA's actors push segments of `--unroll` steps. `action_dims`: the
/// dimensions of a continuous action (0 for discrete actions; see [`NetSpec::action_dims`]).
pub fn slot_layout(cfg: &Config, obs: ObsSpec, action_dims: usize) -> SlotLayout {
    (cfg.learner.algorithm.slot_layout)(cfg, obs).with_action_dims(action_dims)
}

/// Why a rule cannot train on an environment.
#[derive(Debug, thiserror::Error)]
pub enum NetSpecError {
    /// `--network` does not fit the observations.
    #[error(transparent)]
    Network(#[from] NetworkMismatch),
    /// A rule with Q-values given a continuous action space.
    #[error(
        "--algorithm {rule} learns Q-values of discrete actions, but this environment's actions \
         are {actions}; train it with an actor-critic rule, whose Gaussian policy head takes \
         continuous actions: --algorithm {supported}"
    )]
    ContinuousActions {
        /// The rule.
        rule: &'static str,
        /// The environment's action space.
        actions: String,
        /// The rules that take continuous actions, e.g. `"a3c or impala"`.
        supported: String,
    },
}

/// The network `cfg`'s rule trains for observations `obs` and actions `actions`: `--network`
/// resolved (see [`crate::model::resolve_network`]) with the rule's head, Q-values (dueling
/// with `--dueling`) or a policy and a value (a Gaussian policy for a `Box` action space).
///
/// # Errors
///
/// [`NetSpecError`]: `--network` does not fit `obs`, or a Q rule given continuous actions.
pub fn net_spec(cfg: &Config, obs: ObsSpec, actions: &ActionSpec) -> Result<NetSpec, NetSpecError> {
    let rule = cfg.learner.algorithm;
    let head = match (rule.head, actions.is_continuous()) {
        (Head::ActorCritic, false) => HeadKind::ActorCritic,
        (Head::ActorCritic, true) => HeadKind::Gaussian,
        (Head::Q, true) => {
            let supported: Vec<&str> = RULES
                .iter()
                .filter(|r| r.head == Head::ActorCritic)
                .map(|r| r.name)
                .collect();
            return Err(NetSpecError::ContinuousActions {
                rule: rule.name,
                actions: actions.to_string(),
                supported: supported.join(" or "),
            });
        }
        (Head::Q, false) if cfg.rule.q.dueling => HeadKind::Dueling,
        (Head::Q, false) => HeadKind::Q,
    };
    Ok(NetSpec {
        arch: crate::model::resolve_network(cfg.net.network, obs)?,
        head,
    })
}

/// The batch an on-policy learner (n-step Q, a3c, impala) trains on next: the queue's batch,
/// taken whole once it is full, so that every transition is trained on once, in arrival
/// order. Reads as the [`Batch`] it holds.
pub struct HeldBatch {
    batch: Batch,
    /// A full batch is held: an update can run.
    ready: bool,
}

impl HeldBatch {
    /// Room for a batch of `size` slots of `layout`.
    pub fn new(size: usize, layout: SlotLayout) -> Self {
        HeldBatch {
            batch: Batch::new(size, layout),
            ready: false,
        }
    }

    /// Takes `batch` when it is full and none is held, swapping it in and leaving `batch`
    /// empty for the next pop; returns whether it took it.
    pub fn take(&mut self, batch: &mut Batch) -> bool {
        if !batch.is_full() || self.ready {
            return false;
        }
        std::mem::swap(batch, &mut self.batch);
        batch.clear();
        self.ready = true;
        true
    }

    /// Whether a batch is held (an update can run).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The update is done: nothing is held.
    pub fn release(&mut self) {
        self.ready = false;
        self.batch.clear();
    }
}

impl std::ops::Deref for HeldBatch {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        &self.batch
    }
}

/// Loss and mean max-Q (actor-critic: mean V(s)) of one update: 0-dim f32 tensors on the
/// learner's device, detached. The learner sums them with [`DeviceSums`] and reads the sums
/// once per metrics interval: on a GPU every read is a synchronisation that would leave the
/// device idle while the host prepares the next batch.
pub struct UpdateStats {
    pub loss: Tensor,
    pub q_mean: Tensor,
}

/// A loss or mean Q that was not finite, read back before the optimizer moved a weight (on the
/// CPU, where reading costs nothing; see [`LearnerCore::step`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NonFinite {
    pub loss: f64,
    pub q_mean: f64,
}

/// Sums of a few scalars over the updates of one metrics interval, kept on the device they are
/// computed on (f64), read back in one transfer by [`DeviceSums::take_means`].
#[derive(Default)]
pub struct DeviceSums {
    sums: Option<Tensor>,
    n: u64,
}

impl DeviceSums {
    /// Adds one update's `values` (0-dim tensors, always the same number of them).
    pub fn add(&mut self, values: &[&Tensor]) {
        let v = Tensor::stack(
            &values
                .iter()
                .map(|t| t.detach().to_kind(tch::Kind::Double))
                .collect::<Vec<_>>(),
            0,
        );
        self.sums = Some(match self.sums.take() {
            Some(s) => s + v,
            None => v,
        });
        self.n += 1;
    }

    /// The means of each value over the updates added since the last call (None without any),
    /// with one read from the device; resets the sums.
    pub fn take_means(&mut self) -> Option<Vec<f64>> {
        let sums = self.sums.take()?;
        let n = std::mem::take(&mut self.n).max(1) as f64;
        let v: Vec<f64> = Vec::try_from(sums.to_device(Device::Cpu)).ok()?;
        Some(v.into_iter().map(|x| x / n).collect())
    }
}

/// Rule-specific numbers for one metrics row (all `None` for rules without them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RuleMetrics {
    /// Transitions in the replay memory.
    pub replay_size: Option<u64>,
    /// Transitions trained on per transition inserted, over the interval (measured).
    pub replay_ratio: Option<f64>,
    /// Mean priority of the sampled transitions (prioritized replay).
    pub priority_mean: Option<f64>,
    /// Mean importance-sampling weight of the sampled transitions (prioritized replay).
    pub is_weight_mean: Option<f64>,
    /// Actor-critic: mean policy loss -log pi(a|s) * advantage.
    pub policy_loss: Option<f64>,
    /// Actor-critic: mean squared error of V(s) against its target.
    pub value_loss: Option<f64>,
    /// Actor-critic: mean entropy of the policy, in nats.
    pub entropy: Option<f64>,
    /// Actor-critic: mean V(s) over the trained states.
    pub value_mean: Option<f64>,
    /// IMPALA: mean clipped importance weight min(rho-bar, pi/mu) over the trained steps.
    pub rho_mean: Option<f64>,
}

/// The learner half of a learning rule.
pub trait LearnerRule {
    /// Takes the transitions popped from the queue. A rule may leave a batch that is not yet
    /// full in place to be completed by the next pop (n-step Q trains on whole batches); what
    /// it takes it removes (`batch.clear()`). `frames` is the run's frame count now. Returns
    /// the number of transitions taken.
    fn insert(&mut self, batch: &mut Batch, frames: u64) -> usize;

    /// Whether an update can run now, at `frames` (n-step Q: a full batch is held; dqn: past
    /// `--learning-starts` and within `--replay-ratio`).
    fn ready(&mut self, frames: u64) -> bool;

    /// One update with learning rate `lr`; `Ok(None)` when there was nothing to train on after
    /// all. On the CPU a non-finite loss or mean Q is returned as `Err` before the optimizer
    /// touches the weights (on a GPU the learner finds it in the interval's sums).
    fn update(&mut self, lr: f64) -> Result<Option<UpdateStats>, NonFinite>;

    /// The online network and its optimizer.
    fn core(&self) -> &LearnerCore;

    /// [`LearnerRule::core`], mutable.
    fn core_mut(&mut self) -> &mut LearnerCore;

    /// The online network (snapshots, checkpoints).
    fn model(&self) -> &AgentNetwork {
        &self.core().model
    }

    /// The optimizer's state under its checkpoint names (`rmsprop/<param>`, or Adam's
    /// `adam/...`: [`crate::optim::Optimizer::named_state`]).
    fn optimizer_named_state(&self) -> Vec<(String, Tensor)> {
        let core = self.core();
        core.optim.named_state(core.model.params())
    }

    /// Extra named tensors a checkpoint keeps (e.g. `target/<param>`); none by default.
    fn extra_tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores the weights, optimizer state and extras of a checkpoint.
    ///
    /// # Errors
    ///
    /// [`RestoreError`], naming what is missing or mis-shaped.
    fn restore(&mut self, ckpt: &crate::checkpoint::Checkpoint) -> Result<(), RestoreError> {
        self.core_mut().restore(ckpt)
    }

    /// Numbers for the metrics row ending now; resets the interval's sums.
    fn metrics(&mut self) -> RuleMetrics;

    /// The learner's loop says which weights the actors act with now: the version of the
    /// snapshot it published (or of the inference server's weights), low 32 bits as the
    /// queue's stamps. Called once before the first update and after every publication. A rule
    /// that trains only on data of the newest policy (ppo) drops what older versions acted;
    /// the others ignore it.
    fn acting(&mut self, _version: u32) {}

    /// Writes the rule's replay memory to `path` (rules without one write nothing and return
    /// `Ok(false)`).
    fn save_replay(&self, _path: &Path) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Reads a replay memory written by [`LearnerRule::save_replay`]; `Ok(false)` when the
    /// rule has none.
    fn load_replay(&mut self, _path: &Path) -> anyhow::Result<bool> {
        Ok(false)
    }
}

/// The learner half of `cfg`'s rule, with a fresh network `net` on `device`.
pub fn learner(
    cfg: &Config,
    net: NetSpec,
    obs: ObsSpec,
    num_actions: usize,
    device: Device,
) -> Box<dyn LearnerRule> {
    let core = LearnerCore::new(cfg, net, obs, num_actions, device);
    (cfg.learner.algorithm.learner)(core, cfg)
}

/// What every rule's learner has: the online network, its optimizer and the loss settings.
pub struct LearnerCore {
    pub model: AgentNetwork,
    /// Dimensions of a continuous action (0: discrete), for the rule's slot layout.
    pub action_dims: usize,
    pub optim: crate::optim::Optimizer,
    pub device: Device,
    pub obs: ObsSpec,
    pub loss: Loss,
    pub max_grad_norm: f64,
}

impl LearnerCore {
    pub fn new(
        cfg: &Config,
        net: NetSpec,
        obs: ObsSpec,
        num_actions: usize,
        device: Device,
    ) -> Self {
        let model = AgentNetwork::new(net, obs, num_actions, device);
        let optim = crate::optim::Optimizer::new(model.params(), &cfg.optim);
        LearnerCore {
            action_dims: net.action_dims(num_actions),
            model,
            optim,
            device,
            obs,
            loss: cfg.rule.q.loss,
            max_grad_norm: cfg.optim.max_grad_norm,
        }
    }

    /// `batch` observations `[n, ...]` on the device, channels-last on the CPU (where oneDNN's
    /// NHWC convolutions are faster; see [`crate::model::channels_last`]).
    pub fn obs_tensor(&self, bytes: &[u8], n: usize) -> Tensor {
        let t = self.upload(crate::model::obs_tensor(
            self.obs,
            &bytes[..n * self.obs.bytes()],
            n,
        ));
        if self.device == Device::Cpu {
            crate::model::channels_last(&t)
        } else {
            t
        }
    }

    /// The CPU tensor `t` on the learner's device. On a GPU it goes through pinned host memory
    /// with an asynchronous copy: the host returns at once and gathers the next batch while
    /// the device copies and trains on this one (libtorch's caching host allocator keeps the
    /// pinned block until the copy is done). On the CPU it is `t` itself.
    pub fn upload(&self, t: Tensor) -> Tensor {
        if self.device.is_cuda() {
            t.pin_memory(self.device)
                .to_device_(self.device, t.kind(), true, false)
        } else {
            t
        }
    }

    /// A slice of host values as a 1-D tensor on the device (see [`LearnerCore::upload`]).
    pub fn upload_slice<T: tch::kind::Element>(&self, v: &[T]) -> Tensor {
        self.upload(Tensor::from_slice(v))
    }

    /// Element-wise regression loss `[n]` of `q_sa` towards `target` (Huber with delta 1, or
    /// squared error), unreduced.
    pub fn elementwise_loss(&self, q_sa: &Tensor, target: &Tensor) -> Tensor {
        use tch::Reduction;
        match self.loss {
            Loss::Huber => q_sa.huber_loss(target, Reduction::None, 1.0),
            Loss::Mse => q_sa.mse_loss(target, Reduction::None),
        }
    }

    /// Steps on `loss`: zero the gradients, backpropagate, clip the global norm to
    /// `--max-grad-norm`, the optimizer's step. On the CPU, `loss` and `q_mean` (0-dim tensors) are first
    /// checked for finiteness and a non-finite one is refused before any weight moves; on a GPU
    /// that check would synchronise every update, so it is left to the learner, which reads the
    /// interval's sums (a divergence then stops the run at the end of the interval, and no
    /// checkpoint takes non-finite weights).
    pub fn step(
        &mut self,
        loss: &Tensor,
        q_mean: &Tensor,
        lr: f64,
    ) -> Result<UpdateStats, NonFinite> {
        if self.device == Device::Cpu {
            let (l, q) = (loss.double_value(&[]), q_mean.double_value(&[]));
            if !l.is_finite() || !q.is_finite() {
                return Err(NonFinite { loss: l, q_mean: q });
            }
        }
        let params = self.model.params();
        crate::optim::zero_grad(params);
        loss.backward();
        let _norm = crate::optim::clip_grad_norm(params, self.max_grad_norm);
        self.optim.step(params, lr);
        Ok(UpdateStats {
            loss: loss.detach(),
            q_mean: q_mean.detach(),
        })
    }

    /// Restores the online weights and optimizer state of `ckpt`.
    ///
    /// # Errors
    ///
    /// [`RestoreError::Params`] or [`RestoreError::Optimizer`].
    pub fn restore(&mut self, ckpt: &crate::checkpoint::Checkpoint) -> Result<(), RestoreError> {
        self.model.load_named(&ckpt.params)?;
        Ok(self.optim.restore(self.model.params(), &ckpt.optimizer)?)
    }
}

/// Parameters of `named` whose names start with `prefix/`, with the prefix removed.
pub fn strip_prefix(named: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let p = format!("{prefix}/");
    named
        .iter()
        .filter_map(|(n, t)| {
            n.strip_prefix(&p)
                .map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(obs: &[u8]) -> Transition<'_> {
        Transition {
            obs,
            action: 1,
            action_values: &[],
            ret: 0.5,
            discount: 0.0,
            next_obs: None,
        }
    }

    /// An on-policy learner takes the queue's batch only when it is full and nothing is held,
    /// and holds it until the update releases it.
    #[test]
    fn a_held_batch_takes_only_full_batches_and_one_at_a_time() {
        let layout = SlotLayout::transitions(2, false);
        let mut held = HeldBatch::new(2, layout);
        let mut popped = Batch::new(2, layout);
        popped.push(&transition(&[1, 2])).unwrap();
        assert!(!held.take(&mut popped), "half a batch is left to fill");
        assert_eq!(popped.len(), 1);
        popped.push(&transition(&[3, 4])).unwrap();
        assert!(held.take(&mut popped));
        assert!(held.is_ready());
        assert_eq!((held.len(), popped.len()), (2, 0));
        assert_eq!(&held.obs[..4], &[1, 2, 3, 4]);
        popped.push(&transition(&[5, 6])).unwrap();
        popped.push(&transition(&[7, 8])).unwrap();
        assert!(
            !held.take(&mut popped),
            "one batch is held until its update"
        );
        held.release();
        assert!(!held.is_ready() && held.is_empty());
        assert!(held.take(&mut popped));
        assert_eq!(&held.obs[..4], &[5, 6, 7, 8]);
    }
}
