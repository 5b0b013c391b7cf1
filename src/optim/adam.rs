//! Adam (Kingma & Ba 2015) as `torch.optim.Adam` computes it.

use tch::Tensor;

use super::{state_tensor, StateError};

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
