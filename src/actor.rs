//! The actor loop: emulators stepped in lockstep, epsilon-greedy acting with a CPU copy of the
//! network refreshed from the weight snapshot, and the learning rule's actor half
//! ([`crate::rules::Adder`], one per environment) turning the steps into transitions for the
//! queue.
//!
//! Follows Mnih et al. (2016), Algorithm S2, with the learner doing the gradient step. The
//! loop knows no rule by name: it asks each environment's adder whether this step needs the
//! snapshot's Q-values (n-step Q bootstraps a full segment from the forward pass that picks the
//! next action anyway), so an actor runs at most one forward pass per agent step, over only the
//! environments whose Q-values it uses (see [`run`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::config::BenchPhase;
use crate::env::{self, ObsSpec};
use crate::inference::{snapshot_copy, PolicySource, ServedPolicy, SnapshotPolicy};
use crate::ipc::{report, ActorInit, ActorMsg};
use crate::model::NetSpec;
use crate::policy::{argmax, epsilon_greedy, explores, sample_gaussian, sample_softmax, Action};
use crate::rules::{self, Adder, LaneSink, StepEnd};
use crate::schedule;
use crate::shm::{ExperienceQueue, PushError};

/// Seed of environment `j` of an actor seeded `seed` (environment 0 keeps the actor's seed).
fn env_seed(seed: u64, j: usize) -> u64 {
    seed.wrapping_add((j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Runs one actor until the learner closes the queue: steps its environments, acts on the
/// snapshot's outputs (epsilon annealed from 1 to `final_epsilon` over `--eps-decay` frames)
/// and pushes the learning rule's transitions into its lane. `init` comes from the handshake;
/// the caller has set up the process (see [`crate::cli`]).
pub fn run(init: &ActorInit, final_epsilon: f64, reports: &IpcSender<ActorMsg>) -> Result<()> {
    let cfg = &init.config;
    let id = cfg.env_id()?;
    let k = cfg.actors.envs_per_actor;
    let mut envs = (0..k)
        .map(|j| env::make(&id, &cfg.env_settings(env_seed(init.seed, j))))
        .collect::<Result<Vec<_>, _>>()
        .context("starting the environments")?;
    let queue = ExperienceQueue::open(&init.queue).context("opening the experience queue")?;
    if init.phase == BenchPhase::Limit {
        return emulate(init, reports, &mut envs, &queue);
    }
    let obs_spec = envs[0].obs_spec();
    let num_actions = envs[0].num_actions();
    let action_spec = envs[0].action_spec();
    let network = crate::rules::net_spec(cfg, obs_spec, &action_spec)?;
    let width = network.act_width(num_actions);
    // The policy's part of a row: logits, or a Gaussian's means and log stds.
    let policy_width = network.policy_width(num_actions);
    let continuous = action_spec.is_continuous();
    let Some(mut policy) = policy_source(init, &queue, network, obs_spec, num_actions, k)? else {
        return Ok(());
    };
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
    let mut adders: Vec<Box<dyn Adder>> = (0..k).map(|_| rules::adder(cfg, obs_spec)).collect();
    let mut sink = LaneSink {
        queue: &queue,
        lane: init.lane,
        version: policy.version(),
    };
    // A policy network samples its actions and needs every environment's outputs; a
    // Q-network acts epsilon-greedily.
    let sampled = network.head.is_actor_critic();
    // The continuous action being taken (a Gaussian policy's sample).
    let mut action_values = vec![0f32; if continuous { num_actions } else { 0 }];
    // The outputs of the environments whose outputs this step uses, from one batched forward
    // pass over their observations (staged in the policy source); `row[j]` is environment
    // j's row, if it has one.
    let mut q = vec![0f32; k * width];
    let mut row: Vec<Option<usize>> = vec![None; k];
    let mut explore = vec![false; k];
    let mut last_q = vec![0f32; width];
    let frames = queue.frames();
    let epsilon = || {
        schedule::epsilon(
            final_epsilon,
            cfg.rule.exploration.eps_decay,
            frames.load(Ordering::Relaxed),
        )
    };
    for env in envs.iter_mut() {
        reset_counted(env.as_mut(), frames)?;
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
        policy.refresh()?;
        sink.version = policy.version();
        // Epsilon-greedy, with the coin tossed first: an environment that acts at random
        // needs no Q-values unless its full segment bootstraps from this state, so the
        // forward pass covers only the others (most of them early on, while epsilon is
        // near 1).
        let eps = epsilon();
        let mut rows = 0;
        let staging = policy.staging();
        for (j, (env, adder)) in envs.iter().zip(&adders).enumerate() {
            explore[j] = !sampled && explores(eps, &mut rng);
            row[j] = (!explore[j] || adder.needs_values()).then(|| {
                staging[rows * obs_bytes..(rows + 1) * obs_bytes].copy_from_slice(env.obs());
                rows += 1;
                rows - 1
            });
        }
        if rows > 0 {
            match policy.compute(rows, &mut q[..rows * width]) {
                Ok(()) => sink.version = policy.version(),
                Err(e) if stopping(&e, &queue) => return Ok(()),
                Err(e) => return Err(e),
            }
        } else {
            policy.skip();
        }
        for (j, (env, adder)) in envs.iter_mut().zip(adders.iter_mut()).enumerate() {
            let qj = row[j].map(|r| &q[r * width..(r + 1) * width]);
            // (A greedy or sampling environment always has a row.)
            let index = match qj {
                Some(qj) if continuous => {
                    sample_gaussian(&qj[..policy_width], &mut action_values, &mut rng);
                    0
                }
                Some(qj) if sampled => sample_softmax(&qj[..num_actions], &mut rng),
                Some(qj) if !explore[j] => argmax(qj),
                _ => rng.gen_range(0..num_actions),
            };
            let action = if continuous {
                Action::Continuous(&action_values)
            } else {
                Action::Discrete(index as u32)
            };
            if !pushed(adder.begin(env.obs(), action, qj, &mut sink))? {
                return Ok(());
            }
            let step = if continuous {
                env.step_continuous(&action_values)?
            } else {
                env.step(index)?
            };
            frames.fetch_add(step.frames as u64, Ordering::Relaxed);
            let end = if step.terminal {
                StepEnd::Terminal
            } else if step.truncated {
                StepEnd::Truncated
            } else {
                StepEnd::Continue
            };
            // Outputs on demand (a truncation's bootstrap), with the action the policy would
            // take there. A failure is kept and returned once the adder is done.
            let mut failed = None;
            let mut values = |o: &[u8]| {
                if let Err(e) = policy.outputs(o, 1, &mut last_q) {
                    last_q.fill(0.0);
                    failed = Some(e);
                }
                // (The next action matters to SARSA's bootstrap only: none for a Gaussian.)
                let next = if continuous {
                    0
                } else if sampled {
                    sample_softmax(&last_q[..num_actions], &mut rng)
                } else {
                    epsilon_greedy(&last_q, epsilon(), &mut rng)
                };
                (last_q.clone(), next)
            };
            let reward = step.clipped_reward * cfg.env.reward_scale;
            let result = adder.end(reward, end, env.obs(), &mut values, &mut sink);
            match failed {
                Some(e) if stopping(&e, &queue) => return Ok(()),
                Some(e) => return Err(e),
                None => {}
            }
            if !pushed(result)? {
                return Ok(());
            }
            if step.game_over || step.truncated {
                end_episode(init, reports, env.as_mut(), frames)?;
            }
        }
    }
}

/// The actor's policy source: the learner's inference server when the run has one
/// (`--inference learner`), else a CPU copy of the weight snapshot, loaded with its first
/// published version. `None` when the learner closed the queue before publishing one.
fn policy_source(
    init: &ActorInit,
    queue: &ExperienceQueue,
    network: NetSpec,
    obs: ObsSpec,
    num_actions: usize,
    rows: usize,
) -> Result<Option<Box<dyn PolicySource>>> {
    if let Some(name) = &init.inference {
        return Ok(Some(Box::new(ServedPolicy::open(name, init.actor)?)));
    }
    let (snapshot, mut model, mut flat) = snapshot_copy(
        &init.snapshot,
        network,
        obs,
        num_actions,
        "this actor's network",
    )?;
    let mut version = 0;
    while version == 0 {
        if queue.is_closed() {
            return Ok(None);
        }
        version = snapshot.read_into(&mut flat)?;
        if version == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    model.load_flat(&flat);
    Ok(Some(Box::new(SnapshotPolicy::new(
        model, snapshot, flat, version, obs, rows,
    ))))
}

/// Whether `e`, from the policy source, means the run is stopping (the queue closed, or the
/// inference server stopped) rather than a failure.
fn stopping(e: &anyhow::Error, queue: &ExperienceQueue) -> bool {
    queue.is_closed()
        || matches!(
            e.downcast_ref::<crate::shm::InferenceError>(),
            Some(crate::shm::InferenceError::Closed)
        )
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
        reset_counted(env.as_mut(), frames)?;
    }
    let mut values = Vec::new();
    let specs: Vec<env::ActionSpec> = envs.iter().map(|e| e.action_spec()).collect();
    while !queue.is_closed() {
        for (env, spec) in envs.iter_mut().zip(&specs) {
            let step = match spec {
                env::ActionSpec::Discrete(n) => env.step(rng.gen_range(0..*n))?,
                env::ActionSpec::Box { .. } => {
                    crate::policy::sample_uniform(spec, &mut values, &mut rng);
                    env.step_continuous(&values)?
                }
            };
            frames.fetch_add(step.frames as u64, Ordering::Relaxed);
            if step.game_over || step.truncated {
                end_episode(init, reports, env.as_mut(), frames)?;
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

/// Starts a new episode of `env` and adds the frames its start took (Atari: the no-op and
/// FIRE frames, which [`env::Environment::episode_frames`] counts from the reset) to the run's
/// frame counter `frames`, so that every emulator frame counts towards the schedules.
fn reset_counted(env: &mut dyn env::Environment, frames: &AtomicU64) -> Result<()> {
    env.reset()?;
    frames.fetch_add(env.episode_frames(), Ordering::Relaxed);
    Ok(())
}

/// Reports the game that just ended (score and frames) and starts the next one, counting its
/// start's frames in `frames`.
fn end_episode(
    init: &ActorInit,
    reports: &IpcSender<ActorMsg>,
    env: &mut dyn env::Environment,
    frames: &AtomicU64,
) -> Result<()> {
    report(
        reports,
        ActorMsg::Episode {
            actor: init.actor,
            score: env.episode_return(),
            frames: env.episode_frames(),
        },
    )?;
    reset_counted(env, frames)?;
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
    fn the_frames_of_an_episodes_start_are_counted() {
        let cfg = crate::config::Config::from_flags(["--game", "Breakout"]).unwrap();
        let id = cfg.env_id().unwrap();
        let frames = AtomicU64::new(0);
        let mut total = 0;
        for seed in 0..5 {
            let mut env = env::make(&id, &cfg.env_settings(seed)).unwrap();
            reset_counted(env.as_mut(), &frames).unwrap();
            // Up to 30 no-op frames, then FIRE and action 2 for 4 frames each.
            let start = env.episode_frames();
            assert!((8..=38).contains(&start), "{start}");
            total += start;
        }
        assert_eq!(frames.load(Ordering::Relaxed), total);
    }
}
