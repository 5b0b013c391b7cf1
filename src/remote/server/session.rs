//! A connected host's session: the reader of its stream, the pusher thread that moves its
//! experience into its lanes (counting each message once and acking it), and the sender of
//! snapshots, heartbeats and the learner's stop. When it ends, its lanes go back to the free ones.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::hosts::HostRecord;
use super::service::down_msg;
use super::Shared;
use crate::ipc::ActorMsg;
use crate::remote::wire::{self, down, up, Down, Up};
use crate::shm::PushError;

/// One connected host.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) record: Arc<HostRecord>,
    pub(super) lanes: Vec<usize>,
    pub(super) tx: mpsc::Sender<Result<Down, Status>>,
    /// Bytes of snapshots sent into `tx` and not yet taken by the transport (see
    /// [`outgoing`]).
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) name: String,
}

/// How long a snapshot may wait to be taken by a host's transport: a host that stops reading
/// is disconnected after this (its heartbeats alone do not keep it).
pub(super) const SNAPSHOT_TAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// The stream of a session's outgoing messages `rx`, counting the snapshots' bytes out of
/// `queued` as the transport takes them. With the sender's rule (no new snapshot while one
/// is queued) a session queues at most one snapshot and a few small messages: a host that
/// stops reading pins one snapshot, not one per version.
pub(super) fn outgoing(
    rx: mpsc::Receiver<Result<Down, Status>>,
    queued: Arc<AtomicUsize>,
) -> impl tokio_stream::Stream<Item = Result<Down, Status>> + Send {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |m| {
        if let Ok(Down {
            kind: Some(down::Kind::Snapshot(s)),
        }) = &m
        {
            queued.fetch_sub(s.weights.len(), Ordering::SeqCst);
        }
        m
    })
}

impl Session {
    pub(super) async fn run(self, mut stream: Streaming<Up>) {
        let shared = self.shared.clone();
        // One message read ahead of the pusher: what waits here is experience getting older.
        let (work_tx, work_rx) = mpsc::channel::<wire::Experience>(1);
        let ended = Arc::new(AtomicBool::new(false));
        let mut pusher = {
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
        // The sender says here when the host stops taking its snapshots.
        let (kick_tx, mut kick) = mpsc::channel::<String>(1);
        let sender = tokio::spawn(send_loop(
            shared.clone(),
            self.tx.clone(),
            ended.clone(),
            self.queued.clone(),
            kick_tx,
        ));
        let mut stop = shared.stop.subscribe();
        let mut deadline = tokio::time::Instant::now() + crate::remote::HEARTBEAT_TIMEOUT;
        let mut pushed = None;
        let reason: String = loop {
            tokio::select! {
                msg = tokio::time::timeout_at(deadline, stream.message()) => { deadline = tokio::time::Instant::now() + crate::remote::HEARTBEAT_TIMEOUT; match msg {
                    Err(_) => break format!("no message for {:?}", crate::remote::HEARTBEAT_TIMEOUT),
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
                Some(why) = kick.recv() => break why,
                // A message refused (or the queue closed): the session ends now, not at the
                // host's next message.
                res = &mut pusher => {
                    pushed = Some(res.unwrap_or_else(|e| Err(format!("pusher failed: {e}"))));
                    break "the queue closed, or the host read no acks".into();
                }
            }
        };
        drop(work_tx);
        // The pusher finishes the message it holds, then ends; its error, if any, is the
        // real reason (the reader only saw the channel close).
        let pushed = match pushed {
            Some(p) => p,
            None => pusher
                .await
                .unwrap_or_else(|e| Err(format!("pusher failed: {e}"))),
        };
        ended.store(true, Ordering::SeqCst);
        let reason = match pushed {
            Err(why) => {
                // Not waiting on a host that does not read.
                let _ = self
                    .tx
                    .send_timeout(
                        Err(Status::invalid_argument(why.clone())),
                        Duration::from_secs(1),
                    )
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
        let (raw, steps) = crate::remote::decode_experience(
            &e,
            &shared.layout,
            shared.num_actions,
            shared.max_slots,
            &shared.bounds,
        )
        .map_err(|e| e.to_string())?;
        let frames = {
            let mut last = record.last_seq.lock().unwrap();
            if e.seq > *last {
                // Its frames and games, bounded by the steps it delivered: a message that
                // breaks the bounds is not counted, and none of its slots is pushed.
                record
                    .ledger
                    .lock()
                    .unwrap()
                    .count(&shared.bounds, &e, steps)
                    .map_err(|e| e.to_string())?;
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
        let sent = handle.block_on(tx.send_timeout(Ok(ack), crate::remote::HEARTBEAT_TIMEOUT * 2));
        if sent.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends snapshots when their version changes, heartbeats, and the learner's stop. A new
/// snapshot waits while the last one is still queued (`queued` > 0): the newest is sent
/// when the transport took it, the ones in between are skipped. When one waits longer than
/// [`SNAPSHOT_TAKE_TIMEOUT`], says why on `kick` and ends.
async fn send_loop(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<Down, Status>>,
    ended: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    kick: mpsc::Sender<String>,
) {
    let mut sent_version = 0u64;
    let mut queued_since: Option<Instant> = None;
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
            let stop = down_msg(down::Kind::Stop(wire::Stop { reason, finished }));
            let _ = tx.send_timeout(Ok(stop), Duration::from_secs(1)).await;
            return;
        }
        if ended.load(Ordering::SeqCst) || tx.is_closed() {
            return;
        }
        let version = shared.snapshot.version();
        // Nothing is queued while a snapshot waits or the channel is full: a host that
        // stops reading pins one snapshot and a few small messages, and is dropped.
        if queued.load(Ordering::SeqCst) > 0 || tx.capacity() == 0 {
            let since = *queued_since.get_or_insert_with(Instant::now);
            if since.elapsed() > SNAPSHOT_TAKE_TIMEOUT {
                let _ = kick.try_send(format!(
                    "it took no snapshot for {SNAPSHOT_TAKE_TIMEOUT:?} (a host that does not read)"
                ));
                return;
            }
        } else {
            queued_since = None;
        }
        if version != sent_version && version != 0 && queued_since.is_none() {
            let shared2 = shared.clone();
            let compressed = tokio::task::spawn_blocking(move || latest_compressed(&shared2))
                .await
                .ok()
                .flatten();
            if let Some((v, weights)) = compressed {
                let bytes = weights.len();
                let msg = down_msg(down::Kind::Snapshot(wire::Snapshot {
                    version: v,
                    weights: weights.as_ref().clone(),
                }));
                // Counted before it is queued: the transport may take it at once.
                queued.fetch_add(bytes, Ordering::SeqCst);
                match tx.try_send(Ok(msg)) {
                    Ok(()) => {
                        sent_version = v;
                        last_beat = Instant::now();
                    }
                    // Filled since the check (by an ack): sent on a later turn.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        queued.fetch_sub(bytes, Ordering::SeqCst);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
        if last_beat.elapsed() >= crate::remote::HEARTBEAT_EVERY {
            let beat = down_msg(down::Kind::Heartbeat(wire::Heartbeat {
                snapshot_version: version,
            }));
            // A full channel already has something for the host to read.
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(beat)) {
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
        *cache = (version, Arc::new(crate::remote::compress_weights(&flat)));
    }
    Some((cache.0, cache.1.clone()))
}
