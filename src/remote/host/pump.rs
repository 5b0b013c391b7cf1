//! The actor host's pump thread: it starts the host's actor processes, keeps them going, and
//! is their queue's consumer. It forwards the slots as they are (with each slot's snapshot
//! version mapped to the learner's), the frames played and the games ended, in numbered
//! messages on the current session, through the [`Link`] that keeps them until they are acked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use ipc_channel::ipc::IpcReceiver;

use super::super::wire::{self, up, Up};
use super::link::{Link, Session, Turn};
use crate::ipc::ActorMsg;
use crate::shm::{ExperienceQueue, SlotLayout};
use crate::supervisor::ActorPool;

/// The pump sends what it has at least this often, even a few slots.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// The pump: starts the actors, keeps them going, and forwards their queue to the session
/// until `stop` or the link is done; then stops the actors.
pub(super) fn pump(
    link: &Link,
    queue: &ExperienceQueue,
    mut pool: ActorPool,
    reports: &IpcReceiver<ActorMsg>,
    max_slots: usize,
    stop: &AtomicBool,
) -> Result<()> {
    let stopping = || stop.load(Ordering::SeqCst) || link.is_done();
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
    // The session the pump serves: the link's current one once its unacked are resent.
    let mut session: Option<Session> = None;
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
                    link.game_ended();
                    episodes.push(wire::Episode { score, frames });
                }
                ActorMsg::Failed { actor, message } => {
                    failures.push(format!("actor {actor} failed: {message}"))
                }
                ActorMsg::Ready { .. } | ActorMsg::Eval { .. } => {}
            }
        }
        match link.turn(session.as_ref().map(|s| s.number)) {
            Turn::Send => {}
            // A new session: resend what the learner has not acked, in order, before
            // anything new.
            Turn::Resend(current, resend) => {
                let ok = resend.into_iter().all(|msg| {
                    current
                        .tx
                        .blocking_send(Up {
                            kind: Some(up::Kind::Experience(msg)),
                        })
                        .is_ok()
                });
                session = ok.then_some(current);
                continue;
            }
            Turn::Idle => {
                session = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Turn::Full => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        }
        let Some(Session { tx, .. }) = &session else {
            continue;
        };
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
        let msg = link.sent(
            queue.frames(),
            wire::Experience {
                slots: slots as u32,
                payload: if slots > 0 {
                    lz4_flex::block::compress(&buf)
                } else {
                    Vec::new()
                },
                episodes: std::mem::take(&mut episodes),
                failures: std::mem::take(&mut failures),
                restarts: pool.restarts(),
                // Numbered, counted and versioned by the link.
                ..wire::Experience::default()
            },
        );
        buf.clear();
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
