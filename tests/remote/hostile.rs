//! A hostile or faulty network: silent, idle and half-open connections over the caps and
//! past the handshake deadline, garbage and bad messages, the open-files limit, and a
//! fault-injecting TCP proxy between a host and the learner.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

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
