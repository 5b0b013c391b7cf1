//! What the training loop keeps between two metrics rows ([`Interval`]) and across them
//! ([`PublishLog`], for the age of the snapshot that acted for the data taken).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Counters;
use crate::config::Config;
use crate::metrics::{ReturnWindow, Row};
use crate::rules;
use crate::schedule;

/// The frame count at which each recent weight snapshot was published, to tell how old the
/// snapshot was that acted for the data the learner takes (its "snapshot age").
pub(super) struct PublishLog {
    /// Frames at publication of versions `first, first + 1, ...` (low 32 bits, as stamped).
    frames: VecDeque<u64>,
    first: u32,
}

impl PublishLog {
    /// Versions remembered; older data is aged from the oldest one remembered.
    const KEEP: usize = 1 << 16;

    pub(super) fn new() -> Self {
        PublishLog {
            frames: VecDeque::new(),
            first: 0,
        }
    }

    /// Snapshot `version` was published at `frames` (versions arrive in order).
    pub(super) fn record(&mut self, version: u64, frames: u64) {
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
    pub(super) fn age(&self, version: u32, now: u64) -> Option<u64> {
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
pub(super) struct Interval {
    pub(super) start: Instant,
    pub(super) frames: u64,
    pub(super) updates: u64,
    pub(super) busy: Duration,
    pub(super) fill_sum: f64,
    pub(super) fill_n: u64,
    /// Loss and mean Q of the interval's updates, summed on the device.
    pub(super) stats: rules::DeviceSums,
    /// Their means, read once at the interval's end ([`rules::DeviceSums::take_means`]).
    pub(super) means: Option<Vec<f64>>,
    pub(super) age_sum: f64,
    pub(super) age_n: u64,
}

impl Interval {
    pub(super) fn new(now: Instant, c: &Counters) -> Self {
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
    pub(super) fn row(
        &self,
        now: Instant,
        c: &Counters,
        cfg: &Config,
        finals: &[f64],
        scores: &ReturnWindow,
        rule: rules::RuleMetrics,
    ) -> Row {
        let dt = now.duration_since(self.start).as_secs_f64().max(1e-9);
        // Actors that sample from their policy have no epsilon.
        let epsilon = if !cfg.learner.algorithm.explores_with_epsilon() || finals.is_empty() {
            0.0
        } else {
            let decay = cfg.rule.exploration.eps_decay;
            finals
                .iter()
                .map(|f| schedule::epsilon(*f, decay, c.frames))
                .sum::<f64>()
                / finals.len() as f64
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
