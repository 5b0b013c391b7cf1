//! The evaluator (`--eval-every`), an actor process that pushes no experience: each time the
//! frame count passes a multiple of `--eval-every`, it copies the newest snapshot and plays
//! `--eval-episodes` whole games with the standard protocol ([`eval::Protocol::standard`]:
//! epsilon 0.05, up to 30 no-op starts, a lost life not terminal, unclipped scores; an
//! actor-critic network samples from its policy instead of acting epsilon-greedily), and reports
//! their statistics to the learner, which keeps the best snapshot (`model-best.safetensors`). Training
//! does not wait for it; an evaluation that spans several multiples reports once.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::{rngs::StdRng, SeedableRng};

use crate::env;
use crate::eval;
use crate::inference::snapshot_copy;
use crate::ipc::{report, ActorInit, ActorMsg, EvalScores};
use crate::policy::ActionPolicy;
use crate::shm::ExperienceQueue;

/// Runs the evaluator until the learner closes the queue. `init` comes from the handshake; the
/// caller has set up the process (see [`crate::cli`]).
pub fn run(init: &ActorInit, reports: &IpcSender<ActorMsg>) -> Result<()> {
    let cfg = &init.config;
    let id = cfg.env_id()?;
    let protocol = eval::Protocol::standard();
    let mut env = env::make(&id, &protocol.env_settings(&cfg.env_settings(init.seed)))
        .context("starting the evaluation environment")?;
    let queue = ExperienceQueue::open(&init.queue).context("opening the experience queue")?;
    let network = crate::rules::net_spec(cfg, env.obs_spec(), &env.action_spec())?;
    let (snapshot, mut model, mut flat) = snapshot_copy(
        &init.snapshot,
        network,
        env.obs_spec(),
        env.num_actions(),
        "the evaluator's network",
    )?;
    let mut rng = StdRng::seed_from_u64(init.seed ^ 0xE7A1);
    // A policy network is evaluated as the A3C paper does: sampling from its policy.
    let policy = if network.head.is_actor_critic() {
        ActionPolicy::Sample
    } else {
        ActionPolicy::EpsilonGreedy(protocol.epsilon)
    };
    let frames = queue.frames();
    let every = cfg.run.eval_every.max(1);
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
            cfg.run.eval_episodes,
            policy,
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
                ActorMsg::Eval {
                    scores: EvalScores {
                        frames: at,
                        stats: s,
                        episodes: result.episodes.len(),
                    },
                    weights: flat.clone(),
                },
            )?;
        }
        next = (frames.load(Ordering::Relaxed) / every + 1) * every;
    }
}
