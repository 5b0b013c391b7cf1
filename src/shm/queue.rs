//! Bounded multi-process experience queue: the only channel through which actor
//! processes hand transitions to the learner. It lives in one shared-memory
//! segment and is split into one single-producer/single-consumer ring ("lane")
//! per actor, so that an actor killed in the middle of a push can neither wedge
//! the queue nor expose a half-written slot: a slot becomes visible only when
//! its producer publishes the lane's tail (Release) after copying it.
//!
//! Segment layout (all offsets from the start of the mapping):
//! `[Header][LaneCtrl; lanes][lane 0 slots][lane 1 slots]...`, where every
//! control structure is 128-byte aligned so head and tail never share a cache
//! line, and each slot follows [`SlotLayout`].

use super::futex;
use super::mapping::{Mapping, SegmentError, SegmentHeader};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

pub use super::batch::{Batch, BatchPushError, Segment, SegmentMismatch, Transition};
pub use super::queue_layout::QUEUE_LAYOUT_VERSION;
use super::queue_layout::{geometry, Geometry, Header, LaneCtrl};
pub use super::slot::{BadSlot, LayoutError, RawNumbers, SegmentShape, SlotLayout};

/// Upper bound on one futex sleep, so `close()` and lost wakeups (which should
/// not happen) are noticed within this time.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(100);

/// Errors from consuming an [`ExperienceQueue`] (creating and opening one fail with a
/// [`SegmentError`]).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("batch layout {batch:?} does not match queue layout {queue:?}")]
    BatchLayout {
        batch: SlotLayout,
        queue: SlotLayout,
    },
    #[error("another thread of this process is already consuming")]
    ConsumerBusy,
    #[error("queue closed and drained")]
    Closed,
    #[error("lane {lane} is corrupted: its producer's tail {tail} is {} slots past the consumer's head {head}, but the lane holds {capacity}", .tail.wrapping_sub(*.head))]
    CorruptLane {
        lane: usize,
        head: u64,
        tail: u64,
        capacity: u64,
    },
}

/// Errors from [`ExperienceQueue::push`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("queue closed")]
    Closed,
    #[error("lane {lane} out of range (queue has {lanes} lanes)")]
    BadLane { lane: usize, lanes: usize },
    #[error("observation is {got} bytes, layout expects {expected}")]
    ObsLen { expected: usize, got: usize },
    #[error("the queue's slots {} a next observation; the transition {}", if *.expected { "carry" } else { "have no room for" }, if *.expected { "has none" } else { "has one" })]
    NextObs { expected: bool },
    #[error("another thread of this process is pushing into lane {lane}")]
    LaneBusy { lane: usize },
    #[error("{0}")]
    Shape(String),
}

/// Process-local view of one lane.
pub(super) struct Lane {
    pub(super) ctrl: *const LaneCtrl,
    pub(super) slots: *mut u8,
    pub(super) cap: u64,
    /// In-process guard: at most one thread of this process pushes here.
    pub(super) busy: AtomicBool,
}

/// See the module docs. Cheap to share between threads (`Sync`); one consumer
/// (a second concurrent `pop_into` in this process gets `ConsumerBusy`) and at
/// most one producer per lane at a time (across processes: by contract).
pub struct ExperienceQueue {
    pub(super) seg: Mapping<Header>,
    pub(super) lanes: Vec<Lane>,
    pub(super) layout: SlotLayout,
    pub(super) slot_bytes: usize,
    pub(super) capacity: usize,
    pub(super) cursor: AtomicUsize,
    pub(super) consuming: AtomicBool,
}

// Raw pointers point into `seg`'s mapping, which lives as long as `self`.
// SAFETY: shared mutable state is atomic or handed over by the lane protocol
// (Release tail / Acquire head); in-process guards stop two producers on one
// lane or two consumers.
unsafe impl Send for ExperienceQueue {}
// SAFETY: see `Send` above.
unsafe impl Sync for ExperienceQueue {}

/// Clears an in-process busy flag when dropped.
pub(super) struct FlagGuard<'a>(&'a AtomicBool);
impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
pub(super) fn try_flag(flag: &AtomicBool) -> Option<FlagGuard<'_>> {
    (!flag.swap(true, Ordering::Acquire)).then_some(FlagGuard(flag))
}

impl ExperienceQueue {
    /// Creates and owns the segment `name` (see [`super::segment_name`]); it is
    /// unlinked when this value is dropped, which also closes the queue.
    /// `lanes` = number of producers, `capacity` = total slots, split as evenly
    /// as possible (lane i gets capacity/lanes, +1 for the first
    /// capacity%lanes). Segment size is about `capacity * slot_bytes` plus
    /// 384 + 256 * lanes bytes. Errors: `Invalid` (no lanes, fewer slots than lanes,
    /// `obs_bytes` 0, a bad slot layout), `TooLarge`, `Shm` (e.g. the name already exists).
    pub fn create(
        name: &str,
        lanes: usize,
        capacity: usize,
        layout: SlotLayout,
    ) -> Result<Self, SegmentError> {
        let geo = geometry(lanes, capacity, layout)?;
        let seg = Mapping::create(name, geo.total, |h: &Header| {
            let cfg = &h.cfg;
            cfg.lanes.store(lanes as u64, Ordering::Relaxed);
            cfg.capacity.store(capacity as u64, Ordering::Relaxed);
            cfg.obs_bytes
                .store(layout.obs_bytes as u64, Ordering::Relaxed);
            cfg.next_obs
                .store(u64::from(layout.next_obs), Ordering::Relaxed);
            cfg.action_dims
                .store(layout.action_dims as u64, Ordering::Relaxed);
            let shape = layout.segment.unwrap_or(SegmentShape {
                unroll: 0,
                frame_bytes: 0,
            });
            cfg.unroll.store(shape.unroll as u64, Ordering::Relaxed);
            cfg.frame_bytes
                .store(shape.frame_bytes as u64, Ordering::Relaxed);
            cfg.slot_bytes
                .store(geo.slot_bytes as u64, Ordering::Relaxed);
        })?;
        Ok(Self::from_parts(seg, geo, layout, capacity))
    }

    /// Opens an existing queue (actor side) without taking ownership. Checks
    /// the magic, [`QUEUE_LAYOUT_VERSION`] and that the segment size matches
    /// the geometry recorded in the header. Errors: `Shm` (e.g. no such segment),
    /// `TooSmall`, `BadMagic`, `VersionMismatch`, `SizeMismatch`, and `Invalid` or
    /// `TooLarge` for a header that records no possible queue.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        let (seg, (geo, layout, capacity)) = Mapping::open(name, |h: &Header| {
            let cfg = &h.cfg;
            let as_usize = |v: &AtomicU64, what: &str| {
                let v = v.load(Ordering::Relaxed);
                usize::try_from(v).map_err(|_| SegmentError::TooLarge {
                    kind: Header::KIND,
                    shape: format!("{v} {what}"),
                })
            };
            let lanes = as_usize(&cfg.lanes, "lanes")?;
            let capacity = as_usize(&cfg.capacity, "slots")?;
            let unroll = as_usize(&cfg.unroll, "steps per segment")?;
            let layout = SlotLayout {
                obs_bytes: as_usize(&cfg.obs_bytes, "observation bytes")?,
                next_obs: cfg.next_obs.load(Ordering::Relaxed) != 0,
                segment: (unroll > 0).then_some(SegmentShape {
                    unroll,
                    frame_bytes: as_usize(&cfg.frame_bytes, "frame bytes")?,
                }),
                action_dims: as_usize(&cfg.action_dims, "action dimensions")?,
            };
            let geo = geometry(lanes, capacity, layout)?;
            let recorded = cfg.slot_bytes.load(Ordering::Relaxed);
            if recorded != geo.slot_bytes as u64 {
                return Err(SegmentError::Invalid {
                    kind: Header::KIND,
                    reason: format!(
                        "the queue header records slots of {recorded} bytes, its layout implies {}",
                        geo.slot_bytes
                    ),
                });
            }
            let total = geo.total;
            Ok(((geo, layout, capacity), total))
        })?;
        Ok(Self::from_parts(seg, geo, layout, capacity))
    }

    fn from_parts(
        seg: Mapping<Header>,
        geo: Geometry,
        layout: SlotLayout,
        capacity: usize,
    ) -> Self {
        let base = seg.as_ptr();
        let lanes = geo
            .lanes
            .iter()
            .enumerate()
            .map(|(i, &(off, cap))| Lane {
                // `geometry` placed the lane controls right after the header and
                // the slot regions after them, all within `total` bytes, which is
                // the mapping's length (`Mapping::create` made it that long,
                // `Mapping::open` checked it).
                // SAFETY: lane `i`'s control lies inside the mapping, as above.
                ctrl: unsafe {
                    base.add(size_of::<Header>() + i * size_of::<LaneCtrl>())
                        .cast()
                },
                // SAFETY: see above; `off + cap * slot_bytes <= total`.
                slots: unsafe { base.add(off) },
                cap,
                busy: AtomicBool::new(false),
            })
            .collect();
        Self {
            seg,
            lanes,
            layout,
            slot_bytes: geo.slot_bytes,
            capacity,
            cursor: AtomicUsize::new(0),
            consuming: AtomicBool::new(false),
        }
    }

    pub(super) fn header(&self) -> &Header {
        self.seg.header()
    }

    pub(super) fn ctrl(&self, lane: &Lane) -> &LaneCtrl {
        // SAFETY: points into our live mapping (see `from_parts`); all atomic.
        unsafe { &*lane.ctrl }
    }

    pub(super) fn slot(&self, lane: &Lane, index: u64) -> *mut u8 {
        // SAFETY: `index % cap < cap`, so the slot lies inside the lane's region.
        unsafe {
            lane.slots
                .add((index % lane.cap) as usize * self.slot_bytes)
        }
    }

    /// The slot layout (observation size) of this queue.
    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// Number of lanes (producers).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Total number of slots over all lanes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of slots of lane `lane`, or `None` if out of range.
    pub fn lane_capacity(&self, lane: usize) -> Option<usize> {
        self.lanes.get(lane).map(|l| l.cap as usize)
    }

    /// Total transitions ever committed to lane `lane` (its published tail);
    /// a replacement producer can use it to resume numbering.
    pub fn pushed(&self, lane: usize) -> Option<u64> {
        self.lanes
            .get(lane)
            .map(|l| self.ctrl(l).prod.tail.load(Ordering::Acquire))
    }

    /// True if this handle created (and will unlink) the segment.
    pub fn is_owner(&self) -> bool {
        self.seg.is_owner()
    }

    /// Producer side: appends `t` to lane `lane`, blocking (futex, no spinning)
    /// while the lane is full. Errors: `Closed` once [`close`](Self::close) was
    /// called (blocked producers notice within ~100 ms, usually at once),
    /// `BadLane`, `ObsLen` (t.obs.len() or a next observation's != obs_bytes),
    /// `NextObs` (a next observation missing or unexpected for the layout), `Shape` (the
    /// queue carries segments), `LaneBusy` if another thread of this process is pushing into
    /// the same lane. The slot's snapshot version is 0 (see [`Self::push_stamped`]).
    pub fn push(&self, lane: usize, t: &Transition) -> Result<(), PushError> {
        self.push_stamped(lane, t, 0)
    }

    /// [`Self::push`], recording that the actor acted with weight snapshot `version`.
    pub fn push_stamped(&self, lane: usize, t: &Transition, version: u32) -> Result<(), PushError> {
        if self.layout.segment.is_some() {
            return Err(PushError::Shape(
                "the queue carries segments, not single transitions".into(),
            ));
        }
        if t.obs.len() != self.layout.obs_bytes {
            return Err(PushError::ObsLen {
                expected: self.layout.obs_bytes,
                got: t.obs.len(),
            });
        }
        match (self.layout.next_obs, t.next_obs) {
            (true, Some(next)) if next.len() != self.layout.obs_bytes => {
                return Err(PushError::ObsLen {
                    expected: self.layout.obs_bytes,
                    got: next.len(),
                })
            }
            (true, None) | (false, Some(_)) => {
                return Err(PushError::NextObs {
                    expected: self.layout.next_obs,
                })
            }
            _ => {}
        }
        if t.action_values.len() != self.layout.action_values() {
            return Err(PushError::Shape(format!(
                "a continuous action of {} values; this queue's actions have {}",
                t.action_values.len(),
                self.layout.action_values()
            )));
        }
        // SAFETY (of the closure's write): `commit` hands it a free slot of this queue,
        // exclusively ours; `t` fits the layout (checked above).
        self.commit(lane, |slot| unsafe { self.layout.write(slot, t, version) })
    }

    /// Producer side: appends segment `seg` (see [`Segment`]) to lane `lane`, recording
    /// snapshot `version`; blocks like [`Self::push`]. Errors: as `push`, with `Shape` when
    /// the segment does not fit the layout (or the queue carries transitions).
    pub fn push_segment(&self, lane: usize, seg: &Segment, version: u32) -> Result<(), PushError> {
        seg.check(&self.layout)
            .map_err(|e| PushError::Shape(e.to_string()))?;
        // SAFETY (of the closure's write): as in `push_stamped`; `seg` fits (checked above).
        self.commit(lane, |slot| unsafe {
            self.layout.write_segment(slot, seg, version)
        })
    }

    /// Producer side, for slots that arrive whole (from a remote actor host, see
    /// `crate::remote`): appends the `slot_bytes()` bytes `slot` to lane `lane` as they are;
    /// blocks like [`Self::push`]. The bytes are read back with the layout's bounds (a
    /// segment's length is clamped to the unroll), so no content can make the learner read
    /// outside the slot; what the values mean is checked by the caller
    /// ([`SlotLayout::check_raw`]). Errors: as `push`, `Shape` for a wrong length.
    pub fn push_raw(&self, lane: usize, slot: &[u8]) -> Result<(), PushError> {
        if slot.len() != self.slot_bytes {
            return Err(PushError::Shape(format!(
                "a raw slot of {} bytes; this queue's slots are {}",
                slot.len(),
                self.slot_bytes
            )));
        }
        // SAFETY (of the closure's write): `commit` hands it a free slot of `slot_bytes`
        // bytes, exclusively ours; `slot` is that long (checked above).
        self.commit(lane, |dst| unsafe {
            std::ptr::copy_nonoverlapping(slot.as_ptr(), dst, slot.len())
        })
    }

    /// Waits for a free slot of lane `lane`, fills it with `write` and commits it.
    fn commit(&self, lane: usize, write: impl FnOnce(*mut u8)) -> Result<(), PushError> {
        let lanes = self.lanes.len();
        let l = self
            .lanes
            .get(lane)
            .ok_or(PushError::BadLane { lane, lanes })?;
        let _guard = try_flag(&l.busy).ok_or(PushError::LaneBusy { lane })?;
        let ctrl = self.ctrl(l);
        let tail = ctrl.prod.tail.load(Ordering::Acquire);
        loop {
            if self.is_closed() {
                return Err(PushError::Closed);
            }
            let head = ctrl.cons.head.load(Ordering::Acquire);
            if tail.wrapping_sub(head) < l.cap {
                break;
            }
            // Full: announce, re-check, then sleep on the lane's space epoch.
            let epoch = ctrl.cons.space_epoch.load(Ordering::SeqCst);
            ctrl.prod.space_waiting.store(1, Ordering::SeqCst);
            let head = ctrl.cons.head.load(Ordering::SeqCst);
            if tail.wrapping_sub(head) >= l.cap && !self.is_closed() {
                futex::wait(&ctrl.cons.space_epoch, epoch, MAX_WAIT);
            }
            ctrl.prod.space_waiting.store(0, Ordering::Relaxed);
        }
        // SAFETY: tail - head < cap, so slot `tail` is outside [head, tail) and
        // the consumer finished reading it before publishing `head` (Acquire
        // above); the lane guard makes us its only writer in this process.
        write(self.slot(l, tail));
        ctrl.prod.tail.store(tail.wrapping_add(1), Ordering::SeqCst);
        // Wake a sleeping consumer only when its batch can be completed (the committed count
        // reached what it asked for) or when this lane is now full (this producer will block
        // next, so the consumer must drain even a short batch): one wake-up per batch instead
        // of one per transition. A stale `head` only makes the lane look fuller: an early,
        // harmless wake-up. See `wait_for_data` for why no wake-up is lost.
        let header = self.header();
        let committed = header.committed.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let data = &header.data;
        if data.consumer_waiting.load(Ordering::SeqCst) != 0 {
            let lane_full = tail
                .wrapping_add(1)
                .wrapping_sub(ctrl.cons.head.load(Ordering::SeqCst))
                >= l.cap;
            if lane_full || committed >= data.wake_at.load(Ordering::SeqCst) {
                data.epoch.fetch_add(1, Ordering::SeqCst);
                futex::wake(&data.epoch, i32::MAX);
            }
        }
        Ok(())
    }

    /// Number of committed, not yet consumed transitions over all lanes.
    pub fn len(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| {
                let c = self.ctrl(l);
                let head = c.cons.head.load(Ordering::Acquire);
                let tail = c.prod.tail.load(Ordering::Acquire);
                tail.wrapping_sub(head).min(l.cap) as usize
            })
            .sum()
    }

    /// True if no committed transition is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the queue for good: producers get `PushError::Closed`, blocked
    /// producers and the consumer are woken. Already committed transitions can
    /// still be popped. Idempotent.
    pub fn close(&self) {
        self.header().cfg.closed.store(1, Ordering::SeqCst);
        for l in &self.lanes {
            let c = self.ctrl(l);
            c.cons.space_epoch.fetch_add(1, Ordering::SeqCst);
            futex::wake(&c.cons.space_epoch, i32::MAX);
        }
        let data = &self.header().data;
        data.epoch.fetch_add(1, Ordering::SeqCst);
        futex::wake(&data.epoch, i32::MAX);
    }

    /// True once any process called [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        self.header().cfg.closed.load(Ordering::SeqCst) != 0
    }

    /// The run's global emulator-frame counter (actors `fetch_add`, the
    /// learner loads); lives in the header on its own cache line.
    pub fn frames(&self) -> &AtomicU64 {
        &self.header().frames.frames
    }
}

impl Drop for ExperienceQueue {
    fn drop(&mut self) {
        // The owner going away means the run is over: release blocked actors.
        // (The `Mapping` field then unmaps, and unlinks if we are the owner.)
        if self.seg.is_owner() {
            self.close();
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
