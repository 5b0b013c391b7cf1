//! Consumer (learner) side of the experience queue: round-robin draining of
//! the lanes into a preallocated [`Batch`], sleeping on the segment's data
//! futex while every lane is empty. Split from `queue.rs` to keep the producer
//! and consumer halves of the lane protocol each readable on one screen.

use super::futex;
use super::queue::{try_flag, Batch, ExperienceQueue, QueueError, SlotLayout, MAX_WAIT};
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
        self.pop_with(batch, timeout)
    }

    /// Consumer side, for a relay that forwards slots unread (an actor host's link to a
    /// remote learner): appends up to `max` committed slots to `out` as raw bytes, back to
    /// back (`slot_bytes` each, in the layout of [`SlotLayout`]), taken round-robin over the
    /// lanes like [`Self::pop_into`] and then grouped by lane (each lane's in order), waiting
    /// up to `timeout` for the first. Returns the number of slots appended; errors as
    /// `pop_into`.
    pub fn pop_raw(
        &self,
        out: &mut Vec<u8>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, QueueError> {
        let start = out.len();
        let mut sink = RawSink {
            out,
            lanes: Vec::with_capacity(max.min(1024)),
            max,
            taken: 0,
            slot_bytes: self.slot_bytes,
        };
        let result = self.pop_with(&mut sink, timeout);
        self.wake_waiting_producers();
        result?;
        // Round-robin interleaves the lanes; a lane's consecutive slots share most of their
        // bytes (3 of the 4 frames of a stack), which a compressor finds only within its
        // window (LZ4: 64 KB, about 2 Atari slots). Grouped by lane, 4 interleaved Breakout
        // actors compress to about 230 bytes a transition instead of 450
        // (examples/wire_bench.rs).
        let RawSink {
            out, lanes, taken, ..
        } = sink;
        if lanes.windows(2).any(|w| w[0] != w[1]) {
            let mut order: Vec<usize> = (0..taken).collect();
            order.sort_by_key(|&k| lanes[k]);
            let taken_bytes = out[start..].to_vec();
            for (dst, &src) in order.iter().enumerate() {
                let b = self.slot_bytes;
                out[start + dst * b..start + (dst + 1) * b]
                    .copy_from_slice(&taken_bytes[src * b..(src + 1) * b]);
            }
        }
        Ok(taken)
    }

    /// Size of one slot in bytes, as [`Self::pop_raw`] hands them out and
    /// [`Self::push_raw`] takes them.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The consumer loop of `pop_into` and `pop_raw`: fills `sink` until it is full or
    /// `timeout` passes (returning as soon as it holds anything after a wait).
    fn pop_with(&self, batch: &mut impl Sink, timeout: Duration) -> Result<bool, QueueError> {
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
            if batch.returns_early() && moved > 0 {
                return Ok(false);
            }
            let now = Instant::now();
            let sleep = match deadline {
                Some(d) if d <= now => return Ok(false),
                Some(d) => (d - now).min(MAX_WAIT),
                None => MAX_WAIT,
            };
            self.wait_for_data(sleep, batch.room());
        }
    }

    /// One round-robin pass: at most one transition per lane.
    fn take_round(&self, batch: &mut impl Sink) -> Result<usize, QueueError> {
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
    fn take_one(&self, i: usize, batch: &mut impl Sink) -> Result<bool, QueueError> {
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
        // SAFETY: a committed slot of this queue's layout, read once, into a sink not full.
        unsafe { batch.take(&self.layout, slot, i) };
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

/// Where the consumer loop puts the slots it takes.
trait Sink {
    fn is_full(&self) -> bool;
    /// Slots it can still take.
    fn room(&self) -> usize;
    /// True to return once anything was taken rather than wait to be full.
    fn returns_early(&self) -> bool;
    /// Takes the committed slot at `slot`, from lane `lane`.
    ///
    /// # Safety
    /// `slot` is a committed slot of a queue of `layout`, valid for reads of its
    /// `slot_bytes()` and not written while this runs; the sink is not full.
    unsafe fn take(&mut self, layout: &SlotLayout, slot: *const u8, lane: usize);
}

impl Sink for Batch {
    fn is_full(&self) -> bool {
        Batch::is_full(self)
    }
    fn room(&self) -> usize {
        self.capacity() - self.len()
    }
    fn returns_early(&self) -> bool {
        false
    }
    unsafe fn take(&mut self, layout: &SlotLayout, slot: *const u8, _lane: usize) {
        // SAFETY: guaranteed by the caller; the batch has this layout (`pop_into` checks).
        unsafe { layout.read_into(slot, self) }
    }
}

/// Raw slot bytes for a relay (`pop_raw`), with the lane of each.
struct RawSink<'a> {
    out: &'a mut Vec<u8>,
    lanes: Vec<usize>,
    max: usize,
    taken: usize,
    slot_bytes: usize,
}

impl Sink for RawSink<'_> {
    fn is_full(&self) -> bool {
        self.taken >= self.max
    }
    fn room(&self) -> usize {
        self.max - self.taken
    }
    fn returns_early(&self) -> bool {
        true
    }
    unsafe fn take(&mut self, _layout: &SlotLayout, slot: *const u8, lane: usize) {
        // SAFETY: the caller guarantees `slot_bytes` readable bytes at `slot`.
        let bytes = unsafe { std::slice::from_raw_parts(slot, self.slot_bytes) };
        self.out.extend_from_slice(bytes);
        self.lanes.push(lane);
        self.taken += 1;
    }
}
