//! Stopping a run from outside: SIGINT, SIGTERM and SIGHUP finish with a checkpoint, a second
//! SIGINT stops at once; a SIGKILLed learner takes its actors with it, and the next learner
//! removes the segments it left.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::*;

/// Starts a long learner run in `dir` and waits until its actors produce (a metrics row with
/// frames; rows are written from the start, before the actors are ready).
fn start_learner(dir: &std::path::Path) -> std::process::Child {
    let child = Run::learner(dir)
        .processes(2)
        .flag("--device", "cpu")
        .logdir("run")
        .flag("--log-interval", "0.5")
        .frames(100_000_000)
        .flag("--save-freq", 5000)
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped()) // little: the progress lines go to stdout
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let metrics = dir.join("run/metrics.csv");
    let produced = || {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let last = text.lines().skip(1).last().unwrap_or("");
        last.split(',').nth(1).and_then(|f| f.parse::<u64>().ok()) > Some(0)
    };
    while !produced() {
        assert!(
            Instant::now() < deadline,
            "the learner produced no metrics within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn wait_with_limit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the learner did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to a running learner: it must exit 0 with a final checkpoint and leave no
/// actor and no segment behind.
fn stops_cleanly_on(signal: Signal) {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = start_learner(tmp.path());
    let pid = child.id();
    assert_eq!(actors_of(pid).len(), 2);
    let sent = Instant::now();
    kill(Pid::from_raw(pid as i32), signal).unwrap();
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    println!(
        "{signal}: the learner exited {:?} after the signal",
        sent.elapsed()
    );
    assert!(status.success(), "{signal}: {status}");
    // scripts/results tells a stop from outside by this line (the exit code is 0 either way).
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let said = format!(
        "signal {}: stopping after a final checkpoint",
        signal as i32
    );
    assert!(err.contains(&said), "{signal}: no '{said}' in\n{err}");
    assert!(
        !async_rl::checkpoint::list(&tmp.path().join("run")).is_empty(),
        "{signal}: no final checkpoint"
    );
    assert_clean(pid);
}

#[test]
fn sigint_stops_with_a_final_checkpoint_and_leaves_nothing() {
    stops_cleanly_on(Signal::SIGINT);
}

#[test]
fn sigterm_stops_the_same_way() {
    stops_cleanly_on(Signal::SIGTERM);
}

#[test]
fn sighup_from_a_closed_terminal_stops_the_same_way() {
    stops_cleanly_on(Signal::SIGHUP);
}

#[test]
fn a_second_sigint_stops_at_once_and_still_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = start_learner(tmp.path());
    let pid = child.id();
    assert_eq!(actors_of(pid).len(), 2);
    let sent = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    // Apart, so the kernel cannot merge them into one pending signal; well inside the time a
    // stop with a final checkpoint takes (see the SIGINT test's printed time).
    std::thread::sleep(Duration::from_millis(20));
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let status = wait_with_limit(&mut child, Duration::from_secs(10));
    println!(
        "two SIGINTs: the learner exited {:?} after them",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{status}");
    assert_clean(pid);
}

#[test]
fn killed_learner_takes_its_actors_and_the_next_resumes_from_the_latest_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = start_learner(tmp.path());
    let pid = child.id();
    let actors = actors_of(pid);
    assert_eq!(actors.len(), 2);
    let run_dir = tmp.path().join("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while async_rl::checkpoint::list(&run_dir).is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    let _ = child.wait();
    while !actors_of(pid).is_empty() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "actors {:?} outlived their learner by 5 s",
            actors_of(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "actors exited {:?} after the learner's SIGKILL",
        killed_at.elapsed()
    );
    assert!(
        !segments_of(pid).is_empty(),
        "a SIGKILLed learner cannot unlink; expected leftovers to reclaim"
    );
    // The newest checkpoint may be one the kill interrupted; `latest` takes the newest good one.
    let newest = *async_rl::checkpoint::list(&run_dir).last().unwrap();
    let (next, out) = Run::learner(tmp.path())
        .processes(1)
        .flag("--device", "cpu")
        .logdir("run")
        .checkpoint("latest")
        .frames(newest + 3000)
        .output(Duration::from_secs(120));
    assert_ok("next learner", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("resuming from run/model-{newest}.safetensors")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("resumed at {newest} frames")),
        "{stdout}"
    );
    // (Another test's learner may have reclaimed them first: the check is that they are gone.)
    assert_eq!(
        segments_of(pid),
        Vec::<String>::new(),
        "the dead learner's segments survive the next start"
    );
    assert_clean(next);
}

/// SIGINT to the learner and to every actor's process group (as a terminal's Ctrl-C would
/// reach them) stops a run on a Gymnasium environment as cleanly as an Atari one: the Python
/// workers ignore SIGINT, the run exits 0 with a checkpoint, and no actor, Python worker or
/// segment is left.
#[test]
fn sigint_stops_a_gymnasium_run_cleanly() {
    if gym_python("sigint_stops_a_gymnasium_run").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("sigint-gym-{}", std::process::id());
    let mut learner = Run::game(tmp.path(), "gymnasium:CartPole-v1")
        .flag("--network", "mlp")
        .processes(2)
        .flag("--envs-per-actor", 2)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .env("ASYNC_RL_TEST_TAG", &tag)
        .start("learner");
    let pid = learner.child.id();
    // The learner, its 2 actors and their 4 Python workers, and frames in metrics.csv.
    let metrics = tmp.path().join("run/metrics.csv");
    let produced = || {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let last = text.lines().skip(1).last().unwrap_or("");
        last.split(',').nth(1).and_then(|f| f.parse::<u64>().ok()) > Some(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while processes_with_env("ASYNC_RL_TEST_TAG", &tag).len() < 7 || !produced() {
        assert!(Instant::now() < deadline, "{}", learner.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    for actor in actors_of(pid) {
        // Each actor leads its own process group, which its workers share.
        let _ = kill(Pid::from_raw(-(actor as i32)), Signal::SIGINT);
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let status = learner.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", learner.logs());
    let logs = learner.logs();
    assert!(
        !logs.contains("failed") && !logs.contains("KeyboardInterrupt"),
        "no worker died of the SIGINT:\n{logs}"
    );
    assert!(
        !async_rl::checkpoint::list(&tmp.path().join("run")).is_empty(),
        "a final checkpoint"
    );
    assert_clean(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with_env("ASYNC_RL_TEST_TAG", &tag).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_with_env("ASYNC_RL_TEST_TAG", &tag),
        Vec::<u32>::new(),
        "no actor or Python worker survives the run"
    );
}
