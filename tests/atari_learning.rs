//! The Atari learning guard: Pong must keep learning from where a DQN run took off.
//!
//! From scratch, Pong takes off after about 1.1 million frames with `configs/pong.toml`
//! (33-37 minutes on one core of the 2-core machine; docs/RESULTS.md), far past the 10
//! minutes a test may take. So the test starts where that run's seed 0 stood at 1,000,059
//! frames (`tests/fixtures/pong-dqn-1000059.pt`, commit d66540c: its training mean had just
//! begun to move, -20.7 to -20.1), resumes it with an empty replay memory (`--learning-starts
//! 20000`) and a fresh seed, trains 300,000 more frames (5-8 minutes on 2 cores) and judges the
//! games that end after the first 100,000: their mean return must reach -19.0.
//!
//! Measured on the 2-core AMD EPYC machine (the resumed run's games that ended between 1.1 and
//! 1.3 million frames):
//!
//! | run | games | mean return |
//! |---|---|---|
//! | learning, seed 7, 1 learner thread | 36 | -18.25 |
//! | learning, seed 1, 2 learner threads | 34 | -17.79 |
//! | not learning (`--lr 1e-9`), seed 7 | 50 | -20.38 |
//!
//! So the threshold sits 0.75 and 1.2 points below the learning runs and 1.4 above the run
//! that does not learn, whose games score as the checkpoint's own play does; the mean of 35
//! games has a standard error of about 0.3. What fails it: any change that stops Q-learning from
//! improving a policy on Atari (the loss, the targets, the optimizer, the replay memory, the
//! frame preprocessing and stacking, the actors' acting, the snapshot, the checkpoint resume).
//! What it cannot see: whether a run takes off from scratch, which takes 30 minutes and more.
//!
//! One retry with another seed is allowed. This is not a concession: a learner that does not
//! learn scores -20.4 whatever the seed and fails both attempts, while a run that learns misses
//! the threshold by chance (more than 2 standard errors) in about 1-2% of seeds, and both
//! attempts in about 1 in 5,000.

use std::path::Path;
use std::time::Duration;

#[allow(dead_code)] // shared with tests/tests.rs; this crate uses only part of it
#[path = "util.rs"]
mod util;

use util::*;

/// The checkpoint the guard resumes: Pong, dqn, seed 0 of `configs/pong.toml` (then named
/// `pong-dqn.toml`) at 1,000,059 frames.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pong-dqn-1000059.pt"
);
/// The fixture's frame count.
const START: u64 = 1_000_059;
/// Frames trained after it.
const BUDGET: u64 = 300_000;
/// Games that end after this many frames past the checkpoint are judged.
const JUDGED_AFTER: u64 = 100_000;
/// The mean return the judged games must reach.
const PASS: f64 = -19.0;
/// Fewest judged games for a verdict (a learning run plays 34-36).
const MIN_GAMES: usize = 20;

/// Resumes the fixture with `seed` for [`BUDGET`] frames; returns the judged games' returns.
fn resumed_returns(dir: &Path, seed: u64) -> Vec<f64> {
    let logdir = dir.join(format!("pong-{seed}"));
    Run::learner(dir)
        .checkpoint(FIXTURE)
        .logdir(&logdir)
        .seed(seed)
        .frames(START + BUDGET)
        .flag("--learning-starts", 20_000)
        .flag("--learner-threads", 2)
        .flag("--device", "cpu")
        .succeeds("learner resuming Pong", Duration::from_secs(20 * 60));
    let events = std::fs::read_dir(&logdir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents"))
        })
        .expect("a TensorBoard event file");
    let events = async_rl::tensorboard::read_events(&events).unwrap();
    async_rl::tensorboard::scalars(&events, "charts/episodic_return")
        .into_iter()
        .filter(|(frames, _)| *frames as u64 > START + JUDGED_AFTER)
        .map(|(_, score)| f64::from(score))
        .collect()
}

#[test]
fn pong_dqn_resumed_at_takeoff_keeps_learning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for seed in [1, 2] {
        let scores = resumed_returns(tmp.path(), seed);
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        eprintln!(
            "Pong resumed at {START} frames, seed {seed}: {} games after {} frames, mean return {mean:.2} (pass: {PASS})",
            scores.len(),
            START + JUDGED_AFTER
        );
        if scores.len() >= MIN_GAMES && mean >= PASS {
            return;
        }
        seen.push((seed, scores.len(), mean));
    }
    panic!(
        "Pong did not keep learning: (seed, judged games, mean return) {seen:?}; a learning run reaches -18.3 to -17.8 over 34-36 games, one that does not learn -20.4 (need {PASS} over at least {MIN_GAMES})"
    );
}
