//! What an authenticated remote host may report: bounds on every quantity of its experience
//! messages, derived from the run's settings, and the per-host ledger that bounds its frames
//! and games by the experience it delivered.
//!
//! A token holder is trusted to be a host, not to tell the truth: one message must not end
//! the run (frames that reach `--max-frames`), falsify it (games that trip `--target-return`
//! or move `mean_return`), or poison the learner (returns of 3e38). A host that breaks a bound
//! is disconnected with a [`BoundError`] (logged, length-capped) and the run goes on.
//!
//! - **Values** ([`HostBounds::check_slot`]): `|reward| <= R` per agent step (R =
//!   `--remote-reward-bound`, 1 for the clipped rewards every actor trains on); a
//!   transition's return: `|return| <= R H` when the learner bootstraps it (discount > 0:
//!   the return is a discounted reward sum), with the horizon `H = min(1 / (1 - gamma),
//!   --max-episode-frames)` steps, the largest such sum; `|return| <= 1e6 R H` when it holds
//!   the actor's own bootstrap (discount 0), which an honest network overshoots while it
//!   learns, and far more when it diverges (measured on CartPole, horizon 100, with
//!   --sync-frames 1000: 204, 1,002, 100,156) and which a host cannot prove: loose, refusing
//!   values only a diverged network or a liar sends (3e38, whose square overflows a loss);
//!   a segment's behaviour
//!   log-probabilities `>= ln(smallest f32) ~ -103.3` (an action sampled with a smaller
//!   probability cannot be sampled in f32 at all).
//! - **Frames** ([`Ledger`]): a host earns frames by delivering agent steps in its slots
//!   (`2 * frame_skip` per step, 4 times that with `--fire-on-life-loss`, whose steps replay
//!   the FIRE sequence) and game starts (`noop_max + 4 * frame_skip` frames per game it
//!   reports) and spends them on the frames it reports. At each session it is granted what
//!   its processes can hold before their slots reach it (their queue lanes, their adders'
//!   held steps, a game start per environment): the lag between playing and delivering.
//!   So a host's frame count can run ahead of its delivered steps by a bounded amount only,
//!   never by 2^40 in one message.
//! - **Games**: each reported game spends one delivered agent step (a game takes at least
//!   one), besides the same per-session grant, and is at most `--max-episode-frames` plus a
//!   game start long. Scores are the game's own, unclipped: they are checked for finiteness
//!   only; what is bounded is the count of games, which trips `--target-return` and moves
//!   `mean_return`.

use crate::config::Config;
use crate::remote::wire;
use crate::shm::SlotLayout;

/// ln of the smallest positive f32 (about 1.4e-45): no action sampled in f32 has a smaller
/// log-probability.
pub const MIN_LOG_PROB: f32 = -103.28;

/// How far a return with the actor's own bootstrap may exceed the largest discounted reward
/// sum: n-step Q's max over estimated values overshoots while it learns and runs away while
/// it diverges (measured: 204, 1,002 and 100,156 on CartPole, whose horizon is 100), and an
/// honest host must not be dropped for that. A million horizons (1e8 for gamma 0.99) keep a
/// squared error far from f32's overflow (3.4e38).
pub const BOOTSTRAP_SLACK: f32 = 1e6;

/// Most characters of a host's text (its name, a failure line) that go into a log line.
pub const MAX_LOGGED_CHARS: usize = 200;

/// A host's report that breaks a bound (the session is ended with this reason).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BoundError {
    /// A segment step's reward beyond `--remote-reward-bound`.
    #[error("slot {slot}: reward of magnitude {value}; at most {bound} (--remote-reward-bound)")]
    Reward {
        /// The slot's index in the message.
        slot: usize,
        /// The reward's magnitude.
        value: f32,
        /// The bound.
        bound: f32,
    },
    /// A transition's return beyond the horizon's bound.
    #[error("slot {slot}: return of magnitude {value}; at most {bound} (the reward bound times the horizon, times 1e6 with the actor's bootstrap)")]
    Return {
        /// The slot's index in the message.
        slot: usize,
        /// The return's magnitude.
        value: f32,
        /// The bound.
        bound: f32,
    },
    /// A behaviour log-probability below any that f32 can sample.
    #[error("slot {slot}: behaviour log-probability {value}; at least {MIN_LOG_PROB}")]
    LogProb {
        /// The slot's index in the message.
        slot: usize,
        /// The log-probability.
        value: f32,
    },
    /// More frames than the host earned by the steps it delivered.
    #[error("{reported} frames in one message; it delivered steps for at most {allowed} (frames are bounded by the agent steps in a host's slots)")]
    Frames {
        /// Frames the message reports.
        reported: u64,
        /// Frames the host had earned.
        allowed: u64,
    },
    /// More games than the host delivered steps for.
    #[error("{reported} games in one message; it delivered steps for at most {allowed}")]
    Games {
        /// Games the message reports.
        reported: u64,
        /// Games the host had earned.
        allowed: u64,
    },
    /// A game longer than an episode may be.
    #[error("a game of {frames} frames; at most {max}")]
    GameFrames {
        /// The game's frames.
        frames: u64,
        /// The longest game.
        max: u64,
    },
}

/// The bounds of one run (see the module's comment), from its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostBounds {
    /// Largest `|reward|` per agent step.
    pub reward: f32,
    /// Largest `|return|` of a transition the learner bootstraps (discount > 0).
    pub ret: f32,
    /// Largest `|return|` of a transition with the actor's bootstrap (discount 0).
    pub bootstrapped_ret: f32,
    /// Frames earned by one delivered agent step.
    pub frames_per_step: u64,
    /// Frames earned by one reported game (its start: no-ops and FIRE).
    pub frames_per_game: u64,
    /// The longest game, in frames.
    pub game_frames: u64,
    /// Agent steps one actor process can hold before they reach the host's relay: its
    /// queue lane's slots and its adders' held steps.
    pub lag_steps_per_process: u64,
    /// Environments per actor process.
    pub envs_per_process: u64,
}

impl HostBounds {
    /// The bounds of the run of `cfg` with slots of `layout`.
    pub fn of(cfg: &Config, layout: &SlotLayout) -> HostBounds {
        let reward = cfg.listen.remote_reward_bound;
        let gamma = f64::from(cfg.learner.gamma);
        let longest = cfg.env.max_episode_frames.max(1) as f64;
        let horizon = if gamma < 1.0 {
            (1.0 / (1.0 - gamma)).min(longest)
        } else {
            longest
        };
        let skip = u64::from(cfg.env.frame_skip.max(1));
        let step_frames = if cfg.env.fire_on_life_loss {
            4 * skip
        } else {
            skip
        };
        let held = cfg
            .rule
            .n_step
            .n_step
            .max(cfg.rule.segments.unroll)
            .max(layout.steps()) as u64;
        let envs = cfg.actors.envs_per_actor.max(1) as u64;
        let start = u64::from(cfg.env.noop_max) + 4 * skip;
        HostBounds {
            reward,
            ret: (f64::from(reward) * horizon) as f32,
            bootstrapped_ret: (f64::from(reward) * horizon * f64::from(BOOTSTRAP_SLACK)) as f32,
            frames_per_step: 2 * step_frames,
            frames_per_game: start,
            game_frames: cfg.env.max_episode_frames + start + step_frames,
            lag_steps_per_process: (crate::remote::host::LANE_SLOTS * layout.steps()) as u64
                + envs * (held + 1),
            envs_per_process: envs,
        }
    }

    /// Checks the values of raw slot `slot` (index `index` in its message; already checked
    /// by [`SlotLayout::check_raw`]); returns its agent steps.
    ///
    /// # Errors
    ///
    /// [`BoundError::Reward`], [`BoundError::Return`] or [`BoundError::LogProb`].
    pub fn check_slot(
        &self,
        layout: &SlotLayout,
        index: usize,
        slot: &[u8],
    ) -> Result<usize, BoundError> {
        let n = layout.raw_numbers(slot);
        let bound = if n.discount > 0.0 {
            self.ret
        } else {
            self.bootstrapped_ret
        };
        if n.ret > bound {
            return Err(BoundError::Return {
                slot: index,
                value: n.ret,
                bound,
            });
        }
        if n.reward > self.reward {
            return Err(BoundError::Reward {
                slot: index,
                value: n.reward,
                bound: self.reward,
            });
        }
        if n.min_logp < MIN_LOG_PROB {
            return Err(BoundError::LogProb {
                slot: index,
                value: n.min_logp,
            });
        }
        Ok(n.steps)
    }

    /// What a session of `processes` processes is granted on joining (see [`Ledger`]):
    /// (frames, games).
    pub fn grant(&self, processes: u32) -> (u64, u64) {
        let p = u64::from(processes);
        let steps = p * self.lag_steps_per_process;
        let games = p * self.envs_per_process;
        (
            steps * self.frames_per_step + games * self.frames_per_game,
            steps + games,
        )
    }
}

/// A host's frames and games earned and not yet reported, across its sessions. Never more
/// than the grant of its session ([`HostBounds::grant`]): an honest host never lags more
/// than that, and a host that saved up credit cannot spend it at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Frames the host may still report.
    pub frames: u64,
    /// Games the host may still report.
    pub games: u64,
    /// The grant of its current session: the most of each it may hold, (frames, games).
    cap: (u64, u64),
}

impl Ledger {
    /// A session of `processes` processes joined. Its first session starts with the grant;
    /// a reconnection keeps what is left (an honest host's lag does not grow by
    /// reconnecting), within the new session's grant.
    pub fn joined(&mut self, bounds: &HostBounds, processes: u32) {
        let (frames, games) = bounds.grant(processes);
        if self.cap == (0, 0) {
            (self.frames, self.games) = (frames, games);
        } else {
            self.frames = self.frames.min(frames);
            self.games = self.games.min(games);
        }
        self.cap = (frames, games);
    }

    /// Message `e`, whose slots hold `steps` agent steps, is counted: it earns what its steps
    /// and games earn and spends its frames and games. Unchanged when it breaks a bound.
    ///
    /// # Errors
    ///
    /// [`BoundError::Games`], [`BoundError::GameFrames`] or [`BoundError::Frames`].
    pub fn count(
        &mut self,
        bounds: &HostBounds,
        e: &wire::Experience,
        steps: u64,
    ) -> Result<(), BoundError> {
        let reported_games = e.episodes.len() as u64;
        let games = self.games.saturating_add(steps);
        if reported_games > games {
            return Err(BoundError::Games {
                reported: reported_games,
                allowed: games,
            });
        }
        if let Some(g) = e.episodes.iter().find(|g| g.frames > bounds.game_frames) {
            return Err(BoundError::GameFrames {
                frames: g.frames,
                max: bounds.game_frames,
            });
        }
        let frames = self
            .frames
            .saturating_add(steps.saturating_mul(bounds.frames_per_step))
            .saturating_add(reported_games.saturating_mul(bounds.frames_per_game));
        if e.frames > frames {
            return Err(BoundError::Frames {
                reported: e.frames,
                allowed: frames,
            });
        }
        self.games = (games - reported_games).min(self.cap.1);
        self.frames = (frames - e.frames).min(self.cap.0);
        Ok(())
    }
}

/// `text` for a log line: at most `max` characters, control characters (newlines, escapes)
/// shown as `?`, and `...` with the count of what was cut.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let total = text.chars().count();
    if total > max {
        out.push_str(&format!("... ({} more characters)", total - max));
    }
    out
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;
