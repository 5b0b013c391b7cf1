//! `--algorithm dqn` end to end on real Breakout (replay memory of frames, target network,
//! dueling, prioritized, --save-replay and resume), and its bad input.

use std::path::Path;
use std::time::Duration;

use crate::util::*;

#[test]
fn dqn_on_breakout_trains_saves_its_replay_memory_and_resumes_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let common = Run::breakout(tmp.path())
        .rule("dqn")
        .switch("--dueling")
        .switch("--prioritized")
        .processes(2)
        .logdir(&dir)
        .flag("--log-interval", 1)
        .flag("--replay-size", 2000)
        .flag("--learning-starts", 4000)
        .flag("--replay-ratio", 1)
        .flag("--target-update", 20)
        .switch("--save-replay")
        .flag("--save-freq", 8000)
        .flag("--keep-checkpoints", 1)
        .seed(5);
    common
        .clone()
        .frames(16_000)
        .succeeds("dqn learner", Duration::from_secs(300));
    let saved = async_rl::checkpoint::list(&dir);
    assert_eq!(saved.len(), 1, "--keep-checkpoints 1: {saved:?}");
    let last = saved[0];
    let replays: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".replay"))
        .collect();
    assert_eq!(
        replays,
        vec![format!("model-{last}.replay")],
        "one replay memory, beside the one checkpoint kept"
    );
    // The checkpoint keeps the target network beside the online one.
    let ckpt = async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&dir, last)).unwrap();
    assert!(ckpt.extra.contains_key("target/advantage.weight"));
    assert!(ckpt.params.contains_key("value.weight"), "a dueling head");
    assert!(ckpt.state.updates > 0, "it trained");
    // Metrics: the memory's size and the measured replay ratio.
    let before = metrics_rows(&dir);
    let trained: Vec<_> = before.iter().filter(|r| !r["loss"].is_empty()).collect();
    assert!(!trained.is_empty(), "rows with updates");
    for r in &trained {
        let size: u64 = r["replay_size"].parse().unwrap();
        assert!((1..=2000).contains(&size), "{r:?}");
        assert!(!r["priority_mean"].is_empty() && !r["is_weight_mean"].is_empty());
    }
    let ratio = |rs: &[&std::collections::HashMap<String, String>]| -> f64 {
        let v: Vec<f64> = rs
            .iter()
            .filter_map(|r| r["replay_ratio"].parse().ok())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let measured = ratio(&trained);
    assert!(
        (0.5..=1.6).contains(&measured),
        "--replay-ratio 1 measured {measured}"
    );
    // The same numbers in TensorBoard, row by row.
    let events: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let events = async_rl::tensorboard::read_events(&events[0]).unwrap();
    for (tag, column) in [
        ("replay/size", "replay_size"),
        ("replay/ratio", "replay_ratio"),
        ("replay/priority_mean", "priority_mean"),
        ("replay/is_weight_mean", "is_weight_mean"),
        ("losses/td_loss", "loss"),
    ] {
        let logged = async_rl::tensorboard::scalars(&events, tag);
        let csv: Vec<f64> = before
            .iter()
            .filter_map(|r| r[column].parse().ok())
            .collect();
        assert_eq!(logged.len(), csv.len(), "{tag}");
        for ((_, v), c) in logged.iter().zip(&csv) {
            assert!(
                (f64::from(*v) - c).abs() <= 1e-4 * c.abs().max(1.0),
                "{tag}: {v} vs {c}"
            );
        }
    }

    // Resume: the memory comes back, so training goes on without a new --learning-starts.
    let out = common
        .clone()
        .checkpoint(last)
        .frames(last + 6000)
        .succeeds("resumed dqn learner", Duration::from_secs(300));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("loading the replay memory"), "{stdout}");
    let after = metrics_rows(&dir);
    let resumed = &after[before.len()..];
    let first_size: u64 = resumed[0]["replay_size"].parse().unwrap();
    assert_eq!(
        first_size, 2000,
        "the restored memory is full: {:?}",
        resumed[0]
    );

    // Without the file, the memory starts empty and says so.
    let newest = *async_rl::checkpoint::list(&dir).last().unwrap();
    std::fs::remove_file(async_rl::checkpoint::replay_path_for(&dir, newest)).unwrap();
    let (_, out) = common
        .checkpoint(newest)
        .frames(newest + 2000)
        .output(Duration::from_secs(300));
    assert_ok("resumed dqn learner without a memory", &out);
    assert!(
        text(&out.stdout).contains("the replay memory starts empty"),
        "{}",
        text(&out.stdout)
    );

    // play needs nothing but the (dueling) checkpoint.
    let model =
        async_rl::checkpoint::path_for(&dir, *async_rl::checkpoint::list(&dir).last().unwrap());
    let (_, out) = run(
        PLAY,
        &["--model", model.to_str().unwrap(), "--episodes", "1"],
        tmp.path(),
        Duration::from_secs(300),
    );
    assert_ok("play of a dqn checkpoint", &out);
    assert!(text(&out.stdout).contains("1 episodes: mean"));
}

/// Runs the learner with `args` (CartPole, in `dir`) and returns its stderr, asserting that
/// it refused to start (exit 2) without a panic.
fn refused(dir: &Path, args: &[&str]) -> String {
    // (The device left to its default.)
    let (pid, out) = Run::cartpole(dir)
        .without("--device")
        .flags(args)
        .output(Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_clean(pid);
    err
}

#[test]
fn bad_replay_settings_are_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = refused(d, &["--algorithm", "dqn", "--replay-size", "10"]);
    assert!(
        err.contains("--replay-size 10: smaller than a batch"),
        "{err}"
    );
    let err = refused(d, &["--algorithm", "dqn", "--replay-ratio", "0"]);
    assert!(err.contains("--replay-ratio 0"), "{err}");
    let err = refused(d, &["--prioritized"]);
    assert!(
        err.contains("--prioritized: only --algorithm dqn reads it"),
        "{err}"
    );
    // A dqn setting given to another rule would be ignored: refused instead.
    let err = refused(d, &["--algorithm", "sarsa", "--target-update", "100"]);
    assert!(
        err.contains("--target-update: only --algorithm dqn reads it"),
        "{err}"
    );
    assert!(
        !d.join("run").exists(),
        "nothing may start on invalid input"
    );
    // A checkpoint trained with another rule.
    std::fs::create_dir(d.join("run")).unwrap();
    untrained_checkpoint(&d.join("run"), "CartPole");
    let err = refused(d, &["--checkpoint", "1000", "--algorithm", "dqn"]);
    assert!(
        err.contains("trained with --algorithm q; this run asks for --algorithm dqn"),
        "{err}"
    );
    let err = refused(d, &["--checkpoint", "1000", "--dueling"]);
    assert!(err.contains("trained with --dueling false"), "{err}");
    let err = refused(d, &["--checkpoint", "1000", "--optimizer", "adam"]);
    assert!(
        err.contains("trained with --optimizer rmsprop; this run asks for --optimizer adam"),
        "{err}"
    );
}
