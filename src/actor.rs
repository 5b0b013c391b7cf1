//! The actor loop: one emulator, epsilon-greedy acting with a CPU copy of the network, n-step
//! returns bootstrapped from the weight snapshot, transitions pushed into the shared queue.
//!
//! Follows Mnih et al. (2016), Algorithm S2 (asynchronous n-step Q-learning), with the learner
//! doing the gradient step: each actor keeps its last n (observation, action, clipped reward);
//! when n are held, or a terminal state is reached, it computes their returns (see
//! [`crate::returns`]) and pushes one transition per held step. The bootstrap value for a full
//! segment is the greedy value of the next observation, taken from the forward pass that picks
//! the next action anyway, so an actor runs one forward pass per agent step.

use std::time::Duration;

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Tensor};

use crate::env::atari::{AtariConfig, AtariEnv};
use crate::model::QNetwork;
use crate::protocol::{ActorInit, ActorMsg};
use crate::returns::{bootstrap_value, n_step_returns};
use crate::schedule;
use crate::shm::{ExperienceQueue, PushError, Transition, WeightSnapshot};

/// The last n steps an actor holds before it can compute their returns.
struct Segment {
    obs: Vec<Vec<u8>>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    returns: Vec<f32>,
}

impl Segment {
    fn new(n: usize, obs_bytes: usize) -> Self {
        Segment {
            obs: (0..n).map(|_| vec![0u8; obs_bytes]).collect(),
            actions: Vec::with_capacity(n),
            rewards: Vec::with_capacity(n),
            returns: vec![0.0; n],
        }
    }

    fn len(&self) -> usize {
        self.actions.len()
    }

    fn hold(&mut self, obs: &[u8], action: u32, clipped_reward: f32) {
        let i = self.actions.len();
        self.obs[i].copy_from_slice(obs);
        self.actions.push(action);
        self.rewards.push(clipped_reward);
    }

    /// Computes the held steps' returns with `bootstrap` and pushes them, oldest first.
    fn flush(
        &mut self,
        bootstrap: f32,
        gamma: f32,
        queue: &ExperienceQueue,
        lane: usize,
    ) -> Result<(), PushError> {
        let n = self.len();
        n_step_returns(&self.rewards, bootstrap, gamma, &mut self.returns[..n]);
        for i in 0..n {
            queue.push(
                lane,
                &Transition {
                    obs: &self.obs[i],
                    action: self.actions[i],
                    ret: self.returns[i],
                },
            )?;
        }
        self.actions.clear();
        self.rewards.clear();
        Ok(())
    }
}

/// Greedy-or-random action: with probability `epsilon` a uniform action, else argmax of `q`.
pub fn epsilon_greedy(q: &[f32], epsilon: f64, rng: &mut impl Rng) -> usize {
    if rng.gen::<f64>() < epsilon {
        rng.gen_range(0..q.len())
    } else {
        let mut best = 0;
        for (i, v) in q.iter().enumerate() {
            if *v > q[best] {
                best = i;
            }
        }
        best
    }
}

/// Q-values of one observation `[4, 84, 84]` u8 with the CPU network, into `out`.
fn q_values(model: &QNetwork, obs: &[u8], shape: [usize; 3], out: &mut [f32]) {
    let x = Tensor::from_slice(obs).view([1, shape[0] as i64, shape[1] as i64, shape[2] as i64]);
    let q = model.forward(&x);
    q.copy_data(out, out.len());
}

/// Runs one actor until the learner closes the queue. `init` comes from the handshake.
pub fn run(init: ActorInit) -> Result<()> {
    let reports = init.reports.clone();
    let actor = init.actor;
    let result = act(&init, &reports);
    if let Err(e) = &result {
        let _ = reports.send(ActorMsg::Failed {
            actor,
            message: format!("{e:#}"),
        });
    }
    result
}

fn act(init: &ActorInit, reports: &IpcSender<ActorMsg>) -> Result<()> {
    tch::set_num_threads(1);
    tch::manual_seed(init.seed as i64);
    let _no_grad = tch::no_grad_guard();
    let cfg = &init.config;
    let spec = cfg.game_spec().map_err(anyhow::Error::msg)?;
    let mut env = AtariEnv::new(&AtariConfig {
        repeat_action_probability: cfg.sticky(&spec),
        game: spec,
        rom_path: cfg.rom.clone(),
        seed: init.seed,
        frame_skip: cfg.frame_skip,
        noop_max: cfg.noop_max,
        terminal_on_life_loss: cfg.terminal_on_life_loss,
        max_episode_frames: cfg.max_episode_frames,
    })
    .context("starting the emulator")?;
    let queue = ExperienceQueue::open(&init.queue).context("opening the experience queue")?;
    let snapshot = WeightSnapshot::open(&init.snapshot).context("opening the weight snapshot")?;
    let shape = env.obs_shape();
    let num_actions = env.num_actions();
    let mut model = QNetwork::new(cfg.network, shape, num_actions, Device::Cpu);
    let mut flat = vec![0f32; snapshot.numel()];
    anyhow::ensure!(
        flat.len() == model.numel(),
        "snapshot has {} parameters, this actor's network {}",
        flat.len(),
        model.numel()
    );
    let mut version = 0;
    while version == 0 {
        if queue.is_closed() {
            return Ok(());
        }
        version = snapshot.read_into(&mut flat)?;
        if version == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    model.load_flat(&flat);
    reports
        .send(ActorMsg::Ready {
            actor: init.actor,
            pid: std::process::id(),
            num_actions,
        })
        .map_err(|e| anyhow::anyhow!("reporting to the learner: {e:?}"))?;

    let mut rng = StdRng::seed_from_u64(init.seed ^ 0x5EED);
    let mut segment = Segment::new(cfg.n_step, shape.iter().product());
    let mut q = vec![0f32; num_actions];
    let frames = queue.frames();
    env.reset();
    loop {
        if queue.is_closed() {
            return Ok(());
        }
        if snapshot.version() != version {
            version = snapshot.read_into(&mut flat)?;
            model.load_flat(&flat);
        }
        q_values(&model, env.obs(), shape, &mut q);
        if segment.len() == cfg.n_step {
            // A full segment bootstraps with max_a Q(s_{t+n}, a): the values just computed.
            match segment.flush(bootstrap_value(false, &q), cfg.gamma, &queue, init.lane) {
                Err(PushError::Closed) => return Ok(()),
                other => other?,
            }
        }
        let epsilon = schedule::epsilon(
            init.final_epsilon,
            cfg.eps_decay,
            frames.load(std::sync::atomic::Ordering::Relaxed),
        );
        let action = epsilon_greedy(&q, epsilon, &mut rng);
        segment.hold(env.obs(), action as u32, 0.0);
        let step = env.step(action)?;
        *segment.rewards.last_mut().expect("just held") = step.clipped_reward;
        frames.fetch_add(step.frames as u64, std::sync::atomic::Ordering::Relaxed);
        let flushed = if step.terminal {
            segment.flush(0.0, cfg.gamma, &queue, init.lane)
        } else if step.truncated {
            // A time limit is not a terminal state: bootstrap from the last observation.
            q_values(&model, env.obs(), shape, &mut q);
            segment.flush(bootstrap_value(false, &q), cfg.gamma, &queue, init.lane)
        } else {
            Ok(())
        };
        match flushed {
            Err(PushError::Closed) => return Ok(()),
            other => other?,
        }
        if step.game_over || step.truncated {
            let msg = ActorMsg::Episode {
                actor: init.actor,
                score: env.episode_return(),
                frames: env.episode_frames(),
            };
            reports
                .send(msg)
                .map_err(|e| anyhow::anyhow!("reporting to the learner: {e:?}"))?;
            env.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_greedy_extremes() {
        let mut rng = StdRng::seed_from_u64(1);
        let q = [0.1, 0.9, 0.3];
        for _ in 0..100 {
            assert_eq!(epsilon_greedy(&q, 0.0, &mut rng), 1);
        }
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[epsilon_greedy(&q, 1.0, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
