//! An actor host (`learner --connect HOST:PORT --processes N`): N actor processes on this
//! machine for a remote learner, trained nothing here.
//!
//! The actors are the ordinary ones ([`crate::actor`]), on a local shared-memory queue and
//! snapshot. A pump thread is their queue's consumer: it forwards the slots as they are (with
//! each slot's snapshot version mapped to the learner's), the frames played and the games
//! ended, numbered, and keeps what the learner has not acked to resend after a reconnection.
//! The session (on a tokio runtime) publishes the snapshots that come down, takes the acks,
//! and reconnects with capped exponential backoff and jitter when the learner goes away.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipc_channel::ipc::IpcReceiver;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::pb::actor_link_client::ActorLinkClient;
use super::wire::{self, down, up, Down, Up};
use crate::config::Config;
use crate::ipc::ActorMsg;
use crate::local_actors::{ActorSetup, LocalActors};
use crate::shm::{self, ExperienceQueue, SlotLayout, WeightSnapshot};
use crate::supervisor::ActorPool;

/// Experience messages the host sends ahead of the learner's acks: enough to keep loopback
/// and a LAN busy, few enough that experience does not wait long in flight (it ages there,
/// which on-policy rules feel: see `LANE_SLOTS`).
const WINDOW: usize = 2;

/// Slots per actor process in the host's own queue. Small for the same reason: when the
/// learner is the bottleneck, experience waits in the buffers between the actors and it.
/// Measured on CartPole with a3c (sync every 200 frames): with 256 slots here and a window of
/// 8 messages, remote data was 2,500 frames old on arrival (local: 350) and 2 of 5 seeds
/// collapsed.
const LANE_SLOTS: usize = 32;

/// First and largest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The pump sends what it has at least this often, even a few slots.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// Why a session ended.
enum End {
    /// The learner finished the run: exit.
    Finished(String),
    /// The learner stopped but may come back, or the connection was lost: reconnect.
    Retry(String),
    /// This process was asked to stop.
    Interrupted,
}

/// A message not yet acked, and the local frame count it reported up to.
struct Pending {
    msg: wire::Experience,
    produced: u64,
}

/// The state the pump and the sessions share.
struct Link {
    /// The current session: its number and where its Experience goes.
    session: Mutex<Option<(u64, mpsc::Sender<Up>)>>,
    /// Sent, not acked yet, in order.
    unacked: Mutex<VecDeque<Pending>>,
    /// The local frame counter's bookkeeping (see [`FrameSync`]).
    frames: Mutex<FrameSync>,
    /// Local snapshot version -> the learner's, newest last.
    versions: Mutex<VecDeque<(u32, u32)>>,
    /// The learner's snapshot version that the actors hold.
    remote_version: AtomicU64,
    seq: AtomicU64,
    /// Games played here, and frames of the messages the learner acked.
    games: AtomicU64,
    acked_frames: AtomicU64,
    /// Set by the pump when it gives up (its error says why).
    failed: Mutex<Option<String>>,
    done: AtomicBool,
}

/// The host's actors count their frames in the local queue's counter and read it for their
/// epsilon schedule; it must show the run's frames. `counter = produced + offset`, where
/// `produced` counts the frames played here; each ack of the learner (the run's frames right
/// after counting a message) moves `offset` so that the counter is the run's count plus what
/// was played here since that message.
struct FrameSync {
    offset: u64,
    /// `produced` as reported by the newest message.
    reported: u64,
}

impl Link {
    fn new() -> Link {
        Link {
            session: Mutex::new(None),
            unacked: Mutex::new(VecDeque::new()),
            frames: Mutex::new(FrameSync {
                offset: 0,
                reported: 0,
            }),
            versions: Mutex::new(VecDeque::new()),
            remote_version: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            games: AtomicU64::new(0),
            acked_frames: AtomicU64::new(0),
            failed: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }

    /// Frames played here since the last message; marks them reported.
    fn take_frames(&self, counter: &AtomicU64) -> (u64, u64) {
        let mut f = self.frames.lock().unwrap();
        let produced = counter.load(Ordering::SeqCst).wrapping_sub(f.offset);
        let delta = produced.wrapping_sub(f.reported);
        f.reported = produced;
        (delta, produced)
    }

    /// The learner had `frames` frames right after counting a message that reported local
    /// production up to `produced`.
    fn sync_frames(&self, counter: &AtomicU64, frames: u64, produced: u64) {
        let mut f = self.frames.lock().unwrap();
        let offset = frames.wrapping_sub(produced);
        counter.fetch_add(offset.wrapping_sub(f.offset), Ordering::SeqCst);
        f.offset = offset;
    }

    /// The learner's version for local version `local` (0 when unknown).
    fn remote_of(&self, local: u32) -> u32 {
        let v = self.versions.lock().unwrap();
        v.iter()
            .rev()
            .find(|(l, _)| *l == local)
            .map_or(0, |(_, r)| *r)
    }
}

/// What runs on this host once the learner said what to run.
struct Local {
    queue: Arc<ExperienceQueue>,
    snapshot: WeightSnapshot,
    flat: Vec<f32>,
    pump: Option<std::thread::JoinHandle<()>>,
    game: String,
    num_actions: usize,
    slot_bytes: usize,
    numel: usize,
}

/// Runs this host until the learner finishes the run, a permanent refusal (token,
/// certificate, protocol, another game), `--reconnect-for` seconds without a learner, or a
/// signal in `stop`. `cfg` holds this host's flags (`--connect`, `--processes`, security).
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<()> {
    let target = cfg.host.connect.clone().context("--connect is not set")?;
    let (host_part, _) = target
        .rsplit_once(':')
        .with_context(|| format!("--connect {target}: not HOST:PORT"))?;
    let tls = super::client_tls(&cfg, host_part)?;
    let token = cfg
        .remote
        .auth_token_file
        .as_deref()
        .map(super::read_token)
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))
        .map_err(|e| anyhow!("--connect {target}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(super::HEARTBEAT_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("--tls-ca/--tls-cert/--tls-key: {e}"))?;
    }
    let removed = shm::remove_stale_segments().context("removing stale shared-memory segments")?;
    if !removed.is_empty() {
        crate::say!(
            "removed {} stale shared-memory segment(s) of dead runs",
            removed.len()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("actor-host")
        .enable_all()
        .build()
        .context("starting the actor host's runtime")?;
    let link = Arc::new(Link::new());
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let hello = wire::Hello {
        protocol: super::PROTOCOL_VERSION,
        build: super::BUILD.into(),
        host_id: rand::thread_rng().gen_range(1..u64::MAX),
        name: format!("{name}:{}", std::process::id()),
        processes: cfg.procs.processes as u32,
        run_id: 0,
    };
    let mut host = Host {
        cfg,
        target,
        token,
        endpoint,
        hello,
        link,
        local: None,
        stop,
    };
    let outcome = runtime.block_on(host.serve());
    host.shut_down();
    outcome
}

struct Host {
    cfg: Config,
    target: String,
    token: Option<String>,
    endpoint: Endpoint,
    hello: wire::Hello,
    link: Arc<Link>,
    local: Option<Local>,
    stop: Arc<AtomicBool>,
}

/// A session that could not be had or was lost: retry, or give up.
enum Fail {
    Transient(String),
    Permanent(anyhow::Error),
}

impl Host {
    async fn serve(&mut self) -> Result<()> {
        let mut backoff = BACKOFF_MIN;
        let mut last_ok = Instant::now();
        let patience = Duration::from_secs_f64(self.cfg.host.reconnect_for);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let why = match self.session(&mut last_ok, &mut backoff).await {
                Ok(End::Finished(reason)) => {
                    crate::say!("the learner finished the run ({reason}); exiting");
                    return Ok(());
                }
                Ok(End::Interrupted) => return Ok(()),
                Ok(End::Retry(why)) | Err(Fail::Transient(why)) => why,
                Err(Fail::Permanent(e)) => return Err(e),
            };
            if let Some(e) = self.link.failed.lock().unwrap().clone() {
                bail!("{e}");
            }
            if last_ok.elapsed() > patience {
                bail!(
                    "no learner at {} for {:.0} s (--reconnect-for): {why}",
                    self.target,
                    patience.as_secs_f64()
                );
            }
            // Jitter: a uniform wait between half the backoff and all of it, so that hosts cut
            // off together do not come back together.
            let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            crate::say!(
                "learner at {}: {why}; reconnecting in {:.1} s",
                self.target,
                wait.as_secs_f64()
            );
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One session: connect, hello, welcome, then acks and snapshots until it ends.
    async fn session(
        &mut self,
        last_ok: &mut Instant,
        backoff: &mut Duration,
    ) -> Result<End, Fail> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| classify_transport(&self.target, &e))?;
        let mut client = ActorLinkClient::new(channel)
            .max_decoding_message_size(usize::MAX >> 1)
            .max_encoding_message_size(usize::MAX >> 1);
        let (up_tx, up_rx) = mpsc::channel::<Up>(4);
        let _ = up_tx
            .send(Up {
                kind: Some(up::Kind::Hello(self.hello.clone())),
            })
            .await;
        let mut request = tonic::Request::new(ReceiverStream::new(up_rx));
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}").parse().map_err(|_| {
                Fail::Permanent(anyhow!("--auth-token-file: not a valid header value"))
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut down = client
            .session(request)
            .await
            .map_err(|s| classify_status(&self.target, &s))?
            .into_inner();
        let welcome = match tokio::time::timeout(super::HELLO_TIMEOUT, down.message()).await {
            Ok(Ok(Some(Down {
                kind: Some(down::Kind::Welcome(w)),
            }))) => w,
            Ok(Ok(_)) => {
                return Err(Fail::Transient(
                    "the learner did not welcome this host".into(),
                ))
            }
            Ok(Err(s)) => return Err(classify_status(&self.target, &s)),
            Err(_) => return Err(Fail::Transient("no welcome within 10 s".into())),
        };
        self.admit(&welcome).map_err(Fail::Permanent)?;
        *last_ok = Instant::now();
        *backoff = BACKOFF_MIN;
        let local = self.local.as_mut().expect("admitted");
        let counter = local.queue.frames();
        if welcome.run_id != self.hello.run_id {
            // A new learner (the first, or one restarted from a checkpoint): what the old one
            // did not ack belongs to the old run.
            let dropped = {
                let mut u = self.link.unacked.lock().unwrap();
                let n = u.len();
                u.clear();
                n
            };
            if self.hello.run_id != 0 {
                crate::say!(
                    "the learner at {} is a new run (restarted): {dropped} unacknowledged message(s) of the old one dropped",
                    self.target
                );
            }
            let reported = self.link.frames.lock().unwrap().reported;
            self.link.sync_frames(counter, welcome.frames, reported);
            self.hello.run_id = welcome.run_id;
        } else {
            self.link
                .unacked
                .lock()
                .unwrap()
                .retain(|p| p.msg.seq > welcome.last_seq);
        }
        crate::say!(
            "joined the learner at {} as host {} ({} actor processes, {} at {} frames)",
            self.target,
            welcome.host,
            self.cfg.procs.processes,
            welcome.game,
            welcome.frames
        );
        // The pump resends what is unacked, then goes on, on this session's channel.
        let number = {
            let mut s = self.link.session.lock().unwrap();
            let number = s.as_ref().map_or(1, |(n, _)| n + 1);
            *s = Some((number, up_tx.clone()));
            number
        };
        let end = self.receive(&mut down, &up_tx).await;
        let mut s = self.link.session.lock().unwrap();
        if s.as_ref().is_some_and(|(n, _)| *n == number) {
            *s = None;
        }
        end
    }

    /// Checks the learner's welcome against what runs here, and on the first one starts the
    /// actors with the run's config.
    fn admit(&mut self, w: &wire::Welcome) -> Result<()> {
        if w.protocol != super::PROTOCOL_VERSION {
            bail!(
                "the learner at {} speaks protocol {}, this host {}: run the same build everywhere",
                self.target,
                w.protocol,
                super::PROTOCOL_VERSION
            );
        }
        if let Some(local) = &self.local {
            if w.game != local.game
                || w.num_actions as usize != local.num_actions
                || w.slot_bytes as usize != local.slot_bytes
                || w.numel as usize != local.numel
            {
                bail!(
                    "the learner at {} now runs {} ({} actions, {} parameters); this host's actors play {} ({} actions, {} parameters): restart this host",
                    self.target, w.game, w.num_actions, w.numel, local.game, local.num_actions, local.numel
                );
            }
            return Ok(());
        }
        let (mut cfg, _): (Config, usize) =
            bincode::serde::decode_from_slice(&w.config, bincode::config::standard())
                .map_err(|e| anyhow!("the learner's config does not decode: {e}"))?;
        cfg.procs.processes = self.cfg.procs.processes;
        cfg.run.seed = w.seed;
        cfg.run.eval_every = 0;
        cfg.procs.max_actor_restarts = self.cfg.procs.max_actor_restarts;
        cfg.procs.actor_nice = self.cfg.procs.actor_nice;
        let id = cfg.env_id()?;
        let probe = crate::env::make(&id, &cfg.env_settings(cfg.run.seed))
            .with_context(|| format!("starting {} on this host", id.name()))?;
        let (num_actions, obs) = (probe.num_actions(), probe.obs_spec());
        drop(probe);
        let layout: SlotLayout = crate::rules::slot_layout(&cfg, obs);
        let slot_bytes = layout.slot_bytes().context("slot size")?;
        if num_actions != w.num_actions as usize || slot_bytes != w.slot_bytes as usize {
            bail!(
                "the learner plays {} with {} actions and slots of {} bytes; here it has {} actions and slots of {} bytes (another ROM?)",
                w.game, w.num_actions, w.slot_bytes, num_actions, slot_bytes
            );
        }
        if w.final_epsilons.len() != cfg.procs.processes {
            bail!(
                "the learner sent {} final epsilons for {} processes",
                w.final_epsilons.len(),
                cfg.procs.processes
            );
        }
        let LocalActors {
            queue,
            snapshot,
            reports,
            pool,
            ..
        } = LocalActors::create(
            &cfg,
            ActorSetup {
                prefix: "host-",
                lanes: cfg.procs.processes,
                slots: cfg.procs.processes * LANE_SLOTS,
                layout,
                numel: w.numel as usize,
                frames: w.frames,
                final_epsilons: w.final_epsilons.clone(),
                // A host's actors act with their own copies of the snapshot it relays.
                inference: None,
                generation: 0,
                evaluator: false,
            },
        )
        .context("setting up this host's actors")?;
        *self.link.frames.lock().unwrap() = FrameSync {
            offset: w.frames,
            reported: 0,
        };
        let pump = {
            let (link, queue, stop) = (self.link.clone(), queue.clone(), self.stop.clone());
            let max_slots = (w.max_slots as usize).max(1);
            std::thread::Builder::new()
                .name("host-pump".into())
                .spawn(move || {
                    if let Err(e) = pump(&link, &queue, pool, &reports, max_slots, &stop) {
                        *link.failed.lock().unwrap() = Some(format!("{e:#}"));
                    }
                })
                .context("starting the pump thread")?
        };
        self.local = Some(Local {
            queue,
            snapshot,
            flat: vec![0f32; w.numel as usize],
            pump: Some(pump),
            game: w.game.clone(),
            num_actions,
            slot_bytes,
            numel: w.numel as usize,
        });
        Ok(())
    }

    /// Takes acks, snapshots and the stop from the learner; sends heartbeats.
    async fn receive(
        &mut self,
        down: &mut tonic::Streaming<Down>,
        up_tx: &mpsc::Sender<Up>,
    ) -> Result<End, Fail> {
        let mut beat = tokio::time::interval(super::HEARTBEAT_EVERY);
        // Silence is measured from the last message, not from the last turn of this loop
        // (the heartbeat tick turns it every second).
        let mut deadline = tokio::time::Instant::now() + super::HEARTBEAT_TIMEOUT;
        loop {
            tokio::select! {
                msg = tokio::time::timeout_at(deadline, down.message()) => {
                    deadline = tokio::time::Instant::now() + super::HEARTBEAT_TIMEOUT;
                    let kind = match msg {
                        Err(_) => return Ok(End::Retry(format!("no message for {:?}", super::HEARTBEAT_TIMEOUT))),
                        Ok(Err(s)) => return Err(classify_status(&self.target, &s)),
                        Ok(Ok(None)) => return Ok(End::Retry("the learner closed the session".into())),
                        Ok(Ok(Some(Down { kind: None }))) => continue,
                        Ok(Ok(Some(Down { kind: Some(k) }))) => k,
                    };
                    match kind {
                        down::Kind::Ack(a) => self.acked(&a),
                        down::Kind::Snapshot(s) => self.publish(&s).map_err(Fail::Permanent)?,
                        down::Kind::Stop(s) if s.finished => return Ok(End::Finished(s.reason)),
                        down::Kind::Stop(s) => {
                            return Ok(End::Retry(format!("the learner stopped ({}); waiting for it to come back", s.reason)))
                        }
                        down::Kind::Heartbeat(_) | down::Kind::Welcome(_) => {}
                    }
                }
                _ = beat.tick() => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(End::Interrupted);
                    }
                    if let Some(e) = self.link.failed.lock().unwrap().clone() {
                        return Err(Fail::Permanent(anyhow!("{e}")));
                    }
                    let hb = Up { kind: Some(up::Kind::Heartbeat(wire::Heartbeat {
                        snapshot_version: self.link.remote_version.load(Ordering::SeqCst),
                    })) };
                    // A full channel already tells the learner this host is alive.
                    let _ = up_tx.try_send(hb);
                }
            }
        }
    }

    /// The learner counted everything up to `a.seq`.
    fn acked(&self, a: &wire::Ack) {
        let produced = {
            let mut u = self.link.unacked.lock().unwrap();
            let mut produced = None;
            while u.front().is_some_and(|p| p.msg.seq <= a.seq) {
                let p = u.pop_front().expect("checked");
                self.link
                    .acked_frames
                    .fetch_add(p.msg.frames, Ordering::SeqCst);
                produced = Some(p.produced);
            }
            produced
        };
        if let (Some(produced), Some(local)) = (produced, &self.local) {
            self.link
                .sync_frames(local.queue.frames(), a.frames, produced);
        }
    }

    /// Publishes snapshot `s` to this host's actors.
    fn publish(&mut self, s: &wire::Snapshot) -> Result<()> {
        let local = self.local.as_mut().expect("admitted");
        super::decompress_weights(&s.weights, &mut local.flat)
            .map_err(|e| anyhow!("from the learner at {}: {e}", self.target))?;
        let v = local.snapshot.publish(&local.flat)?;
        let mut versions = self.link.versions.lock().unwrap();
        versions.push_back((v as u32, s.version as u32));
        if versions.len() > 1024 {
            versions.pop_front();
        }
        self.link.remote_version.store(s.version, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the pump and the actors; prints what this host did (`host summary: ...`).
    fn shut_down(&mut self) {
        self.link.done.store(true, Ordering::SeqCst);
        if let Some(mut local) = self.local.take() {
            local.queue.close();
            if let Some(p) = local.pump.take() {
                let _ = p.join();
            }
            let played = {
                let f = self.link.frames.lock().unwrap();
                local
                    .queue
                    .frames()
                    .load(Ordering::SeqCst)
                    .wrapping_sub(f.offset)
            };
            crate::say!(
                "host summary: played frames {played}, games {}, acked frames {}, messages {}",
                self.link.games.load(Ordering::SeqCst),
                self.link.acked_frames.load(Ordering::SeqCst),
                self.link.seq.load(Ordering::SeqCst)
            );
        }
    }
}

/// The pump: starts the actors, keeps them going, and forwards their queue to the session.
fn pump(
    link: &Link,
    queue: &ExperienceQueue,
    mut pool: ActorPool,
    reports: &IpcReceiver<ActorMsg>,
    max_slots: usize,
    stop: &AtomicBool,
) -> Result<()> {
    let stopping = || stop.load(Ordering::SeqCst) || link.done.load(Ordering::SeqCst);
    let started = pool.start_all(stop);
    let result =
        started.and_then(|()| forward(link, queue, &mut pool, reports, max_slots, &stopping));
    queue.close();
    pool.stop_all(Duration::from_secs(5));
    result
}

fn forward(
    link: &Link,
    queue: &ExperienceQueue,
    pool: &mut ActorPool,
    reports: &IpcReceiver<ActorMsg>,
    max_slots: usize,
    stopping: &dyn Fn() -> bool,
) -> Result<()> {
    let slot_bytes = queue.slot_bytes();
    let mut buf: Vec<u8> = Vec::with_capacity(max_slots * slot_bytes);
    let mut episodes = Vec::new();
    let mut failures = Vec::new();
    let mut next_reap = Instant::now();
    let mut last_send = Instant::now();
    let mut session: Option<(u64, mpsc::Sender<Up>)> = None;
    while !stopping() {
        if Instant::now() >= next_reap {
            next_reap = Instant::now() + Duration::from_millis(100);
            for r in pool.replace_exited()? {
                failures.push(format!(
                    "actor {} exited ({}); restarted it with seed {} (restart {})",
                    r.actor, r.status, r.seed, r.restarts
                ));
            }
        }
        while let Ok(msg) = reports.try_recv() {
            match msg {
                ActorMsg::Episode { score, frames, .. } => {
                    link.games.fetch_add(1, Ordering::SeqCst);
                    episodes.push(wire::Episode { score, frames });
                }
                ActorMsg::Failed { actor, message } => {
                    failures.push(format!("actor {actor} failed: {message}"))
                }
                ActorMsg::Ready { .. } | ActorMsg::Eval { .. } => {}
            }
        }
        // A new session: resend what the learner has not acked, in order, before anything new.
        let current = link.session.lock().unwrap().clone();
        match (&current, &session) {
            // The session the pump already serves.
            (Some((n, _)), Some((m, _))) if n == m => {}
            (Some((_, tx)), _) => {
                let resend: Vec<wire::Experience> = link
                    .unacked
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| p.msg.clone())
                    .collect();
                let mut ok = true;
                for msg in resend {
                    if tx
                        .blocking_send(Up {
                            kind: Some(up::Kind::Experience(msg)),
                        })
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                session = ok.then(|| current.clone()).flatten();
                continue;
            }
            (None, _) => {
                session = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let Some((_, tx)) = &session else { continue };
        if link.unacked.lock().unwrap().len() >= WINDOW {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let room = max_slots - buf.len() / slot_bytes;
        queue.pop_raw(&mut buf, room, Duration::from_millis(20))?;
        let slots = buf.len() / slot_bytes;
        let due = slots >= max_slots || last_send.elapsed() >= SEND_EVERY;
        if !due || (slots == 0 && episodes.is_empty() && failures.is_empty()) {
            continue;
        }
        // Slots of one message carry one or two versions: look each up once, not per slot.
        let mut mapped: Option<(u32, u32)> = None;
        for slot in buf.chunks_exact_mut(slot_bytes) {
            let local = SlotLayout::raw_version(slot);
            let remote = match mapped {
                Some((l, r)) if l == local => r,
                _ => {
                    let r = link.remote_of(local);
                    mapped = Some((local, r));
                    r
                }
            };
            SlotLayout::set_raw_version(slot, remote);
        }
        let (frames, produced) = link.take_frames(queue.frames());
        let msg = wire::Experience {
            seq: link.seq.fetch_add(1, Ordering::SeqCst) + 1,
            frames,
            slots: slots as u32,
            payload: if slots > 0 {
                lz4_flex::block::compress(&buf)
            } else {
                Vec::new()
            },
            episodes: std::mem::take(&mut episodes),
            failures: std::mem::take(&mut failures),
            snapshot_version: link.remote_version.load(Ordering::SeqCst),
            restarts: pool.restarts(),
        };
        buf.clear();
        link.unacked.lock().unwrap().push_back(Pending {
            msg: msg.clone(),
            produced,
        });
        last_send = Instant::now();
        if tx
            .blocking_send(Up {
                kind: Some(up::Kind::Experience(msg)),
            })
            .is_err()
        {
            // The session ended; the message is resent on the next one.
            session = None;
        }
    }
    Ok(())
}

/// A connection that failed: a certificate problem is permanent, the rest is retried.
fn classify_transport(target: &str, e: &tonic::transport::Error) -> Fail {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let lower = chain.to_lowercase();
    if ["certificate", "handshake", "tls", "alert"]
        .iter()
        .any(|w| lower.contains(w))
    {
        Fail::Permanent(anyhow!(
            "the learner at {target} failed the TLS handshake: {chain} (check --tls-ca, --tls-domain, and for mutual TLS --tls-cert/--tls-key)"
        ))
    } else {
        Fail::Transient(format!("cannot connect: {chain}"))
    }
}

/// A refusal by the learner: permanent for the token, the protocol or the build; retried when
/// the learner is busy or unreachable.
fn classify_status(target: &str, s: &tonic::Status) -> Fail {
    use tonic::Code;
    let mut msg = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(src) = source {
        msg = format!("{msg}: {src}");
        source = src.source();
    }
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition | Code::InvalidArgument => {
            Fail::Permanent(anyhow!("the learner at {target} refused this host: {msg}"))
        }
        _ if ["certificate", "fatal alert"].iter().any(|w| msg.to_lowercase().contains(w)) => Fail::Permanent(anyhow!(
            "the learner at {target} refused this host's TLS: {msg} (check --tls-ca, --tls-cert, --tls-key)"
        )),
        _ => Fail::Transient(format!("{} ({:?})", msg, s.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_counter_is_the_runs_frames_plus_what_was_played_here_since() {
        let link = Link::new();
        // Welcomed at 1,000 frames.
        let counter = AtomicU64::new(1000);
        *link.frames.lock().unwrap() = FrameSync {
            offset: 1000,
            reported: 0,
        };
        counter.fetch_add(40, Ordering::SeqCst);
        assert_eq!(link.take_frames(&counter), (40, 40));
        // 8 more played here before the ack; the learner counted the message at 5,000
        // (other hosts played too).
        counter.fetch_add(8, Ordering::SeqCst);
        link.sync_frames(&counter, 5000, 40);
        assert_eq!(counter.load(Ordering::SeqCst), 5008);
        assert_eq!(link.take_frames(&counter), (8, 48));
        // A learner restarted from a checkpoint at 3,000 frames: the counter follows it down,
        // keeping the 2 frames played here since the last message.
        counter.fetch_add(2, Ordering::SeqCst);
        link.sync_frames(&counter, 3000, 48);
        assert_eq!(counter.load(Ordering::SeqCst), 3002);
        assert_eq!(link.take_frames(&counter), (2, 50));
    }

    #[test]
    fn local_snapshot_versions_map_to_the_learners() {
        let link = Link::new();
        link.versions.lock().unwrap().extend([(1, 17), (2, 19)]);
        assert_eq!(link.remote_of(2), 19);
        assert_eq!(link.remote_of(1), 17);
        assert_eq!(link.remote_of(3), 0);
    }
}
