//! Remote actor hosts on loopback: a learner with `--listen` and hosts with `--connect`, each in
//! its own process group. Training with hosts (mixed with local actors, and all remote),
//! counting frames once, a host killed mid-run, a learner killed and resumed, refused tokens
//! and certificates, garbage on the port, and a fault-injecting TCP proxy between a host and
//! the learner.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;

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

#[test]
fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("token"), "the-right-secret\n").unwrap();
    std::fs::write(dir.join("wrong"), "a-wrong-secret").unwrap();
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(1)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .listen("learner");
    let mut wrong = host(dir, &addr, "wrong", &["--auth-token-file", "wrong"]);
    let status = wrong.wait(LIMIT);
    assert_eq!(status.code(), Some(1), "{}", wrong.logs());
    assert!(wrong.stderr().contains("wrong token"), "{}", wrong.logs());
    let mut none = host(dir, &addr, "none", &[]);
    assert_eq!(none.wait(LIMIT).code(), Some(1), "{}", none.logs());
    assert!(
        none.stderr().contains("requires a token"),
        "{}",
        none.logs()
    );
    learner.wait_for("refused a host", 2, Duration::from_secs(10));
    // The right token joins.
    let mut right = host(dir, &addr, "right", &["--auth-token-file", "token"]);
    right.wait_for("joined the learner", 1, LIMIT);
    learner.kill_group();
    right.kill_group();
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

#[test]
fn tls_and_mutual_tls_admit_the_right_certificates_and_refuse_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certificates(dir, "server");
    certificates(dir, "client");
    certificates(dir, "other");
    // TLS: a host trusting the learner's CA trains; one trusting another CA is refused.
    let tls = Run::cartpole(dir)
        .processes(0)
        .frames(30_000)
        .flag("--tls-cert", "server-cert.pem")
        .flag("--tls-key", "server-key.pem");
    let (mut learner, addr) = tls.listen("learner");
    let mut other = host(dir, &addr, "other-ca", &["--tls-ca", "other-ca.pem"]);
    assert_eq!(other.wait(LIMIT).code(), Some(1), "{}", other.logs());
    assert!(other.stderr().contains("TLS"), "{}", other.logs());
    let mut good = host(dir, &addr, "good", &["--tls-ca", "server-ca.pem"]);
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut good);
    // Mutual TLS: a host without a client certificate, or with one of another CA, is refused;
    // one signed by the learner's --tls-ca trains.
    let (mut learner, addr) = tls
        .flag("--tls-ca", "client-ca.pem")
        .logdir("run-mtls")
        .listen("learner-mtls");
    for (what, extra) in [
        ("no-client-cert", vec!["--tls-ca", "server-ca.pem"]),
        (
            "foreign-client-cert",
            vec![
                "--tls-ca",
                "server-ca.pem",
                "--tls-cert",
                "other-cert.pem",
                "--tls-key",
                "other-key.pem",
            ],
        ),
    ] {
        let mut h = host(dir, &addr, what, &extra);
        assert_eq!(h.wait(LIMIT).code(), Some(1), "{}", h.logs());
        assert!(h.stderr().contains("TLS"), "{}", h.logs());
    }
    // The learner says why too.
    learner.wait_for("refused a TLS connection", 1, Duration::from_secs(10));
    let mut good = host(
        dir,
        &addr,
        "client-cert",
        &[
            "--tls-ca",
            "server-ca.pem",
            "--tls-cert",
            "client-cert.pem",
            "--tls-key",
            "client-key.pem",
        ],
    );
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut good);
}

#[test]
fn garbage_half_open_connections_and_bad_messages_leave_the_learner_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(60_000)
        .logdir(&logdir)
        .listen("learner");
    // Random bytes, an HTTP/2 preface followed by junk, and connections that say nothing.
    let mut idle = Vec::new();
    for k in 0..20u8 {
        let mut s = TcpStream::connect(&addr).unwrap();
        match k % 3 {
            0 => {
                let junk: Vec<u8> = (0..4096u32)
                    .map(|i| (i * 7919 + u32::from(k)) as u8)
                    .collect();
                let _ = s.write_all(&junk);
            }
            1 => {
                let _ = s.write_all(
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\xff\x04\x00\x00\x00\x00\x00garbage",
                );
            }
            _ => {}
        }
        idle.push(s);
    }
    // A gRPC client that says hello properly and then sends an experience message whose
    // slot names an action the game does not have: refused, the learner goes on.
    let refusal = bad_experience_is_refused(&addr);
    assert!(refusal.contains("action"), "{refusal}");
    let mut h = host(dir, &addr, "host", &[]);
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut h);
    assert!(
        learner.stdout().contains("left: slot 0: action 7"),
        "{}",
        learner.logs()
    );
    drop(idle);
}

/// Speaks the protocol to the learner at `addr` and sends a bad slot; returns the learner's
/// refusal.
fn bad_experience_is_refused(addr: &str) -> String {
    use async_rl::remote::pb::actor_link_client::ActorLinkClient;
    use async_rl::remote::wire::{down, up, Experience, Hello, Up};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = ActorLinkClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = Hello {
            protocol: async_rl::remote::PROTOCOL_VERSION,
            build: async_rl::remote::BUILD.into(),
            host_id: 42,
            name: "fake".into(),
            processes: 1,
            run_id: 0,
        };
        tx.send(Up {
            kind: Some(up::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        let mut down = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let welcome = match down.message().await.unwrap().unwrap().kind {
            Some(down::Kind::Welcome(w)) => w,
            other => panic!("{other:?}"),
        };
        // A CartPole transition slot: action 7 of 2.
        let mut slot = vec![0u8; welcome.slot_bytes as usize];
        slot[0] = 7;
        let e = Experience {
            seq: 1,
            frames: 4,
            slots: 1,
            payload: lz4_flex::block::compress(&slot),
            ..Default::default()
        };
        tx.send(Up {
            kind: Some(up::Kind::Experience(e)),
        })
        .await
        .unwrap();
        loop {
            match down.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "closed without a reason".to_string(),
                Err(status) => return status.message().to_string(),
            }
        }
    })
}

/// A TCP proxy that delays every chunk, can stall and can cut every connection.
struct Proxy {
    addr: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stalled: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl Proxy {
    fn start(upstream: String, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stalled = Arc::new(AtomicBool::new(false));
        let (c, s) = (conns.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            std::thread::sleep(delay);
                            while s.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            conns,
            stalled,
            cuts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Cuts every open connection mid-stream.
    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn through_a_faulty_network_training_goes_on_and_nothing_is_counted_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .logdir(&logdir)
        .listen("learner");
    let proxy = Proxy::start(addr.clone(), Duration::from_millis(20));
    let mut a = host(dir, &proxy.addr, "host-proxied", &[]);
    let mut b = host(dir, &addr, "host-direct", &[]);
    a.wait_for("joined the learner", 1, LIMIT);
    // Cut the proxied host's connection mid-stream three times, and stall it once for longer
    // than the heartbeat timeout.
    for k in 1..=3 {
        std::thread::sleep(Duration::from_secs(2));
        proxy.cut();
        a.wait_for("joined the learner", k + 1, Duration::from_secs(60));
    }
    // A stall is a network cut without a FIN: only heartbeats notice it (ours, or HTTP/2's
    // keep-alive pings, whichever times out first).
    let count = |p: &Proc, needle: &str| {
        format!("{}\n{}", p.stdout(), p.stderr())
            .matches(needle)
            .count()
    };
    let (left, retried) = (count(&learner, " left: "), count(&a, "reconnecting in"));
    proxy.stalled.store(true, Ordering::SeqCst);
    let stalled = Instant::now();
    let line = learner.wait_for(" left: ", left + 1, Duration::from_secs(15));
    eprintln!(
        "the learner noticed the stalled host after {:?}: {line}",
        stalled.elapsed()
    );
    let line = a.wait_for("reconnecting in", retried + 1, Duration::from_secs(15));
    eprintln!(
        "the host noticed the stalled learner after {:?}: {line}",
        stalled.elapsed()
    );
    proxy.stalled.store(false, Ordering::SeqCst);
    a.wait_for("joined the learner", 5, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    // Stop the learner with SIGINT: it saves, tells the hosts, and they wait for it to come
    // back; stop them too, each with its summary.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(learner.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_exit_ok(&mut learner);
    for h in [&mut a, &mut b] {
        h.wait_for("waiting for it to come back", 1, Duration::from_secs(20));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        assert_exit_ok(h);
    }
    check_counted_once(&logdir, &[&a, &b]);
    let rows = host_rows(&logdir);
    let reconnects: u32 = rows
        .iter()
        .map(|r| r["reconnects"].parse().unwrap())
        .max()
        .unwrap();
    assert!(reconnects >= 4, "{rows:?}");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 3);
}

/// Stops the one-node Slurm cluster when dropped.
struct LocalSlurm(std::path::PathBuf);

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0).arg("stop").output();
    }
}

/// deploy/slurm/async-rl.sbatch submitted for real to a one-node Slurm cluster on this machine
/// (deploy/slurm/local-cluster): the learner and an actor host train CartPole and the job
/// ends when the run does. Needs root and Slurm (`apt-get install -y slurm-wlm munge`, which
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
    assert!(log.contains("joined with 1 actor processes"), "{log}");
    assert!(log.contains("reached --max-frames 40000"), "{log}");
    assert!(log.contains("the learner finished the run"), "{log}");
    assert!(checkpoint_frames(&run) >= 40_000);
}
