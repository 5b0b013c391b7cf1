//! The learner process: owns the network (on the GPU when there is one), starts the actors,
//! pulls batches from the experience queue, hands them to the learning rule's learner half
//! (which trains with RMSProp or Adam), publishes weight snapshots, writes checkpoints and metrics, and
//! shuts everything down in order on `--max-frames`, SIGINT/SIGTERM, or an actor's failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{self, TrainingState};
use crate::config::{BenchPhase, Config};
use crate::device;
use crate::env::{self, ObsSpec};
use crate::inference::{Batching, InferenceServer};
use crate::local_actors::{ActorSetup, LocalActors};
use crate::remote::server::{RemoteServer, ServerSettings};
use crate::rules::{self, LearnerRule};
use crate::schedule;
use crate::shm;
use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

mod dead_input;
mod interval;
mod save;
mod services;
mod train;

use save::save;
use services::{Ending, Service};
use train::{train, Run};

/// Run counters, saved in checkpoints.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    frames: u64,
    steps: u64,
    updates: u64,
    episodes: u64,
    wall_s: f64,
}

/// The learning rule's learner half and what a checkpoint records of the run.
struct Trainer {
    rule: Box<dyn LearnerRule>,
    obs: ObsSpec,
    /// Display name of the environment.
    game: String,
}

impl Trainer {
    /// What a checkpoint records of the run: the counters `c`, at `frames` frames.
    fn state(&self, cfg: &Config, c: &Counters, frames: u64) -> TrainingState {
        let model = self.rule.model();
        TrainingState {
            format_version: checkpoint::FORMAT_VERSION,
            game: self.game.clone(),
            network: model.arch(),
            num_actions: model.num_actions(),
            obs: self.obs,
            frames,
            steps: c.steps,
            updates: c.updates,
            episodes: c.episodes,
            wall_s: c.wall_s,
            config: cfg.clone(),
        }
    }
}

/// A batch whose loss or mean max-Q was not finite: the run stops without applying it.
#[derive(Debug, thiserror::Error)]
#[error("training diverged at {frames} frames: loss {loss}, mean Q (or V) {q_mean} ({})", if *.applied {
    "over the last metrics interval, read from the GPU once per interval; no checkpoint takes these weights"
} else {
    "the update was not applied"
})]
struct Diverged {
    frames: u64,
    loss: f64,
    q_mean: f64,
    /// Found in the interval's sums (GPU), after the updates were applied.
    applied: bool,
}

/// Starts the run described by `cfg` (already merged and validated) and trains until
/// `--max-frames`, a signal in `stop`, or a failure. Always stops the actors and writes a final
/// checkpoint when training had started.
pub fn run(
    cfg: Config,
    resume: Option<checkpoint::Checkpoint>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let id = cfg.env_id()?;
    // The device first: `--device cuda` without CUDA fails before anything is created.
    tch::set_num_threads(cfg.learner.learner_threads as i32);
    let (device, fallback) = device::select(cfg.learner.device)?;
    if let Some(reason) = fallback {
        crate::say!("--device auto: using the CPU ({reason})");
    }
    let inference_device = inference_device(&cfg, device)?;
    let run_dir = prepare_run_dir(&cfg)?;
    let horizon = (cfg.learner.algorithm.horizon)(&cfg);
    crate::say!(
        "learner on {}; game {} ({} actors, --algorithm {} with {horizon}; {})",
        device::describe(device),
        id.name(),
        cfg.procs.processes,
        cfg.learner.algorithm,
        match inference_device {
            Some(d) => format!(
                "actors' forward passes batched on the learner's {}",
                device::describe(d)
            ),
            None => "actors run their own forward passes".to_string(),
        },
    );

    // The action count and observation shape come from the environment itself.
    let probe =
        env::make(&id, &cfg.env_settings(cfg.run.seed)).context("starting the environment")?;
    let (num_actions, obs, actions) = (probe.num_actions(), probe.obs_spec(), probe.action_spec());
    drop(probe);
    let net =
        rules::net_spec(&cfg, obs, &actions).with_context(|| format!("--game {}", id.name()))?;

    let mut trainer = Trainer {
        rule: rules::learner(&cfg, net, obs, num_actions, device),
        obs,
        game: id.name().to_string(),
    };
    let mut counters = match resume {
        Some(ckpt) => restore(&cfg, &mut trainer, &ckpt, &run_dir)?,
        None => Counters::default(),
    };
    std::fs::write(run_dir.join("config.toml"), cfg.to_toml())
        .with_context(|| format!("--logdir {}: cannot write config.toml", run_dir.display()))?;

    // Local actors own queue lanes 0..processes; remote hosts' processes the --remote-lanes
    // after.
    let remote_lanes = if cfg.listen.listen.is_some() {
        cfg.listen.remote_lanes
    } else {
        0
    };
    let inference_slots = inference_device.map(|_| shm::segment_name("inference"));
    let mut actors = LocalActors::create(
        &cfg,
        ActorSetup {
            prefix: "",
            lanes: cfg.procs.processes + remote_lanes,
            slots: cfg.actors.queue_size,
            layout: rules::slot_layout(&cfg, obs, net.action_dims(num_actions)),
            numel: trainer.rule.model().numel(),
            frames: counters.frames,
            final_epsilons: final_epsilons(&cfg),
            inference: inference_slots.clone(),
            // Differs between a run and its resumption, so resumed actors get fresh seeds.
            generation: counters.updates,
            evaluator: cfg.run.eval_every > 0 && cfg.invocation.bench_phase == BenchPhase::Training,
        },
    )?;
    let mut flat = vec![0f32; trainer.rule.model().numel()];
    trainer.rule.model().flat_params_into(&mut flat);
    actors.snapshot.publish(&flat)?;
    let mut services = start_services(
        &cfg,
        &trainer,
        &actors,
        inference_device,
        &inference_slots,
        &id,
        num_actions,
        remote_lanes,
    )?;
    let finals = actors.pool.final_epsilons().to_vec();
    let mut outcome = actors.pool.start_all(&stop);
    let started = counters;
    if outcome.is_ok() {
        outcome = train(Run {
            cfg: &cfg,
            trainer: &mut trainer,
            queue: &actors.queue,
            snapshot: &mut actors.snapshot,
            pool: &mut actors.pool,
            reports: &actors.reports,
            finals: &finals,
            services: &mut services,
            counters: &mut counters,
            stop: &stop,
            run_dir: &run_dir,
        });
    }
    let finished = outcome.is_ok() && !stop.load(Ordering::Relaxed);
    shut_down(&mut actors, &mut services, &outcome, finished);
    counters.frames = actors.queue.frames().load(Ordering::Relaxed);
    let trained = cfg.invocation.bench_phase == BenchPhase::Training
        && (counters.updates > started.updates || counters.frames > started.frames);
    if trained {
        save_final(&cfg, &trainer, &counters, &run_dir, &outcome)?;
    }
    outcome
}

/// The final checkpoint of a run that trained, after the actors stopped. A diverged run keeps
/// its last periodic checkpoint as the newest: the weights that gave a non-finite loss are not
/// saved over it. After a failure (e.g. past --max-actor-restarts) a refused save is a note
/// beside that failure; else it is the run's error.
fn save_final(
    cfg: &Config,
    trainer: &Trainer,
    counters: &Counters,
    run_dir: &std::path::Path,
    outcome: &Result<()>,
) -> Result<()> {
    if matches!(outcome, Err(e) if e.is::<Diverged>()) {
        crate::say_err!("not saving a final checkpoint: training diverged");
        return Ok(());
    }
    match save(cfg, trainer, counters, run_dir) {
        Ok(path) => crate::say!("saved {}", path.display()),
        Err(e) if outcome.is_err() => crate::say_err!("{e:#}"),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The side services of the run: the inference server on `inference_device` (request slots
/// `inference_slots`), the remote-host server with `--listen` (lanes after the local actors').
#[allow(clippy::too_many_arguments)]
fn start_services(
    cfg: &Config,
    trainer: &Trainer,
    actors: &LocalActors,
    inference_device: Option<tch::Device>,
    inference_slots: &Option<String>,
    id: &env::EnvId,
    num_actions: usize,
    remote_lanes: usize,
) -> Result<Vec<Box<dyn Service>>> {
    let mut services: Vec<Box<dyn Service>> = Vec::new();
    if let (Some(d), Some(slots)) = (inference_device, inference_slots) {
        services.push(Box::new(start_inference(cfg, trainer, d, slots)?));
    }
    if cfg.listen.listen.is_some() {
        let settings = ServerSettings {
            config: cfg.clone(),
            queue: actors.queue_name.clone(),
            snapshot: actors.snapshot_name.clone(),
            first_lane: cfg.procs.processes,
            lanes: remote_lanes,
            num_actions,
            game: id.name().to_string(),
            reports: actors.report_sender.clone(),
        };
        services.push(Box::new(start_remote(cfg, settings)?));
    }
    Ok(services)
}

/// Each local actor's final epsilon, drawn from `--final-epsilons` with `--final-epsilon-probs`
/// by a generator seeded with `--seed` (unused by rules that do not explore with epsilon).
fn final_epsilons(cfg: &Config) -> Vec<f64> {
    let exploration = &cfg.rule.exploration;
    let mut rng = StdRng::seed_from_u64(cfg.run.seed);
    (0..cfg.procs.processes)
        .map(|_| {
            schedule::sample_final_epsilon(
                &exploration.final_epsilons,
                &exploration.final_epsilon_probs,
                rng.gen(),
            )
        })
        .collect()
}

/// Shuts down in order: tell the services' peers (remote hosts exit when the run is
/// `finished`, and wait for the learner to come back when it was stopped or failed), close the
/// queue (actors see it and exit), stop the services, reap the actors.
fn shut_down(
    actors: &mut LocalActors,
    services: &mut [Box<dyn Service>],
    outcome: &Result<()>,
    finished: bool,
) {
    let ending = Ending {
        finished,
        reason: match outcome {
            Ok(()) if finished => "the run is finished".to_string(),
            Ok(()) => "the learner was stopped by a signal".to_string(),
            Err(e) => format!("the learner failed: {e:#}"),
        },
    };
    for s in services.iter_mut() {
        s.stopping(&ending);
    }
    actors.queue.close();
    for s in services.iter_mut() {
        s.stop();
    }
    let killed = actors.pool.stop_all(Duration::from_secs(5));
    if !killed.is_empty() {
        crate::say_err!("actors {killed:?} did not stop within 5 s and were killed");
    }
}

/// Starts the batched inference server on device `d`, serving a copy of the learner's
/// network through the request slots named `slots`.
fn start_inference(
    cfg: &Config,
    trainer: &Trainer,
    d: tch::Device,
    slots: &str,
) -> Result<services::Inference> {
    let model = trainer.rule.model();
    let mut served =
        crate::model::AgentNetwork::new(model.spec(), trainer.obs, model.num_actions(), d);
    served.copy_from(model);
    let slots = shm::InferenceSlots::create(
        slots,
        cfg.procs.processes,
        cfg.actors.envs_per_actor,
        trainer.obs.bytes(),
        served.act_width(),
    )
    .context("creating the inference request slots")?;
    let batching = Batching {
        full: cfg.procs.processes * cfg.actors.envs_per_actor,
        wait: Duration::from_micros(cfg.actors.inference_wait_us),
    };
    let server = InferenceServer::start(slots, served, trainer.obs, batching)?;
    Ok(services::Inference::new(server))
}

/// Starts the server of remote actor hosts (`--listen`) and says where it listens.
fn start_remote(cfg: &Config, settings: ServerSettings) -> Result<services::Remote> {
    let lanes = settings.lanes;
    let server = RemoteServer::start(settings, |line| crate::say!("{line}"))?;
    crate::say!(
        "listening for actor hosts on {} ({lanes} remote lanes{}{})",
        server.local_addr(),
        if cfg.remote.auth_token_file.is_some() {
            ", token"
        } else {
            ""
        },
        match (&cfg.remote.tls_cert, &cfg.remote.tls_ca) {
            (Some(_), Some(_)) => ", mutual TLS",
            (Some(_), None) => ", TLS",
            _ if cfg.listen.insecure_plaintext => ", plain text (--insecure-plaintext)",
            _ => "",
        }
    );
    Ok(services::Remote::new(server))
}

/// Creates the run directory of `cfg` and clears what killed runs left: an unfinished
/// checkpoint save there, and shared-memory segments of dead processes.
fn prepare_run_dir(cfg: &Config) -> Result<std::path::PathBuf> {
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| {
        format!(
            "--logdir {}: cannot create the run directory",
            run_dir.display()
        )
    })?;
    let partial = checkpoint::remove_partial(&run_dir)
        .with_context(|| format!("--logdir {}: cannot clean up", run_dir.display()))?;
    for p in partial {
        crate::say!(
            "removed {}, the unfinished save of a run that was killed",
            p.display()
        );
    }
    let mut removed =
        shm::remove_stale_segments().context("removing stale shared-memory segments")?;
    // Segments named with our own pid cannot be ours yet: a killed process that had this pid
    // before us left them (pids are reused), and they would block our own.
    removed.extend(
        shm::remove_segments_of(std::process::id())
            .context("removing shared-memory segments left under this process's pid")?,
    );
    if !removed.is_empty() {
        crate::say!(
            "removed {} stale shared-memory segment(s) of dead runs: {}",
            removed.len(),
            removed.join(", ")
        );
    }
    Ok(run_dir)
}

/// Restores the learning rule of `trainer` (weights, optimizer state, replay memory when one
/// was saved beside the checkpoint) from `ckpt`, and returns the run's counters at it. A
/// checkpoint of another game, network, action set or observation is an error naming both.
fn restore(
    cfg: &Config,
    trainer: &mut Trainer,
    ckpt: &checkpoint::Checkpoint,
    run_dir: &std::path::Path,
) -> Result<Counters> {
    let st = &ckpt.state;
    let (network, num_actions) = {
        let model = trainer.rule.model();
        (model.arch(), model.num_actions())
    };
    if st.game != trainer.game
        || st.network != network
        || st.num_actions != num_actions
        || st.obs != trainer.obs
    {
        bail!(
            "--checkpoint: trained on {} with the {:?} network ({} actions); this run is {} with {:?} ({} actions)",
            st.game, st.network, st.num_actions, trainer.game, network, num_actions
        );
    }
    trainer
        .rule
        .restore(ckpt)
        .map_err(|e| anyhow::anyhow!("--checkpoint: {e}"))?;
    let replay = checkpoint::replay_path_for(run_dir, st.frames);
    if replay.is_file() {
        crate::say!("loading the replay memory {}", replay.display());
        if !trainer.rule.load_replay(&replay)? {
            crate::say!("(this rule has no replay memory: the file is not used)");
        }
    } else if cfg.learner.algorithm.has_replay() {
        crate::say!(
            "no saved replay memory ({} does not exist): the replay memory starts empty and fills for --learning-starts {} frames before training goes on",
            replay.display(),
            cfg.rule.replay.learning_starts
        );
    }
    crate::say!("resumed at {} frames, {} updates", st.frames, st.updates);
    Ok(Counters {
        frames: st.frames,
        steps: st.steps,
        updates: st.updates,
        episodes: st.episodes,
        wall_s: st.wall_s,
    })
}

/// The device of the inference server for `--inference` (None: actors run their own forward
/// passes), given the learner's `device`. `auto` serves from the learner when the learner or
/// `--inference-device` is a GPU and no actor host connects; a `--inference-device` that is
/// not usable is an error naming it.
fn inference_device(cfg: &Config, device: tch::Device) -> Result<Option<tch::Device>> {
    use crate::config::{DeviceChoice, InferenceChoice};
    // The limit benchmark runs no network in the actors.
    if cfg.invocation.bench_phase == BenchPhase::Limit
        || cfg.actors.inference == InferenceChoice::Actor
    {
        return Ok(None);
    }
    let served = match cfg.actors.inference_device {
        None | Some(DeviceChoice::Auto) => device,
        Some(choice) => {
            device::select(choice)
                .map_err(|e| anyhow::anyhow!("--inference-device {choice}: {}", e.reason))?
                .0
        }
    };
    let wanted = cfg.actors.inference == InferenceChoice::Learner
        || (served.is_cuda() && cfg.listen.listen.is_none());
    Ok(wanted.then_some(served))
}
