//! The agent's network ([`AgentNetwork`]): a torso, `nips` (Mnih et al. 2013; the A3C paper's
//! network) or `nature` (Mnih et al. 2015) for u8 frames `[batch, 4, 84, 84]`, scaled by 1/255
//! inside the model so an exported model is whole, or `mlp` (two hidden layers of 64) for f32
//! vectors `[batch, n]` such as CartPole's; and the head of its rule: Q-values
//! `[batch, num_actions]` f32 (plain or dueling), or a policy's logits and V(s).
//!
//! Parameters are kept in a fixed order (sorted by name) so the learner can flatten them into
//! a weight snapshot and actors can load the same flat vector back.
//!
//! The pieces: `spec.rs` says what to build (the architecture and the head) and how wide an
//! actor's output row is; `obs.rs` turns observation bytes into the input tensor; this module
//! builds the network, runs it and loads its parameters.

mod obs;
mod spec;

pub use obs::{channels_last, obs_tensor};
pub use spec::{resolve_network, HeadKind, NetSpec, Network, NetworkMismatch};

use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::env::ObsSpec;

/// The layer that reads frames (`nips`, `nature`) and the one that reads vectors (`mlp`); see
/// [`AgentNetwork::input_layer`].
const INPUT_CONV: &str = "conv1";
const INPUT_FC: &str = "fc1";

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
mod tests;
