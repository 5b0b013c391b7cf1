//! Faults a long run must survive, each injected for real: actors SIGKILLed, panicking or
//! exiting the way ALE does; the restart bound; a disk that fills up while saving; a run
//! directory that cannot be created.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::*;

/// A learner on CartPole (fast to start and step) logging every half second, in `dir`.
fn cartpole(dir: &Path) -> Run {
    Run::cartpole(dir).flag("--log-interval", "0.5")
}

/// Frame counts of the metrics rows written so far.
fn metric_frames(run_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(run_dir.join("metrics.csv"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(1)?.parse().ok())
        .collect()
}

#[test]
fn sigkilled_actor_is_replaced_and_training_goes_on() {
    sigkill_each_actor(&[]);
}

/// With `--inference learner` the actors wait on the learner's inference server: a killed
/// actor, perhaps in the middle of a request, must not wedge it for the others or its
/// replacement, and the server's counters must show it batching.
#[test]
fn sigkilled_actor_does_not_wedge_the_inference_server() {
    let run_dir = sigkill_each_actor(&["--inference", "learner"]);
    let rows = metrics_rows(&run_dir.path());
    let batches: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["inference_batch"].parse().ok())
        .collect();
    assert!(!batches.is_empty(), "no inference_batch in metrics.csv");
    assert!(
        batches.iter().all(|b| (1.0..=2.0).contains(b)),
        "a pass holds 1 to 2 observations (2 actors): {batches:?}"
    );
}

/// SIGKILLs each of two actors of a CartPole run in turn (with `extra` flags) and checks that
/// each is replaced, with a fresh seed, and that training goes on; returns the run directory
/// (`run` inside the returned temporary directory).
fn sigkill_each_actor(extra: &[&str]) -> RunDir {
    let tmp = tempfile::tempdir().unwrap();
    let mut learner = cartpole(tmp.path())
        .processes(2)
        .frames(100_000_000)
        .flags(extra)
        .start("learner");
    let pid = learner.child.id();
    learner.wait_for("frames ", 2, Duration::from_secs(60));
    let victims = actors_of(pid);
    assert_eq!(victims.len(), 2, "{}", learner.stdout());
    let mut detected = Vec::new();
    for (round, victim) in victims.iter().enumerate() {
        kill(Pid::from_raw(*victim as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        learner.wait_for("restarted it with seed", round + 1, Duration::from_secs(10));
        detected.push(killed.elapsed());
        let log = learner.stdout();
        assert!(
            log.contains("(signal: 9 (SIGKILL))"),
            "the log names how the actor died:\n{log}"
        );
        assert!(log.contains(&format!("restart {} of --max-actor-restarts 10", round + 1)));
        // Two actors again, the dead one among neither.
        let t0 = Instant::now();
        while actors_of(pid).len() != 2 || actors_of(pid).contains(victim) {
            assert!(t0.elapsed() < Duration::from_secs(10), "no replacement");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Fresh seeds: neither replacement repeats an original actor's seed, nor each other's.
    let log = learner.stdout();
    let seeds: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split("restarted it with seed ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    let originals: Vec<u64> = (0..2).map(|i| async_rl::ipc::actor_seed(0, i, 0)).collect();
    assert_eq!(seeds.len(), 2, "{log}");
    assert!(
        seeds.iter().all(|s| !originals.contains(s)) && seeds[0] != seeds[1],
        "replacement seeds {seeds:?}, original {originals:?}"
    );
    // Training goes on: frames keep growing in the metrics after the restarts.
    let before = *metric_frames(&tmp.path().join("run")).last().unwrap();
    let t0 = Instant::now();
    while *metric_frames(&tmp.path().join("run")).last().unwrap() < before + 20_000 {
        assert!(t0.elapsed() < Duration::from_secs(30), "training stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let status = learner.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", learner.stderr());
    assert!(!async_rl::checkpoint::list(&tmp.path().join("run")).is_empty());
    assert_clean(pid);
    println!("SIGKILLed actor detected and replaced in {detected:?} ({extra:?})");
    RunDir(tmp)
}

/// A finished run's directory (`run` in a temporary directory, removed on drop).
struct RunDir(tempfile::TempDir);

impl RunDir {
    fn path(&self) -> PathBuf {
        self.0.path().join("run")
    }
}

/// Every actor fails at its 300th step in the way `kind` says; with one actor and a bound of
/// 2, the third failure stops the run with a checkpoint and an error that says why.
fn restarts_are_bounded(kind: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let fault = format!("{kind}@300");
    let mut learner = cartpole(tmp.path())
        .processes(1)
        .frames(100_000_000)
        .flag("--max-actor-restarts", 2)
        .env(async_rl::actor::FAULT_ENV, &fault)
        .start("learner");
    let pid = learner.child.id();
    let status = learner.wait(Duration::from_secs(60));
    let (out, err) = (learner.stdout(), learner.stderr());
    assert_eq!(status.code(), Some(1), "{kind}: {status}\n{out}\n{err}");
    assert_eq!(
        out.matches("restarted it with seed").count(),
        2,
        "{kind}:\n{out}"
    );
    assert!(
        err.contains("after 2 restart(s); --max-actor-restarts 2 reached"),
        "{kind}:\n{err}"
    );
    if kind == "error" {
        assert!(out.contains("actor 0 failed: injected error"), "{out}");
    }
    let saved = async_rl::checkpoint::list(&tmp.path().join("run"));
    assert_eq!(saved.len(), 1, "{kind}: a final checkpoint\n{out}");
    async_rl::checkpoint::load(&async_rl::checkpoint::path_for(
        &tmp.path().join("run"),
        saved[0],
    ))
    .unwrap();
    // Three actor lives of 300 steps each reached the learner.
    assert!(saved[0] >= 600, "{kind}: {saved:?}");
    assert_clean(pid);
}

#[test]
fn panicking_actor_is_restarted_up_to_the_bound() {
    restarts_are_bounded("panic");
}

#[test]
fn actor_exiting_like_ale_is_restarted_up_to_the_bound() {
    restarts_are_bounded("exit");
}

#[test]
fn actor_error_is_reported_and_restarted_up_to_the_bound() {
    restarts_are_bounded("error");
}

#[test]
fn malformed_fault_spec_is_an_error_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut learner = cartpole(tmp.path())
        .processes(1)
        .frames(100_000_000)
        .flag("--max-actor-restarts", 0)
        .env(async_rl::actor::FAULT_ENV, "explode@3")
        .start("learner");
    let status = learner.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    let out = learner.stdout();
    assert!(
        out.contains("expected panic@N, exit@N or error@N"),
        "{out}\n{}",
        learner.stderr()
    );
}

/// Mounts a tmpfs of `kib` KiB at `dir`; false where mounting is not permitted (not root, or
/// no CAP_SYS_ADMIN in a container).
fn mount_tmpfs(dir: &Path, kib: u32) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn full_disk_while_saving_stops_with_the_older_checkpoints_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    // Room for three CartPole checkpoints (43 KB each) and the logs, not for a fourth.
    if !mount_tmpfs(&disk, 160) {
        // CI runs as root, where this must not be skipped silently.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: mounting a tmpfs failed, so the full-disk test cannot run"
        );
        eprintln!("skipped: mounting a tmpfs is not permitted here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    // (Its outputs go to files in tmp, not on the disk it fills.)
    let mut learner = cartpole(tmp.path())
        .logdir("disk/run")
        .processes(1)
        .flag("--save-freq", 5000)
        .frames(100_000_000)
        .start("learner");
    let pid = learner.child.id();
    let status = learner.wait(Duration::from_secs(120));
    let err = learner.stderr();
    assert_eq!(status.code(), Some(1), "{status}\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let run_dir = disk.join("run");
    let saved = async_rl::checkpoint::list(&run_dir);
    assert!(!saved.is_empty(), "{}", learner.stdout());
    // The save that failed names its file, left no temporary file, and every checkpoint that
    // is there loads.
    assert!(err.contains("checkpoint disk/run/model-"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    for f in &saved {
        async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&run_dir, *f)).unwrap();
    }
    assert_clean(pid);
}

#[test]
fn uncreatable_logdir_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("afile"), b"").unwrap();
    let (_, out) = Run::cartpole(tmp.path())
        .logdir("afile/run")
        .output(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--logdir afile/run: cannot create the run directory"),
        "{err}"
    );
}

#[test]
fn latest_skips_a_damaged_newest_checkpoint_and_a_missing_one_lists_those_there() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Run::cartpole(tmp.path()).processes(1);
    let (_, out) = base
        .clone()
        .frames(12_000)
        .flag("--save-freq", 5000)
        .output(Duration::from_secs(60));
    assert_ok("first run", &out);
    let run_dir = tmp.path().join("run");
    let saved = async_rl::checkpoint::list(&run_dir);
    assert!(saved.len() >= 2, "{saved:?}");

    let (_, out) = base.clone().checkpoint(777).output(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let listed: Vec<String> = saved.iter().map(|f| f.to_string()).collect();
    assert!(
        err.contains("run/model-777.safetensors: no such file")
            && err.contains(&format!(
                "checkpoints in the run directory: {}",
                listed.join(", ")
            )),
        "{err}"
    );

    // Damage the newest (a flipped byte in its data): `latest` says so and takes the one before.
    let newest = async_rl::checkpoint::path_for(&run_dir, saved[saved.len() - 1]);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&newest, &bytes).unwrap();
    let previous = saved[saved.len() - 2];
    let out = base
        .checkpoint("latest")
        .frames(previous + 3000)
        .succeeds("resumed run", Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains(&format!(
            "warning: --checkpoint latest: skipping checkpoint {}",
            newest.strip_prefix(tmp.path()).unwrap().display()
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("resuming from run/model-{previous}.safetensors")),
        "{stdout}"
    );
}

#[test]
fn a_full_disk_behind_stdout_does_not_take_the_run_down() {
    let tmp = tempfile::tempdir().unwrap();
    let full = || File::options().write(true).open("/dev/full").unwrap();
    let status = Run::cartpole(tmp.path())
        .processes(1)
        .frames(3000)
        .flag("--log-interval", "0.1")
        .command()
        .stdin(Stdio::null())
        .stdout(full())
        .stderr(full())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(async_rl::checkpoint::list(&tmp.path().join("run")).len(), 1);
}

#[test]
fn a_checkpoint_of_another_game_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    untrained_checkpoint(&run_dir, "CartPole");
    let (pid, out) = Run::breakout(tmp.path())
        .processes(1)
        .checkpoint("latest")
        .output(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--checkpoint run/model-1000.safetensors: trained on CartPole (mlp network)")
            && err.contains("this run is Breakout (resume with --game CartPole"),
        "{err}"
    );
    assert!(
        !run_dir.join("metrics.csv").exists(),
        "the refused run started"
    );
    assert_clean(pid);
}

#[test]
fn keep_checkpoints_keeps_only_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    Run::cartpole(tmp.path())
        .processes(1)
        .frames(12_000)
        .flag("--save-freq", 2000)
        .flag("--keep-checkpoints", 2)
        .succeeds("run", Duration::from_secs(60));
    let saved = async_rl::checkpoint::list(&tmp.path().join("run"));
    // Six or more saves (every 2,000 frames and a final one), of which the newest two stay.
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert!(saved[1] >= 12_000 && saved[0] >= 10_000, "{saved:?}");
}

/// A learner whose pid a killed learner had before finds that one's segments under its own
/// name: it removes them and starts, rather than failing to create its own. (`exec` keeps the
/// shell's pid, so the shell can leave segments under the learner's pid-to-be.)
#[test]
fn segments_left_under_this_learners_own_pid_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        "for k in queue snapshot; do head -c 4096 /dev/zero > /dev/shm/async-rl-$$-$k; done; \
         exec {LEARNER} --game CartPole --processes 1 --device cpu --logdir run --max-frames 3000"
    );
    let (pid, out) = run("sh", &["-c", &script], tmp.path(), Duration::from_secs(60));
    assert_ok("learner under a reused pid", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("async-rl-{pid}-queue")),
        "the removal is logged: {stdout}"
    );
    assert_clean(pid);
}

/// A Python (Gymnasium) environment whose `step` raises at step 50 of every episode: each
/// failure reaches the learner's log with the environment, the step and Python's traceback,
/// the actor is restarted as any failed actor is, and the third failure stops the run with
/// that message; no actor, Python worker or segment is left.
#[test]
fn a_python_environment_that_raises_is_reported_with_its_traceback_and_restarted() {
    let test = "a_python_environment_that_raises";
    if gym_python(test).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("{}-{}", test, std::process::id());
    let game = "gymnasium:async_rl_test_envs:Faulty-late-v0";
    let mut learner = Run::game(tmp.path(), game)
        .flag("--network", "mlp")
        .processes(1)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .flag("--max-actor-restarts", 2)
        .env("PYTHONPATH", gym_fixtures().to_str().unwrap())
        .env("ASYNC_RL_TEST_TAG", &tag)
        .start("learner");
    let pid = learner.child.id();
    let status = learner.wait(Duration::from_secs(120));
    let (out, err) = (learner.stdout(), learner.stderr());
    assert_eq!(status.code(), Some(1), "{status}\n{out}\n{err}");
    let failure = format!("actor 0 failed: {game}: step 50 of the episode: Traceback");
    assert_eq!(out.matches(&failure).count(), 3, "{out}\n{err}");
    assert!(
        out.contains("RuntimeError: the test environment breaks at step 50"),
        "{out}"
    );
    assert_eq!(out.matches("restarted it with seed").count(), 2, "{out}");
    assert!(
        err.contains("--max-actor-restarts 2 reached; the last error: actor 0 failed: ")
            && err.contains("RuntimeError: the test environment breaks at step 50"),
        "the message that stops the run says why:\n{err}"
    );
    assert_clean(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with_env("ASYNC_RL_TEST_TAG", &tag).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_with_env("ASYNC_RL_TEST_TAG", &tag),
        Vec::<u32>::new(),
        "no actor or Python worker of the run survives it"
    );
}
