//! The handshake of a session: the gRPC service checks the host's token and Hello, gives it
//! lanes from the free remote ones and its host record, sends the Welcome (its config, seeds
//! and epsilons), then hands the stream to a [`Session`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::hosts::{forget_departed, HostRecord};
use super::session::{outgoing, Session};
use super::Shared;
use crate::ipc::actor_seed;
use crate::remote::bounds::{printable, MAX_LOGGED_CHARS};
use crate::remote::pb::actor_link_server::ActorLink;
use crate::remote::wire::{self, down, up, Down, Up};
use crate::schedule;

pub(super) struct Service {
    pub(super) shared: Arc<Shared>,
    pub(super) sessions: Arc<AtomicU32>,
}

type DownStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Down, Status>> + Send>>;

pub(super) fn down_msg(kind: down::Kind) -> Down {
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
            shared.token_refusals.log(&*shared.log, || {
                format!("refused a host at {peer}: {}", status.message())
            });
            return Err(status);
        }
        let mut stream = request.into_inner();
        let hello = match tokio::time::timeout(crate::remote::HELLO_TIMEOUT, stream.message()).await
        {
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
                    crate::remote::HELLO_TIMEOUT
                )))
            }
        };
        // The name is the host's own text: capped and made printable before any log line.
        let name = printable(&hello.name, 64);
        let refused = |status: Status| {
            (shared.log)(&format!(
                "refused host {name} at {peer}: {}",
                printable(status.message(), MAX_LOGGED_CHARS)
            ));
            Err(status)
        };
        if let Err(status) = check_hello(&hello) {
            return refused(status);
        }
        let n = hello.processes as usize;
        if n > shared.lanes_per_host {
            return refused(Status::failed_precondition(format!(
                "this host asks for {n} actor processes; one host may take at most {} of the learner's {} remote lanes (the learner's --max-lanes-per-host; give this host fewer --processes)",
                shared.lanes_per_host, shared.remote_lanes
            )));
        }
        // The hosts' map is locked from the duplicate check to the record's joining, so that
        // two sessions of one id cannot both pass.
        let (record, lanes) = {
            let mut hosts = shared.hosts.lock().unwrap();
            forget_departed(&mut hosts, shared.remote_lanes);
            if hosts.get(&hello.host_id).is_some_and(|r| r.is_connected()) {
                drop(hosts);
                return refused(Status::already_exists(format!(
                    "host id {:#x} has a session already: a second host with the same id, or this host reconnecting before the learner noticed its old connection was lost (retry in a few seconds)",
                    hello.host_id
                )));
            }
            let lanes = {
                let mut free = shared.free_lanes.lock().unwrap();
                if n > free.len() {
                    let msg = format!(
                        "this host asks for {n} actor processes; the learner has {} free remote lanes (raise the learner's --remote-lanes, or give this host fewer --processes)",
                        free.len()
                    );
                    drop(free);
                    drop(hosts);
                    return refused(Status::resource_exhausted(msg));
                }
                let at = free.len() - n;
                free.split_off(at)
            };
            let record = hosts
                .entry(hello.host_id)
                .or_insert_with(|| {
                    Arc::new(HostRecord::new(
                        shared.next_host.fetch_add(1, Ordering::SeqCst),
                        name.clone(),
                    ))
                })
                .clone();
            record.joined(hello.processes, &shared.bounds);
            (record, lanes)
        };
        let host = record.host();
        let welcome = welcome(shared, &lanes, *record.last_seq.lock().unwrap(), host);
        (shared.log)(&format!(
            "host {host} ({name}, {peer}) joined with {} actor processes",
            hello.processes
        ));
        let (tx, rx) = mpsc::channel::<Result<Down, Status>>(16);
        let _ = tx.send(Ok(down_msg(down::Kind::Welcome(welcome)))).await;
        self.sessions.fetch_add(1, Ordering::SeqCst);
        let queued = Arc::new(AtomicUsize::new(0));
        let session = Session {
            shared: shared.clone(),
            record,
            lanes,
            tx,
            queued: queued.clone(),
            name: format!("host {host} ({name})"),
        };
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            session.run(stream).await;
            sessions.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(outgoing(rx, queued))))
    }
}

/// Refuses a session without the run's token (when there is one), comparing in constant time.
pub(in crate::remote) fn check_token(
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
pub(in crate::remote) fn check_hello(h: &wire::Hello) -> Result<(), Status> {
    if h.protocol != crate::remote::PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {}; this learner speaks {} (run the same build on every machine)",
            h.protocol,
            crate::remote::PROTOCOL_VERSION
        )));
    }
    if h.build != crate::remote::BUILD {
        return Err(Status::failed_precondition(format!(
            "async-rl {} on the host, {} on the learner: run the same build on every machine",
            h.build,
            crate::remote::BUILD
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
        protocol: crate::remote::PROTOCOL_VERSION,
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
