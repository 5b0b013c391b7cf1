//! Consumer (learner) side of the experience queue: round-robin draining of
//! the lanes into a preallocated [`Batch`], sleeping on the segment's data
//! futex while every lane is empty. Split from `queue.rs` to keep the producer
//! and consumer halves of the lane protocol each readable on one screen.

use super::futex;
use super::queue::{try_flag, Batch, ExperienceQueue, QueueError, MAX_WAIT};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl ExperienceQueue {
    /// Consumer side (one consumer only): moves committed transitions into
    /// `batch`, one per non-empty lane per round (round-robin, resuming after
    /// the last lane served), until the batch is full or `timeout` passes.
    /// Sleeps on a futex while all lanes are empty. Returns `Ok(true)` when the
    /// batch is full, `Ok(false)` on timeout or when the queue is closed and
    /// drained after this call moved something. Errors: `Closed` when closed,
    /// drained and nothing was moved by this call; `BatchLayout`;
    /// `ConsumerBusy`; `CorruptLane` when a lane's tail is further ahead of its
    /// head than the lane holds. Transitions a producer commits after the consumer has
    /// seen the close and drained may be dropped.
    pub fn pop_into(&self, batch: &mut Batch, timeout: Duration) -> Result<bool, QueueError> {
        let result = self.pop_into_inner(batch, timeout);
        // Producers left waiting with less room than `wake_room` are not left waiting longer.
        if !matches!(
            result,
            Err(QueueError::ConsumerBusy | QueueError::BatchLayout { .. })
        ) {
            self.wake_waiting_producers();
        }
        result
    }

    fn pop_into_inner(&self, batch: &mut Batch, timeout: Duration) -> Result<bool, QueueError> {
        if batch.layout() != self.layout {
            return Err(QueueError::BatchLayout {
                batch: batch.layout(),
                queue: self.layout,
            });
        }
        let _guard = try_flag(&self.consuming).ok_or(QueueError::ConsumerBusy)?;
        let deadline = Instant::now().checked_add(timeout);
        let mut moved = 0usize;
        loop {
            if batch.is_full() {
                return Ok(true);
            }
            let taken = self.take_round(batch)?;
            moved += taken;
            if taken > 0 {
                continue;
            }
            if self.is_closed() {
                // Everything committed before the close is visible by now.
                let late = self.take_round(batch)?;
                if late > 0 {
                    moved += late;
                    continue;
                }
                return if moved > 0 {
                    Ok(false)
                } else {
                    Err(QueueError::Closed)
                };
            }
            let now = Instant::now();
            let sleep = match deadline {
                Some(d) if d <= now => return Ok(false),
                Some(d) => (d - now).min(MAX_WAIT),
                None => MAX_WAIT,
            };
            self.wait_for_data(sleep, batch.capacity() - batch.len());
        }
    }

    /// One round-robin pass: at most one transition per lane.
    fn take_round(&self, batch: &mut Batch) -> Result<usize, QueueError> {
        let n = self.lanes.len();
        let start = self.cursor.load(Ordering::Relaxed);
        let mut taken = 0;
        for k in 0..n {
            if batch.is_full() {
                break;
            }
            let i = (start + k) % n;
            if self.take_one(i, batch)? {
                taken += 1;
                self.cursor.store((i + 1) % n, Ordering::Relaxed);
            }
        }
        Ok(taken)
    }

    /// Moves one transition of lane `i` into `batch`: false when the lane is empty, an error
    /// when its tail is further ahead of its head than the lane holds (a producer that wrote
    /// its control block wrongly: the lane can never be read again, so it is not skipped in
    /// silence).
    fn take_one(&self, i: usize, batch: &mut Batch) -> Result<bool, QueueError> {
        let lane = &self.lanes[i];
        let ctrl = self.ctrl(lane);
        let head = ctrl.cons.head.load(Ordering::Acquire);
        let tail = ctrl.prod.tail.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(head);
        if avail == 0 {
            return Ok(false);
        }
        if avail > lane.cap {
            return Err(QueueError::CorruptLane {
                lane: i,
                head,
                tail,
                capacity: lane.cap,
            });
        }
        let slot = self.slot(lane, head);
        // head < tail, so the slot was fully written before the producer's Release store of
        // `tail`, which we loaded with Acquire; the producer will not touch it until we
        // publish head + 1. The batch's layout is the queue's (checked by `pop_into`).
        // SAFETY: a committed slot of this queue's layout, read once, into a batch not full.
        unsafe { self.layout.read_into(slot, batch) };
        ctrl.cons.head.store(head.wrapping_add(1), Ordering::SeqCst);
        // A producer blocked on its full lane is woken once the lane has room for several
        // transitions, not after every one (one wake-up and one sleep per transition
        // otherwise). No wake-up is lost for good: a lane that the consumer drains reaches
        // that room before the consumer could sleep on an empty queue, and `pop_into` wakes
        // every waiting producer with any room when it returns.
        let free = lane.cap - (avail - 1);
        if free >= Self::wake_room(lane.cap) {
            self.wake_producer(ctrl);
        }
        Ok(true)
    }

    /// Free slots a full lane needs before its producer is woken: a quarter of the lane, at
    /// most 16, at least 1.
    fn wake_room(cap: u64) -> u64 {
        (cap / 4).clamp(1, 16)
    }

    /// Wakes the producer of the lane with control block `ctrl` if it waits for space.
    fn wake_producer(&self, ctrl: &super::queue_layout::LaneCtrl) {
        if ctrl.prod.space_waiting.load(Ordering::SeqCst) != 0 {
            ctrl.cons.space_epoch.fetch_add(1, Ordering::SeqCst);
            futex::wake(&ctrl.cons.space_epoch, i32::MAX);
        }
    }

    /// Wakes every producer that waits for space in a lane that has some.
    fn wake_waiting_producers(&self) {
        for lane in &self.lanes {
            let ctrl = self.ctrl(lane);
            let head = ctrl.cons.head.load(Ordering::SeqCst);
            let tail = ctrl.prod.tail.load(Ordering::Acquire);
            if tail.wrapping_sub(head) < lane.cap {
                self.wake_producer(ctrl);
            }
        }
    }

    /// Sleeps (at most `timeout`) until `need` more transitions have been committed, a lane
    /// is full, or the queue is closed; returns at once if they are already there.
    ///
    /// No lost wake-up: the target `wake_at` and `consumer_waiting` are stored (SeqCst) before
    /// `committed` is read again, and a producer increments `committed` before it reads them
    /// (SeqCst). So either this read sees the increment that reaches the target (no sleep), or
    /// that producer sees the target and bumps `epoch`, which was read before everything
    /// here, so the futex wait returns at once. `committed` is read before the lanes are
    /// counted: a transition counted in both only makes the wake-up early, never late.
    fn wait_for_data(&self, timeout: Duration, need: usize) {
        let header = self.header();
        let data = &header.data;
        let epoch = data.epoch.load(Ordering::SeqCst);
        let committed = header.committed.committed.load(Ordering::SeqCst);
        let available = self.len();
        // At most `capacity` transitions can be in the queue: never wait for more.
        let missing = need.min(self.capacity).saturating_sub(available);
        if missing == 0 || self.is_closed() {
            return;
        }
        let target = committed + missing as u64;
        data.wake_at.store(target, Ordering::SeqCst);
        data.consumer_waiting.store(1, Ordering::SeqCst);
        if header.committed.committed.load(Ordering::SeqCst) < target && !self.is_closed() {
            futex::wait(&data.epoch, epoch, timeout);
        }
        data.consumer_waiting.store(0, Ordering::Relaxed);
    }
}
