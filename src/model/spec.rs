//! What network to build ([`NetSpec`]): the architecture (`--network`, resolved against the
//! observations) and the head of the rule, and the widths of the rows an actor reads from it.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::env::ObsSpec;

/// The Q-network architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// `nips` for frame observations, `mlp` for vector observations.
    Auto,
    /// Mnih et al. 2013 (NIPS workshop) and the A3C paper: conv 16x8x8/4, conv 32x4x4/2, fc 256.
    Nips,
    /// Mnih et al. 2015 (Nature): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, fc 512.
    Nature,
    /// For vector observations (CartPole): fc 64, fc 64.
    Mlp,
}

/// Resolves `--network` for observations `obs`: `auto` is `nips` for frames and `mlp` for
/// vectors; the convolutional networks need frames, the MLP vectors.
///
/// # Errors
///
/// [`NetworkMismatch`] when `choice` does not fit `obs`.
pub fn resolve_network(choice: Network, obs: ObsSpec) -> Result<Network, NetworkMismatch> {
    match (choice, obs) {
        (Network::Auto, ObsSpec::Frames(_)) => Ok(Network::Nips),
        (Network::Auto, ObsSpec::Vector(_)) => Ok(Network::Mlp),
        (Network::Nips | Network::Nature, ObsSpec::Frames(_))
        | (Network::Mlp, ObsSpec::Vector(_)) => Ok(choice),
        (network, obs) => Err(NetworkMismatch { network, obs }),
    }
}

/// A `--network` that does not fit the game's observations (a convolutional network for
/// vectors, or the MLP for frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "--network {}: does not fit observations {obs:?}; use {} (or auto)",
    format!("{network:?}").to_lowercase(),
    if matches!(obs, ObsSpec::Frames(_)) { "nips or nature" } else { "mlp" }
)]
pub struct NetworkMismatch {
    /// The network asked for.
    pub network: Network,
    /// The observations it would read.
    pub obs: ObsSpec,
}

/// What the network outputs after its torso.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadKind {
    /// Q-values, one per action (the Q rules).
    #[default]
    Q,
    /// Q-values from two streams, V(s) and A(s, a), combined as `Q = V + A - mean_a A`
    /// (Wang et al. 2016).
    Dueling,
    /// A policy (logits, one per action) and a state value V(s) on one hidden layer: the
    /// actor-critic rules (Mnih et al. 2016, A3C FF; Espeholt et al. 2018).
    ActorCritic,
    /// The actor-critic head for continuous actions of d dimensions: a diagonal Gaussian
    /// policy, its means from the hidden layer (`policy`, d outputs) and a state-independent
    /// log standard deviation (`log_std`, d parameters, initially 0, i.e. std 1), and V(s).
    /// The policy's outputs are `[mean (d), log_std (d)]`. As CleanRL's
    /// `ppo_continuous_action.py` (its `actor_logstd`) and the PPO paper's continuous-control
    /// setup (Schulman et al. 2017, section 6.1) have it.
    Gaussian,
}

impl HeadKind {
    /// Whether this head has a policy and a value (the actor-critic rules' heads).
    pub fn is_actor_critic(self) -> bool {
        matches!(self, HeadKind::ActorCritic | HeadKind::Gaussian)
    }
}

/// What to build: the architecture (resolved, never `auto`) and its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub arch: Network,
    pub head: HeadKind,
}

impl NetSpec {
    /// Width of a row of [`AgentNetwork::act_outputs`] for `num_actions` actions (a
    /// continuous action's dimensions): `num_actions` for a Q head, `num_actions + 1` (the
    /// logits, then V(s)) for an actor-critic head, `2 * num_actions + 1` (the means, the log
    /// standard deviations, then V(s)) for a Gaussian head.
    pub fn act_width(&self, num_actions: usize) -> usize {
        self.policy_width(num_actions) + usize::from(self.head.is_actor_critic())
    }

    /// Dimensions of a continuous action for `num_actions` outputs: `num_actions` for a
    /// Gaussian head, 0 (discrete actions) otherwise; the slot layout's `action_dims`.
    pub fn action_dims(&self, num_actions: usize) -> usize {
        if self.head == HeadKind::Gaussian {
            num_actions
        } else {
            0
        }
    }

    /// Width of the policy's (or the Q-values') part of a row: `2 * num_actions` for a
    /// Gaussian head, else `num_actions`.
    pub fn policy_width(&self, num_actions: usize) -> usize {
        if self.head == HeadKind::Gaussian {
            2 * num_actions
        } else {
            num_actions
        }
    }
}

impl From<Network> for NetSpec {
    fn from(arch: Network) -> Self {
        NetSpec {
            arch,
            head: HeadKind::Q,
        }
    }
}
