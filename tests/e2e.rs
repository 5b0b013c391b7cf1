//! End to end on real Breakout: train with 2 actors, resume, play.

use std::time::Duration;

use crate::util::*;

fn checkpoints(dir: &std::path::Path) -> Vec<u64> {
    async_rl::checkpoint::list(dir)
}

fn metrics_frames(dir: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv exists");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    for col in [
        "wall_s",
        "frames",
        "steps",
        "updates",
        "episodes",
        "fps",
        "mean_return",
        "epsilon",
        "loss",
        "q_mean",
    ] {
        assert!(
            header.contains(&col),
            "metrics.csv lacks column {col}: {header:?}"
        );
    }
    lines
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn train_resume_and_play_breakout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let common = Run::breakout(tmp.path())
        .processes(2)
        .logdir(&dir)
        .flag("--log-interval", 1)
        .flag("--sync-frames", 2000)
        .flag("--save-freq", 10_000)
        .seed(3);

    // 1. Train for about 20,000 frames.
    common
        .clone()
        .frames(20_000)
        .succeeds("learner", Duration::from_secs(300));
    let saved = checkpoints(&dir);
    let last = *saved
        .last()
        .unwrap_or_else(|| panic!("no checkpoint in {}", dir.display()));
    assert!(
        last >= 20_000,
        "final checkpoint at {last} frames: {saved:?}"
    );
    assert!(
        saved.iter().any(|f| (10_000..20_000).contains(f)),
        "a periodic checkpoint at 10,000+: {saved:?}"
    );
    let rows = metrics_frames(&dir);
    assert!(!rows.is_empty(), "metrics.csv has rows");
    assert!(dir.join("config.toml").is_file());

    // 2. Resume: the frame count continues from the checkpoint.
    let out = common
        .checkpoint(last)
        .frames(last + 8000)
        .succeeds("resumed learner", Duration::from_secs(300));
    assert!(
        text(&out.stdout).contains(&format!("resumed at {last} frames")),
        "{}",
        text(&out.stdout)
    );
    let resumed = *checkpoints(&dir).last().unwrap();
    assert!(
        resumed >= last + 8000,
        "resumed run ended at {resumed}, started at {last}"
    );
    let new_rows: Vec<u64> = metrics_frames(&dir).into_iter().skip(rows.len()).collect();
    assert!(!new_rows.is_empty(), "the resumed run appended metrics");
    assert!(
        new_rows.iter().all(|f| *f >= last),
        "resumed metrics restart from 0: {new_rows:?}"
    );

    // 3. Play a whole game with the checkpoint alone.
    let model = async_rl::checkpoint::path_for(&dir, resumed);
    let (_, out) = run(
        PLAY,
        &["--model", model.to_str().unwrap(), "--episodes", "1"],
        tmp.path(),
        Duration::from_secs(300),
    );
    assert_ok("play", &out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("episode 1: score"), "{stdout}");
    assert!(stdout.contains("1 episodes: mean"), "{stdout}");

    // 4. A truncated checkpoint is refused with a clear error.
    let bytes = std::fs::read(&model).unwrap();
    let cut = tmp.path().join("truncated.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (_, out) = run(
        PLAY,
        &["--model", cut.to_str().unwrap()],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("truncated.pt") && !err.contains("panicked"),
        "{err}"
    );
}
