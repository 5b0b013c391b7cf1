//! The learner's side of remote actor hosts (`learner --listen ADDR`): a gRPC server on its
//! own tokio runtime, one session per connected host.
//!
//! A session owns one queue lane per process of its host (taken from the `--remote-lanes`
//! lanes after the local actors' ones) and a pusher thread that moves the host's slots into
//! them. The pusher blocks while the lanes are full; the session then stops reading the
//! stream, and HTTP/2 flow control holds the host back: the learner's queue bounds remote
//! experience as it bounds local experience.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::actor_link_server::{ActorLink, ActorLinkServer};
use super::wire::{self, down, up, Down, Up};
use crate::config::Config;
use crate::ipc::{actor_seed, ActorMsg};
use crate::schedule;
use crate::shm::{ExperienceQueue, PushError, SlotLayout, WeightSnapshot};

/// What the server needs of the run.
pub struct ServerSettings {
    pub config: Config,
    /// Shared-memory names of the learner's queue and snapshot.
    pub queue: String,
    pub snapshot: String,
    /// The lanes kept for remote processes: `first_lane .. first_lane + lanes`.
    pub first_lane: usize,
    pub lanes: usize,
    pub num_actions: usize,
    pub game: String,
    /// Where finished games go (the learner's report channel, as for local actors).
    pub reports: IpcSender<ActorMsg>,
}

/// Counters of one remote host over the run (all its sessions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostStats {
    /// The host's number in this run and its name.
    pub host: u32,
    pub name: String,
    /// Whether a session of it is connected now.
    pub connected: bool,
    /// Its processes (queue lanes) in the current session.
    pub processes: u32,
    /// Emulator frames and slots counted from it.
    pub frames: u64,
    pub slots: u64,
    /// Agent steps in those slots (transitions; segments count their steps).
    pub transitions: u64,
    /// Bytes of its experience messages on the wire (compressed slots plus the rest).
    pub wire_bytes: u64,
    /// Sessions after the first.
    pub reconnects: u32,
    /// The learner's snapshot version its actors hold (as it last said).
    pub snapshot_version: u64,
    /// Slots received but not yet in the queue (waiting for room).
    pub in_flight: u64,
    /// Its actor restarts.
    pub restarts: u32,
}

/// One host across its sessions.
///
/// Two locks, not one: `last_seq` is held while a message is counted, which includes waiting
/// for room in the queue, and the learner's metrics and the session's reader must still read
/// and update `stats` meanwhile. Lock order: `last_seq`, then the reports, then `stats`.
struct HostRecord {
    /// The last message number counted; held while a message is counted, so that two
    /// sessions of one host (a stale one not yet noticed and its reconnection) count each
    /// number once.
    last_seq: Mutex<u64>,
    stats: Mutex<HostStats>,
}

impl HostRecord {
    /// Host number `host`, named `name`, never connected yet.
    fn new(host: u32, name: String) -> HostRecord {
        HostRecord {
            last_seq: Mutex::new(0),
            stats: Mutex::new(HostStats {
                host,
                name,
                ..HostStats::default()
            }),
        }
    }

    /// A session of this host opened with `processes` processes; returns the host's number.
    fn joined(&self, processes: u32) -> u32 {
        let mut st = self.stats.lock().unwrap();
        if st.connected || st.frames > 0 || st.slots > 0 {
            st.reconnects += 1;
        }
        st.connected = true;
        st.processes = processes;
        st.host
    }

    /// Its session ended: nothing of it is in flight any more.
    fn left(&self) {
        let mut st = self.stats.lock().unwrap();
        st.connected = false;
        st.in_flight = 0;
    }

    /// A message of `slots` slots arrived: they wait for room in the queue.
    fn arrived(&self, slots: u32) {
        self.stats.lock().unwrap().in_flight += u64::from(slots);
    }

    /// A message of `slots` slots was dealt with (counted, or already counted).
    fn dealt_with(&self, slots: u32) {
        let mut st = self.stats.lock().unwrap();
        st.in_flight = st.in_flight.saturating_sub(u64::from(slots));
    }

    /// Its actors hold the learner's snapshot `version`.
    fn holds(&self, version: u64) {
        self.stats.lock().unwrap().snapshot_version = version;
    }

    /// Message `e` (`wire_bytes` on the wire, slots of `steps_per_slot` steps) was counted;
    /// logs the failures it reports.
    fn counted(
        &self,
        e: &wire::Experience,
        wire_bytes: u64,
        steps_per_slot: u64,
        log: &dyn Fn(&str),
    ) {
        let mut st = self.stats.lock().unwrap();
        st.frames += e.frames;
        st.slots += u64::from(e.slots);
        st.transitions += u64::from(e.slots) * steps_per_slot;
        st.wire_bytes += wire_bytes;
        st.snapshot_version = e.snapshot_version;
        st.restarts = e.restarts;
        for f in &e.failures {
            log(&format!("{}: {f}", st.name));
        }
    }

    /// The host's number.
    fn host(&self) -> u32 {
        self.stats.lock().unwrap().host
    }
}

struct Shared {
    queue: ExperienceQueue,
    snapshot: WeightSnapshot,
    layout: SlotLayout,
    slot_bytes: usize,
    steps_per_slot: u64,
    num_actions: usize,
    max_slots: usize,
    config: Config,
    config_bytes: Vec<u8>,
    game: String,
    run_id: u64,
    token: Option<String>,
    free_lanes: Mutex<Vec<usize>>,
    hosts: Mutex<HashMap<u64, Arc<HostRecord>>>,
    next_host: AtomicU32,
    generation: AtomicU64,
    reports: Mutex<IpcSender<ActorMsg>>,
    /// The newest snapshot, compressed once for every host: (version, bytes).
    compressed: Mutex<(u64, Arc<Vec<u8>>)>,
    /// Set when the learner stops: (reason, whether the run is finished).
    stop: watch::Sender<Option<(String, bool)>>,
    /// The newest snapshot version the learner published (see [`RemoteServer::published`]).
    published: watch::Sender<u64>,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

/// The running server. [`RemoteServer::stop`] tells every host and shuts it down.
pub struct RemoteServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    sessions: Arc<AtomicU32>,
    addr: SocketAddr,
}

impl RemoteServer {
    /// Binds `cfg.listen.listen` and serves hosts from the lanes of `settings`. `log` prints a line
    /// for people (sessions opening and ending, refusals). Errors: the address cannot be
    /// bound, the token or TLS files cannot be read, the queue or snapshot cannot be opened.
    pub fn start(
        settings: ServerSettings,
        log: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<RemoteServer> {
        let cfg = settings.config;
        let listen = cfg.listen.listen.clone().context("--listen is not set")?;
        let token = cfg
            .remote
            .auth_token_file
            .as_deref()
            .map(super::read_token)
            .transpose()?;
        let tls = super::server_tls(&cfg)?;
        let queue = ExperienceQueue::open(&settings.queue).context("opening the queue")?;
        let snapshot =
            WeightSnapshot::open(&settings.snapshot).context("opening the weight snapshot")?;
        let layout = queue.layout();
        let slot_bytes = queue.slot_bytes();
        let numel = snapshot.numel();
        let config_bytes = bincode::serde::encode_to_vec(&cfg, bincode::config::standard())
            .context("encoding the config for remote hosts")?;
        let (stop, _) = watch::channel(None);
        let (published, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            layout,
            slot_bytes,
            steps_per_slot: layout.steps() as u64,
            num_actions: settings.num_actions,
            max_slots: super::max_slots(slot_bytes),
            config_bytes,
            game: settings.game,
            run_id: rand::thread_rng().gen_range(1..u64::MAX),
            token,
            free_lanes: Mutex::new(
                (settings.first_lane..settings.first_lane + settings.lanes)
                    .rev()
                    .collect(),
            ),
            hosts: Mutex::new(HashMap::new()),
            next_host: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            reports: Mutex::new(settings.reports),
            compressed: Mutex::new((0, Arc::new(Vec::new()))),
            stop,
            published,
            log: Box::new(log),
            queue,
            snapshot,
            config: cfg,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-server")
            .enable_all()
            .build()
            .context("starting the remote-host server's runtime")?;
        let addr: SocketAddr = listen
            .parse()
            .with_context(|| format!("--listen {listen}: not an IP address and port"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("--listen {listen}: cannot listen there"))?;
        let addr = listener.local_addr()?;
        let limit = super::max_message_bytes(slot_bytes, numel);
        let sessions = Arc::new(AtomicU32::new(0));
        let service = ActorLinkServer::new(Service {
            shared: shared.clone(),
            sessions: sessions.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let mut builder = tonic::transport::Server::builder()
            // One session per connection; hosts open one connection each.
            .max_concurrent_streams(4)
            .http2_keepalive_interval(Some(Duration::from_secs(2)))
            .http2_keepalive_timeout(Some(super::HEARTBEAT_TIMEOUT))
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .tcp_nodelay(true);
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let router = builder.add_service(service);
        let served = match tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(10)));
                runtime.spawn(async move {
                    let _ = router
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = on_shutdown.await;
                        })
                        .await;
                })
            }
            Some(tls) => {
                let _guard = runtime.enter();
                let log = shared.clone();
                let incoming = super::tls::incoming(listener, tls, move |line| (log.log)(line));
                runtime.spawn(async move {
                    let _ = router
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = on_shutdown.await;
                        })
                        .await;
                })
            }
        };
        Ok(RemoteServer {
            shared,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
            served: Some(served),
            sessions,
            addr,
        })
    }

    /// The address the server listens on (the real port when `--listen` gave port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each host's counters, by host number.
    pub fn stats(&self) -> Vec<HostStats> {
        let hosts = self.shared.hosts.lock().unwrap();
        let mut all: Vec<HostStats> = hosts
            .values()
            .map(|h| h.stats.lock().unwrap().clone())
            .collect();
        all.sort_by_key(|h| h.host);
        all
    }

    /// The learner published snapshot `version`: every session sends it now.
    pub fn published(&self, version: u64) {
        self.shared.published.send_replace(version);
    }

    /// Sessions connected now.
    pub fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Tells every host that the learner stops (`finished`: the run is over, hosts exit;
    /// otherwise they wait for it to come back), closes the queue, waits up to `grace` for
    /// the sessions to end and shuts the server down. The queue is closed after the stop is
    /// announced, so that every session sends its Stop before it ends (a pusher blocked on a
    /// full lane would otherwise hold its session until the learner closes the queue).
    pub fn stop(&mut self, reason: &str, finished: bool, grace: Duration) {
        let _ = self.shared.stop.send(Some((reason.to_string(), finished)));
        self.shared.queue.close();
        let deadline = Instant::now() + grace;
        while self.sessions() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let (Some(rt), Some(served)) = (self.runtime.as_ref(), self.served.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(grace, served).await });
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for RemoteServer {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop("the learner stopped", false, Duration::from_secs(1));
        }
    }
}

struct Service {
    shared: Arc<Shared>,
    sessions: Arc<AtomicU32>,
}

type DownStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Down, Status>> + Send>>;

fn down_msg(kind: down::Kind) -> Down {
    Down { kind: Some(kind) }
}

#[tonic::async_trait]
impl ActorLink for Service {
    type SessionStream = DownStream;

    async fn session(
        &self,
        request: Request<Streaming<Up>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let shared = &self.shared;
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        if let Err(status) = check_token(shared.token.as_deref(), request.metadata()) {
            (shared.log)(&format!("refused a host at {peer}: {}", status.message()));
            return Err(status);
        }
        let mut stream = request.into_inner();
        let hello = match tokio::time::timeout(super::HELLO_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(Up {
                kind: Some(up::Kind::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "a session must open with a Hello message",
                ))
            }
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {:?}",
                    super::HELLO_TIMEOUT
                )))
            }
        };
        if let Err(status) = check_hello(&hello) {
            (shared.log)(&format!(
                "refused host {} at {peer}: {}",
                hello.name,
                status.message()
            ));
            return Err(status);
        }
        let lanes = {
            let mut free = shared.free_lanes.lock().unwrap();
            let n = hello.processes as usize;
            if n > free.len() {
                let msg = format!(
                    "this host asks for {n} actor processes; the learner has {} free remote lanes (raise the learner's --remote-lanes, or give this host fewer --processes)",
                    free.len()
                );
                (shared.log)(&format!("refused host {} at {peer}: {msg}", hello.name));
                return Err(Status::resource_exhausted(msg));
            }
            let at = free.len() - n;
            free.split_off(at)
        };
        let record = {
            let mut hosts = shared.hosts.lock().unwrap();
            hosts
                .entry(hello.host_id)
                .or_insert_with(|| {
                    Arc::new(HostRecord::new(
                        shared.next_host.fetch_add(1, Ordering::SeqCst),
                        hello.name.clone(),
                    ))
                })
                .clone()
        };
        let host = record.joined(hello.processes);
        let welcome = welcome(shared, &lanes, *record.last_seq.lock().unwrap(), host);
        (shared.log)(&format!(
            "host {host} ({}, {peer}) joined with {} actor processes",
            hello.name, hello.processes
        ));
        let (tx, rx) = mpsc::channel::<Result<Down, Status>>(16);
        let _ = tx.send(Ok(down_msg(down::Kind::Welcome(welcome)))).await;
        self.sessions.fetch_add(1, Ordering::SeqCst);
        let session = Session {
            shared: shared.clone(),
            record,
            lanes,
            tx,
            name: format!("host {host} ({})", hello.name),
        };
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            session.run(stream).await;
            sessions.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Refuses a session without the run's token (when there is one), comparing in constant time.
pub(super) fn check_token(
    token: Option<&str>,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    use subtle::ConstantTimeEq;
    let Some(token) = token else {
        return Ok(());
    };
    let Some(given) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "this learner requires a token: give the host --auth-token-file with the learner's secret",
        ));
    };
    let given = given.as_bytes().strip_prefix(b"Bearer ").unwrap_or(b"");
    if bool::from(given.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "wrong token: the host's --auth-token-file does not hold the learner's secret",
        ))
    }
}

/// Refuses another protocol or build, and a host without processes.
pub(super) fn check_hello(h: &wire::Hello) -> Result<(), Status> {
    if h.protocol != super::PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {}; this learner speaks {} (run the same build on every machine)",
            h.protocol,
            super::PROTOCOL_VERSION
        )));
    }
    if h.build != super::BUILD {
        return Err(Status::failed_precondition(format!(
            "async-rl {} on the host, {} on the learner: run the same build on every machine",
            h.build,
            super::BUILD
        )));
    }
    if h.processes == 0 || h.processes > 1024 {
        return Err(Status::invalid_argument(format!(
            "{} actor processes; a host runs 1 to 1024",
            h.processes
        )));
    }
    if h.name.len() > 256 {
        return Err(Status::invalid_argument(
            "a host name longer than 256 bytes",
        ));
    }
    Ok(())
}

/// The [`wire::Welcome`] of a session of `hello` on `lanes`.
fn welcome(shared: &Shared, lanes: &[usize], last_seq: u64, host: u32) -> wire::Welcome {
    let cfg = &shared.config;
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst);
    let mut rng = rand::rngs::StdRng::seed_from_u64(actor_seed(
        cfg.run.seed,
        1 << 20 | host as usize,
        generation,
    ));
    let final_epsilons = (0..lanes.len())
        .map(|_| {
            schedule::sample_final_epsilon(
                &cfg.rule.exploration.final_epsilons,
                &cfg.rule.exploration.final_epsilon_probs,
                rng.gen(),
            )
        })
        .collect();
    wire::Welcome {
        protocol: super::PROTOCOL_VERSION,
        run_id: shared.run_id,
        config: shared.config_bytes.clone(),
        game: shared.game.clone(),
        num_actions: shared.num_actions as u32,
        slot_bytes: shared.slot_bytes as u64,
        numel: shared.snapshot.numel() as u64,
        final_epsilons,
        seed: rng.gen(),
        last_seq,
        frames: shared.queue.frames().load(Ordering::SeqCst),
        max_slots: shared.max_slots as u32,
        host,
    }
}

/// One connected host.
struct Session {
    shared: Arc<Shared>,
    record: Arc<HostRecord>,
    lanes: Vec<usize>,
    tx: mpsc::Sender<Result<Down, Status>>,
    name: String,
}

impl Session {
    async fn run(self, mut stream: Streaming<Up>) {
        let shared = self.shared.clone();
        // One message read ahead of the pusher: what waits here is experience getting older.
        let (work_tx, work_rx) = mpsc::channel::<wire::Experience>(1);
        let ended = Arc::new(AtomicBool::new(false));
        let pusher = {
            let (shared, record, lanes, tx) = (
                shared.clone(),
                self.record.clone(),
                self.lanes.clone(),
                self.tx.clone(),
            );
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                push_loop(&shared, &record, &lanes, work_rx, &tx, &handle)
            })
        };
        let sender = tokio::spawn(send_loop(shared.clone(), self.tx.clone(), ended.clone()));
        let mut stop = shared.stop.subscribe();
        let mut deadline = tokio::time::Instant::now() + super::HEARTBEAT_TIMEOUT;
        let reason: String = loop {
            tokio::select! {
                msg = tokio::time::timeout_at(deadline, stream.message()) => { deadline = tokio::time::Instant::now() + super::HEARTBEAT_TIMEOUT; match msg {
                    Err(_) => break format!("no message for {:?}", super::HEARTBEAT_TIMEOUT),
                    Ok(Err(status)) => break format!("the stream broke: {}", status.message()),
                    Ok(Ok(None)) => break "the host closed the session".into(),
                    Ok(Ok(Some(Up { kind: Some(up::Kind::Experience(e)) }))) => {
                        self.record.arrived(e.slots);
                        if work_tx.send(e).await.is_err() {
                            break "its data was refused".into();
                        }
                    }
                    Ok(Ok(Some(Up { kind: Some(up::Kind::Heartbeat(h)) }))) => {
                        self.record.holds(h.snapshot_version);
                    }
                    Ok(Ok(Some(_))) => break "a message out of order".into(),
                }},
                _ = stop.changed() => break "the learner stops".into(),
            }
        };
        drop(work_tx);
        // The pusher finishes the message it holds, then ends; its error, if any, is the
        // real reason (the reader only saw the channel close).
        let pushed = pusher
            .await
            .unwrap_or_else(|e| Err(format!("pusher failed: {e}")));
        ended.store(true, Ordering::SeqCst);
        let reason = match pushed {
            Err(why) => {
                let _ = self
                    .tx
                    .send(Err(Status::invalid_argument(why.clone())))
                    .await;
                why
            }
            Ok(()) => reason,
        };
        let _ = sender.await;
        self.shared
            .free_lanes
            .lock()
            .unwrap()
            .extend(self.lanes.iter().copied());
        self.record.left();
        (self.shared.log)(&format!("{} left: {reason}", self.name));
    }
}

/// Moves the host's messages into its lanes, counts them once and acks them. Ends when the
/// reader drops the channel or the queue closes; errors on a message that is not valid (the
/// session is then refused with that reason).
fn push_loop(
    shared: &Shared,
    record: &HostRecord,
    lanes: &[usize],
    mut work: mpsc::Receiver<wire::Experience>,
    tx: &mpsc::Sender<Result<Down, Status>>,
    handle: &tokio::runtime::Handle,
) -> Result<(), String> {
    let mut next_lane = 0;
    while let Some(e) = work.blocking_recv() {
        let wire_bytes = prost::Message::encoded_len(&e) as u64;
        let raw =
            super::decode_experience(&e, &shared.layout, shared.num_actions, shared.max_slots)
                .map_err(|e| e.to_string())?;
        let frames = {
            let mut last = record.last_seq.lock().unwrap();
            if e.seq > *last {
                for slot in raw.chunks_exact(shared.slot_bytes.max(1)) {
                    match shared.queue.push_raw(lanes[next_lane % lanes.len()], slot) {
                        Ok(()) => {}
                        // The learner is stopping: the rest is not counted.
                        Err(PushError::Closed) => return Ok(()),
                        Err(err) => return Err(format!("pushing a slot: {err}")),
                    }
                    next_lane += 1;
                }
                shared.queue.frames().fetch_add(e.frames, Ordering::SeqCst);
                let reports = shared.reports.lock().unwrap();
                let host = record.host() as usize;
                for g in &e.episodes {
                    let _ = reports.send(ActorMsg::Episode {
                        actor: 1 << 20 | host,
                        score: g.score,
                        frames: g.frames,
                    });
                }
                drop(reports);
                record.counted(&e, wire_bytes, shared.steps_per_slot, &shared.log);
                *last = e.seq;
            }
            shared.queue.frames().load(Ordering::SeqCst)
        };
        record.dealt_with(e.slots);
        let ack = down_msg(down::Kind::Ack(wire::Ack { seq: e.seq, frames }));
        // A host that stops reading its acks holds its lanes: it is dropped after a while.
        let sent = handle.block_on(tx.send_timeout(Ok(ack), super::HEARTBEAT_TIMEOUT * 2));
        if sent.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends snapshots when their version changes, heartbeats, and the learner's stop.
async fn send_loop(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<Down, Status>>,
    ended: Arc<AtomicBool>,
) {
    let mut sent_version = 0u64;
    let mut last_beat = Instant::now();
    let mut stop = shared.stop.subscribe();
    let mut published = shared.published.subscribe();
    loop {
        // A new snapshot goes down as soon as the learner publishes it (the actors of an
        // on-policy rule must not act with old weights for longer than local ones do).
        tokio::select! {
            _ = published.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        published.borrow_and_update();
        // The stop first: a session ends because of it, and its host must hear why.
        let stopping = stop.borrow_and_update().clone();
        if let Some((reason, finished)) = stopping {
            let _ = tx
                .send(Ok(down_msg(down::Kind::Stop(wire::Stop {
                    reason,
                    finished,
                }))))
                .await;
            return;
        }
        if ended.load(Ordering::SeqCst) || tx.is_closed() {
            return;
        }
        let version = shared.snapshot.version();
        if version != sent_version && version != 0 {
            let shared2 = shared.clone();
            let compressed = tokio::task::spawn_blocking(move || latest_compressed(&shared2))
                .await
                .ok()
                .flatten();
            if let Some((v, weights)) = compressed {
                let msg = down_msg(down::Kind::Snapshot(wire::Snapshot {
                    version: v,
                    weights: weights.as_ref().clone(),
                }));
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                sent_version = v;
                last_beat = Instant::now();
            }
        }
        if last_beat.elapsed() >= super::HEARTBEAT_EVERY {
            let beat = down_msg(down::Kind::Heartbeat(wire::Heartbeat {
                snapshot_version: version,
            }));
            if tx.send(Ok(beat)).await.is_err() {
                return;
            }
            last_beat = Instant::now();
        }
    }
}

/// The newest snapshot, compressed (once per version for all hosts).
fn latest_compressed(shared: &Shared) -> Option<(u64, Arc<Vec<u8>>)> {
    let mut cache = shared.compressed.lock().unwrap();
    if cache.0 != shared.snapshot.version() {
        let mut flat = vec![0f32; shared.snapshot.numel()];
        let version = shared.snapshot.read_into(&mut flat).ok()?;
        *cache = (version, Arc::new(super::compress_weights(&flat)));
    }
    Some((cache.0, cache.1.clone()))
}
