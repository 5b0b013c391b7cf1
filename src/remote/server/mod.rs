//! The learner's side of remote actor hosts (`learner --listen ADDR`): a gRPC server on its
//! own tokio runtime, one session per connected host.
//!
//! A session owns one queue lane per process of its host (taken from the `--remote-lanes`
//! lanes after the local actors' ones) and a pusher thread that moves the host's slots into
//! them. The pusher blocks while the lanes are full; the session then stops reading the
//! stream, and HTTP/2 flow control holds the host back: the learner's queue bounds remote
//! experience as it bounds local experience.
//!
//! This file holds the public API ([`RemoteServer`], [`ServerSettings`], [`HostStats`]), the
//! state every session shares, and starting and stopping the server. The handshake (token,
//! Hello, lanes, Welcome) is in `service.rs`, a running session (its reader, pusher and
//! sender) in `session.rs`, and the per-host records kept across sessions in `hosts.rs`.
//! Connections reach the service through the learner's own accept loop
//! ([`crate::remote::listener`]: caps, a handshake deadline, bounded log lines).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipc_channel::ipc::IpcSender;
use rand::Rng;
use tokio::sync::watch;

use super::listener::{self, Connections, Limits, Listener};
use super::log_limit::LogLimiter;
use super::pb::actor_link_server::ActorLinkServer;
use crate::config::Config;
use crate::ipc::ActorMsg;
use crate::shm::{ExperienceQueue, SlotLayout, WeightSnapshot};

mod hosts;
mod service;
mod session;

use hosts::HostRecord;
use service::Service;
#[cfg(test)]
pub(super) use service::{check_hello, check_token};

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

struct Shared {
    queue: ExperienceQueue,
    snapshot: WeightSnapshot,
    layout: SlotLayout,
    slot_bytes: usize,
    steps_per_slot: u64,
    num_actions: usize,
    max_slots: usize,
    /// What a host may report ([`crate::remote::bounds`]).
    bounds: crate::remote::bounds::HostBounds,
    /// Remote lanes in all, and most one host may take.
    remote_lanes: usize,
    lanes_per_host: usize,
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
    /// Bounds the lines of refused tokens (one peer can send thousands of requests a second).
    token_refusals: LogLimiter,
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
    /// for people (sessions opening and ending, refusals, the latter rate-limited). Errors: the
    /// address cannot be bound, the token or TLS files cannot be read, the queue or snapshot
    /// cannot be opened, the open-files limit is too low for `--max-connections`.
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
        anyhow::ensure!(
            numel <= super::MAX_SNAPSHOT_PARAMS,
            "--listen: the network has {numel} parameters; remote hosts take snapshots of at most {} (use a smaller --network, or no --listen)",
            super::MAX_SNAPSHOT_PARAMS
        );
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
            bounds: super::bounds::HostBounds::of(&cfg, &layout),
            remote_lanes: settings.lanes,
            lanes_per_host: cfg.listen.lanes_per_host().min(settings.lanes.max(1)),
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
            token_refusals: LogLimiter::refusals(),
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
        let listen_cfg = &shared.config.listen;
        // Room for every connection the caps allow, besides the learner's own files (actors'
        // channels, checkpoints, logs).
        let needed = listen_cfg.max_connections as u64 + 512;
        let fds = listener::raise_fd_limit(needed).context("reading the open-files limit")?;
        if fds < needed {
            anyhow::bail!(
                "--max-connections {}: this process may open only {fds} files (ulimit -n), and the learner needs about 512 besides its connections; give at most --max-connections {}, or raise the limit",
                listen_cfg.max_connections,
                fds.saturating_sub(512).max(1)
            );
        }
        let connections = Connections::new(Limits {
            total: listen_cfg.max_connections,
            per_peer: listen_cfg.max_connections_per_peer,
            handshake: Duration::from_secs_f64(listen_cfg.handshake_timeout),
        });
        let limit = super::max_message_bytes(slot_bytes, numel);
        let sessions = Arc::new(AtomicU32::new(0));
        let service = ActorLinkServer::new(Service {
            shared: shared.clone(),
            sessions: sessions.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        // A request with the run's token lifts its connection's handshake deadline; the
        // service itself refuses (and logs) the others.
        let service = {
            let (shared, connections) = (shared.clone(), connections.clone());
            tonic::service::interceptor::InterceptedService::new(
                service,
                move |request: tonic::Request<()>| {
                    if service::check_token(shared.token.as_deref(), request.metadata()).is_ok() {
                        if let Some(peer) = request.remote_addr() {
                            connections.authenticated(peer);
                        }
                    }
                    Ok(request)
                },
            )
        };
        let accepting = {
            let shared = shared.clone();
            Listener::new(connections, move |line| (shared.log)(line))
        };
        let mut builder = tonic::transport::Server::builder()
            // One session per connection; hosts open one connection each.
            .max_concurrent_streams(4)
            .http2_keepalive_interval(Some(Duration::from_secs(2)))
            // Dead peers: the keep-alive pings once HTTP/2 runs, the handshake deadline
            // before (the accept loop sets TCP_NODELAY; TCP options here would apply only to
            // tonic's own accept loop).
            .http2_keepalive_timeout(Some(super::HEARTBEAT_TIMEOUT));
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let router = builder.add_service(service);
        let _guard = runtime.enter();
        let served = match tls {
            None => {
                let incoming = listener::plain(listener, accepting);
                runtime.spawn(async move {
                    let _ = router
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = on_shutdown.await;
                        })
                        .await;
                })
            }
            Some(tls) => {
                let incoming = listener::tls(listener, tls, accepting);
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
