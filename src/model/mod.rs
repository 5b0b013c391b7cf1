//! The agent's network ([`AgentNetwork`]): a torso, `nips` (Mnih et al. 2013; the A3C paper's
//! network) or `nature` (Mnih et al. 2015) for u8 frames `[batch, 4, 84, 84]`, scaled by 1/255
//! inside the model so an exported model is whole, or `mlp` (two hidden layers of 64) for f32
//! vectors `[batch, n]` such as CartPole's; and the head of its rule: Q-values
//! `[batch, num_actions]` f32 (plain or dueling), or a policy's logits and V(s).
//!
//! Parameters are kept in a fixed order (sorted by name) so the learner can flatten them into
//! a weight snapshot and actors can load the same flat vector back.

use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::env::ObsSpec;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// The layer that reads frames (`nips`, `nature`) and the one that reads vectors (`mlp`); see
/// [`AgentNetwork::input_layer`].
const INPUT_CONV: &str = "conv1";
const INPUT_FC: &str = "fc1";

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

/// Why parameters read from a checkpoint do not fit a network (see [`AgentNetwork::load_named`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The network has a parameter the checkpoint lacks.
    #[error("parameter `{name}` is missing")]
    Missing {
        /// The parameter's name.
        name: String,
    },
    /// The checkpoint's tensor for a parameter has another shape.
    #[error("parameter `{name}` has shape {found:?}, the network needs {expected:?}")]
    Shape {
        /// The parameter's name.
        name: String,
        /// The checkpoint's shape.
        found: Vec<i64>,
        /// The network's shape.
        expected: Vec<i64>,
    },
}

/// A batch of `batch` observations from their bytes (`batch * obs.bytes()` long): u8
/// `[batch, c, h, w]` for frames, f32 `[batch, n]` for vectors.
pub fn obs_tensor(obs: ObsSpec, bytes: &[u8], batch: usize) -> Tensor {
    let b = batch as i64;
    match obs {
        ObsSpec::Frames([c, h, w]) => {
            Tensor::from_slice(bytes).view([b, c as i64, h as i64, w as i64])
        }
        ObsSpec::Vector(n) => Tensor::from_data_size(bytes, &[b, n as i64], Kind::Float),
    }
}

/// The same batch of frames `[batch, c, h, w]` in channels-last memory order (NHWC strides,
/// same shape and values); other tensors are returned as they are. On the CPU, libtorch's
/// convolutions then take oneDNN's NHWC kernels for the forward and backward passes, which
/// made a training step of the `nips` network on a batch of 64 about 1.5x faster on one thread
/// (30 ms instead of 46-60 ms, measured on an AMD EPYC with AVX2). Batch-1 inference is a
/// little faster without it, so only the learner uses it.
pub fn channels_last(obs: &Tensor) -> Tensor {
    if obs.dim() == 4 {
        obs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        obs.shallow_clone()
    }
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

/// The part after the torso: one stream to the Q-values, the dueling value and advantage
/// streams, or the actor-critic's shared hidden layer with its policy and value outputs.
enum Heads {
    Plain(nn::Sequential),
    Dueling {
        value: nn::Sequential,
        advantage: nn::Sequential,
    },
    ActorCritic {
        hidden: nn::Sequential,
        policy: nn::Linear,
        value: nn::Linear,
        /// The Gaussian head's log standard deviations `[d]` (`None`: logits).
        log_std: Option<Tensor>,
    },
}

/// The network an agent acts and learns with: a torso (`--network`) and the head its rule
/// trains (Q-values, dueling, or a policy and a value), with the variable store that owns its
/// parameters.
pub struct AgentNetwork {
    vs: nn::VarStore,
    torso: nn::Sequential,
    head: Heads,
    spec: NetSpec,
    num_actions: usize,
    /// Parameters sorted by name: the order of the flat weight snapshot.
    params: Vec<(String, Tensor)>,
}

impl AgentNetwork {
    /// Builds `spec` (its architecture resolved: not `auto`; see [`resolve_network`]) for
    /// observations `obs` and `num_actions` outputs on `device`, with libtorch's default
    /// initialisation.
    ///
    /// The torso is the convolutions (or the MLP's first layer); the head a hidden layer
    /// (`fc` 256 for `nips`, 512 for `nature`, `fc2` 64 for `mlp`) and the output layer `q`.
    /// A dueling head has two such streams (Wang et al. 2016, who split the Nature network the
    /// same way): `value_fc` -> `value` (1 output) and `advantage_fc` -> `advantage` (one per
    /// action), combined as `Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`.
    pub fn new(spec: impl Into<NetSpec>, obs: ObsSpec, num_actions: usize, device: Device) -> Self {
        let spec = spec.into();
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let [c, h, w] = match obs {
            ObsSpec::Frames(s) => s.map(|d| d as i64),
            ObsSpec::Vector(n) => [n as i64, 1, 1],
        };
        let conv = |p: nn::Path, i, o, k, s| {
            nn::conv2d(
                p,
                i,
                o,
                k,
                nn::ConvConfig {
                    stride: s,
                    ..Default::default()
                },
            )
        };
        let out = |d: i64, k: i64, s: i64| (d - k) / s + 1;
        let a = num_actions as i64;
        // (torso, its output width, the head's hidden width, the hidden layer's name)
        let (torso, features, hidden, fc) = match spec.arch {
            Network::Nips => {
                let (h1, w1) = (out(h, 8, 4), out(w, 8, 4));
                let (h2, w2) = (out(h1, 4, 2), out(w1, 4, 2));
                let torso = nn::seq()
                    .add(conv(&root / INPUT_CONV, c, 16, 8, 4))
                    .add_fn(|x| x.relu())
                    .add(conv(&root / "conv2", 16, 32, 4, 2))
                    .add_fn(|x| x.relu().flatten(1, -1));
                (torso, 32 * h2 * w2, 256, "fc")
            }
            Network::Nature => {
                let (h1, w1) = (out(h, 8, 4), out(w, 8, 4));
                let (h2, w2) = (out(h1, 4, 2), out(w1, 4, 2));
                let (h3, w3) = (out(h2, 3, 1), out(w2, 3, 1));
                let torso = nn::seq()
                    .add(conv(&root / INPUT_CONV, c, 32, 8, 4))
                    .add_fn(|x| x.relu())
                    .add(conv(&root / "conv2", 32, 64, 4, 2))
                    .add_fn(|x| x.relu())
                    .add(conv(&root / "conv3", 64, 64, 3, 1))
                    .add_fn(|x| x.relu().flatten(1, -1));
                (torso, 64 * h3 * w3, 512, "fc")
            }
            Network::Mlp => {
                let torso = nn::seq()
                    .add(nn::linear(
                        &root / INPUT_FC,
                        c * h * w,
                        64,
                        Default::default(),
                    ))
                    .add_fn(|x| x.relu());
                (torso, 64, 64, "fc2")
            }
            Network::Auto => {
                unreachable!("AgentNetwork::new takes a resolved network (see resolve_network)")
            }
        };
        let stream = |fc: &str, last: &str, outputs: i64| {
            nn::seq()
                .add(nn::linear(&root / fc, features, hidden, Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(
                    &root / last,
                    hidden,
                    outputs,
                    Default::default(),
                ))
        };
        let head = match spec.head {
            HeadKind::Q => Heads::Plain(stream(fc, "q", a)),
            HeadKind::Dueling => Heads::Dueling {
                value: stream("value_fc", "value", 1),
                advantage: stream("advantage_fc", "advantage", a),
            },
            HeadKind::ActorCritic | HeadKind::Gaussian => Heads::ActorCritic {
                hidden: nn::seq()
                    .add(nn::linear(&root / fc, features, hidden, Default::default()))
                    .add_fn(|x| x.relu()),
                policy: nn::linear(&root / "policy", hidden, a, Default::default()),
                value: nn::linear(&root / "value", hidden, 1, Default::default()),
                log_std: (spec.head == HeadKind::Gaussian).then(|| root.zeros("log_std", &[a])),
            },
        };
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        AgentNetwork {
            vs,
            torso,
            head,
            spec,
            num_actions,
            params,
        }
    }

    /// What this network is (architecture, dueling or not).
    pub fn spec(&self) -> NetSpec {
        self.spec
    }

    /// Copies every parameter of `other`, a network of the same spec and shape (the target
    /// network's refresh). Panics on a different network.
    pub fn copy_from(&mut self, other: &AgentNetwork) {
        assert_eq!(self.spec, other.spec, "copy_from: another network");
        let _guard = tch::no_grad_guard();
        for ((n, dst), (m, src)) in self.params.iter_mut().zip(&other.params) {
            assert_eq!(n, m, "copy_from: parameter order");
            dst.copy_(src);
        }
    }

    pub fn arch(&self) -> Network {
        self.spec.arch
    }

    /// The parameter name of the weight that reads the observation: `conv1.weight` (`nips`,
    /// `nature`) or `fc1.weight` (`mlp`). When no gradient reaches any of its units, every
    /// ReLU after it is inactive on every input, and the outputs no longer depend on the
    /// observation (the learner warns: `learner::dead_input`).
    pub fn input_layer(&self) -> String {
        let layer = match self.spec.arch {
            Network::Mlp => INPUT_FC,
            _ => INPUT_CONV,
        };
        format!("{layer}.weight")
    }

    pub fn num_actions(&self) -> usize {
        self.num_actions
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The torso's features for observations from [`obs_tensor`]: u8 frames (scaled by
    /// 1/255 here) or f32 vectors.
    fn features(&self, obs: &Tensor) -> Tensor {
        if obs.kind() == Kind::Uint8 {
            // One float temporary, scaled in place (`x.to_kind() * s` made two).
            let mut x = obs.to_kind(Kind::Float);
            let _ = x.g_mul_scalar_(1.0 / 255.0);
            self.torso.forward(&x)
        } else {
            self.torso.forward(obs)
        }
    }

    /// The action values `[batch, num_actions]` f32 for observations from [`obs_tensor`]:
    /// Q-values for a Q head, the policy's logits for an actor-critic head (so that the
    /// argmax is the greedy action either way), the means for a Gaussian head (its greedy
    /// action, `[batch, d]`).
    pub fn forward(&self, obs: &Tensor) -> Tensor {
        let features = self.features(obs);
        match &self.head {
            Heads::Plain(q) => q.forward(&features),
            Heads::Dueling { value, advantage } => {
                let adv = advantage.forward(&features);
                value.forward(&features) + &adv - adv.mean_dim(1, true, Kind::Float)
            }
            Heads::ActorCritic { hidden, policy, .. } => policy.forward(&hidden.forward(&features)),
        }
    }

    /// A Gaussian head's log standard deviations `[num_actions]`; `None` for other heads.
    pub fn log_std(&self) -> Option<&Tensor> {
        match &self.head {
            Heads::ActorCritic { log_std, .. } => log_std.as_ref(),
            _ => None,
        }
    }

    /// An actor-critic head's policy outputs and state values `[batch]` (f32), from one pass
    /// through the torso; `None` for a Q head. The policy outputs are the logits
    /// `[batch, num_actions]`, or for a Gaussian head the means and log standard deviations
    /// `[batch, 2 * num_actions]` (the log std broadcast over the batch).
    pub fn policy_value(&self, obs: &Tensor) -> Option<(Tensor, Tensor)> {
        let Heads::ActorCritic {
            hidden,
            policy,
            value,
            log_std,
        } = &self.head
        else {
            return None;
        };
        let h = hidden.forward(&self.features(obs));
        let out = policy.forward(&h);
        let out = match log_std {
            Some(l) => {
                let l = l.unsqueeze(0).expand_as(&out);
                Tensor::cat(&[out, l], 1)
            }
            None => out,
        };
        Some((out, value.forward(&h).squeeze_dim(1)))
    }

    /// Width of a row of [`AgentNetwork::act_outputs`]: `num_actions` for a Q head,
    /// `num_actions + 1` for an actor-critic head, `2 * num_actions + 1` for a Gaussian head.
    pub fn act_width(&self) -> usize {
        self.spec.act_width(self.num_actions)
    }

    /// What an actor needs of observations from [`obs_tensor`], `[batch, act_width()]` f32:
    /// the Q-values for a Q head; the policy's outputs (logits, or means and log standard
    /// deviations) followed by V(s) for an actor-critic head.
    pub fn act_outputs(&self, obs: &Tensor) -> Tensor {
        match self.policy_value(obs) {
            Some((logits, value)) => Tensor::cat(&[logits, value.unsqueeze(1)], 1),
            None => self.forward(obs),
        }
    }

    /// Parameters in snapshot order (sorted by name).
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Total number of scalar parameters (the length of the flat snapshot).
    pub fn numel(&self) -> usize {
        self.params.iter().map(|(_, p)| p.numel()).sum()
    }

    /// Copies all parameters, in snapshot order, into `out` (length `numel()`), moving them to
    /// the CPU first if needed.
    pub fn flat_params_into(&self, out: &mut [f32]) {
        let _guard = tch::no_grad_guard();
        let flat = Tensor::cat(
            &self
                .params
                .iter()
                .map(|(_, p)| p.flatten(0, -1))
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(Device::Cpu);
        flat.copy_data(out, out.len());
    }

    /// Loads parameters from a flat vector in snapshot order (length `numel()`).
    pub fn load_flat(&mut self, flat: &[f32]) {
        assert_eq!(flat.len(), self.numel(), "flat parameter count");
        let _guard = tch::no_grad_guard();
        let device = self.device();
        let mut offset = 0;
        for (_, p) in self.params.iter_mut() {
            let n = p.numel();
            let src = Tensor::from_slice(&flat[offset..offset + n])
                .view(p.size().as_slice())
                .to_device(device);
            p.copy_(&src);
            offset += n;
        }
    }

    /// Copies parameters by name from `named` (as read from a checkpoint).
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the first missing or mis-shaped parameter.
    pub fn load_named(
        &mut self,
        named: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), LoadError> {
        let _guard = tch::no_grad_guard();
        for (name, p) in self.params.iter_mut() {
            let src = named
                .get(name)
                .ok_or_else(|| LoadError::Missing { name: name.clone() })?;
            if src.size() != p.size() {
                return Err(LoadError::Shape {
                    name: name.clone(),
                    found: src.size(),
                    expected: p.size(),
                });
            }
            p.copy_(&src.to_device(p.device()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_parameter_counts() {
        let frames = ObsSpec::Frames([4, 84, 84]);
        let nips = AgentNetwork::new(Network::Nips, frames, 4, Device::Cpu);
        // conv1 4*16*64+16, conv2 16*32*16+32, fc 2592*256+256, q 256*4+4
        assert_eq!(nips.numel(), 4112 + 8224 + 663_808 + 1028);
        let x = Tensor::zeros([3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        assert_eq!(nips.forward(&x).size(), vec![3, 4]);
        let nature = AgentNetwork::new(Network::Nature, frames, 6, Device::Cpu);
        assert_eq!(nature.forward(&x).size(), vec![3, 6]);
        let mlp = AgentNetwork::new(Network::Mlp, ObsSpec::Vector(4), 2, Device::Cpu);
        assert_eq!(mlp.numel(), 4 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2);
        let bytes: Vec<u8> = [0.1f32, -0.2, 0.3, 0.0, 1.0, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let v = obs_tensor(ObsSpec::Vector(4), &bytes, 2);
        assert_eq!(v.size(), vec![2, 4]);
        assert_eq!(v.double_value(&[1, 2]), 3.0);
        assert_eq!(mlp.forward(&v).size(), vec![2, 2]);
        // The input layer is a parameter and reads the observation's channels (features).
        for net in [&nips, &nature, &mlp] {
            let (_, w) = net
                .params()
                .iter()
                .find(|(n, _)| *n == net.input_layer())
                .unwrap_or_else(|| panic!("{:?}: no {}", net.arch(), net.input_layer()));
            assert_eq!(w.size()[1], 4, "{:?}", net.arch());
        }
    }

    #[test]
    fn dueling_heads_combine_value_and_advantage_for_every_network() {
        let dueling = |arch| NetSpec {
            arch,
            head: HeadKind::Dueling,
        };
        let frames = ObsSpec::Frames([4, 84, 84]);
        let x = Tensor::randint(256, [3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        for arch in [Network::Nips, Network::Nature] {
            let net = AgentNetwork::new(dueling(arch), frames, 5, Device::Cpu);
            assert_eq!(net.forward(&x).size(), vec![3, 5], "{arch:?}");
        }
        // The MLP by hand: Q = V + A - mean_a A, from the named parameters.
        tch::manual_seed(4);
        let net = AgentNetwork::new(dueling(Network::Mlp), ObsSpec::Vector(4), 3, Device::Cpu);
        let names: Vec<&str> = net.params().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "advantage.bias",
                "advantage.weight",
                "advantage_fc.bias",
                "advantage_fc.weight",
                "fc1.bias",
                "fc1.weight",
                "value.bias",
                "value.weight",
                "value_fc.bias",
                "value_fc.weight"
            ]
        );
        let p = |n: &str| &net.params().iter().find(|(m, _)| m == n).unwrap().1;
        let lin = |x: &Tensor, l: &str| {
            x.matmul(&p(&format!("{l}.weight")).tr()) + p(&format!("{l}.bias"))
        };
        let v = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 0.0, 1.0, -0.3, 0.7]).view([2, 4]);
        let f = lin(&v, "fc1").relu();
        let value = lin(&lin(&f, "value_fc").relu(), "value");
        let adv = lin(&lin(&f, "advantage_fc").relu(), "advantage");
        let expect = &value + &adv - adv.mean_dim(1, true, Kind::Float);
        assert!(net.forward(&v).allclose(&expect, 1e-5, 1e-6, false));
        assert_eq!(net.spec(), dueling(Network::Mlp));
    }

    #[test]
    fn actor_critic_heads_give_logits_and_values_from_one_hidden_layer() {
        let ac = |arch| NetSpec {
            arch,
            head: HeadKind::ActorCritic,
        };
        let frames = ObsSpec::Frames([4, 84, 84]);
        let x = Tensor::randint(256, [3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        for arch in [Network::Nips, Network::Nature] {
            let net = AgentNetwork::new(ac(arch), frames, 6, Device::Cpu);
            let (logits, values) = net.policy_value(&x).unwrap();
            assert_eq!(
                (logits.size(), values.size()),
                (vec![3, 6], vec![3]),
                "{arch:?}"
            );
            assert_eq!(net.act_width(), 7);
            // forward is the logits (the argmax is the greedy action); act_outputs appends V.
            assert!(net.forward(&x).allclose(&logits, 1e-6, 1e-6, false));
            let out = net.act_outputs(&x);
            assert!(out
                .narrow(1, 6, 1)
                .squeeze_dim(1)
                .allclose(&values, 1e-6, 1e-6, false));
        }
        // The A3C FF network: the nips torso and fc 256, then 6 logits and one value.
        let nips = AgentNetwork::new(ac(Network::Nips), frames, 6, Device::Cpu);
        assert_eq!(nips.numel(), 4112 + 8224 + 663_808 + 256 * 6 + 6 + 256 + 1);
        // The MLP by hand from its named parameters.
        let net = AgentNetwork::new(ac(Network::Mlp), ObsSpec::Vector(4), 2, Device::Cpu);
        let p = |n: &str| &net.params().iter().find(|(m, _)| m == n).unwrap().1;
        let lin = |x: &Tensor, l: &str| {
            x.matmul(&p(&format!("{l}.weight")).tr()) + p(&format!("{l}.bias"))
        };
        let v = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1]).view([1, 4]);
        let h = lin(&lin(&v, "fc1").relu(), "fc2").relu();
        let (logits, value) = net.policy_value(&v).unwrap();
        assert!(logits.allclose(&lin(&h, "policy"), 1e-5, 1e-6, false));
        assert!(value.allclose(&lin(&h, "value").squeeze_dim(1), 1e-5, 1e-6, false));
        // A Q head has no policy.
        let q = AgentNetwork::new(Network::Mlp, ObsSpec::Vector(4), 2, Device::Cpu);
        assert!(q.policy_value(&v).is_none());
        assert_eq!(q.act_width(), 2);
    }

    #[test]
    fn auto_network_follows_the_observations() {
        let frames = ObsSpec::Frames([4, 84, 84]);
        assert_eq!(resolve_network(Network::Auto, frames), Ok(Network::Nips));
        assert_eq!(
            resolve_network(Network::Auto, ObsSpec::Vector(4)),
            Ok(Network::Mlp)
        );
        assert_eq!(
            resolve_network(Network::Nature, frames),
            Ok(Network::Nature)
        );
        assert_eq!(
            resolve_network(Network::Mlp, frames),
            Err(NetworkMismatch {
                network: Network::Mlp,
                obs: frames
            })
        );
        assert!(resolve_network(Network::Mlp, frames)
            .unwrap_err()
            .to_string()
            .contains("--network mlp"));
        assert!(resolve_network(Network::Nips, ObsSpec::Vector(4))
            .unwrap_err()
            .to_string()
            .contains("use mlp"));
    }

    #[test]
    fn channels_last_changes_the_layout_not_the_values_nor_the_gradients() {
        tch::manual_seed(2);
        let net = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
        let x = Tensor::randint(256, [5, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        let y = channels_last(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), vec![4 * 84 * 84, 1, 84 * 4, 4]);
        assert!(y.equal(&x));
        let grads = |input: &Tensor| {
            for (_, p) in net.params() {
                let mut p = p.shallow_clone();
                p.zero_grad();
            }
            let q = net.forward(input);
            q.sum(Kind::Float).backward();
            let g: Vec<Tensor> = net.params().iter().map(|(_, p)| p.grad().copy()).collect();
            (q.detach(), g)
        };
        let (q1, g1) = grads(&x);
        let (q2, g2) = grads(&y);
        assert!(q1.allclose(&q2, 1e-4, 1e-5, false));
        for (a, b) in g1.iter().zip(&g2) {
            assert!(a.allclose(b, 1e-3, 1e-4, false));
        }
        let v = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(channels_last(&v).stride(), v.stride());
    }

    #[test]
    fn flat_round_trip_reproduces_outputs() {
        tch::manual_seed(1);
        let a = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
        let mut b = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
        let x = Tensor::randint(256, [2, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        assert!(!a.forward(&x).allclose(&b.forward(&x), 1e-6, 1e-6, false));
        let mut flat = vec![0f32; a.numel()];
        a.flat_params_into(&mut flat);
        b.load_flat(&flat);
        assert!(a.forward(&x).allclose(&b.forward(&x), 1e-6, 1e-6, false));
    }
}
