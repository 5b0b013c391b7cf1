//! The messages between the learner and its actor processes over ipc-channel: the
//! handshake that hands an actor its settings, and the actor's reports (readiness, finished
//! games, fatal errors). Bulk data never goes here: experience travels through the shared-memory
//! queue and weights through the snapshot.

use ipc_channel::ipc::IpcSender;
use serde::{Deserialize, Serialize};

use crate::config::{BenchPhase, Config};
use crate::eval::Stats;

/// Everything an actor needs, sent by the learner in reply to the actor's connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct ActorInit {
    /// Actor index, 0..processes.
    pub actor: usize,
    /// The queue lane this actor produces into (one lane per actor).
    pub lane: usize,
    /// Seed for the emulator and exploration, derived from `--seed`, the index and the restart.
    pub seed: u64,
    pub config: Config,
    /// What to run (the config does not carry it: it is not a hyperparameter).
    pub phase: BenchPhase,
    /// Acting for training (with its final epsilon), or evaluating the snapshot every
    /// `--eval-every` frames.
    pub role: Role,
    /// Shared-memory segment names.
    pub queue: String,
    pub snapshot: String,
    /// The learner's inference request slots (`--inference learner`): the actor asks there
    /// for its network outputs instead of running its own copy of the snapshot.
    pub inference: Option<String>,
    /// Where to send [`ActorMsg`]s.
    pub reports: IpcSender<ActorMsg>,
}

/// What an actor process does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// Plays with epsilon-greedy exploration, annealed to `final_epsilon` (drawn from
    /// `--final-epsilons`; a policy network samples its actions instead), and pushes the
    /// learning rule's transitions into its lane.
    Act { final_epsilon: f64 },
    /// Every `--eval-every` frames, copies the snapshot and plays `--eval-episodes` games with
    /// the evaluation protocol; pushes nothing.
    Evaluate,
}

/// Scores of one periodic evaluation (unclipped, whole games).
///
/// `stats` is a plain nested field, not `#[serde(flatten)]`: this travels over ipc-channel
/// with bincode, which cannot encode flattened structs. `model-best.eval.json` writes it flat
/// through its own view (`learner::save`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalScores {
    /// Frames trained when the evaluated snapshot was copied.
    pub frames: u64,
    /// Statistics of the games' scores.
    pub stats: Stats,
    /// Games played.
    pub episodes: usize,
}

/// What actors tell the learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActorMsg {
    /// The actor loaded its emulator and the first snapshot and is about to act.
    Ready {
        actor: usize,
        pid: u32,
        num_actions: usize,
    },
    /// A game ended (game over or time-limit truncation): unclipped score and its length.
    Episode {
        actor: usize,
        score: f32,
        frames: u64,
    },
    /// The actor is giving up; the learner logs this and replaces it.
    Failed { actor: usize, message: String },
    /// The evaluator finished an evaluation of the snapshot `weights` (flat, in snapshot
    /// order), so that the learner can keep the best one (`model-best.safetensors`).
    Eval {
        scores: EvalScores,
        weights: Vec<f32>,
    },
}

/// Sends `msg` to the learner over `reports`. Errors: the channel's, when the learner is gone.
pub fn report(reports: &IpcSender<ActorMsg>, msg: ActorMsg) -> anyhow::Result<()> {
    reports
        .send(msg)
        .map_err(|e| anyhow::anyhow!("reporting to the learner: {e:?}"))
}

/// Seed of actor `actor` in restart generation `generation` from the run's base seed:
/// distinct per actor, reproducible per run (splitmix64 of the three).
pub fn actor_seed(base: u64, actor: usize, generation: u64) -> u64 {
    let mut z = base
        .wrapping_add((actor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(generation.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_travel_over_ipc() {
        let (tx, rx) = ipc_channel::ipc::channel::<ActorMsg>().unwrap();
        let msg = ActorMsg::Eval {
            scores: EvalScores {
                frames: 10_000,
                stats: Stats::of(&[1.0, 2.0, 6.0]).unwrap(),
                episodes: 3,
            },
            weights: vec![0.5, -1.0],
        };
        tx.send(msg.clone()).unwrap();
        assert_eq!(rx.recv().unwrap(), msg);
    }

    #[test]
    fn actor_seeds_differ_and_repeat() {
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|i| actor_seed(7, i, 0)).collect();
        assert_eq!(seeds.len(), 64);
        assert_eq!(actor_seed(7, 3, 0), actor_seed(7, 3, 0));
        assert_ne!(actor_seed(7, 3, 0), actor_seed(7, 3, 1));
        assert_ne!(actor_seed(7, 3, 0), actor_seed(8, 3, 0));
    }
}
