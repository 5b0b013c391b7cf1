use std::path::{Path, PathBuf};

use super::settle_resumed;
use crate::config::Config;

fn config(flags: &[&str]) -> Config {
    Config::from_flags(flags.iter().copied()).unwrap()
}

#[test]
fn a_checkpoints_paths_are_reported_and_its_logdir_never_adopted() {
    let ckpt = Path::new("downloaded.safetensors");
    let was = config(&[
        "--game",
        "Pong",
        "--logdir",
        "/home/someone/runs/pong",
        "--rom",
        "/home/someone/roms/pong.bin",
    ]);
    // Nothing given: the merged config holds the checkpoint's paths, as merge leaves them.
    let mut cfg = was.clone();
    let lines = settle_resumed(&mut cfg, &was, |_| false, ckpt);
    assert_eq!(
        cfg.run.logdir, None,
        "the recorded run directory is not adopted"
    );
    assert_eq!(cfg.run_dir(), PathBuf::from("runs/Pong"));
    assert_eq!(
        cfg.run.rom.as_deref(),
        Some(Path::new("/home/someone/roms/pong.bin"))
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("--logdir /home/someone/runs/pong")
            && lines[0].contains("writes to runs/Pong")
            && lines[0].contains("downloaded.safetensors"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("--rom /home/someone/roms/pong.bin from the checkpoint"),
        "{lines:?}"
    );

    // Both given: what was given stands, and nothing is said.
    let mut cfg = config(&["--game", "Pong", "--logdir", "mine", "--rom", "pong.bin"]);
    let lines = settle_resumed(&mut cfg, &was, |k| k == "logdir" || k == "rom", ckpt);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(cfg.run_dir(), PathBuf::from("mine"));
    assert_eq!(cfg.run.rom.as_deref(), Some(Path::new("pong.bin")));

    // A checkpoint without paths: nothing to say.
    let plain = config(&["--game", "Pong"]);
    let mut cfg = plain.clone();
    assert!(settle_resumed(&mut cfg, &plain, |_| false, ckpt).is_empty());
}

#[test]
fn a_resumed_run_keeps_where_its_rmsprop_started_and_says_so_when_asked_for_another() {
    let ckpt = Path::new("model-100.safetensors");
    let was = config(&["--game", "Pong", "--rms-initial-square-avg", "1"]);
    let key = |k: &str| k == "rms-initial-square-avg";
    // Another start given (on the command line or in --config): the run keeps and records the
    // checkpoint's, and a line names both.
    let mut cfg = config(&["--game", "Pong", "--rms-initial-square-avg", "0"]);
    let lines = settle_resumed(&mut cfg, &was, key, ckpt);
    assert_eq!(cfg.optim.rms_initial_square_avg, 1.0);
    let [line] = &lines[..] else {
        panic!("one line expected: {lines:?}")
    };
    assert!(
        line.contains("model-100.safetensors")
            && line.contains("--rms-initial-square-avg 0 only sets where v starts in a new run")
            && line.contains("started from 1"),
        "{line}"
    );
    // The same start given, or none: nothing to say, and the checkpoint's stands.
    let mut cfg = config(&["--game", "Pong", "--rms-initial-square-avg", "1"]);
    assert!(settle_resumed(&mut cfg, &was, key, ckpt).is_empty());
    let mut cfg = config(&["--game", "Pong"]);
    assert!(settle_resumed(&mut cfg, &was, |_| false, ckpt).is_empty());
    assert_eq!(cfg.optim.rms_initial_square_avg, 1.0);
}
