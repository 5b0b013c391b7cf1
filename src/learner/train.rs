//! The learner's training loop, as the algorithm reads: take the actors' reports, replace the
//! actors that died, update the network through the learning rule when it is ready (else take
//! what the queue has), publish a snapshot every `--sync-frames` (or after every update, as
//! the rule's spec says), save a checkpoint every `--save-freq`, and write a metrics row every
//! `--log-interval`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcReceiver;

use super::interval::{Interval, PublishLog};
use super::save::{read_best_scores, save, save_best};
use super::services::Service;
use super::{Counters, Diverged, Trainer};
use crate::checkpoint;
use crate::config::{BenchPhase, Config};
use crate::ipc::{ActorMsg, EvalScores};
use crate::metrics::{Board, CsvWriter, HostsCsv, Logger, Progress, ReturnWindow};
use crate::rules::UpdateStats;
use crate::schedule;
use crate::shm::{Batch, ExperienceQueue, WeightSnapshot};
use crate::supervisor::ActorPool;

use super::dead_input::InputLayerWatch;

/// How often the training loop looks for actors that exited.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// What the training loop works with, set up by [`super::run`].
pub(super) struct Run<'a> {
    pub cfg: &'a Config,
    pub trainer: &'a mut Trainer,
    pub queue: &'a ExperienceQueue,
    pub snapshot: &'a mut WeightSnapshot,
    /// The local actors, and the channel of their reports (remote hosts' games too).
    pub pool: &'a mut ActorPool,
    pub reports: &'a IpcReceiver<ActorMsg>,
    /// Each local actor's final epsilon (for the mean epsilon of a metrics row).
    pub finals: &'a [f64],
    pub services: &'a mut [Box<dyn Service>],
    pub counters: &'a mut Counters,
    pub stop: &'a AtomicBool,
    pub run_dir: &'a Path,
}

/// The training loop. Returns when `--max-frames` or `--target-return` is reached or a signal
/// asks to stop (after writing a last metrics row), or with the first failure.
pub(super) fn train(run: Run) -> Result<()> {
    let mut t = Training::new(run)?;
    loop {
        t.run.counters.frames = t.run.queue.frames().load(Ordering::Relaxed);
        t.take_reports()?;
        t.replace_exited()?;
        let done = t.done();
        if done.is_none() {
            if let Some(stats) = t.update_or_take()? {
                t.updated(stats)?;
            }
        }
        if Instant::now() >= t.next_log || done.is_some() {
            t.log()?;
        }
        if let Some(reason) = done {
            t.progress.finish();
            crate::say!("{reason}");
            return Ok(());
        }
    }
}

/// The loop's state between iterations.
struct Training<'a> {
    run: Run<'a>,
    /// metrics.csv, TensorBoard, and hosts.csv with remote hosts.
    loggers: Vec<Box<dyn Logger>>,
    progress: Progress,
    batch: Batch,
    scores: ReturnWindow,
    /// The network's weights, flat, for publication.
    flat: Vec<f32>,
    start: Instant,
    wall0: f64,
    interval: Interval,
    next_log: Instant,
    next_sync: u64,
    next_save: u64,
    next_reap: Instant,
    /// The frames at which the acting weights' versions were published.
    published: PublishLog,
    /// A service's weights act (the inference server), not the published snapshot's.
    served: bool,
    /// Actors that said they are ready.
    ready: BTreeSet<usize>,
    /// The best evaluation so far, kept across resumptions in model-best.eval.json.
    best: Option<EvalScores>,
    /// The last error an actor reported (`ActorMsg::Failed`), for the message that stops the
    /// run when actors keep failing (a Python environment that raises, say).
    last_failure: Option<String>,
    /// The warning that the input layer no longer learns.
    input_watch: InputLayerWatch,
}

impl<'a> Training<'a> {
    fn new(run: Run<'a>) -> Result<Self> {
        let (cfg, dir) = (run.cfg, run.run_dir);
        let c = *run.counters;
        let within = |what: &str| format!("--logdir {}: {what}", dir.display());
        let mut loggers: Vec<Box<dyn Logger>> = vec![
            Box::new(
                CsvWriter::open(&dir.join("metrics.csv"))
                    .with_context(|| within("cannot write metrics.csv"))?,
            ),
            Box::new(
                Board::create(dir, &cfg.key_values(), c.frames)
                    .with_context(|| within("TensorBoard"))?,
            ),
        ];
        if cfg.listen.listen.is_some() {
            loggers.push(Box::new(
                HostsCsv::open(dir).with_context(|| within("cannot write hosts.csv"))?,
            ));
        }
        // The versions that act: the snapshot's, or an inference server's, which takes the
        // weights of every update.
        let mut published = PublishLog::new();
        let model = run.trainer.rule.model();
        let served = run.services.iter().any(|s| s.serves_actors());
        let mut acting = None;
        for s in run.services.iter_mut() {
            if let Some(v) = s.updated(model) {
                published.record(v, c.frames);
                acting = Some(v);
            }
        }
        if !served {
            published.record(run.snapshot.version(), c.frames);
            acting = Some(run.snapshot.version());
        }
        let numel = model.numel();
        if let Some(v) = acting {
            run.trainer.rule.acting(v as u32);
        }
        let start = Instant::now();
        let log_every = Duration::from_secs_f64(cfg.run.log_interval);
        Ok(Training {
            loggers,
            progress: Progress::new(c.frames, cfg.run.max_frames),
            batch: Batch::new(cfg.learner.batch_size, run.queue.layout()),
            scores: ReturnWindow::new(100),
            flat: vec![0f32; numel],
            start,
            wall0: c.wall_s,
            interval: Interval::new(start, &c),
            next_log: start + log_every,
            next_sync: c.frames + cfg.actors.sync_frames,
            next_save: (c.frames / cfg.run.save_freq + 1) * cfg.run.save_freq,
            next_reap: start,
            published,
            served,
            ready: BTreeSet::new(),
            best: read_best_scores(&checkpoint::best_scores_path(dir)),
            last_failure: None,
            input_watch: InputLayerWatch::new(run.trainer.rule.core().model.input_layer()),
            run,
        })
    }

    /// Takes every report waiting: readiness, finished games, evaluations, failures.
    fn take_reports(&mut self) -> Result<()> {
        while let Ok(msg) = self.run.reports.try_recv() {
            match msg {
                ActorMsg::Ready { actor, .. } => {
                    self.ready.insert(actor);
                }
                ActorMsg::Episode { score, frames, .. } => {
                    self.scores.push(score as f64);
                    let c = &mut *self.run.counters;
                    c.episodes += 1;
                    for l in &mut self.loggers {
                        l.episode(c.frames, score as f64, frames)?;
                    }
                }
                ActorMsg::Eval { scores, weights } => self.evaluated(scores, &weights)?,
                // Its exit follows; the replacement is made when it is reaped.
                ActorMsg::Failed { actor, message } => {
                    self.progress
                        .println(&format!("actor {actor} failed: {message}"));
                    self.last_failure = Some(format!("actor {actor} failed: {message}"));
                }
            }
        }
        Ok(())
    }

    /// A periodic evaluation of the `weights` it scored: logged, and saved as model-best.safetensors
    /// when it is the best so far.
    fn evaluated(&mut self, e: EvalScores, weights: &[f32]) -> Result<()> {
        let s = &e.stats;
        self.progress.println(&format!(
            "evaluation at {} frames: mean {:.2}, median {:.2}, std {:.2}, min {}, max {} over {} games",
            e.frames, s.mean, s.median, s.std, s.min, s.max, e.episodes
        ));
        for l in &mut self.loggers {
            l.eval(&e)?;
        }
        if self
            .best
            .as_ref()
            .is_none_or(|b| e.stats.mean > b.stats.mean)
        {
            let r = &self.run;
            save_best(r.cfg, r.trainer, r.counters, r.run_dir, &e, weights)?;
            self.progress.println(&format!(
                "the best evaluation so far: saved {}",
                checkpoint::best_path(r.run_dir).display()
            ));
            self.best = Some(e);
        }
        Ok(())
    }

    /// Replaces the actors that exited, and checks the services (every [`REAP_EVERY`]: a
    /// waitpid per actor is not for every iteration, which only delays noticing a death by
    /// as much).
    fn replace_exited(&mut self) -> Result<()> {
        if Instant::now() < self.next_reap {
            return Ok(());
        }
        self.next_reap = Instant::now() + REAP_EVERY;
        for s in self.run.services.iter() {
            s.check()?;
        }
        let replaced = self
            .run
            .pool
            .replace_exited()
            .map_err(|e| match &self.last_failure {
                Some(why) => anyhow::anyhow!("{e:#}; the last error: {why}"),
                None => e,
            })?;
        for r in replaced {
            self.ready.remove(&r.actor);
            self.progress.println(&format!(
                "actor {} exited unexpectedly ({}) at {} frames; restarted it with seed {} (restart {} of --max-actor-restarts {})",
                r.actor, r.status, self.run.counters.frames, r.seed, r.restarts,
                self.run.cfg.procs.max_actor_restarts
            ));
        }
        Ok(())
    }

    /// Why the run stops now, if it does: a signal, `--max-frames`, or `--target-return`.
    fn done(&self) -> Option<String> {
        let (cfg, frames) = (self.run.cfg, self.run.counters.frames);
        if self.run.stop.load(Ordering::Relaxed) {
            return Some("stopping on signal".to_string());
        }
        if frames >= cfg.run.max_frames {
            return Some(format!("reached --max-frames {}", cfg.run.max_frames));
        }
        match (cfg.run.target_return, self.scores.mean()) {
            (Some(target), Some(mean)) if self.scores.is_full() && mean >= target => Some(format!(
                "reached --target-return {target}: mean return {mean:.2} over the last 100 episodes at {frames} frames"
            )),
            _ => None,
        }
    }

    /// One update when the rule is ready for one; else what the queue has (up to a batch) goes
    /// to the rule. A benchmark phase drains the queue without training.
    fn update_or_take(&mut self) -> Result<Option<UpdateStats>> {
        let (cfg, frames) = (self.run.cfg, self.run.counters.frames);
        let queue = self.run.queue;
        self.interval.fill_sum += queue.len() as f64 / queue.capacity() as f64;
        self.interval.fill_n += 1;
        let trains = cfg.invocation.bench_phase == BenchPhase::Training;
        let rule = &mut self.run.trainer.rule;
        if trains && rule.ready(frames) {
            let t = Instant::now();
            let lr = schedule::learning_rate(cfg.optim.lr, cfg.optim.lr_decay, frames);
            let stats = rule.update(lr).map_err(|s| Diverged {
                frames,
                loss: s.loss,
                q_mean: s.q_mean,
                applied: false,
            })?;
            self.interval.busy += t.elapsed();
            return Ok(stats);
        }
        let before = self.batch.len();
        queue.pop_into(&mut self.batch, Duration::from_millis(100))?;
        for &v in &self.batch.versions[before..self.batch.len()] {
            if let Some(age) = self.published.age(v, frames) {
                self.interval.age_sum += age as f64;
                self.interval.age_n += 1;
            }
        }
        let c = &mut *self.run.counters;
        if trains {
            c.steps += rule.insert(&mut self.batch, frames) as u64;
        } else if self.batch.is_full() {
            c.steps += self.batch.steps() as u64;
            self.batch.clear();
        }
        Ok(None)
    }

    /// After an update: the services hear of it, then a snapshot is published and a
    /// checkpoint saved when they are due.
    fn updated(&mut self, stats: UpdateStats) -> Result<()> {
        let r = &mut self.run;
        r.counters.updates += 1;
        self.interval.stats.add(&[&stats.loss, &stats.q_mean]);
        let model = r.trainer.rule.model();
        let mut acting = None;
        for s in r.services.iter_mut() {
            if let Some(v) = s.updated(model) {
                self.published.record(v, r.counters.frames);
                acting = Some(v);
            }
        }
        // The rule may want the actors to act with every update's weights (ppo, appo).
        if r.counters.frames >= self.next_sync || r.cfg.learner.algorithm.publish_every_update {
            model.flat_params_into(&mut self.flat);
            let version = r.snapshot.publish(&self.flat)?;
            if !self.served {
                self.published.record(version, r.counters.frames);
                acting = Some(version);
            }
            for s in r.services.iter_mut() {
                s.published(version);
            }
            self.next_sync = r.counters.frames + r.cfg.actors.sync_frames;
        }
        if let Some(v) = acting {
            r.trainer.rule.acting(v as u32);
        }
        if r.counters.frames >= self.next_save {
            r.counters.wall_s = self.wall0 + self.start.elapsed().as_secs_f64();
            // A failed save (a full disk, non-finite weights) stops the run; the older
            // checkpoints are intact.
            let path = save(r.cfg, r.trainer, r.counters, r.run_dir)?;
            self.progress.println(&format!("saved {}", path.display()));
            let every = r.cfg.run.save_freq;
            self.next_save = (r.counters.frames / every + 1) * every;
        }
        Ok(())
    }

    /// Ends the metrics interval: one row to every logger (and the services' numbers), the
    /// progress line.
    fn log(&mut self) -> Result<()> {
        let now = Instant::now();
        let r = &mut self.run;
        r.counters.wall_s = self.wall0 + self.start.elapsed().as_secs_f64();
        // The interval's loss and mean Q, in one read from the device. On a GPU a non-finite
        // one is found here rather than before its update (see LearnerCore::step).
        self.interval.means = self.interval.stats.take_means();
        if let Some(s) = self.interval.means.as_deref() {
            if !s.iter().all(|x| x.is_finite()) {
                return Err(Diverged {
                    frames: r.counters.frames,
                    loss: s[0],
                    q_mean: s[1],
                    applied: true,
                }
                .into());
            }
        }
        let c = *r.counters;
        let mut row = self.interval.row(
            now,
            &c,
            r.cfg,
            r.finals,
            &self.scores,
            r.trainer.rule.metrics(),
        );
        let dt = now.duration_since(self.interval.start).as_secs_f64();
        let mut hosts = Vec::new();
        let version = r.snapshot.version();
        for s in r.services.iter_mut() {
            s.report(dt, version, &mut row, &mut hosts);
        }
        for l in &mut self.loggers {
            for h in &hosts {
                l.host(c.wall_s, c.frames, h)?;
            }
            l.row(&row)?;
        }
        self.progress.update(&row);
        self.warn_if_input_layer_frozen();
        let r = &mut self.run;
        if self.ready.len() < r.pool.size() {
            self.progress.println(&format!(
                "{} of {} actors ready",
                self.ready.len(),
                r.pool.size()
            ));
        }
        self.interval = Interval::new(now, &c);
        self.next_log = now + Duration::from_secs_f64(r.cfg.run.log_interval);
        Ok(())
    }

    /// Once per run, a warning when no update has changed the layer that reads the
    /// observation for many updates ([`InputLayerWatch`]): the run is then unlikely to learn.
    fn warn_if_input_layer_frozen(&mut self) {
        let (updates, frames) = (self.run.counters.updates, self.run.counters.frames);
        let params = self.run.trainer.rule.core().model.params();
        if let Some(line) = self.input_watch.look(updates, frames, params) {
            self.progress.println(&line);
        }
    }
}
