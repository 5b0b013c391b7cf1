//! What an authenticated remote host may do (README, Security, "Authenticated hosts"): fake
//! hosts on loopback that speak the protocol and lie (absurd frame counts, made-up games,
//! returns of 3e38), take too many lanes, reuse a live host's id, or stop reading; each is
//! refused or disconnected with its reason while the run goes on. And a short soak: a real
//! host trains while a fake one misbehaves in each way in turn.

use std::time::{Duration, Instant};

use async_rl::remote::pb::actor_link_client::ActorLinkClient;
use async_rl::remote::wire::{down, up, Down, Episode, Experience, Heartbeat, Hello, Up, Welcome};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A host of our own making: it joins with a Hello and sends what a test tells it to.
struct FakeHost {
    rt: tokio::runtime::Runtime,
    tx: tokio::sync::mpsc::Sender<Up>,
    down: tonic::Streaming<Down>,
    welcome: Welcome,
    seq: u64,
}

impl FakeHost {
    /// Joins the learner at `addr` as host `id` with `processes` processes, sending
    /// heartbeats every second; with `small_window`, its HTTP/2 stream window is 1 KiB, so
    /// that not reading backs up after a snapshot or two.
    fn join(
        addr: &str,
        id: u64,
        processes: u32,
        small_window: bool,
    ) -> Result<FakeHost, tonic::Status> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = Hello {
            protocol: async_rl::remote::PROTOCOL_VERSION,
            build: async_rl::remote::BUILD.into(),
            host_id: id,
            name: format!("fake-{id}"),
            processes,
            run_id: 0,
        };
        let (down, welcome) = rt.block_on(async {
            let mut endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
            if small_window {
                endpoint = endpoint
                    .initial_stream_window_size(1024)
                    .initial_connection_window_size(65_535);
            }
            let channel = endpoint.connect().await.unwrap();
            let mut client = ActorLinkClient::new(channel);
            tx.send(Up {
                kind: Some(up::Kind::Hello(hello)),
            })
            .await
            .unwrap();
            let mut down = client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            match down.message().await?.and_then(|m| m.kind) {
                Some(down::Kind::Welcome(w)) => Ok::<_, tonic::Status>((down, w)),
                other => panic!("expected a Welcome, got {other:?}"),
            }
        })?;
        let beats = tx.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let hb = Up {
                    kind: Some(up::Kind::Heartbeat(Heartbeat {
                        snapshot_version: 0,
                    })),
                };
                if beats.send(hb).await.is_err() {
                    return;
                }
            }
        });
        Ok(FakeHost {
            rt,
            tx,
            down,
            welcome,
            seq: 0,
        })
    }

    /// An experience message of `slots` valid slots (action 0, return `ret`, no bootstrap),
    /// `frames` frames and `games` games of score `score`, numbered next.
    fn experience(
        &mut self,
        slots: usize,
        frames: u64,
        games: usize,
        score: f32,
        ret: f32,
    ) -> Experience {
        let bytes = self.welcome.slot_bytes as usize;
        let mut raw = vec![0u8; slots * bytes];
        for slot in raw.chunks_exact_mut(bytes) {
            slot[4..8].copy_from_slice(&ret.to_le_bytes());
        }
        self.seq += 1;
        Experience {
            seq: self.seq,
            frames,
            slots: slots as u32,
            payload: if slots > 0 {
                lz4_flex::block::compress(&raw)
            } else {
                Vec::new()
            },
            episodes: vec![Episode { score, frames: 100 }; games],
            ..Default::default()
        }
    }

    fn send(&self, e: Experience) {
        let tx = self.tx.clone();
        self.rt.block_on(async move {
            let _ = tx
                .send(Up {
                    kind: Some(up::Kind::Experience(e)),
                })
                .await;
        });
    }

    /// Reads the learner's messages until it ends the session; returns its reason, counting
    /// the acks on the way.
    fn refusal(&mut self) -> (String, usize) {
        let down = &mut self.down;
        self.rt.block_on(async {
            let mut acks = 0;
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(until, down.message()).await {
                    Err(_) => return ("no refusal within 30 s".to_string(), acks),
                    Ok(Ok(Some(Down {
                        kind: Some(down::Kind::Ack(_)),
                    }))) => acks += 1,
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => return ("closed without a reason".to_string(), acks),
                    Ok(Err(status)) => return (status.message().to_string(), acks),
                }
            }
        })
    }
}

/// The largest frame count in metrics.csv of `run_dir`, and its rows.
fn metrics_frames(run_dir: &std::path::Path) -> (u64, usize) {
    if !run_dir.join("metrics.csv").exists() {
        return (0, 0);
    }
    let rows = metrics_rows(run_dir);
    let most = rows
        .iter()
        .map(|r| r["frames"].parse::<u64>().unwrap())
        .max()
        .unwrap_or(0);
    (most, rows.len())
}

/// Waits until metrics.csv of `run_dir` has more than `rows` rows.
fn metrics_grow(run_dir: &std::path::Path, rows: usize) {
    let t0 = Instant::now();
    while metrics_frames(run_dir).1 <= rows {
        assert!(
            t0.elapsed() < LIMIT,
            "metrics.csv stopped growing at {rows} rows"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Absurd frame counts, made-up games and returns of 3e38 from an authenticated host: each
/// message is refused and its host disconnected, the frame count does not jump, no made-up
/// game reaches the metrics, and training goes on.
#[test]
fn a_lying_host_is_disconnected_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(1)
        .frames(100_000_000)
        .flag("--target-return", 1000)
        .flag("--log-interval", "0.3")
        .logdir(&logdir)
        .listen("learner");
    metrics_grow(&logdir, 1);
    let lies: [(&str, fn(&mut FakeHost) -> Experience); 3] = [
        ("frames in one message", |h| {
            h.experience(1, 1 << 39, 0, 0.0, 0.0)
        }),
        ("4096 games in one message", |h| {
            h.experience(1, 4, 4096, 1e6, 0.0)
        }),
        ("return of magnitude", |h| h.experience(1, 4, 0, 0.0, 3e38)),
    ];
    for (k, (why, lie)) in lies.into_iter().enumerate() {
        let mut h = FakeHost::join(&addr, 100 + k as u64, 1, false).unwrap();
        // An honest message first: counted and acked.
        let honest = h.experience(2, 8, 0, 0.0, 1.0);
        h.send(honest);
        let lie = lie(&mut h);
        h.send(lie);
        let (reason, acks) = h.refusal();
        assert!(reason.contains(why), "{why}: {reason}");
        assert_eq!(
            acks, 1,
            "{why}: the honest message is acked, the lie is not"
        );
        learner.wait_for(" left: ", k + 1, Duration::from_secs(10));
    }
    // The run goes on: more metrics rows, frames far from the lies, and no game of 1e6.
    let (_, rows) = metrics_frames(&logdir);
    metrics_grow(&logdir, rows + 2);
    let (frames, _) = metrics_frames(&logdir);
    assert!(frames < 1 << 30, "the frame count jumped to {frames}");
    for r in metrics_rows(&logdir) {
        if let Ok(m) = r["mean_return"].parse::<f64>() {
            assert!(m <= 500.0, "a made-up game reached the metrics: {r:?}");
        }
    }
    assert!(
        learner.child.try_wait().unwrap().is_none(),
        "{}",
        learner.logs()
    );
    let log = learner.stdout();
    assert!(log.contains("(fake-100, "), "{log}");
    learner.kill_group();
}

/// One host cannot take every lane (`--max-lanes-per-host`, half of `--remote-lanes` by
/// default), nor join twice under one id; a host that leaves gives its lanes back.
#[test]
fn lanes_are_shared_and_a_live_host_id_is_not_taken_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(1)
        .frames(100_000_000)
        .flag("--remote-lanes", 4)
        .listen("learner");
    let greedy = FakeHost::join(&addr, 1, 3, false)
        .err()
        .expect("3 of 4 lanes");
    assert_eq!(greedy.code(), tonic::Code::FailedPrecondition);
    assert!(
        greedy.message().contains("at most 2"),
        "{}",
        greedy.message()
    );
    let a = FakeHost::join(&addr, 1, 2, false).unwrap();
    let twin = FakeHost::join(&addr, 1, 1, false).err().expect("a live id");
    assert_eq!(twin.code(), tonic::Code::AlreadyExists);
    assert!(
        twin.message().contains("has a session already"),
        "{}",
        twin.message()
    );
    let b = FakeHost::join(&addr, 2, 2, false).unwrap();
    let late = FakeHost::join(&addr, 3, 1, false)
        .err()
        .expect("no lane left");
    assert_eq!(late.code(), tonic::Code::ResourceExhausted);
    drop(a);
    learner.wait_for(" left: ", 1, Duration::from_secs(15));
    // Its lanes are free again, and its id too.
    let again = FakeHost::join(&addr, 1, 2, false).unwrap();
    learner.wait_for("refused host fake-", 3, Duration::from_secs(5));
    drop((b, again));
    learner.kill_group();
}

/// A real host trains while a fake one misbehaves in each way in turn (absurd frames,
/// made-up games, a 3e38 return, too many lanes, a live id twice, not reading): the real
/// host's experience keeps arriving throughout.
#[test]
fn soak_a_good_host_keeps_training_while_another_misbehaves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logdir = dir.join("run");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--log-interval", "0.5")
        .flag("--remote-lanes", 4)
        .logdir(&logdir)
        .listen("learner");
    let mut good = Run::learner(dir)
        .flag("--connect", &addr)
        .processes(1)
        .start("good-host");
    good.wait_for("joined the learner", 1, LIMIT);
    let t0 = Instant::now();
    // The good host's frames in hosts.csv (host 0: it joined first).
    let good_frames = || -> u64 {
        csv_rows(&logdir.join("hosts.csv"))
            .iter()
            .filter(|r| r["host"] == "0")
            .filter_map(|r| r["frames"].parse().ok())
            .max()
            .unwrap_or(0)
    };
    let logs = |p: &std::path::Path| {
        let read = |ext: &str| std::fs::read_to_string(p.with_extension(ext)).unwrap_or_default();
        format!(
            "{}
{}",
            read("stdout"),
            read("stderr")
        )
    };
    let keeps_arriving = |what: &str, before: u64| {
        let t = Instant::now();
        while good_frames() <= before {
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "after {what}: the good host's frames stopped at {before}\n--- learner:\n{}\n--- good host:\n{}",
                logs(&dir.join("learner")),
                logs(&dir.join("good-host"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    keeps_arriving("joining", 0);
    let mut id = 1000;
    let mut lie = |what: &str, make: fn(&mut FakeHost) -> Experience, expect: &str| {
        id += 1;
        let before = good_frames();
        let mut h = FakeHost::join(&addr, id, 1, false).unwrap();
        let e = make(&mut h);
        h.send(e);
        let (reason, _) = h.refusal();
        assert!(reason.contains(expect), "{what}: {reason}");
        keeps_arriving(what, before);
    };
    lie(
        "absurd frames",
        |h| h.experience(1, 1 << 40, 0, 0.0, 0.0),
        "frames in one message",
    );
    lie(
        "made-up games",
        |h| h.experience(0, 0, 2000, 1e6, 0.0),
        "games in one message",
    );
    lie(
        "a 3e38 return",
        |h| h.experience(1, 4, 0, 0.0, 3e38),
        "return of magnitude",
    );
    let before = good_frames();
    let greedy = FakeHost::join(&addr, 2000, 3, false)
        .err()
        .expect("too many lanes");
    assert_eq!(greedy.code(), tonic::Code::FailedPrecondition);
    let first = FakeHost::join(&addr, 2001, 1, false).unwrap();
    let twin = FakeHost::join(&addr, 2001, 1, false)
        .err()
        .expect("a live id twice");
    assert_eq!(twin.code(), tonic::Code::AlreadyExists);
    drop(first);
    keeps_arriving("greed and a twin", before);
    // A host that never reads: the learner stops queueing snapshots for it and drops it.
    let before = good_frames();
    let deaf = FakeHost::join(&addr, 3000, 1, true).unwrap();
    let line = learner.wait_for("it took no snapshot", 1, Duration::from_secs(60));
    eprintln!("dropped the host that does not read: {line}");
    keeps_arriving("a host that does not read", before);
    drop(deaf);
    eprintln!("soak: {:?}", t0.elapsed());
    // The good host was never dropped.
    let log = learner.stdout();
    assert!(
        !log.lines()
            .any(|l| l.contains("host 0 (") && l.contains(" left: ")),
        "{log}"
    );
    let (frames, _) = metrics_frames(&logdir);
    assert!(frames < 1 << 30, "the frame count jumped to {frames}");
    learner.kill_group();
    good.kill_group();
}
