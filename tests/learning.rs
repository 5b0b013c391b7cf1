//! Proof of learning: on CartPole-v1, with 2 actors and `configs/cartpole.toml`, the agent
//! reaches a mean return of 195 over the last 100 episodes within 2,000,000 frames for at
//! least 2 of 3 seeds, for n-step Q-learning (n = 5) and for SARSA (n-step, n = 5); the trained
//! checkpoints then average at least 195 over 50 greedy episodes (the better of the solved
//! seeds). Fails if learning breaks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

/// The frame budget of each run (also `max-frames` in configs/cartpole.toml).
const BUDGET: &str = "2000000";

/// Trains one seed; returns the frame count at which the target was reached and the final
/// checkpoint, or None if the budget ran out first.
fn train(dir: &Path, algorithm: &str, seed: u64) -> Option<(u64, PathBuf)> {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole.toml");
    let logdir = dir.join(format!("{algorithm}-{seed}"));
    let seed = seed.to_string();
    let args = [
        "--config",
        config,
        "--algorithm",
        algorithm,
        "--seed",
        &seed,
        "--max-frames",
        BUDGET,
        "--device",
        "cpu",
        "--logdir",
        logdir.to_str().unwrap(),
    ];
    let (pid, out) = run(LEARNER, &args, dir, Duration::from_secs(300));
    assert_ok("learner on CartPole", &out);
    assert_clean(pid);
    let stdout = text(&out.stdout);
    let Some(line) = stdout
        .lines()
        .find(|l| l.starts_with("reached --target-return"))
    else {
        let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
        eprintln!("{algorithm} seed {seed}: target not reached; last lines: {tail:?}");
        return None;
    };
    let frames = line
        .rsplit(" at ")
        .next()?
        .trim_end_matches(" frames")
        .parse()
        .ok()?;
    let last = *async_rl::checkpoint::list(&logdir).last()?;
    eprintln!("{algorithm} seed {seed}: mean return 195 at {frames} frames");
    Some((frames, async_rl::checkpoint::path_for(&logdir, last)))
}

/// Mean score of `episodes` greedy episodes with checkpoint `model`.
fn greedy_mean(dir: &Path, model: &Path, episodes: usize) -> f64 {
    let n = episodes.to_string();
    let (_, out) = run(
        PLAY,
        &[
            "--model",
            model.to_str().unwrap(),
            "--epsilon",
            "0",
            "--episodes",
            &n,
        ],
        dir,
        Duration::from_secs(120),
    );
    assert_ok("play", &out);
    let stdout = text(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains("episodes: mean"))
        .unwrap_or_else(|| panic!("{stdout}"));
    summary
        .split("mean ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn learns(algorithm: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut solved = Vec::new();
    let mut failed = Vec::new();
    for seed in 1..=3 {
        match train(tmp.path(), algorithm, seed) {
            Some(run) => solved.push(run),
            None => failed.push(seed),
        }
        if solved.len() == 2 {
            break; // two of three seeds settle it
        }
    }
    assert!(
        solved.len() >= 2,
        "{algorithm}: seeds {failed:?} did not reach a mean return of 195 within {BUDGET} frames"
    );
    // Greedy play of the trained checkpoints: the better of the solved seeds must average 195.
    let means: Vec<(f64, &PathBuf)> = solved
        .iter()
        .map(|(_, m)| (greedy_mean(tmp.path(), m, 50), m))
        .collect();
    let best = means.iter().map(|(m, _)| *m).fold(f64::MIN, f64::max);
    eprintln!("{algorithm}: greedy means over 50 episodes: {means:?}");
    assert!(
        best >= 195.0,
        "{algorithm}: greedy play of the trained checkpoints averages {means:?}"
    );
}

#[test]
fn cartpole_n_step_q_learning_reaches_195() {
    learns("q");
}

#[test]
fn cartpole_sarsa_reaches_195() {
    learns("sarsa");
}
