//! CartPole-v1 in pure Rust: the classic cart-pole balancing task of Barto, Sutton & Anderson
//! (1983) with the dynamics, limits and defaults of Gym's `CartPole-v1`: force 10 N, cart 1 kg,
//! pole 0.1 kg with half-length 0.5 m, gravity 9.8, tau 0.02 s with (explicit) Euler
//! integration, failure beyond 12 degrees or 2.4 m, truncation at 500 steps, reward +1 per step
//! (the failing step included), initial state uniform in [-0.05, 0.05].
//!
//! Observations are `[4] f32` (cart position, cart velocity, pole angle, pole angular
//! velocity), stored as native-endian bytes; actions are 0 (push left) and 1 (push right).
//! One step is one frame.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{EnvError, Environment, ObsSpec, Step};

const GRAVITY: f64 = 9.8;
const MASS_CART: f64 = 1.0;
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_CART + MASS_POLE;
/// Half the pole's length.
const LENGTH: f64 = 0.5;
const POLE_MASS_LENGTH: f64 = MASS_POLE * LENGTH;
const FORCE_MAG: f64 = 10.0;
const TAU: f64 = 0.02;
/// 12 degrees.
pub const THETA_THRESHOLD: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
pub const X_THRESHOLD: f64 = 2.4;
/// Gym's CartPole-v1 time limit, in steps.
pub const MAX_STEPS: u64 = 500;

/// The cart-pole system: state `[x, x_dot, theta, theta_dot]`.
pub struct CartPole {
    state: [f64; 4],
    obs: [u8; 16],
    rng: StdRng,
    steps: u64,
    max_steps: u64,
    episode_return: f32,
    over: bool,
}

/// The state after one Euler step of `tau` seconds with action `action` (0 left, 1 right).
pub fn dynamics(state: [f64; 4], action: usize) -> [f64; 4] {
    let [x, x_dot, theta, theta_dot] = state;
    let force = if action == 1 { FORCE_MAG } else { -FORCE_MAG };
    let (sin, cos) = theta.sin_cos();
    let temp = (force + POLE_MASS_LENGTH * theta_dot * theta_dot * sin) / TOTAL_MASS;
    let theta_acc =
        (GRAVITY * sin - cos * temp) / (LENGTH * (4.0 / 3.0 - MASS_POLE * cos * cos / TOTAL_MASS));
    let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS;
    [
        x + TAU * x_dot,
        x_dot + TAU * x_acc,
        theta + TAU * theta_dot,
        theta_dot + TAU * theta_acc,
    ]
}

/// Whether `state` is a failure: the pole beyond 12 degrees or the cart beyond 2.4 m.
pub fn failed(state: [f64; 4]) -> bool {
    state[0].abs() > X_THRESHOLD || state[2].abs() > THETA_THRESHOLD
}

impl CartPole {
    /// A new episode seeded with `seed`; `max_steps` is the time limit (500 for v1; 0: none).
    pub fn new(seed: u64, max_steps: u64) -> Self {
        let mut env = CartPole {
            state: [0.0; 4],
            obs: [0; 16],
            rng: StdRng::seed_from_u64(seed),
            steps: 0,
            max_steps,
            episode_return: 0.0,
            over: false,
        };
        env.restart();
        env
    }

    fn restart(&mut self) {
        for v in self.state.iter_mut() {
            *v = self.rng.gen_range(-0.05..0.05);
        }
        self.steps = 0;
        self.episode_return = 0.0;
        self.over = false;
        self.write_obs();
    }

    /// The physical state `[x, x_dot, theta, theta_dot]`.
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    fn write_obs(&mut self) {
        for (i, v) in self.state.iter().enumerate() {
            self.obs[4 * i..4 * i + 4].copy_from_slice(&(*v as f32).to_ne_bytes());
        }
    }
}

impl Environment for CartPole {
    fn obs_spec(&self) -> ObsSpec {
        ObsSpec::Vector(4)
    }

    fn num_actions(&self) -> usize {
        2
    }

    fn reset(&mut self) -> Result<(), EnvError> {
        self.restart();
        Ok(())
    }

    fn obs(&self) -> &[u8] {
        &self.obs
    }

    fn step(&mut self, action: usize) -> Result<Step, EnvError> {
        if action >= 2 {
            return Err(EnvError::InvalidAction {
                action,
                num_actions: 2,
            });
        }
        if self.over {
            return Err(EnvError::EpisodeOver);
        }
        self.state = dynamics(self.state, action);
        self.write_obs();
        self.steps += 1;
        self.episode_return += 1.0;
        let terminal = failed(self.state);
        let truncated = !terminal && self.max_steps > 0 && self.steps >= self.max_steps;
        self.over = terminal || truncated;
        Ok(Step {
            reward: 1.0,
            clipped_reward: 1.0,
            terminal,
            game_over: terminal,
            truncated,
            frames: 1,
        })
    }

    fn episode_return(&self) -> f32 {
        self.episode_return
    }

    fn episode_frames(&self) -> u64 {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_matches_the_equations_by_hand() {
        // From rest, pushing right: temp = 10/1.1; theta_acc = -temp / (0.5 * (4/3 - 0.1/1.1)),
        // x_acc = temp - 0.05 * theta_acc / 1.1. Positions move only on the next step (Euler).
        let s = dynamics([0.0; 4], 1);
        let temp = 10.0 / 1.1;
        let theta_acc = -temp / (0.5 * (4.0 / 3.0 - 0.1 / 1.1));
        let x_acc = temp - 0.05 * theta_acc / 1.1;
        assert_eq!(s[0], 0.0);
        assert_eq!(s[2], 0.0);
        assert!((s[1] - 0.02 * x_acc).abs() < 1e-12);
        assert!((s[3] - 0.02 * theta_acc).abs() < 1e-12);
        let left = dynamics([0.0; 4], 0);
        assert!((left[1] + s[1]).abs() < 1e-12, "symmetric");
    }

    #[test]
    fn pushing_one_way_fails_within_the_limits() {
        let mut env = CartPole::new(0, MAX_STEPS);
        let mut n = 0;
        loop {
            let step = env.step(1).unwrap();
            n += 1;
            if step.terminal {
                assert!(step.game_over && !step.truncated);
                break;
            }
        }
        assert!((5..60).contains(&n), "failed after {n} steps");
        assert!(failed(env.state()));
        assert_eq!(env.episode_return(), n as f32);
        assert!(matches!(env.step(0), Err(EnvError::EpisodeOver)));
    }

    #[test]
    fn a_balancing_policy_is_truncated_at_500_not_terminated() {
        let mut env = CartPole::new(1, MAX_STEPS);
        for i in 1..=MAX_STEPS {
            // Push towards the side the pole leans (a simple stabilising controller).
            let s = env.state();
            let action = (s[2] + 0.5 * s[3] + 0.01 * s[0] + 0.1 * s[1] > 0.0) as usize;
            let step = env.step(action).unwrap();
            assert!(!step.terminal, "fell at step {i}");
            assert_eq!(step.truncated, i == MAX_STEPS);
        }
        assert_eq!(env.episode_return(), 500.0);
    }

    #[test]
    fn observations_are_the_state_as_f32_and_resets_are_seeded() {
        let a = CartPole::new(7, MAX_STEPS);
        let b = CartPole::new(7, MAX_STEPS);
        assert_eq!(a.obs(), b.obs());
        assert_ne!(a.obs(), CartPole::new(8, MAX_STEPS).obs());
        let x = f32::from_ne_bytes(a.obs()[0..4].try_into().unwrap());
        assert_eq!(x, a.state()[0] as f32);
        assert!(a.state().iter().all(|v| v.abs() <= 0.05));
        assert!(matches!(
            CartPole::new(0, 500).step(2),
            Err(EnvError::InvalidAction { .. })
        ));
    }
}
