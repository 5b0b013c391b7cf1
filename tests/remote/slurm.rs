//! The sbatch script on a one-node Slurm cluster made by the test.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// Stops the one-node Slurm cluster when dropped.
struct LocalSlurm(std::path::PathBuf);

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0).arg("stop").output();
    }
}

/// deploy/slurm/async-rl.sbatch submitted for real to a one-node Slurm cluster on this machine
/// (deploy/slurm/local-cluster): the learner and an actor host train CartPole over TLS (the
/// job's self-signed certificate) and the job ends when the run does. Needs root and Slurm (`apt-get install -y slurm-wlm munge`, which
/// scripts/test tries) and a machine where its daemons start; without them it says SKIPPED
/// and why, and checks nothing.
#[test]
fn the_sbatch_script_trains_on_a_one_node_slurm_cluster() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let have = |b: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !have("sbatch") || !have("slurmd") || !have("munged") {
        eprintln!("SKIPPED: no Slurm here (needs root and apt-get install -y slurm-wlm munge)");
        return;
    }
    let cluster = repo.join("deploy/slurm/local-cluster");
    let started = std::process::Command::new(&cluster)
        .arg("start")
        .output()
        .unwrap();
    let _stop = LocalSlurm(cluster.clone());
    if !started.status.success() {
        // Where Slurm is installed but its daemons cannot run (a container without the
        // privileges slurmd wants, say), there is no cluster to submit to.
        eprintln!(
            "SKIPPED: could not start a one-node Slurm cluster here: {}",
            text(&started.stderr)
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bin = Path::new(LEARNER).parent().unwrap();
    let run = dir.join("run");
    let exports = format!(
        "ALL,ASYNC_RL_GAME=CartPole,ASYNC_RL_BIN={},ASYNC_RL_LOGDIR={},ASYNC_RL_PORT={},ASYNC_RL_ACTOR_PROCESSES=1",
        bin.display(),
        run.display(),
        free_port()
    );
    let submit = std::process::Command::new("sbatch")
        .args(["--parsable", "--nodes=1", "--time=10"])
        .arg(format!("--chdir={}", dir.display()))
        .arg(format!("--output={}/slurm-%j.out", dir.display()))
        .arg(format!("--export={exports}"))
        .arg(repo.join("deploy/slurm/async-rl.sbatch"))
        .env("ASYNC_RL_LEARNER_FLAGS", "--max-frames 40000 --device cpu")
        .output()
        .unwrap();
    assert!(submit.status.success(), "sbatch: {}", text(&submit.stderr));
    let job = text(&submit.stdout).trim().to_string();
    let out = dir.join(format!("slurm-{job}.out"));
    let t0 = Instant::now();
    loop {
        let q = std::process::Command::new("squeue")
            .args(["-h", "-j", &job])
            .output()
            .unwrap();
        if text(&q.stdout).trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "job {job} still queued or running after 300 s\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    eprintln!("Slurm job {job} took {:?}", t0.elapsed());
    // Off loopback, with the job's self-signed certificate, pinned by the host.
    assert!(log.contains("TLS: a self-signed certificate"), "{log}");
    assert!(log.contains("remote lanes, token, TLS)"), "{log}");
    assert!(log.contains("joined with 1 actor processes"), "{log}");
    assert!(log.contains("reached --max-frames 40000"), "{log}");
    assert!(log.contains("the learner finished the run"), "{log}");
    assert!(checkpoint_frames(&run) >= 40_000);
}
