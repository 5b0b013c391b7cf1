//! Bad input: clear errors naming the input, before anything starts; never a panic.

use std::time::Duration;

use crate::util::*;

#[test]
fn invalid_flags_are_all_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = run(
        LEARNER,
        &[
            "--processes",
            "0",
            "--n-step",
            "0",
            "--batch-size",
            "512",
            "--game",
            "SpaceInvader",
            "--logdir",
            "x",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for needle in [
        "--processes 0",
        "--n-step 0",
        "--batch-size 512",
        "SpaceInvaders",
        "--list-games",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !tmp.path().join("x").exists(),
        "nothing may start on invalid input"
    );
    assert_clean(pid);
}

#[test]
fn missing_checkpoint_lists_the_ones_that_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, out) = run(
        LEARNER,
        &["--checkpoint", "1250000", "--logdir", "nowhere"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("model-1250000.safetensors") && err.contains("no checkpoints"),
        "{err}"
    );
}

#[test]
fn play_refuses_what_is_not_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    for (path, needle) in [
        (junk.to_str().unwrap(), "not a readable checkpoint"),
        ("missing.pt", "no such file"),
    ] {
        let (_, out) = run(
            PLAY,
            &["--model", path],
            tmp.path(),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(needle) && err.contains(path), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn config_file_values_apply_and_unknown_keys_fail() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "n-step = 5\nprocesess = 3\n").unwrap();
    let (_, out) = run(
        LEARNER,
        &["--config", "bad.toml"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("unknown key `procesess`"),
        "{err}"
    );
    assert!(
        err.contains("valid keys") && err.contains("processes"),
        "{err}"
    );
}

#[test]
fn device_cuda_without_cuda_fails_before_starting() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: this machine has an NVIDIA GPU");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = run(
        LEARNER,
        &["--device", "cuda", "--processes", "1", "--logdir", "run"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--device cuda: CUDA is not usable"), "{err}");
    assert!(!tmp.path().join("run").exists(), "nothing may be created");
    assert_clean(pid);
    // A GPU by index, and a device that is none.
    let (_, out) = run(
        LEARNER,
        &["--device", "cuda:1", "--processes", "1", "--logdir", "run"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--device cuda:1: CUDA is not usable"),
        "{}",
        text(&out.stderr)
    );
    let (_, out) = run(
        LEARNER,
        &["--device", "gpu", "--logdir", "run"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expected auto, cpu, cuda or cuda:N"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("run").exists(), "nothing may be created");
}

#[test]
fn inference_flags_that_cannot_work_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], code: i32, needles: &[&str]| {
        // (The device left to its default.)
        let (pid, out) = Run::cartpole(tmp.path())
            .without("--device")
            .processes(1)
            .flags(args)
            .output(Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert!(!tmp.path().join("run").exists(), "nothing may be created");
        assert_clean(pid);
    };
    refused(
        &["--inference", "learner", "--listen", "127.0.0.1:0"],
        2,
        &["--inference learner with --listen", "use --inference actor"],
    );
    refused(
        &["--inference", "actor", "--inference-device", "cpu"],
        2,
        &["--inference-device cpu: only with --inference learner"],
    );
    refused(
        &["--inference-wait-us", "0"],
        2,
        &["--inference-wait-us 0: must be between 1 and 1000000"],
    );
    refused(
        &["--inference", "gpu"],
        2,
        &["'gpu'", "actor", "learner", "auto"],
    );
    if !std::path::Path::new("/dev/nvidia0").exists() {
        refused(
            &["--inference", "learner", "--inference-device", "cuda:1"],
            1,
            &["--inference-device cuda:1: "],
        );
    }
}

#[test]
fn divergence_stops_the_run_and_the_last_good_checkpoint_stays_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Run::cartpole(tmp.path()).processes(1);
    // A healthy run leaves a good checkpoint...
    base.clone()
        .frames(5000)
        .succeeds("healthy run", Duration::from_secs(60));
    let dir = tmp.path().join("run");
    let good = async_rl::checkpoint::list(&dir);
    assert_eq!(good.len(), 1, "{good:?}");
    // ...which a resumed run with an absurd learning rate diverges from.
    let (pid, out) = base
        .checkpoint("latest")
        .flag("--lr", "1e30")
        .frames(500_000)
        .output(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("training diverged at")
            && err.contains("the update was not applied")
            && err.contains("not saving a final checkpoint"),
        "{err}"
    );
    assert_eq!(
        async_rl::checkpoint::list(&dir),
        good,
        "the diverged run wrote a checkpoint"
    );
    let ckpt = async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&dir, good[0])).unwrap();
    for (name, t) in &ckpt.params {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{name} is not finite"
        );
    }
    assert_clean(pid);
}

#[test]
fn a_new_run_uses_the_games_tuned_config_and_says_so_unless_told_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("configs")).unwrap();
    std::fs::write(
        tmp.path().join("configs/cartpole.toml"),
        "game = \"CartPole\"\nprocesses = 1\ngamma = 0.5\nmax-frames = 3000\n",
    )
    .unwrap();
    let out = Run::cartpole(tmp.path())
        .logdir("tuned")
        .succeeds("tuned run", Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "using configs/cartpole.toml, the tuned config for CartPole with --algorithm q (--config none for the built-in defaults)"
        ),
        "{stdout}"
    );
    let saved = std::fs::read_to_string(tmp.path().join("tuned/config.toml")).unwrap();
    assert!(
        saved.contains("gamma = 0.5") && saved.contains("max-frames = 3000"),
        "{saved}"
    );

    // --config none: the built-in defaults, with the flags given.
    let out = Run::cartpole(tmp.path())
        .flag("--config", "none")
        .processes(1)
        .frames(2000)
        .logdir("plain")
        .succeeds("untuned run", Duration::from_secs(60));
    assert!(
        !text(&out.stdout).contains("using configs/"),
        "{}",
        text(&out.stdout)
    );
    let saved = std::fs::read_to_string(tmp.path().join("plain/config.toml")).unwrap();
    assert!(
        saved.contains("gamma = 0.99") && saved.contains("max-frames = 2000"),
        "{saved}"
    );
}

#[test]
fn list_games_names_the_bundled_games_and_cartpole() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, out) = run(
        LEARNER,
        &["--list-games"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_ok("--list-games", &out);
    let names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    for game in ["CartPole", "Breakout", "Pong", "SpaceInvaders"] {
        assert!(names.iter().any(|n| n == game), "{game} missing: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.ends_with("(needs --rom)")),
        "games without a bundled ROM are marked: {names:?}"
    );
}

#[test]
fn rom_files_are_checked_before_ale_sees_them_and_must_agree_with_game() {
    let tmp = tempfile::tempdir().unwrap();
    let learner = |extra: &[&str]| {
        let (pid, out) = Run::learner(tmp.path())
            .processes(1)
            .flag("--device", "cpu")
            .logdir("run")
            .flags(extra)
            .output(Duration::from_secs(60));
        assert_clean(pid);
        (out.status.code(), text(&out.stderr))
    };
    // Missing, and too small to be an Atari ROM (ALE would exit(1) on it).
    let (code, err) = learner(&["--rom", "nowhere/pong.bin"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--rom: ROM file nowhere/pong.bin does not exist"),
        "{err}"
    );
    std::fs::write(tmp.path().join("pong.bin"), [0u8; 100]).unwrap();
    let (code, err) = learner(&["--rom", "pong.bin"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--rom: ROM file pong.bin is 100 bytes; Atari 2600 ROMs are between"),
        "{err}"
    );
    // A real ROM with a --game that names another game is refused, not silently overridden.
    let pong = async_rl::game::bundled_rom("pong").unwrap();
    std::fs::write(tmp.path().join("pong.bin"), pong).unwrap();
    let (code, err) = learner(&["--rom", "pong.bin", "--game", "Breakout"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--game Breakout and --rom pong.bin: the ROM plays Pong; give --game Pong"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists(), "nothing may start");
}

/// Niceness of process `pid` (field 19 of /proc/<pid>/stat).
fn nice_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

#[test]
fn actors_run_at_the_niceness_asked_for() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Run::cartpole(tmp.path())
        .processes(2)
        .frames(100_000_000)
        .flag("--actor-nice", 7)
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let want = (nice_of(pid).unwrap() + 7).min(19);
    // Actors lower their priority right after the handshake.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let nices = loop {
        let actors = actors_of(pid);
        let nices: Vec<Option<i32>> = actors.iter().map(|a| nice_of(*a)).collect();
        if actors.len() == 2 && nices.iter().all(|n| *n == Some(want)) {
            break nices;
        }
        if std::time::Instant::now() > deadline {
            break nices;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(nices, vec![Some(want); 2], "actors' niceness");
    assert!(status.success(), "{status}");
    assert_clean(pid);
}

#[test]
fn malformed_numbers_say_what_a_valid_value_looks_like() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            &["--eps-decay", "4M"][..],
            "invalid value '4M' for '--eps-decay <EPS_DECAY>': expected a whole number",
        ),
        (
            &["--lr", "fast"][..],
            "invalid value 'fast' for '--lr <LR>': expected a number (e.g. 0.99 or 7e-4)",
        ),
    ] {
        let (pid, out) = run(LEARNER, args, tmp.path(), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_clean(pid);
    }
    let (_, out) = run(LEARNER, &["--help"], tmp.path(), Duration::from_secs(60));
    assert_ok("--help", &out);
    assert!(text(&out.stdout).contains("--actor-nice"));
}

#[test]
fn negative_numbers_are_values_refused_by_name_not_unknown_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let (pid, out) = run(
        LEARNER,
        &["--game", "CartPole", "--lr", "-1", "--logdir", "x"],
        tmp.path(),
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--lr -1: must be a positive number"), "{err}");
    assert_clean(pid);
    let (_, out) = run(
        PLAY,
        &["--model", "m.pt", "--epsilon", "-0.5"],
        tmp.path(),
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--epsilon -0.5: must be in [0, 1]"), "{err}");
}

#[test]
fn a_resumed_checkpoint_from_another_run_directory_writes_here_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    Run::cartpole(tmp.path())
        .processes(1)
        .logdir("first")
        .frames(3000)
        .succeeds("first run", Duration::from_secs(60));
    let saved = async_rl::checkpoint::list(&first);
    let last = *saved.last().unwrap();
    // The run directory copied elsewhere, as to another machine: its checkpoints record
    // `--logdir first`.
    let copy = tmp.path().join("runs/CartPole");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&first).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    // Resumed without --logdir: it writes where it found the checkpoint, and says so.
    let out = Run::cartpole(tmp.path())
        .processes(1)
        .without("--logdir")
        .checkpoint("latest")
        .frames(last + 3000)
        .succeeds("resumed run", Duration::from_secs(60));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("it was trained with --logdir first; this run writes to runs/CartPole"),
        "{stdout}"
    );
    assert_eq!(
        async_rl::checkpoint::list(&first),
        saved,
        "the recorded run directory was written to"
    );
    assert!(
        async_rl::checkpoint::list(&copy).last() > Some(&last),
        "no new checkpoint in the run directory"
    );
}

/// `--print-config` prints the settings a run would train with: the game's tuned config (and
/// the file it extends), then the flags, merged and validated, as TOML that `--config` reads
/// back (the settings of other rules and of the other optimizer left out, as a file that
/// sets them is refused). It trains nothing and creates no run directory, and it refuses what a run refuses.
#[test]
fn print_config_shows_the_merged_settings_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("configs/sub")).unwrap();
    std::fs::write(
        tmp.path().join("configs/sub/base.toml"),
        "gamma = 0.5\neval-every = 30_000\nlr = 1e-3\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("configs/cartpole.toml"),
        "extends = \"sub/base.toml\"\ngame = \"CartPole\"\nprocesses = 1\n",
    )
    .unwrap();
    let out = Run::cartpole(tmp.path())
        .flag("--lr", "0.002")
        .switch("--print-config")
        .succeeds("--print-config", Duration::from_secs(60));
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with("# using configs/cartpole.toml, the tuned config for CartPole"),
        "{printed}"
    );
    let cfg: toml::Table = printed.parse().expect("--print-config prints TOML");
    assert_eq!(cfg["gamma"].as_float(), Some(0.5), "from the base file");
    assert_eq!(cfg["eval-every"].as_integer(), Some(30_000), "{printed}");
    assert_eq!(
        cfg["processes"].as_integer(),
        Some(1),
        "from the tuned file"
    );
    assert_eq!(
        cfg["lr"].as_float(),
        Some(0.002),
        "the flag wins: {printed}"
    );
    assert_eq!(cfg["algorithm"].as_str(), Some("q"), "a default: {printed}");
    assert!(
        !cfg.contains_key("extends"),
        "merged, not a chain: {printed}"
    );
    // Only what this run reads: not dqn's replay, not Adam's betas.
    assert!(
        !cfg.contains_key("replay-size") && !cfg.contains_key("adam-beta1"),
        "{printed}"
    );
    assert!(cfg.contains_key("rms-decay"), "{printed}");
    assert!(
        !tmp.path().join("run").exists(),
        "--print-config created the run directory"
    );

    // What it prints is a config file that gives the same settings back.
    std::fs::write(tmp.path().join("printed.toml"), &printed).unwrap();
    let again = Run::cartpole(tmp.path())
        .flag("--config", "printed.toml")
        .switch("--print-config")
        .succeeds(
            "--print-config of the printed file",
            Duration::from_secs(60),
        );
    let again: toml::Table = text(&again.stdout).parse().unwrap();
    assert_eq!(again, cfg);

    // A setting a run would refuse is refused here, by name, with the input error's code.
    let (pid, out) = Run::cartpole(tmp.path())
        .flag("--gamma", "1.5")
        .switch("--print-config")
        .output(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--gamma"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_clean(pid);
}
