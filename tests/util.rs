//! Helpers shared by the integration tests: running the binaries with a time limit, and
//! checking that a run left no actor process and no shared-memory segment behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LEARNER: &str = env!("CARGO_BIN_EXE_learner");
pub const PLAY: &str = env!("CARGO_BIN_EXE_play");

/// Runs `bin args` to completion within `limit` (killed and failed past it); returns its pid
/// and output.
pub fn run(bin: &str, args: &[&str], cwd: &Path, limit: Duration) -> (u32, Output) {
    let child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = waiter.join().unwrap().unwrap();
            panic!(
                "{bin} {args:?} ran past {limit:?}\nstdout:\n{}\nstderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (pid, waiter.join().unwrap().unwrap())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the run succeeded, printing its output otherwise.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Pids of live actor processes started by learner `pid` (their command line names it).
pub fn actors_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(text).collect();
        if args.get(1).map(String::as_str) == Some("__actor")
            && args.get(3) == Some(&pid.to_string())
        {
            found.push(p);
        }
    }
    found
}

/// Shared-memory segments of learner `pid` still in /dev/shm.
pub fn segments_of(pid: u32) -> Vec<String> {
    let prefix = format!("async-rl-{pid}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that learner `pid` left nothing behind (children get a moment to die).
pub fn assert_clean(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !actors_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        actors_of(pid),
        Vec::<u32>::new(),
        "actor processes of learner {pid} survive it"
    );
    assert_eq!(
        segments_of(pid),
        Vec::<String>::new(),
        "segments of learner {pid} left in /dev/shm"
    );
}

/// Writes a checkpoint of an untrained network for `game` (`Breakout` or `CartPole`) as
/// `dir/model-1000.pt`, in no time: for tests of `play` that need a model, not a good one.
pub fn untrained_checkpoint(dir: &Path, game: &str) -> std::path::PathBuf {
    use async_rl::checkpoint::{self, TrainingState, FORMAT_VERSION};
    use async_rl::config::{Config, Network};
    use async_rl::env::ObsSpec;
    use async_rl::model::QNetwork;
    let (network, obs, num_actions) = match game {
        "CartPole" => (Network::Mlp, ObsSpec::Vector(4), 2),
        "Breakout" => (Network::Nips, ObsSpec::Frames([4, 84, 84]), 4),
        other => panic!("no untrained checkpoint for {other}"),
    };
    let model = QNetwork::new(network, obs, num_actions, tch::Device::Cpu);
    let state = TrainingState {
        format_version: FORMAT_VERSION,
        game: game.to_string(),
        network,
        num_actions,
        obs,
        frames: 1000,
        steps: 250,
        updates: 0,
        episodes: 0,
        wall_s: 0.0,
        config: Config {
            game: game.to_string(),
            ..Config::default()
        },
    };
    let rmsprop: Vec<tch::Tensor> = model.params().iter().map(|(_, p)| p.zeros_like()).collect();
    let path = checkpoint::path_for(dir, 1000);
    checkpoint::save(&path, &state, model.params(), &rmsprop, &[]).unwrap();
    path
}

/// The metrics.csv rows of run directory `dir` as maps from column name to field.
pub fn metrics_rows(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}
