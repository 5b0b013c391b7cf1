//! Pendulum-v1 in pure Rust: the inverted pendulum swing-up with one continuous action, with
//! the dynamics, limits and defaults of Gymnasium's `Pendulum-v1` (`classic_control/pendulum.py`):
//! gravity 10, mass 1, length 1, dt 0.05 s with semi-implicit Euler integration, angular speed
//! clipped to [-8, 8], torque clipped to [-2, 2], reward
//! `-(angle_normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)` per step (between about -16.3
//! and 0), initial state uniform in theta in [-pi, pi], theta_dot in [-1, 1], no terminal
//! state, truncation at 200 steps.
//!
//! Observations are `[3] f32` (cos theta, sin theta, theta_dot), stored as native-endian bytes;
//! the action is a torque `[1] f32` (a `Box(-2, 2)` action space, [`ActionSpec::Box`]), clipped
//! to the bounds here. One step is one frame. It exists so that the continuous-action path
//! (the Gaussian policy head) is exercised without Python; Gymnasium's own is
//! `gymnasium:Pendulum-v1`.

use std::f64::consts::PI;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{ActionSpec, EnvError, Environment, ObsSpec, Step};

const MAX_SPEED: f64 = 8.0;
/// The torque bound, `|u| <= MAX_TORQUE`.
pub const MAX_TORQUE: f64 = 2.0;
const DT: f64 = 0.05;
const G: f64 = 10.0;
const M: f64 = 1.0;
const L: f64 = 1.0;
/// Gymnasium's Pendulum-v1 time limit, in steps.
pub const MAX_STEPS: u64 = 200;

/// The pendulum: angle `theta` (0 upright) and angular velocity `theta_dot`.
pub struct Pendulum {
    state: [f64; 2],
    obs: [u8; 12],
    rng: StdRng,
    steps: u64,
    max_steps: u64,
    episode_return: f32,
    over: bool,
}

/// `x` wrapped into [-pi, pi).
fn angle_normalize(x: f64) -> f64 {
    (x + PI).rem_euclid(2.0 * PI) - PI
}

/// The state after one step with torque `u` (clipped to the bounds), and the step's cost.
pub fn dynamics(state: [f64; 2], u: f64) -> ([f64; 2], f64) {
    let [th, thdot] = state;
    let u = u.clamp(-MAX_TORQUE, MAX_TORQUE);
    let cost = angle_normalize(th).powi(2) + 0.1 * thdot * thdot + 0.001 * u * u;
    let thdot = (thdot + (3.0 * G / (2.0 * L) * th.sin() + 3.0 / (M * L * L) * u) * DT)
        .clamp(-MAX_SPEED, MAX_SPEED);
    ([th + thdot * DT, thdot], cost)
}

impl Pendulum {
    /// A new episode seeded with `seed`; `max_steps` is the time limit (200 for v1; 0: none).
    pub fn new(seed: u64, max_steps: u64) -> Self {
        let mut env = Pendulum {
            state: [0.0; 2],
            obs: [0; 12],
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
        self.state = [self.rng.gen_range(-PI..=PI), self.rng.gen_range(-1.0..=1.0)];
        self.steps = 0;
        self.episode_return = 0.0;
        self.over = false;
        self.write_obs();
    }

    /// The physical state `[theta, theta_dot]`.
    pub fn state(&self) -> [f64; 2] {
        self.state
    }

    fn write_obs(&mut self) {
        let [th, thdot] = self.state;
        for (i, v) in [th.cos(), th.sin(), thdot].iter().enumerate() {
            self.obs[4 * i..4 * i + 4].copy_from_slice(&(*v as f32).to_ne_bytes());
        }
    }
}

impl Environment for Pendulum {
    fn obs_spec(&self) -> ObsSpec {
        ObsSpec::Vector(3)
    }

    /// One action dimension (the torque).
    fn num_actions(&self) -> usize {
        1
    }

    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Box {
            low: vec![-MAX_TORQUE as f32],
            high: vec![MAX_TORQUE as f32],
        }
    }

    fn reset(&mut self) -> Result<(), EnvError> {
        self.restart();
        Ok(())
    }

    fn obs(&self) -> &[u8] {
        &self.obs
    }

    /// A discrete action: refused ([`EnvError::ActionKind`]); use `step_continuous`.
    fn step(&mut self, action: usize) -> Result<Step, EnvError> {
        Err(EnvError::ActionKind {
            expected: self.action_spec().to_string(),
            given: format!("the discrete action {action}"),
        })
    }

    fn step_continuous(&mut self, action: &[f32]) -> Result<Step, EnvError> {
        let &[u] = action else {
            return Err(EnvError::ActionKind {
                expected: self.action_spec().to_string(),
                given: format!("a continuous action of {} dimensions", action.len()),
            });
        };
        if !u.is_finite() {
            return Err(EnvError::Custom(format!(
                "Pendulum: the torque {u} is not finite"
            )));
        }
        if self.over {
            return Err(EnvError::EpisodeOver);
        }
        let (state, cost) = dynamics(self.state, f64::from(u));
        self.state = state;
        self.write_obs();
        self.steps += 1;
        let reward = -cost as f32;
        self.episode_return += reward;
        let truncated = self.max_steps > 0 && self.steps >= self.max_steps;
        self.over = truncated;
        Ok(Step {
            reward,
            clipped_reward: reward,
            terminal: false,
            game_over: false,
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
    fn one_step_matches_gymnasiums_equations_by_hand() {
        // Hanging down (theta = pi), at rest, full torque: thdot = (15 sin(pi) + 3 * 2) * 0.05.
        let ([th, thdot], cost) = dynamics([PI, 0.0], 5.0);
        assert!(
            (thdot - 0.3).abs() < 1e-9,
            "the torque is clipped to 2: {thdot}"
        );
        assert!((th - (PI + 0.3 * 0.05)).abs() < 1e-9);
        // cost = angle_normalize(pi)^2 + 0 + 0.001 * 2^2 (the clipped torque).
        assert!((cost - (PI * PI + 0.004)).abs() < 1e-9, "{cost}");
        // The speed limit.
        let ([_, fast], _) = dynamics([0.5, 7.9], 2.0);
        assert_eq!(fast, 8.0);
        assert!((angle_normalize(3.0 * PI) + PI).abs() < 1e-9);
    }

    #[test]
    fn episodes_are_truncated_never_terminal_and_refuse_discrete_actions() {
        let mut env = Pendulum::new(3, MAX_STEPS);
        let obs = |e: &Pendulum| -> Vec<f32> {
            e.obs()
                .chunks(4)
                .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
                .collect()
        };
        let [th, thdot] = env.state();
        let o = obs(&env);
        assert!((o[0] - th.cos() as f32).abs() < 1e-6 && (o[2] - thdot as f32).abs() < 1e-6);
        let mut total = 0.0;
        for t in 1..=MAX_STEPS {
            let s = env.step_continuous(&[0.0]).unwrap();
            assert!(!s.terminal && !s.game_over);
            assert!((-16.3..=0.0).contains(&s.reward), "{}", s.reward);
            total += s.reward;
            assert_eq!(s.truncated, t == MAX_STEPS);
        }
        assert!((env.episode_return() - total).abs() < 1e-3);
        assert!(matches!(
            env.step_continuous(&[0.0]),
            Err(EnvError::EpisodeOver)
        ));
        assert!(matches!(env.step(0), Err(EnvError::ActionKind { .. })));
        assert!(matches!(
            env.step_continuous(&[0.0, 1.0]),
            Err(EnvError::ActionKind { .. })
        ));
        // The same seed replays the same episode.
        let (a, b) = (Pendulum::new(9, 10), Pendulum::new(9, 10));
        assert_eq!(a.state(), b.state());
    }
}
