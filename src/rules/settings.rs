//! The settings only some rules read, one group per family ([`Family`]), each flag defined
//! once with its default, its help and the checks of its values. A rule names the families it
//! reads in its [`super::RuleSpec`]; a flag of a family the rule does not read is refused
//! ([`crate::config::Config::check_rule_settings`]).

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::Family;
use crate::replay::ReplayCompression;

/// The regression loss between Q(s, a) and the n-step return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Smooth L1 with delta 1 (the DQN error clipping).
    Huber,
    Mse,
}

/// Every family's settings, as [`crate::config::Config`] carries them.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSettings {
    #[command(flatten)]
    pub n_step: NStepSettings,
    #[command(flatten)]
    pub q: QValueSettings,
    #[command(flatten)]
    pub q_target: QTargetSettings,
    #[command(flatten)]
    pub exploration: ExplorationSettings,
    #[command(flatten)]
    pub replay: ReplaySettings,
    #[command(flatten)]
    pub actor_critic: ActorCriticSettings,
    #[command(flatten)]
    pub segments: SegmentSettings,
    #[command(flatten)]
    pub vtrace: VTraceSettings,
    #[command(flatten)]
    pub ppo: PpoSettings,
    #[command(flatten)]
    pub gae: GaeSettings,
}

impl RuleSettings {
    /// The families' settings from a flat table keyed by flag names (a config file's), each
    /// family taking its own keys.
    pub fn from_table(t: &toml::Table) -> Result<RuleSettings, toml::de::Error> {
        fn family<T: serde::de::DeserializeOwned>(t: &toml::Table) -> Result<T, toml::de::Error> {
            toml::Value::Table(t.clone()).try_into()
        }
        Ok(RuleSettings {
            n_step: family(t)?,
            q: family(t)?,
            q_target: family(t)?,
            exploration: family(t)?,
            replay: family(t)?,
            actor_critic: family(t)?,
            segments: family(t)?,
            vtrace: family(t)?,
            ppo: family(t)?,
            gae: family(t)?,
        })
    }

    /// Problems with the values of the families in `reads` (a rule's), one line each,
    /// appended to `e`. The families a rule does not read are not its concern: given, they
    /// are refused by name instead.
    pub fn validate(&self, reads: &[Family], e: &mut Vec<String>) {
        for family in reads {
            match family {
                Family::NStep => self.n_step.validate(e),
                Family::QValue | Family::QTarget => {}
                Family::Exploration => self.exploration.validate(e),
                Family::Replay => self.replay.validate(e),
                Family::ActorCritic => self.actor_critic.validate(e),
                Family::Segments => self.segments.validate(e),
                Family::VTrace => self.vtrace.validate(e),
                Family::Ppo => self.ppo.validate(e),
                Family::Gae => self.gae.validate(e),
            }
        }
    }
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 10] = [
        Family::NStep,
        Family::QValue,
        Family::QTarget,
        Family::Exploration,
        Family::Replay,
        Family::ActorCritic,
        Family::Segments,
        Family::VTrace,
        Family::Ppo,
        Family::Gae,
    ];

    /// The clap id of the family's group of flags.
    pub fn group_id(self) -> clap::Id {
        match self {
            Family::NStep => NStepSettings::group_id(),
            Family::QValue => QValueSettings::group_id(),
            Family::QTarget => QTargetSettings::group_id(),
            Family::Exploration => ExplorationSettings::group_id(),
            Family::Replay => ReplaySettings::group_id(),
            Family::ActorCritic => ActorCriticSettings::group_id(),
            Family::Segments => SegmentSettings::group_id(),
            Family::VTrace => VTraceSettings::group_id(),
            Family::Ppo => PpoSettings::group_id(),
            Family::Gae => GaeSettings::group_id(),
        }
        .expect("a derived group has an id")
    }
}

/// n-step returns: q, sarsa, dqn (its transitions), a3c.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "n-step returns (q, sarsa, dqn, a3c)")]
#[serde(rename_all = "kebab-case")]
pub struct NStepSettings {
    /// n of the n-step return (1 = 1-step Q-learning)
    #[arg(long, default_value_t = 5)]
    pub n_step: usize,
}

impl NStepSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !(1..=1000).contains(&self.n_step) {
            e.push(format!(
                "--n-step {}: must be between 1 and 1000",
                self.n_step
            ));
        }
    }
}

/// A Q-value regression: q, sarsa, dqn.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Q-values (q, sarsa, dqn)")]
#[serde(rename_all = "kebab-case")]
pub struct QValueSettings {
    /// Regression loss
    #[arg(long, value_enum, default_value_t = Loss::Huber)]
    pub loss: Loss,
    /// Dueling head: V(s) and A(s, a) streams, Q = V + A - mean A (Wang et al. 2016); any
    /// network
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dueling: bool,
}

/// n-step Q's target network theta- (Mnih et al. 2016, Algorithm S2): q, sarsa. (dqn's is
/// `--target-update`, counted in updates, in its Replay family: the two rules count their
/// periods as their references do.)
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Target network (q, sarsa)")]
#[serde(rename_all = "kebab-case")]
pub struct QTargetSettings {
    /// Bootstrap on the learner from a target network copied from the online one every this
    /// many frames (emulator frames summed over actors; the paper: 40,000; the Keras/Theano
    /// variant's 10,000 learner transitions are 40,000 frames at frame skip 4). 0, the
    /// default: no target network, the actors bootstrap from their acting snapshot (q only:
    /// sarsa's bootstrap needs the action taken next, which the learner does not see)
    #[arg(long, default_value_t = 0)]
    pub target_update_frames: u64,
}

/// Epsilon-greedy actors (Mnih et al. 2016: each actor's final epsilon drawn from
/// {0.1, 0.01, 0.5} with probabilities {0.4, 0.3, 0.3}): q, sarsa, dqn.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Exploration (q, sarsa, dqn)")]
#[serde(rename_all = "kebab-case")]
pub struct ExplorationSettings {
    /// Frames over which epsilon anneals from 1 to each actor's final epsilon
    #[arg(long, default_value_t = 4_000_000)]
    pub eps_decay: u64,
    /// Final epsilons that actors draw from (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.1, 0.01, 0.5])]
    pub final_epsilons: Vec<f64>,
    /// Probabilities of the final epsilons (comma-separated, summing to 1)
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.4, 0.3, 0.3])]
    pub final_epsilon_probs: Vec<f64>,
}

impl ExplorationSettings {
    fn validate(&self, e: &mut Vec<String>) {
        let (finals, probs) = (&self.final_epsilons, &self.final_epsilon_probs);
        if finals.is_empty() || !finals.iter().all(|x| (0.0..=1.0).contains(x)) {
            e.push(format!(
                "--final-epsilons {finals:?}: need one or more values in [0, 1]"
            ));
        }
        let psum: f64 = probs.iter().sum();
        if !(probs.len() == finals.len()
            && probs.iter().all(|p| *p >= 0.0)
            && (psum - 1.0).abs() < 1e-6)
        {
            e.push(format!(
                "--final-epsilon-probs {probs:?}: need one non-negative probability per final epsilon ({}), summing to 1",
                finals.len()
            ));
        }
    }
}

/// The replay memory and target network of dqn (Mnih et al. 2015; Ape-X, Horgan et al. 2018).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Replay (dqn)")]
#[serde(rename_all = "kebab-case")]
pub struct ReplaySettings {
    /// Transitions the replay memory holds (a FIFO ring; Atari about 7.4 KB each)
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_size: usize,
    /// How the replay memory stores observation frames (each distinct frame once either way)
    #[arg(long, value_enum, default_value_t = ReplayCompression::Lz4)]
    pub replay_compression: ReplayCompression,
    /// Frames (from this start) before the first update, while the memory fills
    #[arg(long, default_value_t = 200_000)]
    pub learning_starts: u64,
    /// Transitions trained on per transition inserted, enforced both ways (8: the Nature
    /// DQN's batch of 32 every 4 agent steps)
    #[arg(long, default_value_t = 8.0)]
    pub replay_ratio: f64,
    /// Copy the online network to the target network every this many updates
    #[arg(long, default_value_t = 2000)]
    pub target_update: u64,
    /// Double Q-learning (the online network picks the next action, the target network
    /// values it; van Hasselt et al. 2016)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub double_q: bool,
    /// Proportional prioritized replay (Schaul et al. 2016)
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub prioritized: bool,
    /// --prioritized: priority exponent alpha, p = (|TD error| + 1e-6)^alpha
    #[arg(long, default_value_t = 0.6)]
    pub priority_alpha: f64,
    /// --prioritized: importance-sampling exponent beta at the start, annealed linearly to
    /// 1 over --max-frames
    #[arg(long, default_value_t = 0.4)]
    pub priority_beta: f64,
    /// Also write the replay memory beside each checkpoint (model-N.replay), restored by
    /// --checkpoint; without it a resumed run starts with an empty memory
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub save_replay: bool,
}

impl ReplaySettings {
    fn validate(&self, e: &mut Vec<String>) {
        if self.replay_size > 1 << 32 {
            e.push(format!(
                "--replay-size {}: at most 4294967296 transitions",
                self.replay_size
            ));
        }
        if !(self.replay_ratio.is_finite() && self.replay_ratio > 0.0) {
            e.push(format!(
                "--replay-ratio {}: must be a positive number of transitions trained on per transition inserted (e.g. 8)",
                self.replay_ratio
            ));
        }
        if self.target_update == 0 {
            e.push("--target-update 0: must be at least 1 update".into());
        }
        for (flag, v) in [
            ("--priority-alpha", self.priority_alpha),
            ("--priority-beta", self.priority_beta),
        ] {
            if !(0.0..=1.0).contains(&v) {
                e.push(format!("{flag} {v}: must be in [0, 1]"));
            }
        }
    }
}

/// A policy and a value learned together: a3c, impala, ppo, appo.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Actor-critic (a3c, impala, ppo, appo)")]
#[serde(rename_all = "kebab-case")]
pub struct ActorCriticSettings {
    /// Weight of the value loss (R - V(s))^2 against the policy loss
    #[arg(long, default_value_t = 0.5)]
    pub value_coef: f64,
    /// Weight of the entropy bonus H(pi(.|s)) (subtracted from the loss)
    #[arg(long, default_value_t = 0.01)]
    pub entropy_coef: f64,
}

impl ActorCriticSettings {
    fn validate(&self, e: &mut Vec<String>) {
        for (flag, v) in [
            ("--value-coef", self.value_coef),
            ("--entropy-coef", self.entropy_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                e.push(format!("{flag} {v}: must be a finite number >= 0"));
            }
        }
    }
}

/// Segments of consecutive steps with the behaviour policy's log-probabilities: impala, ppo,
/// appo.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Segments (impala, ppo, appo)")]
#[serde(rename_all = "kebab-case")]
pub struct SegmentSettings {
    /// Agent steps per segment an actor pushes (the unroll length; IMPALA 20, CleanRL's PPO
    /// 128)
    #[arg(long, default_value_t = 20)]
    pub unroll: usize,
}

impl SegmentSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if self.unroll == 0 || self.unroll > 1000 {
            e.push(format!(
                "--unroll {}: must be 1 to 1000 agent steps per segment (IMPALA uses 20)",
                self.unroll
            ));
        }
    }
}

/// V-trace's clipping (Espeholt et al. 2018): impala, appo.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "V-trace (impala, appo)")]
#[serde(rename_all = "kebab-case")]
pub struct VTraceSettings {
    /// V-trace's rho-bar, the clip of the importance weights of the value targets and the
    /// policy gradient (inf: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub vtrace_rho: f64,
    /// V-trace's c-bar, the clip of the trace-cutting weights (inf: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub vtrace_c: f64,
}

impl VTraceSettings {
    fn validate(&self, e: &mut Vec<String>) {
        for (flag, v) in [
            ("--vtrace-rho", self.vtrace_rho),
            ("--vtrace-c", self.vtrace_c),
        ] {
            // NaN fails this too; inf (no clipping) passes.
            if v.is_nan() || v <= 0.0 {
                e.push(format!("{flag} {v}: must be > 0 (inf for no clipping)"));
            }
        }
    }
}

/// PPO's clipped objective, trained for several epochs over minibatches of each batch
/// (Schulman et al. 2017; defaults of its Atari settings and CleanRL's `ppo_atari`): ppo, appo.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "PPO (ppo, appo)")]
#[serde(rename_all = "kebab-case")]
pub struct PpoSettings {
    /// The clip epsilon of the probability ratio pi/mu: the surrogate is
    /// min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)
    #[arg(long, default_value_t = 0.1)]
    pub ppo_clip: f64,
    /// Passes over each batch of --batch-size segments per update
    #[arg(long, default_value_t = 4)]
    pub ppo_epochs: usize,
    /// Minibatches per epoch: each epoch shuffles the batch's steps and splits them into this
    /// many, one optimizer step each (every step once per epoch)
    #[arg(long, default_value_t = 4)]
    pub minibatches: usize,
    /// Clip the value's change as the ratio's: the value loss is the larger of (V - R)^2 and
    /// (V_old + clip(V - V_old, -eps, eps) - R)^2, eps = --ppo-clip (CleanRL's clip_vloss)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub value_clip: bool,
    /// Normalise the advantages of each minibatch to mean 0 and standard deviation 1
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub normalize_advantages: bool,
}

impl PpoSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !(self.ppo_clip.is_finite() && self.ppo_clip > 0.0 && self.ppo_clip < 1.0) {
            e.push(format!(
                "--ppo-clip {}: must be in (0, 1) (the PPO paper uses 0.1 on Atari, 0.2 elsewhere)",
                self.ppo_clip
            ));
        }
        if !(1..=100).contains(&self.ppo_epochs) {
            e.push(format!(
                "--ppo-epochs {}: must be 1 to 100 passes over each batch",
                self.ppo_epochs
            ));
        }
        if !(1..=4096).contains(&self.minibatches) {
            e.push(format!(
                "--minibatches {}: must be 1 to 4096 per epoch",
                self.minibatches
            ));
        }
    }
}

/// Generalized advantage estimation (Schulman et al. 2016) and the policy lag that on-policy
/// PPO accepts: ppo.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "GAE and policy lag (ppo)")]
#[serde(rename_all = "kebab-case")]
pub struct GaeSettings {
    /// GAE's lambda: the advantage is sum_k (gamma lambda)^k delta_t+k (1: the Monte Carlo
    /// return less V; 0: the 1-step TD error)
    #[arg(long, default_value_t = 0.95)]
    pub gae_lambda: f64,
    /// Train on segments acted by a snapshot at most this many versions (updates) older than
    /// the newest published one; older segments are dropped. 0: only the newest snapshot's
    /// (strictly on-policy, but what the actors act while an update trains is lost, about half
    /// the frames on 2 cores); 1: also the segments acted during the last update, their ratio
    /// pi/mu against the actor's own log mu correcting for the lag, as PPO's surrogate does
    #[arg(long, default_value_t = 1)]
    pub max_policy_lag: u32,
}

impl GaeSettings {
    fn validate(&self, e: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.gae_lambda) {
            e.push(format!(
                "--gae-lambda {}: must be in [0, 1]",
                self.gae_lambda
            ));
        }
        if self.max_policy_lag > MAX_POLICY_LAG {
            e.push(format!(
                "--max-policy-lag {}: must be 0 to {MAX_POLICY_LAG} updates (for data of older \
                 snapshots use --algorithm appo, whose V-trace targets correct for the lag)",
                self.max_policy_lag
            ));
        }
    }
}

/// The largest `--max-policy-lag`: beyond a few updates GAE's targets, computed as if the data
/// were the current policy's, are wrong enough that appo's V-trace is the rule to use.
const MAX_POLICY_LAG: u32 = 4;
