//! An actor host (`learner --connect HOST:PORT --processes N`): N actor processes on this
//! machine for a remote learner, trained nothing here.
//!
//! The actors are the ordinary ones ([`crate::actor`]), on a local shared-memory queue and
//! snapshot. A pump thread ([`pump`]) is their queue's consumer: it forwards the slots as they
//! are (with each slot's snapshot version mapped to the learner's), the frames played and the
//! games ended, numbered, and the [`link`] keeps what the learner has not acked to resend after
//! a reconnection. The session (on a tokio runtime, here) publishes the snapshots that come
//! down, takes the acks, and reconnects with capped exponential backoff and jitter when the
//! learner goes away.

mod link;
mod pump;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::pb::actor_link_client::ActorLinkClient;
use super::wire::{self, down, up, Down, Up};
use crate::config::Config;
use crate::local_actors::{ActorSetup, LocalActors};
use crate::shm::{self, ExperienceQueue, SlotLayout, WeightSnapshot};
use link::Link;
use pump::pump;

/// Slots per actor process in the host's own queue. Small for the same reason: when the
/// learner is the bottleneck, experience waits in the buffers between the actors and it.
/// Measured on CartPole with a3c (sync every 200 frames): with 256 slots here and a window of
/// 8 messages, remote data was 2,500 frames old on arrival (local: 350) and 2 of 5 seeds
/// collapsed.
pub(crate) const LANE_SLOTS: usize = 32;

/// First and largest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a session ended.
enum End {
    /// The learner finished the run: exit.
    Finished(String),
    /// The learner stopped but may come back, or the connection was lost: reconnect.
    Retry(String),
    /// This process was asked to stop.
    Interrupted,
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
                    let reason = super::bounds::printable(&reason, super::bounds::MAX_LOGGED_CHARS);
                    crate::say!("the learner finished the run ({reason}); exiting");
                    return Ok(());
                }
                Ok(End::Interrupted) => return Ok(()),
                Ok(End::Retry(why)) | Err(Fail::Transient(why)) => why,
                Err(Fail::Permanent(e)) => return Err(e),
            };
            if let Some(e) = self.link.failure() {
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
        // What this host accepts from the learner: messages of its run's network and slots
        // once it knows them, before that of the largest network a learner serves.
        let limit = match &self.local {
            Some(l) => super::max_message_bytes(l.slot_bytes, l.numel),
            None => {
                super::max_message_bytes(super::MAX_MESSAGE_SLOT_BYTES, super::MAX_SNAPSHOT_PARAMS)
            }
        };
        let mut client = ActorLinkClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
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
        let local = self.local.as_ref().expect("admitted");
        // The pump resends what is unacked, then goes on, on this session's channel.
        let joined = self.link.new_session(
            up_tx.clone(),
            &welcome,
            self.hello.run_id,
            local.queue.frames(),
        );
        if let Some(dropped) = joined.dropped {
            crate::say!(
                "the learner at {} is a new run (restarted): {dropped} unacknowledged message(s) of the old one dropped",
                self.target
            );
        }
        self.hello.run_id = welcome.run_id;
        crate::say!(
            "joined the learner at {} as host {} ({} actor processes, {} at {} frames)",
            self.target,
            welcome.host,
            self.cfg.procs.processes,
            super::bounds::printable(&welcome.game, 64),
            welcome.frames
        );
        let end = self.receive(&mut down, &up_tx).await;
        self.link.end_session(joined.number);
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
        if w.config.len() > super::MAX_CONFIG_BYTES {
            return Err(BadWelcome::ConfigSize(w.config.len()).into());
        }
        if w.numel as usize > super::MAX_SNAPSHOT_PARAMS {
            return Err(BadWelcome::TooManyParams(w.numel).into());
        }
        let mut cfg: Config = super::decode_welcome_config(&w.config)
            .map_err(|e| BadWelcome::Config(e.to_string()))?;
        cfg.procs.processes = self.cfg.procs.processes;
        cfg.run.seed = w.seed;
        cfg.run.eval_every = 0;
        cfg.procs.max_actor_restarts = self.cfg.procs.max_actor_restarts;
        cfg.procs.actor_nice = self.cfg.procs.actor_nice;
        let id = cfg.env_id()?;
        let probe = crate::env::make(&id, &cfg.env_settings(cfg.run.seed))
            .with_context(|| format!("starting {} on this host", id.name()))?;
        let (num_actions, obs, actions) =
            (probe.num_actions(), probe.obs_spec(), probe.action_spec());
        drop(probe);
        let net = crate::rules::net_spec(&cfg, obs, &actions)?;
        let layout: SlotLayout = crate::rules::slot_layout(&cfg, obs, net.action_dims(num_actions));
        let slot_bytes = layout.slot_bytes().context("slot size")?;
        if num_actions != w.num_actions as usize || slot_bytes != w.slot_bytes as usize {
            bail!(
                "the learner plays {} with {} actions and slots of {} bytes; here it has {} actions and slots of {} bytes (another ROM?)",
                w.game, w.num_actions, w.slot_bytes, num_actions, slot_bytes
            );
        }
        // The network the run's config describes, built here: its size is what the
        // learner's snapshots must have (and what this host allocates for them).
        let numel =
            crate::model::AgentNetwork::new(net, obs, num_actions, tch::Device::Cpu).numel();
        check_welcome(w, slot_bytes, numel, cfg.procs.processes)?;
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
        self.link.started(w.frames);
        let pump = {
            let (link, queue, stop) = (self.link.clone(), queue.clone(), self.stop.clone());
            let max_slots = w.max_slots as usize;
            std::thread::Builder::new()
                .name("host-pump".into())
                .spawn(move || {
                    if let Err(e) = pump(&link, &queue, pool, &reports, max_slots, &stop) {
                        link.failed(format!("{e:#}"));
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
                            return Ok(End::Retry(format!("the learner stopped ({}); waiting for it to come back", super::bounds::printable(&s.reason, super::bounds::MAX_LOGGED_CHARS))))
                        }
                        down::Kind::Heartbeat(_) | down::Kind::Welcome(_) => {}
                    }
                }
                _ = beat.tick() => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(End::Interrupted);
                    }
                    if let Some(e) = self.link.failure() {
                        return Err(Fail::Permanent(anyhow!("{e}")));
                    }
                    let hb = Up { kind: Some(up::Kind::Heartbeat(wire::Heartbeat {
                        snapshot_version: self.link.remote_version(),
                    })) };
                    // A full channel already tells the learner this host is alive.
                    let _ = up_tx.try_send(hb);
                }
            }
        }
    }

    /// The learner counted everything up to `a.seq`.
    fn acked(&self, a: &wire::Ack) {
        let counter = self.local.as_ref().map(|l| l.queue.frames());
        self.link.acked(a, counter);
    }

    /// Publishes snapshot `s` to this host's actors.
    fn publish(&mut self, s: &wire::Snapshot) -> Result<()> {
        let local = self.local.as_mut().expect("admitted");
        super::decompress_weights(&s.weights, &mut local.flat)
            .map_err(|e| anyhow!("from the learner at {}: {e}", self.target))?;
        let v = local.snapshot.publish(&local.flat)?;
        self.link.published(v as u32, s.version);
        Ok(())
    }

    /// Stops the pump and the actors; prints what this host did (`host summary: ...`).
    fn shut_down(&mut self) {
        self.link.finish();
        if let Some(mut local) = self.local.take() {
            local.queue.close();
            if let Some(p) = local.pump.take() {
                let _ = p.join();
            }
            let sum = self.link.summary(local.queue.frames());
            crate::say!(
                "host summary: played frames {}, games {}, acked frames {}, messages {}",
                sum.played,
                sum.games,
                sum.acked_frames,
                sum.messages
            );
        }
    }
}

/// Why a learner's [`wire::Welcome`] is refused by a host: it does not fit the network and
/// slots this host builds from the run's config, or its sizes are beyond any run's.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadWelcome {
    /// A config larger than any run's.
    #[error("the learner's config is {0} bytes; at most {max}", max = super::MAX_CONFIG_BYTES)]
    ConfigSize(usize),
    /// A config that does not decode.
    #[error("the learner's config does not decode: {0}")]
    Config(String),
    /// More parameters than any snapshot a learner serves.
    #[error("the learner announces snapshots of {0} parameters; at most {max}", max = super::MAX_SNAPSHOT_PARAMS)]
    TooManyParams(u64),
    /// Another network size than the config's network has here.
    #[error("the learner announces snapshots of {learner} parameters; the network of its config has {here} here (another build or network?)")]
    Params {
        /// The Welcome's `numel`.
        learner: u64,
        /// The network built here.
        here: usize,
    },
    /// A slot count per message outside 1..=the protocol's for these slots.
    #[error("the learner asks for {given} slots per message; 1 to {max} for slots of this size")]
    MaxSlots {
        /// The Welcome's `max_slots`.
        given: u32,
        /// The most for slots of this size.
        max: usize,
    },
    /// Not one final epsilon per process, or one outside [0, 1].
    #[error(
        "the learner sent final epsilons {given:?} for {processes} processes (one each, in [0, 1])"
    )]
    Epsilons {
        /// The Welcome's epsilons (the first 8).
        given: Vec<f64>,
        /// This host's processes.
        processes: usize,
    },
}

/// Checks the sizes of welcome `w` against what this host built from its config: slots of
/// `slot_bytes`, a network of `numel` parameters, `processes` actor processes.
///
/// # Errors
///
/// [`BadWelcome`], the first thing that does not fit.
pub fn check_welcome(
    w: &wire::Welcome,
    slot_bytes: usize,
    numel: usize,
    processes: usize,
) -> Result<(), BadWelcome> {
    if w.numel > super::MAX_SNAPSHOT_PARAMS as u64 {
        return Err(BadWelcome::TooManyParams(w.numel));
    }
    if w.numel != numel as u64 {
        return Err(BadWelcome::Params {
            learner: w.numel,
            here: numel,
        });
    }
    let max = super::max_slots(slot_bytes);
    if w.max_slots == 0 || w.max_slots as usize > max {
        return Err(BadWelcome::MaxSlots {
            given: w.max_slots,
            max,
        });
    }
    if w.final_epsilons.len() != processes
        || !w.final_epsilons.iter().all(|e| (0.0..=1.0).contains(e))
    {
        return Err(BadWelcome::Epsilons {
            given: w.final_epsilons.iter().take(8).copied().collect(),
            processes,
        });
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
    let mut msg = super::bounds::printable(s.message(), super::bounds::MAX_LOGGED_CHARS);
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
