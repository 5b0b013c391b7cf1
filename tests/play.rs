//! `play` for people: GIF recording, the evaluation protocol and its report, and the errors of
//! its flags. Models are untrained checkpoints written in no time (`untrained_checkpoint`).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_rl::env::{self, ale::NTSC_PALETTE};
use async_rl::{config::Config, eval, recording};

use crate::util::*;

fn play(args: &[&str], cwd: &Path) -> std::process::Output {
    run(PLAY, args, cwd, Duration::from_secs(300)).1
}

fn json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn record_writes_the_first_game_as_a_gif_in_its_own_colours() {
    let tmp = tempfile::tempdir().unwrap();
    let model = untrained_checkpoint(tmp.path(), "Breakout");
    let out = play(
        &[
            "--model",
            model.to_str().unwrap(),
            "--episodes",
            "1",
            "--seed",
            "4",
            "--record",
            "out.gif",
            "--record-frames",
            "20",
        ],
        tmp.path(),
    );
    assert_ok("play --record", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("recorded 20 frames of game 1 to out.gif"),
        "{stdout}"
    );
    assert!(
        stdout.contains("episode 1: score"),
        "not a terminal: plain lines\n{stdout}"
    );

    let (w, h, frames) = recording::decode(&tmp.path().join("out.gif")).unwrap();
    assert_eq!((w, h, frames.len()), (160, 210, 20));
    // At the game's speed: 20 agent steps of 4 frames at 60 frames/s.
    let centis: u32 = frames.iter().map(|f| u32::from(f.delay)).sum();
    assert_eq!(centis, 133);
    let palette: HashSet<[u8; 3]> = NTSC_PALETTE
        .iter()
        .map(|c| {
            let b = c.to_be_bytes();
            [b[1], b[2], b[3]]
        })
        .collect();
    for f in &frames {
        assert!(f.rgb.chunks_exact(3).all(|p| palette.contains(p)));
    }
    // The first frame is the screen after the reset, exactly: the same game, seed and settings.
    let cfg = Config::from_flags(["--game", "Breakout"]).unwrap();
    let settings = eval::play_settings(&cfg.env_settings(4), false);
    let mut e = env::make(&cfg.env_id().unwrap(), &settings).unwrap();
    e.reset().unwrap();
    let mut screen = vec![0u8; 160 * 210 * 3];
    e.screen_rgb(&mut screen).unwrap();
    assert!(
        frames[0].rgb == screen,
        "the first frame is not the game's screen"
    );
    // Breakout's grey side wall, left edge, below the score.
    assert_eq!(&frames[0].rgb[3 * (100 * 160)..][..3], [142, 142, 142]);
}

#[test]
fn eval_plays_the_protocol_and_writes_its_report_next_to_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = untrained_checkpoint(tmp.path(), "CartPole");
    let m = model.to_str().unwrap();
    let out = play(&["--model", m, "--eval", "--episodes", "3"], tmp.path());
    assert_ok("play --eval", &out);
    let stdout = text(&out.stdout);
    for needle in [
        "standard protocol: 3 games, epsilon 0.05, up to 30 no-op frames, sticky actions 0",
        "episode 3: score",
        "3 episodes: mean",
        "median",
        "model-1000.eval.json",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }
    let r = json(&tmp.path().join("model-1000.eval.json"));
    assert_eq!(r["protocol"], "standard");
    assert_eq!(r["game"], "CartPole");
    assert_eq!(r["frames_trained"], 1000);
    assert_eq!(
        (r["epsilon"].as_f64(), r["noop_max"].as_u64()),
        (Some(0.05), Some(30))
    );
    assert_eq!(r["repeat_action_probability"], 0.0);
    assert_eq!(r["episodes"], 3);
    let scores: Vec<f64> = r["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    let stats = eval::Stats::of(&scores).unwrap();
    // serde_json reads floats to within an ulp.
    for (key, want) in [
        ("mean", stats.mean),
        ("median", stats.median),
        ("std", stats.std),
        ("min", stats.min),
        ("max", stats.max),
    ] {
        let got = r[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{key}: {got} != {want}");
    }
    let frames: u64 = r["episode_frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_u64().unwrap())
        .sum();
    assert_eq!(r["frames"].as_u64(), Some(frames));

    // A report that cannot be written: the scores are printed first, the error names the path.
    std::fs::remove_file(tmp.path().join("model-1000.eval.json")).unwrap();
    std::fs::create_dir(tmp.path().join("model-1000.eval.json")).unwrap();
    let out = play(&["--model", m, "--eval", "--episodes", "2"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("2 episodes: mean"));
    let err = text(&out.stderr);
    assert!(
        err.contains("model-1000.eval.json") && err.contains("not saved"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn eval_with_sticky_actions_on_breakout() {
    let tmp = tempfile::tempdir().unwrap();
    let model = untrained_checkpoint(tmp.path(), "Breakout");
    let out = play(
        &[
            "--model",
            model.to_str().unwrap(),
            "--eval",
            "--sticky",
            "--episodes",
            "1",
        ],
        tmp.path(),
    );
    assert_ok("play --eval --sticky", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("sticky protocol: 1 games") && stdout.contains("sticky actions 0.25"),
        "{stdout}"
    );
    let r = json(&tmp.path().join("model-1000.eval-sticky.json"));
    assert_eq!(r["protocol"], "sticky");
    assert_eq!(r["repeat_action_probability"], 0.25);
    assert_eq!(
        (r["noop_max"].as_u64(), r["episodes"].as_u64()),
        (Some(30), Some(1))
    );
    assert_eq!(r["max_episode_frames"], 108_000);
}

#[test]
fn bad_play_flags_are_all_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = play(
        &[
            "--model",
            "m.pt",
            "--fps",
            "0",
            "--episodes",
            "0",
            "--epsilon",
            "2",
            "--record-every",
            "0",
            "--record-frames",
            "3",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    for needle in [
        "--fps 0: must be a number in (0, 1000]",
        "--episodes 0: must be at least 1",
        "--epsilon 2: must be in [0, 1]",
        "--record-every 0: must be at least 1",
        "--record-frames: only applies with --record PATH",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    let out = play(&["--model", "m.pt", "--render", "colour"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--render") && err.contains("auto, terminal, none"),
        "{err}"
    );
}

#[test]
fn screens_and_sticky_actions_need_a_game_that_has_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cartpole = untrained_checkpoint(tmp.path(), "CartPole");
    let m = cartpole.to_str().unwrap();
    for (args, needle) in [
        (
            &["--render", "terminal"][..],
            "--render terminal: CartPole has no screen to show",
        ),
        (
            &["--record", "c.gif"][..],
            "--record c.gif: CartPole has no screen to record",
        ),
        (
            &["--sticky"][..],
            "--sticky: CartPole has no sticky actions",
        ),
    ] {
        let mut all = vec!["--model", m];
        all.extend(args);
        let out = play(&all, tmp.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!tmp.path().join("c.gif").exists());
    // `auto` on a game without a screen: plain lines.
    let out = play(
        &["--model", m, "--episodes", "1", "--render", "auto"],
        tmp.path(),
    );
    assert_ok("play CartPole", &out);
    assert!(text(&out.stdout).contains("episode 1: score"));

    // A GIF that cannot be written fails before the game, naming the flag and the path.
    let breakout_dir = tmp.path().join("b");
    std::fs::create_dir(&breakout_dir).unwrap();
    let breakout = untrained_checkpoint(&breakout_dir, "Breakout");
    let out = play(
        &[
            "--model",
            breakout.to_str().unwrap(),
            "--record",
            "no/such/dir/x.gif",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--record no/such/dir/x.gif") && err.contains("cannot create"),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("episode"), "no game was played");
}

#[test]
fn render_terminal_draws_the_screen_with_a_status_line_and_none_prints_lines_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = untrained_checkpoint(tmp.path(), "Breakout");
    let m = model.to_str().unwrap();
    // Random play (epsilon 1) ends a game of Breakout within a few hundred agent steps.
    let base = [
        "--model",
        m,
        "--episodes",
        "1",
        "--epsilon",
        "1",
        "--seed",
        "3",
    ];
    let mut args = base.to_vec();
    args.extend(["--render", "terminal", "--fps", "1000"]);
    let started = std::time::Instant::now();
    let out = play(&args, tmp.path());
    let took = started.elapsed();
    assert_ok("play --render terminal", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("\x1b[38;2;") && stdout.contains("\x1b[48;2;") && stdout.contains('▀'),
        "no 24-bit colour half blocks drawn"
    );
    assert!(
        stdout.contains("Breakout  game 1/1  score ") && stdout.contains("  1000 fps  "),
        "no status line"
    );
    // The line follows the picture (and the escape codes that give the terminal back).
    let line = stdout
        .lines()
        .find(|l| l.contains("episode 1: score"))
        .unwrap();
    let summary = &line[line.find("episode 1: score").unwrap()..];
    // The game's frame count, from the summary line: at 1000 pictures/s (one per agent step of
    // 4 frames) drawing must take at least frames / 4 milliseconds.
    let frames: u64 = summary
        .split("frames ")
        .nth(1)
        .map(|s| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {summary:?}"));
    assert!(
        took >= Duration::from_millis(frames / 4),
        "{frames} frames drawn in {took:?}: not paced"
    );

    let mut args = base.to_vec();
    args.extend(["--render", "none"]);
    let out = play(&args, tmp.path());
    assert_ok("play --render none", &out);
    let plain = text(&out.stdout);
    assert!(!plain.contains('\x1b') && !plain.contains('▀'), "{plain}");
    assert!(
        plain.contains(summary),
        "the same game, as a line:\n{plain}"
    );
}

/// A Gymnasium environment's checkpoint (a short A3C run of `gymnasium:CartPole-v1`) plays,
/// evaluates, and records a GIF of its `rgb_array` screen (600x400 for classic control).
#[test]
fn a_gymnasium_checkpoint_plays_evaluates_and_records() {
    if gym_python("a_gymnasium_checkpoint_plays").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cartpole-v1-a3c.toml");
    Run::learner(tmp.path())
        .flag("--config", config.to_str().unwrap())
        .flag("--max-frames", 3000)
        .flag("--device", "cpu")
        .logdir("run")
        .succeeds("learner", Duration::from_secs(120));
    let saved = async_rl::checkpoint::list(&tmp.path().join("run"));
    let model = async_rl::checkpoint::path_for(&tmp.path().join("run"), *saved.last().unwrap());
    let model = model.to_str().unwrap();
    let out = play(
        &[
            "--model",
            model,
            "--episodes",
            "1",
            "--record",
            "cp.gif",
            "--record-frames",
            "5",
        ],
        tmp.path(),
    );
    assert_ok("play --record", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("recorded 5 frames of game 1 to cp.gif"),
        "{stdout}"
    );
    let (w, h, frames) = recording::decode(&tmp.path().join("cp.gif")).unwrap();
    assert_eq!((w, h, frames.len()), (600, 400, 5));
    assert!(
        frames[0].rgb.chunks_exact(3).any(|p| p != [255, 255, 255]),
        "the cart and pole are drawn"
    );
    let out = play(&["--model", model, "--eval", "--episodes", "3"], tmp.path());
    assert_ok("play --eval", &out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3 episodes: mean"), "{stdout}");
}
