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

/// Writes a token file `dir/name` holding `secret`, the owner's alone (mode 600).
fn token_file(dir: &Path, name: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    token_file(dir, "token", "the-right-secret\n");
    token_file(dir, "wrong", "a-wrong-secret");
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

/// With TLS, --handshake-timeout bounds the handshake (a peer that opens TCP and says
/// nothing) and what follows it (a peer that completes the handshake and then says nothing):
/// both are closed at the deadline, each with a line saying why.
#[test]
fn with_tls_silent_connections_are_closed_at_the_handshake_deadline() {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio_rustls::rustls::{crypto::ring, ClientConfig, RootCertStore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certificates(dir, "server");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--tls-cert", "server-cert.pem")
        .flag("--tls-key", "server-key.pem")
        .flag("--handshake-timeout", 1)
        .listen("learner");
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    // A TLS client that completes the handshake and sends nothing more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (closed_after, tls_open_for) = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(dir.join("server-ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config =
            ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the TLS handshake");
        let handshaken = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a silent TLS connection still open after 6 s"
        );
        (t0.elapsed(), handshaken.elapsed())
    });
    eprintln!("a silent TLS connection was closed {closed_after:?} after it opened");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "{closed_after:?} (open {tls_open_for:?} after its handshake)"
    );
    assert!(closed_within(&mut silent, Duration::from_secs(3)));
    learner.wait_for(
        "no TLS handshake within 1s (--handshake-timeout)",
        1,
        Duration::from_secs(5),
    );
    learner.wait_for(
        "no authenticated request within 1s (--handshake-timeout)",
        1,
        Duration::from_secs(5),
    );
    // A host over TLS is authenticated by its first request and stays past the deadline.
    let mut h = host(dir, &addr, "host", &["--tls-ca", "server-ca.pem"]);
    h.wait_for("joined the learner", 1, LIMIT);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!learner.stdout().contains(" left: "), "{}", learner.logs());
    assert!(!h.stdout().contains("reconnecting in"), "{}", h.logs());
    learner.kill_group();
    h.kill_group();
}

/// The learner makes room in its open-files limit for --max-connections, and refuses to
/// start, naming the flag, where the hard limit has no room.
#[test]
fn max_connections_beyond_the_open_files_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--listen", "127.0.0.1:0");
    let under_limit = |max: u32| {
        let learner = run.clone().flag("--max-connections", max).command();
        let mut cmd = std::process::Command::new("sh");
        // `ulimit -n`: soft and hard limits both.
        cmd.arg("-c")
            .arg("ulimit -n 700 && exec \"$0\" \"$@\"")
            .arg(learner.get_program())
            .args(learner.get_args())
            .envs(learner.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .current_dir(dir);
        cmd
    };
    let out = under_limit(1000).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--max-connections 1000: this process may open only 700 files")
            && err.contains("--max-connections 188"),
        "{err}"
    );
    // 100 fits: it listens.
    let mut ok = under_limit(100)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(ok.stdout.take().unwrap());
    let t0 = Instant::now();
    while !line.contains("listening for actor hosts") && t0.elapsed() < LIMIT {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ok.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = ok.wait();
    assert!(line.contains("listening for actor hosts"), "{line}");
}

#[test]
fn garbage_half_open_connections_and_bad_messages_leave_the_learner_training() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    // 20 connections from this address, besides the test's client and host: the per-peer
    // cap is not what this test is about.
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(60_000)
        .flag("--max-connections-per-peer", 64)
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

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2, ...: other
/// peers as the learner counts them; Linux routes all of 127/8 to loopback).
fn connect_from(from: &str, addr: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr.parse().unwrap()).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

/// Whether the learner closed `s` within `limit` (end of stream or reset; whatever it sent
/// before, an HTTP/2 SETTINGS frame say, is read and dropped).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// `conns` split into (still open after a moment, closed by the learner).
fn open_and_closed(conns: Vec<TcpStream>) -> (Vec<TcpStream>, usize) {
    std::thread::sleep(Duration::from_millis(300));
    let mut open = Vec::new();
    let mut closed = 0;
    for mut s in conns {
        if closed_within(&mut s, Duration::from_millis(300)) {
            closed += 1;
        } else {
            open.push(s);
        }
    }
    (open, closed)
}

/// Peers that open many connections and say nothing get --max-connections-per-peer each,
/// and all together no more than --max-connections; the rest are closed at once, with a
/// line that says which cap. A host still joins (its address has its own quota, and there is
/// room under the total) and trains while they hold theirs.
#[test]
fn idle_connections_over_the_caps_are_closed_while_a_host_joins_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .flag("--max-connections", 8)
        .flag("--max-connections-per-peer", 3)
        // Long enough that no idle connection is closed by the deadline during the test.
        .flag("--handshake-timeout", 120)
        .logdir(&logdir)
        .listen("learner");
    // Two peers of 10 idle connections each: 3 stay, 7 are closed, per peer.
    let mut held = Vec::new();
    for peer in ["127.0.0.2", "127.0.0.3"] {
        let conns = (0..10).map(|_| connect_from(peer, &addr)).collect();
        let (open, closed) = open_and_closed(conns);
        assert_eq!((open.len(), closed), (3, 7), "{peer}\n{}", learner.logs());
        held.extend(open);
    }
    learner.wait_for(
        "the most --max-connections-per-peer allows",
        1,
        Duration::from_secs(10),
    );
    // 6 of 8 taken: a host joins.
    let mut h = host(dir, &addr, "host", &[]);
    learner.wait_for("joined with", 1, LIMIT);
    // A third peer gets the last place; the total cap closes its other connections.
    let conns = (0..5).map(|_| connect_from("127.0.0.4", &addr)).collect();
    let (open, closed) = open_and_closed(conns);
    assert_eq!((open.len(), closed), (1, 4), "{}", learner.logs());
    held.extend(open);
    learner.wait_for(
        "connections are open, the most --max-connections allows",
        1,
        Duration::from_secs(10),
    );
    // The host trains on while every place is held: metrics.csv keeps growing, with it.
    let rows_with_host = || {
        if !logdir.join("metrics.csv").is_file() {
            return Vec::new();
        }
        metrics_rows(&logdir)
            .into_iter()
            .filter(|r| r["remote_hosts"] == "1")
            .map(|r| r["frames"].parse::<u64>().unwrap())
            .collect::<Vec<u64>>()
    };
    let before = rows_with_host();
    std::thread::sleep(Duration::from_secs(4));
    let after = rows_with_host();
    assert!(
        after.len() >= before.len() + 3 && after.last() > before.last(),
        "metrics.csv stopped growing while idle connections held every place: {before:?} then {after:?}\n{}",
        learner.logs()
    );
    // Every held connection is still open: the caps closed only the ones over them.
    for mut s in held {
        assert!(!closed_within(&mut s, Duration::from_millis(50)));
    }
    assert!(!learner.stdout().contains(" left: "), "{}", learner.logs());
    learner.kill_group();
    h.kill_group();
}

/// A connection that opens TCP and says nothing, and one that sends the HTTP/2 preface and
/// stops, are closed after --handshake-timeout; a host with the token stays past it. A flood
/// of requests with a wrong token makes a bounded number of lines, which count what they
/// suppressed.
#[test]
fn silent_connections_are_closed_after_the_handshake_timeout_and_refusals_are_rate_limited() {
    use async_rl::remote::pb::actor_link_client::ActorLinkClient;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    token_file(dir, "token", "the-right-secret");
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .flag("--auth-token-file", "token")
        .flag("--handshake-timeout", 1.5)
        .logdir(&logdir)
        .listen("learner");
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut preface = TcpStream::connect(&addr).unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(6)));
    let silent_after = t0.elapsed();
    assert!(closed_within(&mut preface, Duration::from_secs(6)));
    let preface_after = t0.elapsed();
    eprintln!("closed the silent connection after {silent_after:?}, the one with only the preface after {preface_after:?}");
    // Not before the timeout, and well before HTTP/2's keep-alive (2 s + 5 s) would.
    assert!(
        silent_after >= Duration::from_millis(1400) && preface_after < Duration::from_secs(5),
        "{silent_after:?} {preface_after:?}"
    );
    learner.wait_for(
        "no authenticated request within 1.5s (--handshake-timeout)",
        1,
        Duration::from_secs(5),
    );

    // The flood: requests with a wrong token, one after another on one channel (which
    // reconnects when the deadline closes its connection), for 3.5 s.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let flood_start = Instant::now();
    let refused = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = ActorLinkClient::new(channel);
        let mut refused = 0u32;
        while flood_start.elapsed() < Duration::from_millis(3500) {
            let mut request =
                tonic::Request::new(tokio_stream::empty::<async_rl::remote::wire::Up>());
            request
                .metadata_mut()
                .insert("authorization", "Bearer wrong".parse().unwrap());
            if let Err(status) = client.session(request).await {
                if status.code() == tonic::Code::Unauthenticated {
                    refused += 1;
                }
            }
        }
        refused
    });
    let flood = flood_start.elapsed();
    // One more after a pause: it carries the count of the last ones suppressed.
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(async {
        let mut client = ActorLinkClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(tokio_stream::empty::<async_rl::remote::wire::Up>());
        request
            .metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        assert!(client.session(request).await.is_err());
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = learner.stdout();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("refused a host at"))
        .collect();
    let suppressed: u64 = lines
        .iter()
        .filter_map(|l| {
            l.rsplit_once(" (")?
                .1
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    eprintln!(
        "{refused} refused requests in {flood:?} made {} lines, which count {suppressed} suppressed",
        lines.len()
    );
    assert!(
        refused >= 200,
        "only {refused} requests refused in {flood:?}"
    );
    // A burst of 5, then about one a second.
    let bound = 5 + flood.as_secs() as usize + 3;
    assert!(
        lines.len() <= bound,
        "{} lines for {refused} refusals (at most {bound})\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more suppressed since the last such line")),
        "{}",
        lines.join("\n")
    );
    // Every refusal is in a line or counted in one (a few more than the client saw: the
    // answers lost when the deadline closed the flood's connection under a request).
    let logged = lines.len() as u64 + suppressed;
    let seen = u64::from(refused) + 1;
    assert!(
        (seen..=seen + 10).contains(&logged),
        "{logged} refusals in the lines, {seen} seen by the client"
    );

    // A host with the token stays connected past the deadline and trains.
    let mut h = host(dir, &addr, "host", &["--auth-token-file", "token"]);
    h.wait_for("joined the learner", 1, LIMIT);
    std::thread::sleep(Duration::from_secs(4));
    assert!(!learner.stdout().contains(" left: "), "{}", learner.logs());
    assert!(
        metrics_rows(&logdir)
            .iter()
            .any(|r| r["remote_hosts"] == "1"),
        "{}",
        learner.logs()
    );
    learner.kill_group();
    h.kill_group();
}

/// Off loopback, --listen without TLS is refused unless --insecure-plaintext says so, and a
/// token file that group or others can read is refused, naming the fix.
#[test]
fn plaintext_off_loopback_and_a_token_file_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    token_file(dir, "token", "the-right-secret");
    let run = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .flag("--listen", "0.0.0.0:0");
    let (_, out) = run.output(LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--listen 0.0.0.0:0: without TLS") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    // Said explicitly, it listens (in clear text, and says so).
    let mut learner = run
        .clone()
        .switch("--insecure-plaintext")
        .start("plaintext");
    let line = learner.wait_for("listening for actor hosts", 1, LIMIT);
    assert!(line.contains("plain text"), "{line}");
    learner.kill_group();
    // A group-readable token file: the learner does not start.
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let (_, out) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .flag("--listen", "127.0.0.1:0")
        .output(LIMIT);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--auth-token-file token: mode 640") && err.contains("`chmod 600 token`"),
        "{err}"
    );
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
