//! Byte layout of the experience-queue segment: header, per-lane control
//! blocks and slot regions. Shared by `create` and `open` so both sides derive
//! identical offsets from the parameters recorded in the header.
//!
//! Segment: `[Header][LaneCtrl; lanes][lane 0 slots][lane 1 slots]...`; every
//! control line is 128-byte aligned so producer- and consumer-written words
//! never share a cache line.

use super::queue::QueueError;
use super::slot::SlotLayout;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "ARLQUEUE" in ASCII; identifies a queue segment.
pub(super) const QUEUE_MAGIC: u64 = u64::from_le_bytes(*b"ARLQUEUE");
/// Version of the segment layout (header, lane control and [`SlotLayout`]).
/// Bump whenever any of them changes so stale actors fail loudly on `open`.
/// Version 3 added `discount` and the optional `next_obs` to the slot; version 4 the snapshot
/// `version` and segment slots.
pub const QUEUE_LAYOUT_VERSION: u32 = 4;

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

pub(super) fn geometry(
    lanes: usize,
    capacity: usize,
    layout: SlotLayout,
) -> Result<Geometry, QueueError> {
    if lanes == 0 {
        return Err(QueueError::NoLanes);
    }
    if capacity < lanes {
        return Err(QueueError::CapacityBelowLanes { capacity, lanes });
    }
    if layout.obs_bytes == 0 {
        return Err(QueueError::ZeroObsBytes);
    }
    layout.check().map_err(QueueError::BadLayout)?;
    let slot_bytes = layout.slot_bytes().ok_or(QueueError::TooLarge)?;
    let ctrl = size_of::<LaneCtrl>()
        .checked_mul(lanes)
        .ok_or(QueueError::TooLarge)?;
    let mut off = size_of::<Header>()
        .checked_add(ctrl)
        .ok_or(QueueError::TooLarge)?;
    let mut out = Vec::with_capacity(lanes);
    for i in 0..lanes {
        let cap = capacity / lanes + usize::from(i < capacity % lanes);
        out.push((off, cap as u64));
        let bytes = cap.checked_mul(slot_bytes).ok_or(QueueError::TooLarge)?;
        off = off.checked_add(bytes).ok_or(QueueError::TooLarge)?;
    }
    Ok(Geometry {
        lanes: out,
        slot_bytes,
        total: off,
    })
}
