//! Proof of learning on CartPole-v1 with 2 actors:
//!
//! - n-step Q-learning (n = 5) and n-step SARSA, `configs/cartpole.toml`: a mean return of 195
//!   over the last 100 episodes within 2,000,000 frames for at least 2 of 3 seeds; the trained
//!   checkpoints then average at least 195 over 50 greedy episodes (the better of the solved
//!   seeds). Further attempts on seeds 4-6 and 7-9 absorb unlucky collapses (see `learns`),
//!   not a broken learner.
//! - DQN from a replay memory, `configs/cartpole-dqn.toml`: 195 within 500,000 frames for at
//!   least 9 of 10 seeds, with no retry; greedy play as above.
//! - The actor-critic rules, `configs/cartpole-a3c.toml`, `configs/cartpole-impala.toml`,
//!   `configs/cartpole-ppo.toml` and `configs/cartpole-appo.toml`:
//!   195 within 600,000 frames for at least 4 of 5 seeds, with no retry; `play --policy
//!   greedy` of a solved checkpoint averages 195 (the best of the solved seeds). The same for A3C with
//!   every actor remote (two actor hosts of one process each over loopback gRPC), and with the
//!   actors' forward passes batched on the learner (`--inference learner`).

use std::path::{Path, PathBuf};
use std::time::Duration;

#[allow(dead_code)] // shared with tests/tests.rs; this crate uses only part of it
#[path = "util.rs"]
mod util;

use util::*;

/// The frame budget of each run (also `max-frames` in configs/cartpole.toml).
const BUDGET: &str = "2000000";

/// The frame budget of each DQN run (also `max-frames` in configs/cartpole-dqn.toml). Measured
/// on 2 cores: the 11 seeds 0-10 reached 195 at 44,000 to 234,000 frames, 4 to 15 s each.
const DQN_BUDGET: &str = "500000";

/// The frame budget of each actor-critic run (also `max-frames` in their configs). Measured
/// on 2 cores: seeds 0-4 reached 195 at 80,000 to 206,000 frames (a3c) and 123,000 to
/// 180,000 (impala), 2 to 5 s each; alone, seeds 1-8 at 27,000 to 124,000 (ppo) and seeds 1-6
/// at 33,000 to 100,000 (appo), 2 to 14 s each; in the suite (the two tests at once) seeds 1-5
/// at 67,000 to 83,000 (ppo) and 51,000 to 158,000 (appo), both tests 125 s.
const AC_BUDGET: &str = "600000";

/// Where the actors act.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Acting {
    /// 2 local actors with their own forward passes (`--inference actor`).
    Local,
    /// Every actor remote, on two actor hosts of one process each (`learner --connect` over
    /// loopback), the learner with `--processes 0 --listen`.
    Remote,
    /// 2 local actors served by the learner's batched inference (`--inference learner`).
    Served,
}

/// Trains one seed with 2 local actors; returns the frame count at which the target was
/// reached and the final checkpoint, or None if the budget ran out first.
fn train(dir: &Path, algorithm: &str, seed: u64) -> Option<(u64, PathBuf)> {
    train_with(dir, algorithm, seed, Acting::Local)
}

/// As [`train`], with the actors acting as `acting` says.
fn train_with(dir: &Path, algorithm: &str, seed: u64, acting: Acting) -> Option<(u64, PathBuf)> {
    let remote = acting == Acting::Remote;
    let (config, budget) = match algorithm {
        "dqn" => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole-dqn.toml"),
            DQN_BUDGET,
        ),
        "a3c" => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole-a3c.toml"),
            AC_BUDGET,
        ),
        "impala" => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole-impala.toml"),
            AC_BUDGET,
        ),
        "ppo" => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole-ppo.toml"),
            AC_BUDGET,
        ),
        "appo" => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole-appo.toml"),
            AC_BUDGET,
        ),
        _ => (
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/cartpole.toml"),
            BUDGET,
        ),
    };
    let where_ = format!("{acting:?}").to_lowercase();
    let logdir = dir.join(format!("{algorithm}-{seed}-{where_}"));
    let learner = Run::learner(dir)
        .flag("--config", config)
        .rule(algorithm)
        .seed(seed)
        .flag("--max-frames", budget)
        .flag("--device", "cpu")
        .logdir(&logdir)
        .flag(
            "--inference",
            if acting == Acting::Served {
                "learner"
            } else {
                "actor"
            },
        );
    let stdout = if remote {
        let what = format!("learner-{algorithm}-{seed}");
        let (mut learner, addr) = learner.processes(0).listen(&what);
        let mut hosts: Vec<Proc> = ["a", "b"]
            .iter()
            .map(|h| {
                let what = format!("host-{h}-{algorithm}-{seed}");
                Run::learner(dir)
                    .flag("--connect", &addr)
                    .processes(1)
                    .start(&what)
            })
            .collect();
        let status = learner.wait(Duration::from_secs(300));
        assert!(status.success(), "{}", learner.logs());
        for h in &mut hosts {
            let status = h.wait(Duration::from_secs(60));
            assert!(status.success(), "{}", h.logs());
        }
        assert_clean(learner.child.id());
        learner.stdout()
    } else {
        let out = learner.succeeds("learner on CartPole", Duration::from_secs(300));
        text(&out.stdout)
    };
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
    eprintln!("{algorithm} seed {seed} ({where_}): mean return 195 at {frames} frames");
    Some((frames, async_rl::checkpoint::path_for(&logdir, last)))
}

/// Mean score of `episodes` greedy episodes with checkpoint `model` (a Q-network's
/// `--epsilon 0`, a policy network's `--policy greedy`).
fn greedy_mean(dir: &Path, model: &Path, episodes: usize) -> f64 {
    let n = episodes.to_string();
    let ckpt = async_rl::checkpoint::load(model).unwrap();
    let greedy = if ckpt.state.config.learner.algorithm.head == async_rl::rules::Head::ActorCritic {
        ["--policy", "greedy"]
    } else {
        ["--epsilon", "0"]
    };
    let (_, out) = run(
        PLAY,
        &[
            "--model",
            model.to_str().unwrap(),
            greedy[0],
            greedy[1],
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

/// One attempt: the seeds `seeds` (three of them); Ok when at least 2 reach 195 and the
/// better of their checkpoints averages 195 in greedy play, else Err saying what failed.
fn attempt(dir: &Path, algorithm: &str, seeds: [u64; 3]) -> Result<(), String> {
    let mut solved = Vec::new();
    let mut failed = Vec::new();
    for seed in seeds {
        match train(dir, algorithm, seed) {
            Some(run) => solved.push(run),
            None => failed.push(seed),
        }
        if solved.len() == 2 {
            break; // two of three seeds settle it
        }
    }
    if solved.len() < 2 {
        return Err(format!(
            "seeds {failed:?} did not reach a mean return of 195 within {BUDGET} frames"
        ));
    }
    // Greedy play of the trained checkpoints: the better of the solved seeds must average 195.
    let means: Vec<(f64, &PathBuf)> = solved
        .iter()
        .map(|(_, m)| (greedy_mean(dir, m, 50), m))
        .collect();
    eprintln!("{algorithm}: greedy means over 50 episodes: {means:?}");
    if means.iter().all(|(m, _)| *m < 195.0) {
        return Err(format!(
            "greedy play of the trained checkpoints averages {means:?}"
        ));
    }
    Ok(())
}

/// Seeds 1-3; if that attempt misses, seeds 4-6, then 7-9. Learning without a replay memory
/// collapses in about 1 run of 5 inside the suite (2 of 3 tests running at once on 2 cores),
/// so an attempt misses about 1 time in 8 and two in a row did once in CI (SARSA, seeds 1, 3,
/// 4 and 6 collapsed); three in a row is about 1 in 500. A broken learner fails all nine.
fn learns(algorithm: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut missed = Vec::new();
    for seeds in [[1, 2, 3], [4, 5, 6], [7, 8, 9]] {
        match attempt(tmp.path(), algorithm, seeds) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("{algorithm}: seeds {seeds:?} missed ({e})");
                missed.push(format!("seeds {seeds:?}: {e}"));
            }
        }
    }
    panic!("{algorithm}: {}", missed.join("; "));
}

#[test]
fn cartpole_n_step_q_learning_reaches_195() {
    learns("q");
}

#[test]
fn cartpole_sarsa_reaches_195() {
    learns("sarsa");
}

/// DQN from a replay memory: at least 9 of seeds 1-10 reach 195 within `DQN_BUDGET` frames,
/// with no retry (this is what the replay memory and target network are for), and the better
/// of two solved checkpoints averages 195 in greedy play.
#[test]
fn cartpole_dqn_reaches_195_for_9_of_10_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut solved = Vec::new();
    let mut failed = Vec::new();
    for seed in 1..=10 {
        match train(tmp.path(), "dqn", seed) {
            Some(run) => solved.push(run),
            None => failed.push(seed),
        }
        assert!(
            failed.len() <= 1,
            "dqn: seeds {failed:?} did not reach 195 within {DQN_BUDGET} frames"
        );
    }
    let frames: Vec<u64> = solved.iter().map(|(f, _)| *f).collect();
    eprintln!("dqn: solved at {frames:?} frames; missed {failed:?}");
    // A checkpoint is saved when the mean of the last 100 sampled games crosses 195, so its
    // greedy play lands on either side of 195 (135 and 182 for two seeds once): the best of
    // the solved seeds must reach it.
    let means: Vec<f64> = solved
        .iter()
        .map(|(_, m)| greedy_mean(tmp.path(), m, 50))
        .collect();
    eprintln!("dqn: greedy means over 50 episodes: {means:?}");
    assert!(
        means.iter().any(|m| *m >= 195.0),
        "greedy play of solved dqn checkpoints averages {means:?}"
    );
}

/// An actor-critic rule: at least 4 of seeds 1-5 reach 195 within `AC_BUDGET` frames, with no
/// retry, and greedy play of the best solved checkpoint averages 195, the actors acting as
/// `acting` says.
fn actor_critic_learns(algorithm: &str, acting: Acting) {
    let tmp = tempfile::tempdir().unwrap();
    let mut solved = Vec::new();
    let mut failed = Vec::new();
    for seed in 1..=5 {
        match train_with(tmp.path(), algorithm, seed, acting) {
            Some(run) => solved.push(run),
            None => failed.push(seed),
        }
        assert!(
            failed.len() <= 1,
            "{algorithm}: seeds {failed:?} did not reach 195 within {AC_BUDGET} frames"
        );
    }
    let frames: Vec<u64> = solved.iter().map(|(f, _)| *f).collect();
    eprintln!("{algorithm}: solved at {frames:?} frames; missed {failed:?}");
    // A checkpoint is saved when the mean of the last 100 sampled games crosses 195, so its
    // greedy play lands on either side of 195 (135 and 182 for two seeds once): the best of
    // the solved seeds must reach it.
    let means: Vec<f64> = solved
        .iter()
        .map(|(_, m)| greedy_mean(tmp.path(), m, 50))
        .collect();
    eprintln!("{algorithm}: play --policy greedy means over 50 episodes: {means:?}");
    assert!(
        means.iter().any(|m| *m >= 195.0),
        "play --policy greedy of solved {algorithm} checkpoints averages {means:?}"
    );
}

#[test]
fn cartpole_a3c_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("a3c", Acting::Local);
}

/// The same bar with every actor remote: two actor hosts over loopback gRPC.
#[test]
fn cartpole_a3c_with_every_actor_remote_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("a3c", Acting::Remote);
}

/// The same bar with the actors' forward passes batched on the learner (`--inference
/// learner`): the policy and value outputs come from the inference server.
#[test]
fn cartpole_a3c_with_inference_on_the_learner_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("a3c", Acting::Served);
}

#[test]
fn cartpole_impala_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("impala", Acting::Local);
}

#[test]
fn cartpole_ppo_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("ppo", Acting::Local);
}

#[test]
fn cartpole_appo_reaches_195_for_4_of_5_seeds() {
    actor_critic_learns("appo", Acting::Local);
}

/// Trains Gymnasium environment `game` (`--game gymnasium:<id>`, Python worker processes)
/// with `config` (in configs/) and `seed` within `budget` frames on the CPU; the frames at
/// which the config's `--target-return` was reached, or None. Needs the venv of scripts/setup
/// (see [`gym_python`]).
fn train_gymnasium(dir: &Path, config: &str, seed: u64, budget: &str) -> Option<u64> {
    let logdir = dir.join(format!("{config}-{seed}"));
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(config);
    let out = Run::learner(dir)
        .flag("--config", config.to_str().unwrap())
        .seed(seed)
        .flag("--max-frames", budget)
        .flag("--device", "cpu")
        .logdir(&logdir)
        .succeeds(
            &format!("{} seed {seed}", config.display()),
            Duration::from_secs(900),
        );
    let stdout = text(&out.stdout);
    let frames = stdout
        .lines()
        .find(|l| l.starts_with("reached --target-return"))
        .and_then(|l| {
            l.rsplit(" at ")
                .next()?
                .trim_end_matches(" frames")
                .parse()
                .ok()
        });
    eprintln!(
        "{} seed {seed}: target reached at {frames:?} frames",
        config.display()
    );
    frames
}

/// Gymnasium's CartPole-v1 through the Python path (configs/cartpole-v1-a3c.toml: A3C, 2
/// actors of 8 environments): a mean return of 195 over 100 episodes within 600,000 frames
/// for at least 4 of seeds 1-5. Measured on 2 shared cores: seeds 1-5 at 106,731, 90,539,
/// 121,018, 114,931 and 95,594 frames (about 3 minutes for the five).
#[test]
fn gymnasium_cartpole_a3c_reaches_195_for_4_of_5_seeds() {
    if gym_python("gymnasium_cartpole").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for seed in 1..=5 {
        if train_gymnasium(tmp.path(), "cartpole-v1-a3c.toml", seed, AC_BUDGET).is_none() {
            failed.push(seed);
        }
        assert!(
            failed.len() <= 1,
            "gymnasium:CartPole-v1: seeds {failed:?} did not reach 195 within {AC_BUDGET} frames"
        );
    }
}

/// The frame budget of each Acrobot run (also `max-frames` in configs/acrobot-v1-dqn.toml).
const ACROBOT_BUDGET: &str = "600000";

/// Gymnasium's Acrobot-v1 (configs/acrobot-v1-dqn.toml: DQN with CartPole's settings): a mean
/// return of -100 over 100 episodes within `ACROBOT_BUDGET` frames for at least 2 of seeds
/// 1-3. Measured on the shared 2 cores: seeds 1, 2, 3 at 284,542, 174,697 and 217,731 frames
/// (5.5 minutes for the three); in another run seed 1 at 214,532, and in a third not within
/// 400,000 (seeds 2 and 3 at 207,839 and 218,955): the actors' asynchrony makes runs of one
/// seed differ, hence the budget of 600,000. (A3C with CartPole's
/// settings never left -500 in 150,000 frames: Acrobot needs the exploration that
/// epsilon-greedy gives.)
#[test]
fn gymnasium_acrobot_dqn_reaches_minus_100_for_2_of_3_seeds() {
    if gym_python("gymnasium_acrobot").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mut failed, mut solved) = (Vec::new(), 0);
    for seed in 1..=3 {
        match train_gymnasium(tmp.path(), "acrobot-v1-dqn.toml", seed, ACROBOT_BUDGET) {
            Some(_) => solved += 1,
            None => failed.push(seed),
        }
        if solved == 2 {
            break; // two of three seeds settle it
        }
        assert!(
            failed.len() <= 1,
            "gymnasium:Acrobot-v1: seeds {failed:?} did not reach -100 within {ACROBOT_BUDGET} frames"
        );
    }
}

/// The frame budget of each Pendulum run.
const PENDULUM_BUDGET: &str = "1000000";

/// Gymnasium's Pendulum-v1, continuous actions through the Python path and the Gaussian policy
/// head (configs/pendulum-v1-ppo.toml: PPO, 2 actors of 4 environments): a training mean
/// return of -400 or better over 100 episodes within `PENDULUM_BUDGET` frames for at least 3
/// of seeds 1-5 (stopping once that is settled). For scale: RL Baselines3 Zoo's benchmark.md
/// lists PPO on Pendulum-v1 at -172 +/- 104 after 100k steps (its tuned settings: gamma 0.9,
/// gSDE, 4 environments; the deterministic policy evaluated), so -400 within 1M frames is well
/// within reach of PPO; this learner gets there more slowly (no gSDE, no normalisation, one
/// network for policy and value). Measured on 2 cores with `--max-policy-lag 1` (the
/// default): seeds 1-10 at 319k, 59k, 51k, 346k, 61k, 794k, 153k, 62k, 230k and 45k frames
/// (4.5 minutes for the ten), and in a test run seeds 1-3 at 113k, 75k and 61k; the tail is
/// long, hence 3 of 5. With lag 0 (about half the frames dropped) one seed in ten missed here
/// and three of five in one CI run.
#[test]
fn gymnasium_pendulum_ppo_reaches_minus_400_for_3_of_5_seeds() {
    if gym_python("gymnasium_pendulum").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mut failed, mut solved) = (Vec::new(), 0);
    for seed in 1..=5 {
        match train_gymnasium(tmp.path(), "pendulum-v1-ppo.toml", seed, PENDULUM_BUDGET) {
            Some(_) => solved += 1,
            None => failed.push(seed),
        }
        if solved == 3 {
            break; // three of five seeds settle it
        }
        assert!(
            failed.len() <= 2,
            "gymnasium:Pendulum-v1: seeds {failed:?} did not reach -400 within {PENDULUM_BUDGET} frames"
        );
    }
}
