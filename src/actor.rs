//! The actor loop: one emulator, epsilon-greedy acting with a CPU copy of the network, n-step
//! returns bootstrapped from the weight snapshot, transitions pushed into the shared queue.
//!
//! Follows Mnih et al. (2016), Algorithm S2 (asynchronous n-step Q-learning), with the learner
//! doing the gradient step: each actor keeps its last n (observation, action, clipped reward);
//! when n are held, or a terminal state is reached, it computes their returns (see
//! [`crate::returns`]) and pushes one transition per held step. The bootstrap value for a full
//! segment comes from the forward pass that picks the next action anyway (max_a Q for
//! Q-learning, Q of that action for SARSA), so an actor runs at most one forward pass per agent
//! step, over only the environments whose Q-values it uses (see `act`).

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::Device;

use crate::config::BenchPhase;
use crate::env::{self, ObsSpec};
use crate::eval;
use crate::model::{obs_tensor, resolve_network, QNetwork};
use crate::protocol::{ActorInit, ActorMsg, EvalScores, Role};
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

    /// Holds the observation and action of the step about to be taken.
    fn hold(&mut self, obs: &[u8], action: u32) {
        let i = self.actions.len();
        self.obs[i].copy_from_slice(obs);
        self.actions.push(action);
    }

    /// Records the clipped reward of the step just taken.
    fn reward(&mut self, clipped_reward: f32) {
        debug_assert_eq!(self.rewards.len() + 1, self.actions.len());
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
    if explores(epsilon, rng) {
        rng.gen_range(0..q.len())
    } else {
        argmax(q)
    }
}

/// The first half of [`epsilon_greedy`], drawn before the Q-values are known: true (a random
/// action) with probability `epsilon`.
fn explores(epsilon: f64, rng: &mut impl Rng) -> bool {
    rng.gen::<f64>() < epsilon
}

/// Index of the largest value (the first of equals); 0 for an empty slice.
fn argmax(q: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in q.iter().enumerate() {
        if *v > q[best] {
            best = i;
        }
    }
    best
}

/// Q-values `[batch, num_actions]` of `batch` observations (their bytes, back to back) with
/// the CPU network, into `out`.
fn q_values(model: &QNetwork, obs_spec: ObsSpec, obs: &[u8], batch: usize, out: &mut [f32]) {
    let q = model.forward(&obs_tensor(obs_spec, obs, batch));
    q.copy_data(out, out.len());
}

/// Seed of environment `j` of an actor seeded `seed` (environment 0 keeps the actor's seed).
fn env_seed(seed: u64, j: usize) -> u64 {
    seed.wrapping_add((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
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
    crate::supervisor::lower_priority(init.config.actor_nice)?;
    tch::set_num_threads(1);
    tch::manual_seed(init.seed as i64);
    let _no_grad = tch::no_grad_guard();
    if init.role == Role::Evaluate {
        return evaluate_periodically(init, reports);
    }
    let cfg = &init.config;
    let id = cfg.env_id().map_err(anyhow::Error::msg)?;
    let k = cfg.envs_per_actor;
    let mut envs = (0..k)
        .map(|j| env::make(&id, &cfg.env_settings(env_seed(init.seed, j))))
        .collect::<Result<Vec<_>, _>>()
        .context("starting the environments")?;
    let queue = ExperienceQueue::open(&init.queue).context("opening the experience queue")?;
    if init.phase == BenchPhase::Limit {
        return emulate(init, reports, &mut envs, &queue);
    }
    let snapshot = WeightSnapshot::open(&init.snapshot).context("opening the weight snapshot")?;
    let obs_spec = envs[0].obs_spec();
    let num_actions = envs[0].num_actions();
    let network = resolve_network(cfg.network, obs_spec).map_err(anyhow::Error::msg)?;
    let mut model = QNetwork::new(network, obs_spec, num_actions, Device::Cpu);
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
    report(
        reports,
        ActorMsg::Ready {
            actor: init.actor,
            pid: std::process::id(),
            num_actions,
        },
    )?;

    let mut rng = StdRng::seed_from_u64(init.seed ^ 0x5EED);
    let obs_bytes = obs_spec.bytes();
    let mut segments: Vec<Segment> = (0..k)
        .map(|_| Segment::new(cfg.n_step, obs_bytes))
        .collect();
    // The observations and Q-values of the environments whose Q-values this step uses, for
    // one batched forward pass; `row[j]` is environment j's row, if it has one.
    let mut obs = vec![0u8; k * obs_bytes];
    let mut q = vec![0f32; k * num_actions];
    let mut row: Vec<Option<usize>> = vec![None; k];
    let mut explore = vec![false; k];
    let mut last_q = vec![0f32; num_actions];
    let frames = queue.frames();
    let epsilon = || {
        schedule::epsilon(
            init.final_epsilon,
            cfg.eps_decay,
            frames.load(Ordering::Relaxed),
        )
    };
    for env in envs.iter_mut() {
        env.reset();
    }
    let fault = injected_fault()?;
    let mut passes = 0u64;
    loop {
        if queue.is_closed() {
            return Ok(());
        }
        passes += 1;
        if let Some((kind, at)) = fault {
            if passes == at {
                kind.trigger(init.actor)?;
            }
        }
        if snapshot.version() != version {
            version = snapshot.read_into(&mut flat)?;
            model.load_flat(&flat);
        }
        // Epsilon-greedy, with the coin tossed first: an environment that acts at random
        // needs no Q-values unless its full segment bootstraps from this state, so the
        // forward pass covers only the others (most of them early on, while epsilon is
        // near 1).
        let eps = epsilon();
        let mut rows = 0;
        for (j, (env, segment)) in envs.iter().zip(&segments).enumerate() {
            explore[j] = explores(eps, &mut rng);
            row[j] = (!explore[j] || segment.len() == cfg.n_step).then(|| {
                obs[rows * obs_bytes..(rows + 1) * obs_bytes].copy_from_slice(env.obs());
                rows += 1;
                rows - 1
            });
        }
        if rows > 0 {
            q_values(
                &model,
                obs_spec,
                &obs[..rows * obs_bytes],
                rows,
                &mut q[..rows * num_actions],
            );
        }
        for (j, (env, segment)) in envs.iter_mut().zip(segments.iter_mut()).enumerate() {
            let qj = row[j].map(|r| &q[r * num_actions..(r + 1) * num_actions]);
            // (A greedy environment always has a row.)
            let action = match qj {
                Some(qj) if !explore[j] => argmax(qj),
                _ => rng.gen_range(0..num_actions),
            };
            if let (true, Some(qj)) = (segment.len() == cfg.n_step, qj) {
                // A full segment bootstraps from this state: max_a Q(s, a), or Q(s, a) of the
                // action just chosen for SARSA.
                let bootstrap = bootstrap_value(cfg.algorithm, qj, action);
                if !pushed(segment.flush(bootstrap, cfg.gamma, &queue, init.lane))? {
                    return Ok(());
                }
            }
            segment.hold(env.obs(), action as u32);
            let step = env.step(action)?;
            segment.reward(step.clipped_reward);
            frames.fetch_add(step.frames as u64, Ordering::Relaxed);
            let bootstrap = if step.terminal {
                Some(0.0)
            } else if step.truncated {
                // A time limit is not a terminal state: bootstrap from the last observation.
                q_values(&model, obs_spec, env.obs(), 1, &mut last_q);
                let next = epsilon_greedy(&last_q, epsilon(), &mut rng);
                Some(bootstrap_value(cfg.algorithm, &last_q, next))
            } else {
                None
            };
            if let Some(b) = bootstrap {
                if !pushed(segment.flush(b, cfg.gamma, &queue, init.lane))? {
                    return Ok(());
                }
            }
            if step.game_over || step.truncated {
                end_episode(init, reports, env.as_mut())?;
            }
        }
    }
}

/// The evaluator (`--eval-every`): each time the frame count passes a multiple of
/// `--eval-every`, copies the newest snapshot and plays `--eval-episodes` whole games with the
/// standard protocol ([`eval::Protocol::standard`]: epsilon 0.05, up to 30 no-op starts, a
/// lost life not terminal, unclipped scores), and reports their statistics. Training does not
/// wait for it; an evaluation that spans several multiples reports once.
fn evaluate_periodically(init: &ActorInit, reports: &IpcSender<ActorMsg>) -> Result<()> {
    let cfg = &init.config;
    let id = cfg.env_id().map_err(anyhow::Error::msg)?;
    let protocol = eval::Protocol::standard();
    let mut env = env::make(&id, &protocol.env_settings(&cfg.env_settings(init.seed)))
        .context("starting the evaluation environment")?;
    let queue = ExperienceQueue::open(&init.queue).context("opening the experience queue")?;
    let snapshot = WeightSnapshot::open(&init.snapshot).context("opening the weight snapshot")?;
    let network = resolve_network(cfg.network, env.obs_spec()).map_err(anyhow::Error::msg)?;
    let mut model = QNetwork::new(network, env.obs_spec(), env.num_actions(), Device::Cpu);
    let mut flat = vec![0f32; snapshot.numel()];
    anyhow::ensure!(
        flat.len() == model.numel(),
        "snapshot has {} parameters, the evaluator's network {}",
        flat.len(),
        model.numel()
    );
    let mut rng = StdRng::seed_from_u64(init.seed ^ 0xE7A1);
    let frames = queue.frames();
    let every = cfg.eval_every.max(1);
    let mut next = (frames.load(Ordering::Relaxed) / every + 1) * every;
    loop {
        while frames.load(Ordering::Relaxed) < next {
            if queue.is_closed() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let at = frames.load(Ordering::Relaxed);
        snapshot.read_into(&mut flat)?;
        model.load_flat(&flat);
        let result = eval::evaluate_with(
            &model,
            env.as_mut(),
            cfg.eval_episodes,
            protocol.epsilon,
            &mut rng,
            |_, _| {
                if queue.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        if queue.is_closed() {
            return Ok(());
        }
        if let Some(s) = result.stats() {
            report(
                reports,
                ActorMsg::Eval(EvalScores {
                    frames: at,
                    mean: s.mean,
                    median: s.median,
                    std: s.std,
                    min: s.min,
                    max: s.max,
                    episodes: result.episodes.len(),
                }),
            )?;
        }
        next = (frames.load(Ordering::Relaxed) / every + 1) * every;
    }
}

/// The `limit` benchmark phase: the environments stepped with uniformly random actions and
/// full preprocessing, with no network and no queue, until the learner closes the queue.
fn emulate(
    init: &ActorInit,
    reports: &IpcSender<ActorMsg>,
    envs: &mut [Box<dyn env::Environment>],
    queue: &ExperienceQueue,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(init.seed ^ 0x5EED);
    let frames = queue.frames();
    for env in envs.iter_mut() {
        env.reset();
    }
    while !queue.is_closed() {
        for env in envs.iter_mut() {
            let step = env.step(rng.gen_range(0..env.num_actions()))?;
            frames.fetch_add(step.frames as u64, Ordering::Relaxed);
            if step.game_over || step.truncated {
                end_episode(init, reports, env.as_mut())?;
            }
        }
    }
    Ok(())
}

/// Environment variable of the fault-injection tests: `<kind>@<n>` makes every actor of the
/// run fail at its `n`-th forward pass (one step of each of its environments). Kinds: `panic`
/// (a Rust panic), `exit` (`exit(1)` without unwinding, as ALE does on a fatal error), `error`
/// (an error reported to the learner). Unset, it has no effect.
pub const FAULT_ENV: &str = "ASYNC_RL_INJECT_FAULT";

/// A fault that [`FAULT_ENV`] can inject.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Panic,
    Exit,
    Error,
}

impl Fault {
    fn trigger(self, actor: usize) -> Result<()> {
        match self {
            Fault::Panic => panic!("actor {actor}: injected panic ({FAULT_ENV})"),
            Fault::Exit => {
                eprintln!("actor {actor}: injected exit(1) ({FAULT_ENV})");
                std::process::exit(1)
            }
            Fault::Error => anyhow::bail!("injected error ({FAULT_ENV})"),
        }
    }
}

/// Reads [`FAULT_ENV`]; a malformed value is an error, never silently ignored.
fn injected_fault() -> Result<Option<(Fault, u64)>> {
    let Ok(spec) = std::env::var(FAULT_ENV) else {
        return Ok(None);
    };
    let parsed = spec.split_once('@').and_then(|(kind, n)| {
        let kind = match kind {
            "panic" => Fault::Panic,
            "exit" => Fault::Exit,
            "error" => Fault::Error,
            _ => return None,
        };
        Some((kind, n.parse::<u64>().ok().filter(|n| *n >= 1)?))
    });
    parsed.map(Some).ok_or_else(|| {
        anyhow::anyhow!("{FAULT_ENV}={spec}: expected panic@N, exit@N or error@N with N >= 1")
    })
}

/// Sends `msg` to the learner.
fn report(reports: &IpcSender<ActorMsg>, msg: ActorMsg) -> Result<()> {
    reports
        .send(msg)
        .map_err(|e| anyhow::anyhow!("reporting to the learner: {e:?}"))
}

/// Reports the game that just ended (score and frames) and starts the next one.
fn end_episode(
    init: &ActorInit,
    reports: &IpcSender<ActorMsg>,
    env: &mut dyn env::Environment,
) -> Result<()> {
    report(
        reports,
        ActorMsg::Episode {
            actor: init.actor,
            score: env.episode_return(),
            frames: env.episode_frames(),
        },
    )?;
    env.reset();
    Ok(())
}

/// Ok(true) when the segment was pushed, Ok(false) when the learner closed the queue (the
/// normal way to stop), and any other push error as an error.
fn pushed(result: Result<(), PushError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(PushError::Closed) => Ok(false),
        Err(e) => Err(e.into()),
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
