//! What each learning rule declares about itself, once: its name on the command line, the
//! network head it trains, the groups of settings it reads, and the constructors of its two
//! halves. Everything outside `src/rules/` asks a [`RuleSpec`] instead of naming a rule: the
//! settings check refuses a flag of a group the rule does not read, the model builds the head
//! it names, the actor explores as its settings say, the learner describes it.
//!
//! Adding a rule: a module in `src/rules/` with its `SPEC`, a line in [`RULES`], and, when it
//! reads settings no other rule reads, their group in [`super::RuleSettings`] and [`Family`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Adder, LearnerCore, LearnerRule};
use crate::config::Config;
use crate::env::ObsSpec;
use crate::shm::SlotLayout;

/// The network head a rule trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// One Q-value per action (`--dueling`: V + A - mean A).
    Q,
    /// The policy's logits, one per action, then V(s).
    ActorCritic,
}

/// A group of settings that only some rules read: its flags are one clap group (one heading in
/// `learner --help`), and given with a rule that does not read it, they are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `--n-step`: the length of the segments whose returns the actor computes.
    NStep,
    /// `--loss`, `--dueling`: a Q-value regression.
    QValue,
    /// `--target-update-frames`: n-step Q's target network.
    QTarget,
    /// `--eps-decay`, `--final-epsilons`, `--final-epsilon-probs`: epsilon-greedy actors.
    Exploration,
    /// The replay memory and target network (`--replay-size`, `--prioritized`, ...).
    Replay,
    /// `--value-coef`, `--entropy-coef`: a policy and a value loss.
    ActorCritic,
    /// `--unroll`: segments of consecutive steps with the behaviour's log-probabilities.
    Segments,
    /// `--vtrace-rho`, `--vtrace-c`: segments corrected by V-trace.
    VTrace,
    /// `--ppo-clip`, `--ppo-epochs`, `--minibatches`, `--value-clip`,
    /// `--normalize-advantages`: PPO's clipped objective and its epochs.
    Ppo,
    /// `--gae-lambda`: generalized advantage estimation.
    Gae,
}

/// A learning rule, declared once in its own module.
pub struct RuleSpec {
    /// `--algorithm`'s value (`q`, `dqn`, ...); also the suffix of its tuned configs
    /// (`configs/<game>-<name>.toml`).
    pub name: &'static str,
    /// One line for `learner --help`.
    pub about: &'static str,
    /// The head of the network it trains.
    pub head: Head,
    /// The groups of rule settings it reads (the common ones it always reads).
    pub reads: &'static [Family],
    /// How far its experience reaches, for the learner's first line (`n-step 5`).
    pub horizon: fn(&Config) -> String,
    /// Its actor half, one per environment, for observations `obs`.
    pub adder: fn(&Config, ObsSpec) -> Box<dyn Adder>,
    /// The layout of the queue's slots it fills.
    pub slot_layout: fn(&Config, ObsSpec) -> SlotLayout,
    /// Its learner half around the online network and optimizer `core`.
    pub learner: fn(LearnerCore, &Config) -> Box<dyn LearnerRule>,
    /// The learner publishes a snapshot after every update, whatever `--sync-frames` says
    /// (ppo, appo: the actors act with the weights of the last update, as PPO's data
    /// collection with the newest policy wants).
    pub publish_every_update: bool,
    /// The rule's own checks of settings across families, one line per problem appended to
    /// the list (most rules have none: [`no_checks`]).
    pub check: fn(&Config, &mut Vec<String>),
}

/// The [`RuleSpec::check`] of a rule without checks of its own.
pub fn no_checks(_cfg: &Config, _e: &mut Vec<String>) {}

impl RuleSpec {
    /// Whether its actors explore epsilon-greedily (with the [`Family::Exploration`] settings)
    /// rather than by sampling from a policy.
    pub fn explores_with_epsilon(&self) -> bool {
        self.reads.contains(&Family::Exploration)
    }

    /// Whether it learns from a replay memory (which `--save-replay` writes).
    pub fn has_replay(&self) -> bool {
        self.reads.contains(&Family::Replay)
    }

    /// Whether settings tuned for `other` fit this rule: both read the same groups (n-step Q
    /// and SARSA).
    pub fn shares_settings_with(&self, other: &RuleSpec) -> bool {
        self.reads == other.reads
    }
}

/// Every rule, in the order `learner --help` lists them; the first is the default.
pub static RULES: [Algorithm; 7] = [
    Algorithm(&super::nstep_q::Q),
    Algorithm(&super::nstep_q::SARSA),
    Algorithm(&super::dqn::SPEC),
    Algorithm(&super::a3c::SPEC),
    Algorithm(&super::impala::SPEC),
    Algorithm(&super::ppo::PPO),
    Algorithm(&super::ppo::APPO),
];

/// An `--algorithm` that names no rule of [`RULES`]; holds the name given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: not a learning rule; valid rules: {}", .0, RULES.map(|r| r.0.name).join(", "))]
pub struct UnknownRule(pub String);

/// The learning rule a run trains (`--algorithm`): one of [`RULES`], compared by name, written
/// as its name in TOML and in checkpoints.
#[derive(Clone, Copy)]
pub struct Algorithm(pub &'static RuleSpec);

impl Algorithm {
    /// The rule named `name` (as on the command line).
    ///
    /// # Errors
    ///
    /// [`UnknownRule`], whose message lists the valid names.
    pub fn named(name: &str) -> Result<Algorithm, UnknownRule> {
        RULES
            .iter()
            .find(|r| r.0.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| UnknownRule(name.to_string()))
    }

    /// The rules that read settings group `family`.
    pub fn readers_of(family: Family) -> Vec<Algorithm> {
        RULES
            .iter()
            .filter(|r| r.0.reads.contains(&family))
            .copied()
            .collect()
    }
}

impl std::ops::Deref for Algorithm {
    type Target = RuleSpec;

    fn deref(&self) -> &RuleSpec {
        self.0
    }
}

impl Default for Algorithm {
    fn default() -> Self {
        RULES[0]
    }
}

impl PartialEq for Algorithm {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Algorithm {}

impl std::fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl clap::ValueEnum for Algorithm {
    fn value_variants<'a>() -> &'a [Self] {
        &RULES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name).help(self.0.about))
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Algorithm::named(&name).map_err(serde::de::Error::custom)
    }
}
