//! The learner's optimizers, RMSProp and Adam, written out so that their state can be saved
//! in a checkpoint and restored exactly ([`Optimizer`], `--optimizer`), and global
//! gradient-norm clipping.
//!
//! Update, per parameter p with gradient g (Tieleman & Hinton 2012, non-centred, no momentum),
//! in one of two forms ([`RmspropForm`]):
//!
//! ```text
//! v <- decay * v + (1 - decay) * g^2
//! p <- p - lr * g / (sqrt(v) + eps)     eps outside: torch.optim.RMSprop
//! p <- p - lr * g / sqrt(v + eps)       eps inside: the A3C paper (Mnih et al. 2016, S2), TF
//! ```
//!
//! v starts at `--rms-initial-square-avg` v0 and has no bias correction. torch.optim.RMSprop
//! starts it at 0: with eps outside and a small eps (1e-5), the first steps then move every
//! weight by about lr / sqrt(1 - decay) = 10 lr whatever its gradient. TensorFlow's
//! `RMSPropOptimizer` (the one OpenAI baselines' A2C trains with: lr 7e-4, decay 0.99, eps
//! 1e-5 inside the root) starts it at 1, and so do SB3's `RMSpropTFLike` and timm's
//! `RMSpropTF`: the first steps are then about lr * g, and v reaches the gradients' own scale
//! after a few hundred updates (decay^t falls to 0.01 after 460 at decay 0.99). With eps
//! inside and the reproductions' eps 0.1, a step is at most lr * |g| / sqrt(0.1), and small
//! gradients make small steps. One learner holds one v per parameter, so the statistics are
//! shared by every actor's data (the paper's "shared RMSProp").
//!
//! Each optimizer names its own state for checkpoints ([`Optimizer::named_state`]): RMSProp's
//! v as `rmsprop/<param>`, Adam's m, v and t as `adam/m/<param>`, `adam/v/<param>` and
//! `adam/step` ([`STATE_PREFIXES`]); [`Optimizer::restore`] reads them back by those names.

use tch::Tensor;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

mod adam;
mod rmsprop;

pub use adam::Adam;
pub use rmsprop::RmsProp;

/// The name prefixes of the optimizers' checkpoint tensors (`rmsprop/`, `adam/`): a checkpoint
/// keeps the tensors under them as its optimizer state.
pub const STATE_PREFIXES: [&str; 2] = ["rmsprop/", "adam/"];

/// Whether `name` is a checkpoint tensor of an optimizer's state ([`STATE_PREFIXES`]).
pub fn is_state_name(name: &str) -> bool {
    STATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The learner's optimizer (`--optimizer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// RMSProp ([`RmsProp`]; `--rms-decay`, `--rms-eps`, `--rmsprop-form`,
    /// `--rms-initial-square-avg`): the A3C paper's and DQN's optimizer.
    #[default]
    Rmsprop,
    /// Adam ([`Adam`]; `--adam-beta1`, `--adam-beta2`, `--adam-eps`): PPO's (Schulman et al.
    /// 2017) and CleanRL's `ppo_atari.py`, Sample Factory's APPO.
    Adam,
}

/// Where RMSProp's epsilon goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RmspropForm {
    /// `g / (sqrt(v) + eps)`: torch.optim.RMSprop (and the PyTorch A2C ports with eps 1e-5).
    EpsOutside,
    /// `g / sqrt(v + eps)`: the A3C paper's RMSProp (Mnih et al. 2016, section 4 and S2), as
    /// its reproductions use it (eps 0.1), and TensorFlow's (OpenAI baselines' A2C: eps 1e-5,
    /// with v starting at 1, `--rms-initial-square-avg 1`).
    EpsInside,
}

/// Why a saved optimizer state does not fit the parameters (see [`Optimizer::restore`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The checkpoint holds no optimizer state at all: `model-best.safetensors` keeps only the
    /// weights of the best evaluation, for `play`.
    #[error("the checkpoint holds weights but no optimizer state (model-best.safetensors is for play, not for resuming); resume from a model-<frames> checkpoint")]
    Empty,
    /// A tensor of the optimizer's state is not in the checkpoint (a checkpoint of a run
    /// trained with the other `--optimizer` has the other's state).
    #[error("the checkpoint has no optimizer state `{0}`: was it trained with the other --optimizer (rmsprop or adam)? Resume it with the optimizer it was trained with")]
    Missing(String),
    /// A tensor whose shape is not its parameter's.
    #[error("optimizer state shape {found:?}, expected {expected:?}")]
    Shape {
        /// The saved tensor's shape.
        found: Vec<i64>,
        /// The parameter's shape.
        expected: Vec<i64>,
    },
}

/// The tensor named `key` in a checkpoint's optimizer state, of shape `expected`.
///
/// # Errors
///
/// [`StateError::Missing`] when it is absent, [`StateError::Shape`] when its shape differs.
fn state_tensor(
    named: &std::collections::HashMap<String, Tensor>,
    key: String,
    expected: &[i64],
) -> Result<Tensor, StateError> {
    let t = named.get(&key).ok_or(StateError::Missing(key))?;
    if t.size() != expected {
        return Err(StateError::Shape {
            found: t.size(),
            expected: expected.to_vec(),
        });
    }
    Ok(t.shallow_clone())
}

/// The learner's optimizer, chosen by `--optimizer`.
pub enum Optimizer {
    /// `--optimizer rmsprop`.
    RmsProp(RmsProp),
    /// `--optimizer adam`.
    Adam(Adam),
}

impl Optimizer {
    /// The optimizer `settings` choose, with a fresh state for `params` (RMSProp's v at
    /// `--rms-initial-square-avg`, Adam's moments at 0).
    pub fn new(params: &[(String, Tensor)], settings: &crate::config::OptimizerSettings) -> Self {
        match settings.optimizer {
            OptimizerKind::Rmsprop => Optimizer::RmsProp(
                RmsProp::new(
                    params,
                    settings.rms_decay,
                    settings.rms_eps,
                    settings.rmsprop_form,
                )
                .starting_at(settings.rms_initial_square_avg),
            ),
            OptimizerKind::Adam => Optimizer::Adam(Adam::new(
                params,
                settings.adam_beta1,
                settings.adam_beta2,
                settings.adam_eps,
            )),
        }
    }

    /// Applies one update with learning rate `lr` to `params` using their `.grad()`.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        match self {
            Optimizer::RmsProp(o) => o.step(params, lr),
            Optimizer::Adam(o) => o.step(params, lr),
        }
    }

    /// The state under its checkpoint names (RMSProp's `rmsprop/<name>`, Adam's `adam/...`;
    /// [`STATE_PREFIXES`]), for the parameters `params` this optimizer was made for.
    pub fn named_state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        match self {
            Optimizer::RmsProp(o) => o.named_state(params),
            Optimizer::Adam(o) => o.named_state(params),
        }
    }

    /// Restores the state saved by [`Optimizer::named_state`] from `named`, a checkpoint's
    /// optimizer tensors by full name ([`crate::checkpoint::Checkpoint::optimizer`]).
    ///
    /// # Errors
    ///
    /// [`StateError::Empty`] when the checkpoint holds no optimizer state (model-best);
    /// [`StateError::Missing`] when it holds another optimizer's (trained with the other
    /// `--optimizer`) or lacks a tensor; [`StateError::Shape`] when one does not fit.
    pub fn restore(
        &mut self,
        params: &[(String, Tensor)],
        named: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), StateError> {
        if named.is_empty() {
            return Err(StateError::Empty);
        }
        match self {
            Optimizer::RmsProp(o) => o.load_named(params, named),
            Optimizer::Adam(o) => o.load_named(params, named),
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping (a 0-dim tensor, left on
/// the device to avoid a synchronisation). Each gradient's squared norm is its dot product with
/// itself, so no full-size temporary is made (`g.pow(2)` allocated one per parameter per
/// update), and the sum builds up in one 0-dim tensor without host-side vectors.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let mut total: Option<Tensor> = None;
    for (_, p) in params {
        let g = p.grad();
        if !g.defined() {
            continue;
        }
        let flat = g.reshape([-1]);
        let sq = flat.dot(&flat);
        total = Some(match total {
            Some(t) => t + sq,
            None => sq,
        });
    }
    let Some(total) = total else {
        return Tensor::zeros([], (tch::Kind::Float, tch::Device::Cpu));
    };
    let norm = total.sqrt();
    let coef = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
    for (_, p) in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.g_mul_(&coef);
        }
    }
    norm
}

/// Zeroes every parameter's gradient.
pub fn zero_grad(params: &[(String, Tensor)]) {
    for (_, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
}

#[cfg(test)]
mod tests;
