//! The learner's training loop: takes the actors' reports and the queue's data, updates the
//! network through the learning rule, publishes snapshots, saves checkpoints and writes a
//! metrics row every `--log-interval`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipc_channel::ipc::IpcReceiver;

use super::save::{read_best_scores, save, save_best};
use super::{Counters, Diverged, Trainer};
use crate::checkpoint;
use crate::config::{BenchPhase, Config};
use crate::inference::InferenceServer;
use crate::metrics::{
    Board, CsvWriter, HostRow, HostsCsv, InferenceTotals, Progress, RemoteTotals, ReturnWindow, Row,
};
use crate::protocol::{ActorMsg, EvalScores};
use crate::remote::server::{HostStats, RemoteServer};
use crate::rules;
use crate::schedule;
use crate::shm::{Batch, ExperienceQueue, WeightSnapshot};
use crate::supervisor::ActorPool;

/// How often the training loop looks for actors that exited.
const REAP_EVERY: Duration = Duration::from_millis(100);

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
        let epsilon = if !cfg.learner.algorithm.explores_with_epsilon() || finals.is_empty() {
            0.0
        } else {
            finals
                .iter()
                .map(|f| schedule::epsilon(*f, cfg.rule.exploration.eps_decay, c.frames))
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
            lr: schedule::learning_rate(cfg.optim.lr, cfg.optim.lr_decay, c.frames),
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
pub(super) fn train(
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
    let progress = Progress::new(c.frames, cfg.run.max_frames);
    let mut batch = Batch::new(cfg.learner.batch_size, queue.layout());
    let mut scores = ReturnWindow::new(100);
    let mut flat = vec![0f32; trainer.rule.model().numel()];
    let start = Instant::now();
    let wall0 = c.wall_s;
    let log_every = Duration::from_secs_f64(cfg.run.log_interval);
    let mut next_log = start + log_every;
    let mut interval = Interval::new(start, c);
    let mut next_sync = c.frames + cfg.actors.sync_frames;
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
    let mut next_save = (c.frames / cfg.run.save_freq + 1) * cfg.run.save_freq;
    let mut ready = std::collections::BTreeSet::new();
    let mut next_reap = Instant::now();
    // The best evaluation so far, kept across resumptions in model-best.eval.json.
    let mut best: Option<EvalScores> = read_best_scores(&checkpoint::best_scores_path(run_dir));
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
                    let s = &e.stats;
                    progress.println(&format!(
                        "evaluation at {} frames: mean {:.2}, median {:.2}, std {:.2}, min {}, max {} over {} games",
                        e.frames, s.mean, s.median, s.std, s.min, s.max, e.episodes
                    ));
                    board
                        .eval(&e)
                        .context("writing the TensorBoard event file")?;
                    if best.as_ref().is_none_or(|b| e.stats.mean > b.stats.mean) {
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
                r.actor, r.status, c.frames, r.seed, r.restarts, cfg.procs.max_actor_restarts
            ));
        }
        let done = if stop.load(Ordering::Relaxed) {
            Some("stopping on signal".to_string())
        } else if c.frames >= cfg.run.max_frames {
            Some(format!("reached --max-frames {}", cfg.run.max_frames))
        } else {
            match (cfg.run.target_return, scores.mean()) {
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
            let trains = cfg.invocation.bench_phase == BenchPhase::Training;
            let update = if trains && trainer.rule.ready(c.frames) {
                let t = Instant::now();
                let lr = schedule::learning_rate(cfg.optim.lr, cfg.optim.lr_decay, c.frames);
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
                    next_sync = c.frames + cfg.actors.sync_frames;
                }
                if c.frames >= next_save {
                    c.wall_s = wall0 + start.elapsed().as_secs_f64();
                    // A failed save (a full disk, non-finite weights) stops the run; the older
                    // checkpoints are intact.
                    let path = save(cfg, trainer, c, run_dir)?;
                    progress.println(&format!("saved {}", path.display()));
                    next_save = (c.frames / cfg.run.save_freq + 1) * cfg.run.save_freq;
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
