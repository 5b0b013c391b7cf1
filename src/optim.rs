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

/// RMSProp state for a fixed list of parameters.
pub struct RmsProp {
    decay: f64,
    eps: f64,
    form: RmspropForm,
    /// One squared-gradient average per parameter, same order and shape.
    square_avg: Vec<Tensor>,
}

impl RmsProp {
    /// Zeroed state for `params` (v = 0, torch.optim.RMSprop's start): squared-gradient decay
    /// `decay`, `eps` placed as `form` says.
    pub fn new(params: &[(String, Tensor)], decay: f64, eps: f64, form: RmspropForm) -> Self {
        let square_avg = params
            .iter()
            .map(|(_, p)| p.zeros_like().detach())
            .collect();
        RmsProp {
            decay,
            eps,
            form,
            square_avg,
        }
    }

    /// The same optimizer with every squared-gradient average starting at `v0` instead of 0
    /// (TensorFlow's RMSProp starts at 1; see the module docs). Only a fresh state: a resumed
    /// run's v comes from its checkpoint ([`RmsProp::load_named`]).
    pub fn starting_at(self, v0: f64) -> Self {
        if v0 != 0.0 {
            let _guard = tch::no_grad_guard();
            for v in &self.square_avg {
                let _ = v.shallow_clone().fill_(v0);
            }
        }
        self
    }

    /// The squared-gradient averages v, one tensor per parameter, in parameter order.
    pub fn state(&self) -> &[Tensor] {
        &self.square_avg
    }

    /// The state under its checkpoint names: `rmsprop/<name>` per parameter of `params` (the
    /// names of the parameters this state was made for).
    pub fn named_state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        params
            .iter()
            .zip(&self.square_avg)
            .map(|((name, _), v)| (format!("rmsprop/{name}"), v.shallow_clone()))
            .collect()
    }

    /// Restores the state saved by [`RmsProp::named_state`] from `named` (a checkpoint's
    /// optimizer tensors by full name); nothing changes on an error.
    ///
    /// # Errors
    ///
    /// [`StateError::Missing`] when a tensor is absent, [`StateError::Shape`] when one does not
    /// fit its parameter.
    pub fn load_named(
        &mut self,
        params: &[(String, Tensor)],
        named: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), StateError> {
        debug_assert_eq!(
            params.len(),
            self.square_avg.len(),
            "the parameters of this state"
        );
        let mut loaded = Vec::with_capacity(params.len());
        for ((name, _), dst) in params.iter().zip(&self.square_avg) {
            loaded.push(state_tensor(named, format!("rmsprop/{name}"), &dst.size())?);
        }
        let _guard = tch::no_grad_guard();
        for (dst, src) in self.square_avg.iter_mut().zip(loaded) {
            dst.copy_(&src.to_device(dst.device()));
        }
        Ok(())
    }

    /// Applies one update with learning rate `lr` to `params` using their `.grad()`.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        let _guard = tch::no_grad_guard();
        for ((_, p), v) in params.iter().zip(self.square_avg.iter_mut()) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            // Six kernels and three temporaries per parameter: v <- v + (1 - decay)(g^2 - v),
            // then p <- p + (-lr g) / (sqrt(v) + eps), or / sqrt(v + eps).
            let _ = v.lerp_(&(&g * &g), 1.0 - self.decay);
            let denom = match self.form {
                RmspropForm::EpsOutside => {
                    let mut d = v.sqrt();
                    let _ = d.g_add_scalar_(self.eps);
                    d
                }
                RmspropForm::EpsInside => {
                    let mut d = &*v + self.eps;
                    let _ = d.sqrt_();
                    d
                }
            };
            let mut p = p.shallow_clone();
            let _ = p.addcdiv_(&(&g * -lr), &denom);
        }
    }
}

/// Adam (Kingma & Ba 2015, algorithm 1) as `torch.optim.Adam` computes it (no weight decay,
/// no AMSGrad), per parameter p with gradient g, at step t = 1, 2, ...:
///
/// ```text
/// m <- beta1 * m + (1 - beta1) * g
/// v <- beta2 * v + (1 - beta2) * g^2
/// p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
///
/// Its state is m and v per parameter and the step count t (a checkpoint's `adam/m/<name>`,
/// `adam/v/<name>` and `adam/step`, [`Adam::named_state`]).
pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken (t).
    step: i64,
    /// First moments, one per parameter, same order and shape.
    exp_avg: Vec<Tensor>,
    /// Second moments, one per parameter, same order and shape.
    exp_avg_sq: Vec<Tensor>,
}

impl Adam {
    /// Zeroed state for `params` (t = 0).
    pub fn new(params: &[(String, Tensor)], beta1: f64, beta2: f64, eps: f64) -> Self {
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like().detach())
                .collect()
        };
        Adam {
            beta1,
            beta2,
            eps,
            step: 0,
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
        }
    }

    /// Applies one update with learning rate `lr` to `params` using their `.grad()`.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let step_size = lr / (1.0 - self.beta1.powi(t));
        let root_correction = (1.0 - self.beta2.powi(t)).sqrt();
        for (((_, p), m), v) in params
            .iter()
            .zip(self.exp_avg.iter_mut())
            .zip(self.exp_avg_sq.iter_mut())
        {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = m.lerp_(&g, 1.0 - self.beta1);
            let _ = v.lerp_(&(&g * &g), 1.0 - self.beta2);
            let mut denom = v.sqrt();
            let _ = denom.g_div_scalar_(root_correction);
            let _ = denom.g_add_scalar_(self.eps);
            let mut p = p.shallow_clone();
            let _ = p.addcdiv_(&(&*m * -step_size), &denom);
        }
    }

    /// The state under its checkpoint names: `adam/m/<name>` and `adam/v/<name>` per
    /// parameter of `params` (the names of the parameters this state was made for), and
    /// `adam/step` (an int64 scalar).
    pub fn named_state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        let mut named = Vec::with_capacity(2 * params.len() + 1);
        for (((name, _), m), v) in params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            named.push((format!("adam/m/{name}"), m.shallow_clone()));
            named.push((format!("adam/v/{name}"), v.shallow_clone()));
        }
        named.push(("adam/step".into(), Tensor::from(self.step)));
        named
    }

    /// Restores the state saved by [`Adam::named_state`] from `named` (a checkpoint's
    /// optimizer tensors by full name); nothing changes on an error.
    ///
    /// # Errors
    ///
    /// [`StateError::Missing`] when a tensor is absent, [`StateError::Shape`] when one does not
    /// fit its parameter.
    pub fn load_named(
        &mut self,
        params: &[(String, Tensor)],
        named: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), StateError> {
        let get = |key: String| {
            named
                .get(&key)
                .map(|t| t.shallow_clone())
                .ok_or(StateError::Missing(key))
        };
        let step = get("adam/step".into())?;
        if step.numel() != 1 {
            return Err(StateError::Shape {
                found: step.size(),
                expected: vec![],
            });
        }
        let mut loaded = Vec::with_capacity(params.len());
        for (name, p) in params {
            let size = p.size();
            loaded.push((
                state_tensor(named, format!("adam/m/{name}"), &size)?,
                state_tensor(named, format!("adam/v/{name}"), &size)?,
            ));
        }
        let _guard = tch::no_grad_guard();
        for ((m, v), (dm, dv)) in loaded
            .into_iter()
            .zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
        {
            dm.copy_(&m.to_device(dm.device()));
            dv.copy_(&v.to_device(dv.device()));
        }
        self.step = step.int64_value(&[]);
        Ok(())
    }
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

/// A second moment below this counts as no gradient for a long time ([`Optimizer::frozen_units`]):
/// without one, RMSProp's v falls from 1e-12 below it in about 4,100 updates at decay 0.99,
/// Adam's in ten times as many at beta2 0.999. `scripts/dead-units` uses the same default.
pub const FROZEN_BELOW: f64 = 1e-30;

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

    /// The second moments, one per parameter in parameter order: RMSProp's v, Adam's v.
    fn second_moments(&self) -> &[Tensor] {
        match self {
            Optimizer::RmsProp(o) => &o.square_avg,
            Optimizer::Adam(o) => &o.exp_avg_sq,
        }
    }

    /// For the weight `name` among `params` (the parameters this optimizer was made for): its
    /// units (rows: a convolution's filters, a linear layer's outputs) and how many are frozen,
    /// the second moment of every incoming weight below `below` ([`FROZEN_BELOW`]): units no
    /// gradient has reached for many updates, as a ReLU unit inactive on every input.
    /// `scripts/dead-units` reads the same from a checkpoint. `None` when `params` has no
    /// weight `name` of 2 or more dimensions. Copies the weight's state to the host.
    pub fn frozen_units(
        &self,
        params: &[(String, Tensor)],
        name: &str,
        below: f64,
    ) -> Option<(usize, usize)> {
        let i = params.iter().position(|(n, _)| n == name)?;
        let v = self.second_moments().get(i)?;
        let size = v.size();
        if size.len() < 2 || size[0] < 1 {
            return None;
        }
        let units = size[0] as usize;
        let flat = v.to_device(tch::Device::Cpu).reshape([-1]);
        let values = Vec::<f32>::try_from(&flat).ok()?;
        let per = (values.len() / units).max(1);
        let frozen = values
            .chunks(per)
            .filter(|row| row.iter().all(|&x| f64::from(x) < below))
            .count();
        Some((units, frozen))
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
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn rmsprop_matches_the_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let mut opt = RmsProp::new(&params, 0.9, 1e-8, RmspropForm::EpsOutside);
        // loss = sum(3 * p) -> g = 3
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(&params, 0.1);
        // v = 0.1 * 9 = 0.9; step = 0.1 * 3 / sqrt(0.9)
        let expect = 0.1 * 3.0 / 0.9f64.sqrt();
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!((got[0] as f64 - (1.0 - expect)).abs() < 1e-5, "{got:?}");
        assert!((got[1] as f64 - (-2.0 - expect)).abs() < 1e-5, "{got:?}");
        let v: Vec<f32> = Vec::try_from(&opt.state()[0]).unwrap();
        assert!((v[0] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn rmsprop_with_eps_inside_the_root_matches_the_a3c_form() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let mut opt = RmsProp::new(&params, 0.99, 0.1, RmspropForm::EpsInside);
        // g = (0.5, -0.01): v = 0.01 g^2; step = lr g / sqrt(v + 0.1).
        (&p * Tensor::from_slice(&[0.5f32, -0.01]))
            .sum(Kind::Float)
            .backward();
        opt.step(&params, 0.1);
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        let step = |g: f64| 0.1 * g / (0.01 * g * g + 0.1).sqrt();
        assert!((got[0] as f64 - (1.0 - step(0.5))).abs() < 1e-6, "{got:?}");
        assert!(
            (got[1] as f64 - (-2.0 - step(-0.01))).abs() < 1e-6,
            "{got:?}"
        );
        // Unlike eps outside, a small gradient makes a small step: 0.1 * 0.01 / sqrt(0.1).
        assert!((step(-0.01).abs() - 0.00316).abs() < 1e-4);
    }

    /// v starting at 1 (TensorFlow's RMSProp, `--rms-initial-square-avg 1`) makes the first
    /// step about lr * g; starting at 0 (torch's) a large enough gradient moves its weight by
    /// about 10 lr, whatever its size.
    #[test]
    fn rmsprop_starting_at_one_takes_tensorflows_small_first_steps() {
        let (lr, eps, g) = (7e-4, 1e-5, [0.5f64, -0.01]);
        let first_step = |v0: f64| -> [f64; 2] {
            let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
            let params = vec![("w".to_string(), p.shallow_clone())];
            let mut opt = RmsProp::new(&params, 0.99, eps, RmspropForm::EpsInside).starting_at(v0);
            let v: Vec<f32> = Vec::try_from(&opt.state()[0]).unwrap();
            assert_eq!(v, vec![v0 as f32; 2]);
            (&p * Tensor::from_slice(&[g[0] as f32, g[1] as f32]))
                .sum(Kind::Float)
                .backward();
            opt.step(&params, lr);
            let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
            [1.0 - got[0] as f64, -2.0 - got[1] as f64]
        };
        let (tf, torch) = (first_step(1.0), first_step(0.0));
        for i in 0..2 {
            let v = 0.99 + 0.01 * g[i] * g[i];
            let expect = lr * g[i] / (v + eps).sqrt();
            assert!(
                (tf[i] - expect).abs() < 5e-7,
                "{tf:?}, expected {expect} at {i}"
            );
        }
        assert!((torch[0] - 10.0 * lr).abs() < 1e-4, "{torch:?}");
        assert!(torch[0] > 19.0 * tf[0], "{torch:?} vs {tf:?}");
    }

    /// The units of a weight whose every second moment is below the threshold are frozen:
    /// here the rows that no gradient reached, with RMSProp and with Adam; a row with one
    /// weight reached is not, and nothing is frozen while v still decays from 1.
    #[test]
    fn frozen_units_are_the_rows_no_gradient_reached() {
        let w = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = vec![
            ("fc1.weight".to_string(), w.shallow_clone()),
            ("fc1.bias".to_string(), b.shallow_clone()),
        ];
        // Row 0 gets no gradient, row 1 all of it, row 2 one weight's.
        let mask = Tensor::from_slice(&[0f32, 0., 0., 0., 1., 1., 1., 1., 0., 0., 1., 0.]);
        let rmsprop = || RmsProp::new(&params, 0.99, 1e-5, RmspropForm::EpsOutside);
        for mut opt in [
            Optimizer::RmsProp(rmsprop()),
            Optimizer::Adam(Adam::new(&params, 0.9, 0.999, 1e-8)),
        ] {
            (&w * mask.reshape([3, 4])).sum(Kind::Float).backward();
            opt.step(&params, 0.1);
            zero_grad(&params);
            let frozen = |name| opt.frozen_units(&params, name, FROZEN_BELOW);
            assert_eq!(frozen("fc1.weight"), Some((3, 1)));
            assert_eq!(frozen("fc1.bias"), None, "one dimension: no units");
            assert_eq!(frozen("conv1.weight"), None, "not a parameter");
            assert_eq!(opt.frozen_units(&params, "fc1.weight", 0.0), Some((3, 0)));
        }
        let from_one = Optimizer::RmsProp(rmsprop().starting_at(1.0));
        assert_eq!(
            from_one.frozen_units(&params, "fc1.weight", FROZEN_BELOW),
            Some((3, 0))
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        // g = (3, 4): norm 5
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = clip_grad_norm(&params, 1.0);
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
        let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4,
            "{g:?}"
        );
        zero_grad(&params);
        let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
        assert_eq!(g, vec![0.0, 0.0]);
        // Two parameters, one of them a matrix: the norm is global; below the maximum nothing
        // changes.
        let a = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = vec![
            ("a".to_string(), a.shallow_clone()),
            ("b".to_string(), b.shallow_clone()),
        ];
        // Gradients (1, 2; 2, 0) and (4): norm sqrt(1 + 4 + 4 + 16) = 5.
        ((&a * Tensor::from_slice(&[1.0f32, 2.0, 2.0, 0.0]).view([2, 2])).sum(Kind::Float)
            + (&b * 4.0).sum(Kind::Float))
        .backward();
        let norm = clip_grad_norm(&params, 10.0);
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
        assert_eq!(Vec::<f32>::try_from(&b.grad()).unwrap(), vec![4.0]);
        let norm = clip_grad_norm(&params, 2.5);
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-5);
        let ga: Vec<f32> = Vec::try_from(&a.grad().reshape([-1])).unwrap();
        assert!((ga[1] - 1.0).abs() < 1e-5 && (b.grad().double_value(&[0]) - 2.0).abs() < 1e-5);
    }

    #[test]
    fn adam_matches_the_bias_corrected_formula_over_two_steps() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64);
        let mut opt = Adam::new(&params, b1, b2, eps);
        let (mut m, mut v, mut w) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        // Step 1 with g = (3, -0.5), step 2 with g = (1, 2): by hand as torch.optim.Adam.
        for (t, g) in [(1, [3.0f64, -0.5]), (2, [1.0, 2.0])] {
            zero_grad(&params);
            (&p * Tensor::from_slice(&[g[0] as f32, g[1] as f32]))
                .sum(Kind::Float)
                .backward();
            opt.step(&params, lr);
            for i in 0..2 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                w[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
            let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - w[i]).abs() < 1e-5,
                    "step {t}: {got:?} vs {w:?}"
                );
            }
        }
    }

    #[test]
    fn adam_state_survives_a_checkpoint_round_trip_and_a_rmsprop_checkpoint_is_refused() {
        let make = || Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let (p, q) = (make(), make());
        let pp = vec![("w".to_string(), p.shallow_clone())];
        let qq = vec![("w".to_string(), q.shallow_clone())];
        let (mut a, mut b) = (
            Adam::new(&pp, 0.9, 0.999, 1e-5),
            Adam::new(&qq, 0.9, 0.999, 1e-5),
        );
        let grad = |w: &Tensor, g: [f32; 2], ps: &[(String, Tensor)]| {
            zero_grad(ps);
            (w * Tensor::from_slice(&g)).sum(Kind::Float).backward();
        };
        for g in [[3.0f32, -0.5], [1.0, 2.0]] {
            grad(&p, g, &pp);
            a.step(&pp, 0.01);
        }
        let named: std::collections::HashMap<String, Tensor> =
            a.named_state(&pp).into_iter().collect();
        let mut names: Vec<&String> = named.keys().collect();
        names.sort();
        assert_eq!(names, ["adam/m/w", "adam/step", "adam/v/w"]);
        {
            let _g = tch::no_grad_guard();
            q.shallow_clone().copy_(&p);
        }
        b.load_named(&qq, &named).unwrap();
        // Resumed, the third step is the one the original takes (t = 3, the same moments).
        grad(&p, [-1.0, 0.5], &pp);
        a.step(&pp, 0.01);
        grad(&q, [-1.0, 0.5], &qq);
        b.step(&qq, 0.01);
        assert!(p.detach().allclose(&q.detach(), 1e-7, 1e-7, false));
        // A fresh Adam (t = 0) takes another step from the same point and gradient: its first
        // step moves each weight by lr, whatever the gradient's size.
        let mut fresh = Adam::new(&qq, 0.9, 0.999, 1e-5);
        let before = q.detach().copy();
        grad(&q, [-1.0, 0.5], &qq);
        fresh.step(&qq, 0.01);
        let moved: Vec<f32> = Vec::try_from(&(q.detach() - &before)).unwrap();
        assert!(
            (moved[0] - 0.01).abs() < 1e-6 && (moved[1] + 0.01).abs() < 1e-6,
            "{moved:?}"
        );
        // An RMSProp checkpoint holds no `adam/...` tensors: named, not a panic.
        let err = b
            .load_named(&qq, &std::collections::HashMap::new())
            .unwrap_err();
        assert_eq!(err, StateError::Missing("adam/step".into()));
        assert!(err.to_string().contains("--optimizer"), "{err}");
        // A moment of the wrong shape is refused.
        let mut bad = named;
        bad.insert(
            "adam/v/w".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        );
        assert!(matches!(
            b.load_named(&qq, &bad),
            Err(StateError::Shape { .. })
        ));
    }

    #[test]
    fn optimizer_state_resumes_by_name_and_refuses_what_is_not_its_own() {
        use std::collections::HashMap;
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_string(), p.shallow_clone())];
        let rmsprop =
            || Optimizer::RmsProp(RmsProp::new(&params, 0.9, 1e-8, RmspropForm::EpsOutside));
        let v_of = |o: &Optimizer| -> Vec<f32> {
            let Optimizer::RmsProp(r) = o else {
                panic!("not RMSProp")
            };
            Vec::try_from(&r.state()[0]).unwrap()
        };
        let mut a = rmsprop();
        (&p * 3.0).sum(Kind::Float).backward();
        a.step(&params, 0.1);
        let named: HashMap<String, Tensor> = a.named_state(&params).into_iter().collect();
        assert_eq!(named.keys().collect::<Vec<_>>(), ["rmsprop/w"]);
        assert!(named.keys().all(|n| is_state_name(n)));
        let mut b = rmsprop();
        b.restore(&params, &named).unwrap();
        // v = 0.1 * 3^2 for both weights, as the original holds it.
        assert_eq!(v_of(&b), v_of(&a));
        assert!((v_of(&b)[1] - 0.9).abs() < 1e-6, "{:?}", v_of(&b));

        // model-best holds no optimizer state: said so, not "the other optimizer".
        let err = b.restore(&params, &HashMap::new()).unwrap_err();
        assert_eq!(err, StateError::Empty);
        assert!(err.to_string().contains("model-best"), "{err}");
        // A run trained with --optimizer adam: the missing tensor is named.
        let adam: HashMap<String, Tensor> = Adam::new(&params, 0.9, 0.999, 1e-5)
            .named_state(&params)
            .into_iter()
            .collect();
        let err = b.restore(&params, &adam).unwrap_err();
        assert_eq!(err, StateError::Missing("rmsprop/w".into()));
        assert!(err.to_string().contains("--optimizer"), "{err}");
        let mut fresh_adam = Optimizer::Adam(Adam::new(&params, 0.9, 0.999, 1e-5));
        assert_eq!(
            fresh_adam.restore(&params, &named).unwrap_err(),
            StateError::Missing("adam/step".into())
        );
        // A tensor of the wrong shape is refused and the state stays as it was.
        let mut bad = named;
        bad.insert(
            "rmsprop/w".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        );
        assert!(matches!(
            b.restore(&params, &bad),
            Err(StateError::Shape { .. })
        ));
        assert_eq!(v_of(&b), v_of(&a));
    }
}
