//! RMSProp, written out so that its state (the squared-gradient averages) can be saved in a
//! checkpoint and restored exactly, and global gradient-norm clipping.
//!
//! Update, per parameter p with gradient g (Tieleman & Hinton 2012, non-centred, no momentum),
//! in one of two forms ([`RmspropForm`]):
//!
//! ```text
//! v <- decay * v + (1 - decay) * g^2
//! p <- p - lr * g / (sqrt(v) + eps)     eps outside: torch.optim.RMSprop, OpenAI baselines
//! p <- p - lr * g / sqrt(v + eps)       eps inside: the A3C paper (Mnih et al. 2016, S2), TF
//! ```
//!
//! v starts at 0 without bias correction. With eps outside and a small eps (1e-5), the first
//! steps therefore move every weight by about lr / sqrt(1 - decay) = 10 lr whatever its
//! gradient; with eps inside and the reproductions' eps 0.1, a step is at most
//! lr * |g| / sqrt(0.1), and small gradients make small steps. One learner holds one v per
//! parameter, so the statistics are shared by every actor's data (the paper's "shared RMSProp").

use tch::Tensor;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Where RMSProp's epsilon goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RmspropForm {
    /// `g / (sqrt(v) + eps)`: torch.optim.RMSprop and OpenAI baselines (eps 1e-5).
    EpsOutside,
    /// `g / sqrt(v + eps)`: the A3C paper's RMSProp (Mnih et al. 2016, section 4 and S2) and
    /// TensorFlow's, as its reproductions use it (eps 0.1).
    EpsInside,
}

/// Why a saved optimizer state does not fit the parameters (see [`RmsProp::load_state`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not one tensor per parameter.
    #[error("optimizer state has {found} tensors, expected {expected}")]
    Count {
        /// Tensors in the saved state.
        found: usize,
        /// Parameters.
        expected: usize,
    },
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
    /// Zeroed state for `params`: squared-gradient decay `decay`, `eps` placed as `form` says.
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

    /// The state, for checkpoints: one tensor per parameter, in parameter order.
    pub fn state(&self) -> &[Tensor] {
        &self.square_avg
    }

    /// Restores the state saved by [`RmsProp::state`].
    ///
    /// # Errors
    ///
    /// [`StateError`] on a count or shape mismatch.
    pub fn load_state(&mut self, state: &[Tensor]) -> Result<(), StateError> {
        if state.len() != self.square_avg.len() {
            return Err(StateError::Count {
                found: state.len(),
                expected: self.square_avg.len(),
            });
        }
        let _guard = tch::no_grad_guard();
        for (dst, src) in self.square_avg.iter_mut().zip(state) {
            if dst.size() != src.size() {
                return Err(StateError::Shape {
                    found: src.size(),
                    expected: dst.size(),
                });
            }
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
}
