//! The learner process: owns the network (on the GPU when there is one), starts the actors,
//! pulls batches from the experience queue, hands them to the learning rule's learner half
//! (which trains with RMSProp), publishes weight snapshots, writes checkpoints and metrics, and
//! shuts everything down in order on `--max-frames`, SIGINT/SIGTERM, or an actor's failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::{self, TrainingState};
use crate::config::{BenchPhase, Config};
use crate::device;
use crate::env::{self, ObsSpec};
use crate::inference::{Batching, InferenceServer};
use crate::metrics::{
    Board, CsvWriter, HostRow, HostsCsv, InferenceTotals, Progress, RemoteTotals, ReturnWindow, Row,
};
use crate::protocol::{ActorMsg, EvalScores};
use crate::remote::server::{HostStats, RemoteServer, ServerSettings};
use crate::rules::{self, LearnerRule};
use crate::schedule;
use crate::shm::{self, Batch, ExperienceQueue, WeightSnapshot};
use crate::supervisor::{ActorPool, PoolSettings};
use anyhow::{bail, Context, Result};
use ipc_channel::ipc::{self, IpcReceiver};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// How often the training loop looks for actors that exited.
const REAP_EVERY: Duration = Duration::from_millis(100);

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
    let id = cfg.env_id().map_err(anyhow::Error::msg)?;
    // The device first: `--device cuda` without CUDA fails before anything is created.
    tch::set_num_threads(cfg.learner_threads as i32);
    let (device, fallback) = device::select(cfg.device)?;
    if let Some(reason) = fallback {
        crate::say!("--device auto: using the CPU ({reason})");
    }
    let inference_device = inference_device(&cfg, device)?;
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
    let horizon = match cfg.algorithm {
        crate::config::Algorithm::Impala => format!("segments of {} steps", cfg.unroll),
        _ => format!("n-step {}", cfg.n_step),
    };
    crate::say!(
        "learner on {}; game {} ({} actors, --algorithm {} with {horizon}; {})",
        device::describe(device),
        id.name(),
        cfg.processes,
        cfg.algorithm_name(),
        match inference_device {
            Some(d) => format!(
                "actors' forward passes batched on the learner's {}",
                device::describe(d)
            ),
            None => "actors run their own forward passes".to_string(),
        },
    );

    // The action count and observation shape come from the environment itself.
    let probe = env::make(&id, &cfg.env_settings(cfg.seed)).context("starting the environment")?;
    let (num_actions, obs) = (probe.num_actions(), probe.obs_spec());
    drop(probe);
    let net = cfg.net_spec(obs).map_err(anyhow::Error::msg)?;
    let network = net.arch;

    let mut trainer = Trainer {
        rule: rules::learner(&cfg, net, obs, num_actions, device),
        obs,
        game: id.name().to_string(),
    };
    let mut counters = Counters::default();
    if let Some(ckpt) = resume {
        let st = &ckpt.state;
        if st.game != id.name()
            || st.network != network
            || st.num_actions != num_actions
            || st.obs != obs
        {
            bail!(
                "--checkpoint: trained on {} with the {:?} network ({} actions); this run is {} with {:?} ({} actions)",
                st.game, st.network, st.num_actions, id.name(), network, num_actions
            );
        }
        trainer
            .rule
            .restore(&ckpt)
            .map_err(|e| anyhow::anyhow!("--checkpoint: {e}"))?;
        let replay = checkpoint::replay_path_for(&run_dir, st.frames);
        if replay.is_file() {
            crate::say!("loading the replay memory {}", replay.display());
            if !trainer.rule.load_replay(&replay)? {
                crate::say!("(this rule has no replay memory: the file is not used)");
            }
        } else if cfg.algorithm == crate::config::Algorithm::Dqn {
            crate::say!(
                "no saved replay memory ({} does not exist): the replay memory starts empty and fills for --learning-starts {} frames before training goes on",
                replay.display(),
                cfg.learning_starts
            );
        }
        counters = Counters {
            frames: st.frames,
            steps: st.steps,
            updates: st.updates,
            episodes: st.episodes,
            wall_s: st.wall_s,
        };
        crate::say!("resumed at {} frames, {} updates", st.frames, st.updates);
    }
    std::fs::write(run_dir.join("config.toml"), cfg.to_toml())
        .with_context(|| format!("--logdir {}: cannot write config.toml", run_dir.display()))?;

    // Shared memory: the queue (one lane per actor) and the weight snapshot.
    let layout = rules::slot_layout(&cfg, obs);
    // Local actors own lanes 0..processes; remote hosts' processes the --remote-lanes after.
    let remote_lanes = if cfg.listen.is_some() {
        cfg.remote_lanes
    } else {
        0
    };
    let queue = ExperienceQueue::create(
        &shm::segment_name("queue"),
        cfg.processes + remote_lanes,
        cfg.queue_size,
        layout,
    )
    .context("creating the experience queue")?;
    queue.frames().store(counters.frames, Ordering::Relaxed);
    let numel = trainer.rule.model().numel();
    let mut snapshot = WeightSnapshot::create(&shm::segment_name("snapshot"), numel)
        .context("creating the weight snapshot")?;
    let mut flat = vec![0f32; numel];
    trainer.rule.model().flat_params_into(&mut flat);
    snapshot.publish(&flat)?;
    let inference_slots = shm::segment_name("inference");
    let mut inference = match inference_device {
        None => None,
        Some(d) => {
            let model = trainer.rule.model();
            let mut served = crate::model::QNetwork::new(net, obs, num_actions, d);
            served.copy_from(model);
            let slots = shm::InferenceSlots::create(
                &inference_slots,
                cfg.processes,
                cfg.envs_per_actor,
                obs.bytes(),
                served.act_width(),
            )
            .context("creating the inference request slots")?;
            let batching = Batching {
                full: cfg.processes * cfg.envs_per_actor,
                wait: Duration::from_micros(cfg.inference_wait_us),
            };
            Some(InferenceServer::start(slots, served, obs, batching)?)
        }
    };

    let (reports_tx, reports_rx) =
        ipc::channel::<ActorMsg>().context("creating the report channel")?;
    let mut remote = match &cfg.listen {
        None => None,
        Some(_) => {
            let server = RemoteServer::start(
                ServerSettings {
                    config: cfg.clone(),
                    queue: shm::segment_name("queue"),
                    snapshot: shm::segment_name("snapshot"),
                    first_lane: cfg.processes,
                    lanes: remote_lanes,
                    num_actions,
                    game: id.name().to_string(),
                    reports: reports_tx.clone(),
                },
                |line| crate::say!("{line}"),
            )?;
            crate::say!(
                "listening for actor hosts on {} ({} remote lanes{}{})",
                server.local_addr(),
                remote_lanes,
                if cfg.auth_token_file.is_some() {
                    ", token"
                } else {
                    ""
                },
                match (&cfg.tls_cert, &cfg.tls_ca) {
                    (Some(_), Some(_)) => ", mutual TLS",
                    (Some(_), None) => ", TLS",
                    _ => "",
                }
            );
            Some(server)
        }
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let finals: Vec<f64> = (0..cfg.processes)
        .map(|_| {
            schedule::sample_final_epsilon(&cfg.final_epsilons, &cfg.final_epsilon_probs, rng.gen())
        })
        .collect();
    let pids = Arc::new(Mutex::new(Vec::new()));
    crate::signals::set_actor_pids(pids.clone());
    let mut pool = ActorPool::new(
        PoolSettings {
            config: cfg.clone(),
            final_epsilons: finals.clone(),
            queue: shm::segment_name("queue"),
            snapshot: shm::segment_name("snapshot"),
            inference: inference.as_ref().map(|_| inference_slots.clone()),
            reports: reports_tx,
            // Differs between a run and its resumption, so resumed actors get fresh seeds.
            generation: counters.updates,
            start_timeout: Duration::from_secs(30),
            evaluator: cfg.eval_every > 0 && cfg.bench_phase == BenchPhase::Training,
        },
        pids,
    );
    let mut outcome = pool.start_all(&stop);

    let started = counters;
    if outcome.is_ok() {
        outcome = train(
            &cfg,
            &mut trainer,
            &queue,
            &mut snapshot,
            &reports_rx,
            &mut pool,
            &finals,
            &mut counters,
            &stop,
            &run_dir,
            remote.as_ref(),
            inference.as_ref(),
        );
    }
    // Shut down in order: tell remote hosts (they exit when the run is finished, and wait for
    // the learner to come back when it was stopped), close the queue (actors see it and
    // exit), reap, then save.
    if let Some(server) = remote.as_mut() {
        let finished = outcome.is_ok() && !stop.load(Ordering::Relaxed);
        let reason = match &outcome {
            Ok(()) if finished => "the run is finished".to_string(),
            Ok(()) => "the learner was stopped by a signal".to_string(),
            Err(e) => format!("the learner failed: {e:#}"),
        };
        server.stop(&reason, finished, Duration::from_secs(2));
    }
    queue.close();
    if let Some(server) = inference.as_mut() {
        if let Err(e) = server.stop() {
            crate::say_err!("the inference server failed: {e:#}");
        }
    }
    let killed = pool.stop_all(Duration::from_secs(5));
    if !killed.is_empty() {
        crate::say_err!("actors {killed:?} did not stop within 5 s and were killed");
    }
    counters.frames = queue.frames().load(Ordering::Relaxed);
    let trained = cfg.bench_phase == BenchPhase::Training;
    // A diverged run keeps its last periodic checkpoint as the newest: the weights that gave
    // a non-finite loss are not saved over it.
    let diverged = matches!(&outcome, Err(e) if e.is::<Diverged>());
    if diverged {
        crate::say_err!("not saving a final checkpoint: training diverged");
    } else if trained && (counters.updates > started.updates || counters.frames > started.frames) {
        match save(&cfg, &trainer, &counters, &run_dir) {
            Ok(path) => crate::say!("saved {}", path.display()),
            // After a failure (e.g. past --max-actor-restarts) report that failure; a refused
            // save is a note.
            Err(e) if outcome.is_err() => crate::say_err!("{e:#}"),
            Err(e) => return Err(e),
        }
    }
    outcome
}

/// The device of the inference server for `--inference` (None: actors run their own forward
/// passes), given the learner's `device`. `auto` serves from the learner when the learner or
/// `--inference-device` is a GPU and no actor host connects; a `--inference-device` that is
/// not usable is an error naming it.
fn inference_device(cfg: &Config, device: tch::Device) -> Result<Option<tch::Device>> {
    use crate::config::{DeviceChoice, InferenceChoice};
    // The limit benchmark runs no network in the actors.
    if cfg.bench_phase == BenchPhase::Limit || cfg.inference == InferenceChoice::Actor {
        return Ok(None);
    }
    let served = match cfg.inference_device {
        None | Some(DeviceChoice::Auto) => device,
        Some(choice) => {
            device::select(choice)
                .map_err(|e| anyhow::anyhow!("--inference-device {choice}: {}", e.reason))?
                .0
        }
    };
    let wanted =
        cfg.inference == InferenceChoice::Learner || (served.is_cuda() && cfg.listen.is_none());
    Ok(wanted.then_some(served))
}

/// Writes checkpoint `model-<frames>.pt` of the run's current state.
fn save(
    cfg: &Config,
    trainer: &Trainer,
    c: &Counters,
    run_dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let model = trainer.rule.model();
    let state = trainer.state(cfg, c, c.frames);
    let path = checkpoint::path_for(run_dir, c.frames);
    checkpoint::save(
        &path,
        &state,
        model.params(),
        trainer.rule.optimizer_state(),
        &trainer.rule.extra_tensors(),
    )?;
    if cfg.save_replay {
        let replay = checkpoint::replay_path_for(run_dir, c.frames);
        trainer.rule.save_replay(&replay)?;
    }
    checkpoint::prune(run_dir, cfg.keep_checkpoints).with_context(|| {
        format!(
            "--keep-checkpoints {}: removing older checkpoints in {}",
            cfg.keep_checkpoints,
            run_dir.display()
        )
    })?;
    Ok(path)
}

/// Writes `model-best.pt` with the evaluated `weights` (flat, snapshot order) and the
/// counters of now (frames: the evaluated snapshot's), and its scores beside it, each
/// atomically.
fn save_best(
    cfg: &Config,
    trainer: &Trainer,
    c: &Counters,
    run_dir: &std::path::Path,
    scores: &EvalScores,
    weights: &[f32],
) -> Result<()> {
    let model = trainer.rule.model();
    anyhow::ensure!(
        weights.len() == model.numel(),
        "the evaluator sent {} weights, the network has {}",
        weights.len(),
        model.numel()
    );
    let mut best = crate::model::QNetwork::new(
        model.spec(),
        trainer.obs,
        model.num_actions(),
        tch::Device::Cpu,
    );
    best.load_flat(weights);
    let state = trainer.state(cfg, c, scores.frames);
    let rmsprop: Vec<tch::Tensor> = best.params().iter().map(|(_, p)| p.zeros_like()).collect();
    let path = checkpoint::best_path(run_dir);
    checkpoint::save(&path, &state, best.params(), &rmsprop, &[])?;
    let json = checkpoint::best_scores_path(run_dir);
    let tmp = json.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(scores)?)
        .and_then(|()| std::fs::rename(&tmp, &json))
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(())
}

/// The frame count at which each recent weight snapshot was published, to tell how old the
/// snapshot was that acted for the data the learner takes (its "snapshot age").
struct PublishLog {
    /// Frames at publication of versions `first, first + 1, ...` (low 32 bits, as stamped).
    frames: std::collections::VecDeque<u64>,
    first: u32,
}

impl PublishLog {
    /// Versions remembered; older data is aged from the oldest one remembered.
    const KEEP: usize = 1 << 16;

    fn new() -> Self {
        PublishLog {
            frames: std::collections::VecDeque::new(),
            first: 0,
        }
    }

    /// Snapshot `version` was published at `frames` (versions arrive in order).
    fn record(&mut self, version: u64, frames: u64) {
        if self.frames.is_empty() {
            self.first = version as u32;
        }
        self.frames.push_back(frames);
        if self.frames.len() > Self::KEEP {
            self.frames.pop_front();
            self.first = self.first.wrapping_add(1);
        }
    }

    /// Frames since snapshot `version` (as stamped in the queue) was published, at `now`;
    /// `None` for version 0 (not stamped) or a version this run did not publish.
    fn age(&self, version: u32, now: u64) -> Option<u64> {
        if version == 0 || self.frames.is_empty() {
            return None;
        }
        let k = version.wrapping_sub(self.first) as usize;
        let at = if k < self.frames.len() {
            self.frames[k]
        } else if k > u32::MAX as usize / 2 {
            // Older than the oldest remembered.
            self.frames[0]
        } else {
            return None;
        };
        Some(now.saturating_sub(at))
    }
}

/// What the learner accumulates between two metrics rows.
struct Interval {
    start: Instant,
    frames: u64,
    updates: u64,
    busy: Duration,
    fill_sum: f64,
    fill_n: u64,
    /// Loss and mean Q of the interval's updates, summed on the device.
    stats: rules::DeviceSums,
    /// Their means, read once at the interval's end ([`rules::DeviceSums::take_means`]).
    means: Option<Vec<f64>>,
    age_sum: f64,
    age_n: u64,
}

impl Interval {
    fn new(now: Instant, c: &Counters) -> Self {
        Interval {
            start: now,
            frames: c.frames,
            updates: c.updates,
            busy: Duration::ZERO,
            fill_sum: 0.0,
            fill_n: 0,
            stats: rules::DeviceSums::default(),
            means: None,
            age_sum: 0.0,
            age_n: 0,
        }
    }

    /// The metrics row for the interval ending `now`.
    fn row(
        &self,
        now: Instant,
        c: &Counters,
        cfg: &Config,
        finals: &[f64],
        scores: &ReturnWindow,
        rule: rules::RuleMetrics,
    ) -> Row {
        let dt = now.duration_since(self.start).as_secs_f64().max(1e-9);
        // Actor-critic actors sample from their policy: no epsilon.
        let epsilon = if cfg.algorithm.is_actor_critic() || finals.is_empty() {
            0.0
        } else {
            finals
                .iter()
                .map(|f| schedule::epsilon(*f, cfg.eps_decay, c.frames))
                .sum::<f64>()
                / finals.len().max(1) as f64
        };
        Row {
            wall_s: c.wall_s,
            frames: c.frames,
            steps: c.steps,
            updates: c.updates,
            episodes: c.episodes,
            fps: (c.frames - self.frames) as f64 / dt,
            mean_return: scores.mean(),
            epsilon,
            loss: self.means.as_ref().map(|s| s[0]),
            q_mean: self.means.as_ref().map(|s| s[1]),
            lr: schedule::learning_rate(cfg.lr, cfg.lr_decay, c.frames),
            updates_per_s: (c.updates - self.updates) as f64 / dt,
            queue_fill: if self.fill_n > 0 {
                self.fill_sum / self.fill_n as f64
            } else {
                0.0
            },
            learner_busy: self.busy.as_secs_f64() / dt,
            snapshot_age: (self.age_n > 0).then(|| self.age_sum / self.age_n as f64),
            rule,
            remote: None,
            inference: None,
        }
    }
}

/// The training loop proper. Returns when `--max-frames` or `--target-return` is reached or a
/// signal asks to stop (after writing a last metrics row), or with the first failure.
#[allow(clippy::too_many_arguments)]
fn train(
    cfg: &Config,
    trainer: &mut Trainer,
    queue: &ExperienceQueue,
    snapshot: &mut WeightSnapshot,
    reports: &IpcReceiver<ActorMsg>,
    pool: &mut ActorPool,
    finals: &[f64],
    c: &mut Counters,
    stop: &AtomicBool,
    run_dir: &std::path::Path,
    remote: Option<&RemoteServer>,
    inference: Option<&InferenceServer>,
) -> Result<()> {
    let mut hosts_csv =
        match remote {
            Some(_) => Some(HostsCsv::open(run_dir).with_context(|| {
                format!("--logdir {}: cannot write hosts.csv", run_dir.display())
            })?),
            None => None,
        };
    let mut hosts_before: std::collections::HashMap<u32, HostStats> = Default::default();
    let mut csv = CsvWriter::open(&run_dir.join("metrics.csv"))
        .with_context(|| format!("--logdir {}: cannot write metrics.csv", run_dir.display()))?;
    let mut board = Board::create(run_dir, &cfg.key_values(), c.frames)
        .with_context(|| format!("--logdir {}: TensorBoard", run_dir.display()))?;
    let progress = Progress::new(c.frames, cfg.max_frames);
    let mut batch = Batch::new(cfg.batch_size, queue.layout());
    let mut scores = ReturnWindow::new(100);
    let mut flat = vec![0f32; trainer.rule.model().numel()];
    let start = Instant::now();
    let wall0 = c.wall_s;
    let log_every = Duration::from_secs_f64(cfg.log_interval);
    let mut next_log = start + log_every;
    let mut interval = Interval::new(start, c);
    let mut next_sync = c.frames + cfg.sync_frames;
    // The versions that act: the snapshot's, or with --inference learner the inference
    // server's, which takes the weights of every update.
    let mut published = PublishLog::new();
    match inference {
        Some(server) => {
            if let Some(v) = server.refresh(trainer.rule.model()) {
                published.record(v.into(), c.frames);
            }
        }
        None => published.record(snapshot.version(), c.frames),
    }
    let mut served_before = inference.map(|s| s.stats()).unwrap_or_default();
    let mut next_save = (c.frames / cfg.save_freq + 1) * cfg.save_freq;
    let mut ready = std::collections::BTreeSet::new();
    let mut next_reap = Instant::now();
    // The best evaluation so far, kept across resumptions in model-best.eval.json.
    let mut best: Option<EvalScores> = std::fs::read(checkpoint::best_scores_path(run_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    loop {
        c.frames = queue.frames().load(Ordering::Relaxed);
        while let Ok(msg) = reports.try_recv() {
            match msg {
                ActorMsg::Ready { actor, .. } => {
                    ready.insert(actor);
                }
                ActorMsg::Episode { score, frames, .. } => {
                    scores.push(score as f64);
                    c.episodes += 1;
                    board
                        .episode(c.frames, score as f64, frames)
                        .context("writing the TensorBoard event file")?;
                }
                ActorMsg::Eval { scores: e, weights } => {
                    progress.println(&format!(
                        "evaluation at {} frames: mean {:.2}, median {:.2}, std {:.2}, min {}, max {} over {} games",
                        e.frames, e.mean, e.median, e.std, e.min, e.max, e.episodes
                    ));
                    board
                        .eval(&e)
                        .context("writing the TensorBoard event file")?;
                    if best.as_ref().is_none_or(|b| e.mean > b.mean) {
                        save_best(cfg, trainer, c, run_dir, &e, &weights)?;
                        progress.println(&format!(
                            "the best evaluation so far: saved {}",
                            checkpoint::best_path(run_dir).display()
                        ));
                        best = Some(e);
                    }
                }
                // Its exit follows; the replacement is made when it is reaped.
                ActorMsg::Failed { actor, message } => {
                    progress.println(&format!("actor {actor} failed: {message}"));
                }
            }
        }
        // Reaping takes a waitpid per actor: every 100 ms, not every iteration (thousands a
        // second), which only delays noticing a dead actor by as much.
        let exited = if Instant::now() >= next_reap {
            next_reap = Instant::now() + REAP_EVERY;
            if inference.is_some_and(|s| !s.is_running()) {
                bail!("the inference server stopped serving the actors");
            }
            pool.replace_exited()?
        } else {
            Vec::new()
        };
        for r in exited {
            ready.remove(&r.actor);
            progress.println(&format!(
                "actor {} exited unexpectedly ({}) at {} frames; restarted it with seed {} (restart {} of --max-actor-restarts {})",
                r.actor, r.status, c.frames, r.seed, r.restarts, cfg.max_actor_restarts
            ));
        }
        let done = if stop.load(Ordering::Relaxed) {
            Some("stopping on signal".to_string())
        } else if c.frames >= cfg.max_frames {
            Some(format!("reached --max-frames {}", cfg.max_frames))
        } else {
            match (cfg.target_return, scores.mean()) {
                (Some(target), Some(mean)) if scores.is_full() && mean >= target => Some(format!(
                    "reached --target-return {target}: mean return {mean:.2} over the last 100 episodes at {} frames",
                    c.frames
                )),
                _ => None,
            }
        };
        if done.is_none() {
            interval.fill_sum += queue.len() as f64 / queue.capacity() as f64;
            interval.fill_n += 1;
            let trains = cfg.bench_phase == BenchPhase::Training;
            let update = if trains && trainer.rule.ready(c.frames) {
                let t = Instant::now();
                let lr = schedule::learning_rate(cfg.lr, cfg.lr_decay, c.frames);
                let s = trainer.rule.update(lr).map_err(|s| Diverged {
                    frames: c.frames,
                    loss: s.loss,
                    q_mean: s.q_mean,
                    applied: false,
                })?;
                interval.busy += t.elapsed();
                s
            } else {
                // The rule waits for data: take what the queue has (up to a batch).
                let before = batch.len();
                queue.pop_into(&mut batch, Duration::from_millis(100))?;
                for &v in &batch.versions[before..batch.len()] {
                    if let Some(age) = published.age(v, c.frames) {
                        interval.age_sum += age as f64;
                        interval.age_n += 1;
                    }
                }
                if trains {
                    c.steps += trainer.rule.insert(&mut batch, c.frames) as u64;
                } else if batch.is_full() {
                    // Benchmark phases drain the queue without training.
                    c.steps += batch.steps() as u64;
                    batch.clear();
                }
                None
            };
            if let Some(s) = update {
                c.updates += 1;
                interval.stats.add(&[&s.loss, &s.q_mean]);
                if let Some(v) = inference.and_then(|s| s.refresh(trainer.rule.model())) {
                    published.record(v.into(), c.frames);
                }
                if c.frames >= next_sync {
                    trainer.rule.model().flat_params_into(&mut flat);
                    let version = snapshot.publish(&flat)?;
                    if inference.is_none() {
                        published.record(version, c.frames);
                    }
                    if let Some(server) = remote {
                        server.published(version);
                    }
                    next_sync = c.frames + cfg.sync_frames;
                }
                if c.frames >= next_save {
                    c.wall_s = wall0 + start.elapsed().as_secs_f64();
                    // A failed save (a full disk, non-finite weights) stops the run; the older
                    // checkpoints are intact.
                    let path = save(cfg, trainer, c, run_dir)?;
                    progress.println(&format!("saved {}", path.display()));
                    next_save = (c.frames / cfg.save_freq + 1) * cfg.save_freq;
                }
            }
        }
        let now = Instant::now();
        if now >= next_log || done.is_some() {
            c.wall_s = wall0 + start.elapsed().as_secs_f64();
            // The interval's loss and mean Q, in one read from the device. On a GPU a non-finite
            // one is found here rather than before its update (see QCore::step).
            interval.means = interval.stats.take_means();
            if let Some(s) = interval.means.as_deref() {
                if !s.iter().all(|x| x.is_finite()) {
                    return Err(Diverged {
                        frames: c.frames,
                        loss: s[0],
                        q_mean: s[1],
                        applied: true,
                    }
                    .into());
                }
            }
            let mut row = interval.row(now, c, cfg, finals, &scores, trainer.rule.metrics());
            if let (Some(server), Some(hosts_csv)) = (remote, hosts_csv.as_mut()) {
                let dt = now.duration_since(interval.start).as_secs_f64();
                let stats = server.stats();
                let rows: Vec<HostRow> = stats
                    .iter()
                    .map(|h| HostRow::between(hosts_before.get(&h.host), h, dt, snapshot.version()))
                    .collect();
                for r in &rows {
                    hosts_csv
                        .write(r, c.wall_s, c.frames)
                        .context("writing hosts.csv")?;
                    board
                        .host(c.frames, r)
                        .context("writing the TensorBoard event file")?;
                }
                row.remote = Some(RemoteTotals::of(&rows));
                hosts_before = stats.into_iter().map(|h| (h.host, h)).collect();
            }
            if let Some(server) = inference {
                let stats = server.stats();
                let dt = now.duration_since(interval.start).as_secs_f64().max(1e-9);
                let passes = stats.passes - served_before.passes;
                row.inference = Some(InferenceTotals {
                    batch: (passes > 0)
                        .then(|| (stats.rows - served_before.rows) as f64 / passes as f64),
                    passes_per_s: passes as f64 / dt,
                });
                served_before = stats;
            }
            csv.write(&row).context("writing metrics.csv")?;
            board
                .row(&row)
                .context("writing the TensorBoard event file")?;
            progress.update(&row);
            if ready.len() < pool.size() {
                progress.println(&format!("{} of {} actors ready", ready.len(), pool.size()));
            }
            interval = Interval::new(now, c);
            next_log = now + log_every;
        }
        if let Some(reason) = done {
            progress.finish();
            crate::say!("{reason}");
            return Ok(());
        }
    }
}
