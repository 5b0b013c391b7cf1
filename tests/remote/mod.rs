//! Remote actor hosts on loopback: a learner with `--listen` and hosts with `--connect`, each in
//! its own process group. Training with hosts (mixed with local actors, and all remote),
//! counting frames once, a host killed mid-run, a learner killed and resumed, refused tokens
//! and certificates, garbage on the port, and a fault-injecting TCP proxy between a host and
//! the learner. Here: training with hosts and the helpers; `auth.rs`: tokens, TLS and what is
//! refused before a session; `hostile.rs`: hostile and faulty connections; `slurm.rs`: the
//! sbatch script.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

mod auth;
mod hostile;
mod slurm;

const LIMIT: Duration = Duration::from_secs(120);

/// The frame count of the newest checkpoint in `run_dir`.
fn checkpoint_frames(run_dir: &Path) -> u64 {
    *async_rl::checkpoint::list(run_dir)
        .last()
        .unwrap_or_else(|| panic!("no checkpoint in {}", run_dir.display()))
}

/// The rows of `hosts.csv` as maps from column to field (none before the first row).
fn host_rows(run_dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    csv_rows(&run_dir.join("hosts.csv"))
}

/// An actor host for the learner at `addr` (one actor process unless `extra` says
/// `--processes`).
fn host(dir: &Path, addr: &str, what: &str, extra: &[&str]) -> Proc {
    Run::learner(dir)
        .flag("--connect", addr)
        .processes(1)
        .flags(extra)
        .start(what)
}

fn assert_exit_ok(p: &mut Proc) {
    let status = p.wait(LIMIT);
    assert!(
        status.success(),
        "{} exited with {status}\n{}",
        p.what,
        p.logs()
    );
}

/// Two hosts of one process each and one local actor train `game` to `frames`; both hosts
/// are counted and exit when the run is finished.
fn trains_with_two_hosts(game: &str, frames: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::game(dir, game)
        .processes(1)
        .frames(frames)
        .flag("--log-interval", "0.5")
        .logdir(&logdir)
        .listen("learner");
    let mut a = host(dir, &addr, "host-a", &[]);
    let mut b = host(dir, &addr, "host-b", &[]);
    assert_exit_ok(&mut learner);
    for h in [&mut a, &mut b] {
        assert_exit_ok(h);
        assert!(
            h.stdout().contains("the learner finished the run"),
            "{}",
            h.logs()
        );
        let (played, _, acked) = host_summary(h);
        assert!(
            acked > 0 && acked <= played,
            "{}: acked {acked}, played {played}",
            h.what
        );
    }
    let rows = host_rows(&logdir);
    let hosts: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts.len(), 2, "hosts.csv: {rows:?}");
    let metrics = metrics_rows(&logdir);
    assert!(
        metrics.iter().any(|r| r["remote_hosts"] == "2"),
        "no metrics row with both hosts connected: {metrics:?}"
    );
    assert!(
        rows.iter().any(|r| r["bytes_per_transition"]
            .parse::<f64>()
            .is_ok_and(|b| b > 0.0)),
        "{rows:?}"
    );
    assert!(checkpoint_frames(&logdir) >= frames);
    assert_clean(learner.child.id());
}

#[test]
fn cartpole_trains_with_two_remote_hosts_and_a_local_actor() {
    trains_with_two_hosts("CartPole", 60_000);
}

#[test]
fn breakout_trains_with_two_remote_hosts_and_a_local_actor() {
    trains_with_two_hosts("Breakout", 20_000);
}

/// With every actor remote, the learner's frames (its newest checkpoint's in `run_dir`) are
/// the hosts' acked frames at least and the frames they played at most, and its games at most
/// the games they played: nothing counted twice, nothing made up.
fn check_counted_once(run_dir: &Path, hosts: &[&Proc]) {
    let (mut played, mut games, mut acked) = (0, 0, 0);
    for h in hosts {
        let (p, g, a) = host_summary(h);
        played += p;
        games += g;
        acked += a;
    }
    let frames = checkpoint_frames(run_dir);
    assert!(
        acked <= frames && frames <= played,
        "learner counted {frames} frames; hosts played {played}, had {acked} acked"
    );
    let path = async_rl::checkpoint::path_for(run_dir, frames);
    let episodes = async_rl::checkpoint::load(&path).unwrap().state.episodes;
    assert!(
        episodes > 0 && episodes <= games,
        "learner counted {episodes} games; hosts played {games}"
    );
}

#[test]
fn all_remote_frames_are_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(50_000)
        .logdir(&logdir)
        .listen("learner");
    let mut a = host(dir, &addr, "host-a", &["--processes", "2"]);
    let mut b = host(dir, &addr, "host-b", &[]);
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut a);
    assert_exit_ok(&mut b);
    check_counted_once(&logdir, &[&a, &b]);
}

#[test]
fn a_killed_host_is_noticed_and_training_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(400_000)
        .flag("--log-interval", "0.5")
        .logdir(&logdir)
        .listen("learner");
    let mut a = host(dir, &addr, "host-a", &[]);
    let mut b = host(dir, &addr, "host-b", &[]);
    learner.wait_for("joined with", 2, LIMIT);
    a.wait_for("joined the learner", 1, LIMIT);
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    a.kill_group();
    learner.wait_for(" left: ", 1, Duration::from_secs(15));
    eprintln!(
        "the learner noticed the killed host after {:?}",
        killed.elapsed()
    );
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut b);
    let (_, _, acked_b) = host_summary(&b);
    assert!(acked_b > 0);
    // Host b trained on after host a was gone: frames kept coming.
    let rows = host_rows(&logdir);
    let last_b = rows.iter().rev().find(|r| r["connected"] == "1").unwrap();
    assert!(last_b["fps"].parse::<f64>().unwrap() >= 0.0);
    assert!(checkpoint_frames(&logdir) >= 400_000);
}

/// A free loopback port (bound and released; the learner takes it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_killed_and_resumed_learner_is_rejoined_by_its_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let listen = format!("127.0.0.1:{}", free_port());
    let run = Run::cartpole(dir)
        .processes(0)
        .flag("--listen", &listen)
        .flag("--save-freq", 20_000)
        .logdir(&logdir);
    let mut learner = run.clone().frames(100_000_000).start("learner-1");
    learner.wait_for("listening for actor hosts", 1, LIMIT);
    let mut h = host(dir, &listen, "host", &[]);
    h.wait_for("joined the learner", 1, LIMIT);
    learner.wait_for("saved ", 1, LIMIT);
    learner.kill_group();
    let resumed_at = checkpoint_frames(&logdir);
    h.wait_for("reconnecting in", 1, Duration::from_secs(20));
    let mut learner2 = run.frames(150_000).checkpoint("latest").start("learner-2");
    learner2.wait_for("joined with", 1, Duration::from_secs(60));
    h.wait_for("is a new run (restarted)", 1, Duration::from_secs(60));
    assert_exit_ok(&mut learner2);
    assert_exit_ok(&mut h);
    assert!(
        learner2
            .stdout()
            .contains(&format!("resumed at {resumed_at} frames")),
        "{}",
        learner2.logs()
    );
    assert!(checkpoint_frames(&logdir) >= 150_000);
}

/// Writes a token file `dir/name` holding `secret`, the owner's alone (mode 600).
fn token_file(dir: &Path, name: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, written as
/// `<name>-ca.pem`, `<name>-cert.pem` and `<name>-key.pem` in `dir`.
fn certificates(dir: &Path, name: &str) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}
