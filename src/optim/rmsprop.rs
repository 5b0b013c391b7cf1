//! RMSProp (Tieleman & Hinton 2012) in the two forms of [`RmspropForm`]; see the module
//! [`crate::optim`] for the update and where v starts.

use tch::Tensor;

use super::{state_tensor, RmspropForm, StateError};

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
