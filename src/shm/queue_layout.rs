//! Byte layout of the experience-queue segment: header, per-lane control
//! blocks and slot regions. Shared by `create` and `open` so both sides derive
//! identical offsets from the parameters recorded in the header.
//!
//! Segment: `[Header][LaneCtrl; lanes][lane 0 slots][lane 1 slots]...`; every
//! control line is 128-byte aligned so producer- and consumer-written words
//! never share a cache line.

use super::mapping::{SegmentError, SegmentHeader};
use super::slot::SlotLayout;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "ARLQUEUE" in ASCII; identifies a queue segment.
pub(super) const QUEUE_MAGIC: u64 = u64::from_le_bytes(*b"ARLQUEUE");
/// Version of the segment layout (header, lane control and [`SlotLayout`]).
/// Bump whenever any of them changes so stale actors fail loudly on `open`.
/// Version 3 added `discount` and the optional `next_obs` to the slot; version 4 the snapshot
/// `version` and segment slots; version 5 the continuous actions (`action_dims`).
pub const QUEUE_LAYOUT_VERSION: u32 = 5;

/// Read-mostly part of the header: written once by the creator (magic last).
#[repr(C, align(128))]
pub(super) struct ConfigLine {
    pub(super) magic: AtomicU64,
    pub(super) layout_version: AtomicU32,
    pub(super) closed: AtomicU32,
    pub(super) lanes: AtomicU64,
    pub(super) capacity: AtomicU64,
    pub(super) obs_bytes: AtomicU64,
    /// 1 when slots carry a next observation ([`SlotLayout::next_obs`]).
    pub(super) next_obs: AtomicU64,
    pub(super) slot_bytes: AtomicU64,
    /// Steps per segment slot ([`SlotLayout::segment`]), 0 for transition slots.
    pub(super) unroll: AtomicU64,
    /// Bytes per frame of a segment slot, 0 for transition slots.
    pub(super) frame_bytes: AtomicU64,
    /// Dimensions of a continuous action ([`SlotLayout::action_dims`]), 0 for discrete.
    pub(super) action_dims: AtomicU64,
}

#[repr(C, align(128))]
pub(super) struct FramesLine {
    pub(super) frames: AtomicU64,
}

/// Consumer wake-up word, written by the consumer: while `consumer_waiting`, it sleeps on
/// `epoch` until [`CommittedLine::committed`] reaches `wake_at` (the transitions its batch
/// still needs) or a producer's lane fills up; the producer that sees either bumps `epoch`.
#[repr(C, align(128))]
pub(super) struct DataLine {
    pub(super) epoch: AtomicU32,
    pub(super) consumer_waiting: AtomicU32,
    pub(super) wake_at: AtomicU64,
}

/// Transitions committed over all lanes since creation; every producer adds one per push.
#[repr(C, align(128))]
pub(super) struct CommittedLine {
    pub(super) committed: AtomicU64,
}

#[repr(C)]
pub(super) struct Header {
    pub(super) cfg: ConfigLine,
    pub(super) frames: FramesLine,
    pub(super) data: DataLine,
    pub(super) committed: CommittedLine,
}

// SAFETY: `Header` is made of atomics only (its four lines hold `AtomicU64`s, `AtomicU32`s and
// padding), so any bytes are a valid header and processes may share it.
unsafe impl SegmentHeader for Header {
    const KIND: &'static str = "queue";
    const MAGIC: u64 = QUEUE_MAGIC;

    fn magic(&self) -> &AtomicU64 {
        &self.cfg.magic
    }

    fn version(&self) -> Option<(&AtomicU32, u32)> {
        Some((&self.cfg.layout_version, QUEUE_LAYOUT_VERSION))
    }
}

/// Written by the lane's producer.
#[repr(C, align(128))]
pub(super) struct ProducerLine {
    pub(super) tail: AtomicU64,
    pub(super) space_waiting: AtomicU32,
}

/// Written by the consumer; `space_epoch` is the producer's futex word.
#[repr(C, align(128))]
pub(super) struct ConsumerLine {
    pub(super) head: AtomicU64,
    pub(super) space_epoch: AtomicU32,
}

#[repr(C)]
pub(super) struct LaneCtrl {
    pub(super) prod: ProducerLine,
    pub(super) cons: ConsumerLine,
}

/// Byte offsets of everything in a segment, derived from its parameters only.
pub(super) struct Geometry {
    pub(super) lanes: Vec<(usize, u64)>, // (slot-region offset, lane capacity)
    pub(super) slot_bytes: usize,
    pub(super) total: usize,
}

/// A queue of this shape is not valid: `reason` says why.
fn invalid(reason: impl Into<String>) -> SegmentError {
    SegmentError::Invalid {
        kind: Header::KIND,
        reason: reason.into(),
    }
}

/// Offsets of a queue of `lanes` lanes sharing `capacity` slots of `layout`. Errors:
/// `Invalid` (no lanes, fewer slots than lanes, empty observations, a bad slot layout),
/// `TooLarge`.
pub(super) fn geometry(
    lanes: usize,
    capacity: usize,
    layout: SlotLayout,
) -> Result<Geometry, SegmentError> {
    if lanes == 0 {
        return Err(invalid("a queue needs at least one lane"));
    }
    if capacity < lanes {
        return Err(invalid(format!(
            "capacity {capacity} is smaller than the number of lanes {lanes}"
        )));
    }
    if layout.obs_bytes == 0 {
        return Err(invalid("obs_bytes must be > 0"));
    }
    layout
        .check()
        .map_err(|e| invalid(format!("slot layout: {e}")))?;
    let too_large = || SegmentError::TooLarge {
        kind: Header::KIND,
        shape: format!("{capacity} slots in {lanes} lanes"),
    };
    let slot_bytes = layout.slot_bytes().ok_or_else(too_large)?;
    let ctrl = size_of::<LaneCtrl>()
        .checked_mul(lanes)
        .ok_or_else(too_large)?;
    let mut off = size_of::<Header>()
        .checked_add(ctrl)
        .ok_or_else(too_large)?;
    let mut out = Vec::with_capacity(lanes);
    for i in 0..lanes {
        let cap = capacity / lanes + usize::from(i < capacity % lanes);
        out.push((off, cap as u64));
        let bytes = cap.checked_mul(slot_bytes).ok_or_else(too_large)?;
        off = off.checked_add(bytes).ok_or_else(too_large)?;
    }
    Ok(Geometry {
        lanes: out,
        slot_bytes,
        total: off,
    })
}
