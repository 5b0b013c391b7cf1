//! The layout of one experience-queue slot, kept in this one file because later
//! learning rules will add per-transition fields (e.g. the behaviour-policy
//! probability); everything that reads or writes slot bytes goes through here.

use super::batch::Transition;

/// Layout of one queue slot -- the single place that defines it.
///
/// A slot is `{ action: u32 @ 0, ret: f32 @ 4, obs: [u8; obs_bytes] @ 8 }`,
/// padded to a multiple of 8 bytes ([`SlotLayout::slot_bytes`]). `obs_bytes`
/// is the stacked u8 observation size (4*84*84 = 28224 bytes for Atari).
/// Adding a field (e.g. the behaviour-policy probability) means: give it an
/// offset here, extend `write`/`read` and [`Batch`](super::Batch), and bump
/// [`QUEUE_LAYOUT_VERSION`](super::queue::QUEUE_LAYOUT_VERSION).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLayout {
    /// Bytes of observation payload per slot (must be > 0).
    pub obs_bytes: usize,
}

impl SlotLayout {
    /// Byte offset of the `action: u32` field.
    pub const ACTION_OFFSET: usize = 0;
    /// Byte offset of the `ret: f32` (n-step return) field.
    pub const RET_OFFSET: usize = 4;
    /// Byte offset of the observation bytes.
    pub const OBS_OFFSET: usize = 8;
    /// Slots are padded to a multiple of this many bytes.
    pub const ALIGN: usize = 8;
    /// Atari: 4 stacked 84x84 u8 frames.
    pub const ATARI: SlotLayout = SlotLayout {
        obs_bytes: 4 * 84 * 84,
    };

    /// Size in bytes of one padded slot, or `None` on arithmetic overflow.
    pub fn slot_bytes(&self) -> Option<usize> {
        Self::OBS_OFFSET
            .checked_add(self.obs_bytes)?
            .checked_next_multiple_of(Self::ALIGN)
    }

    /// Copies `t` into the slot at `slot`.
    ///
    /// # Safety
    /// `slot` must be valid for writes of `slot_bytes()` bytes, 8-byte aligned,
    /// not concurrently accessed, and `t.obs.len() == self.obs_bytes`.
    pub(super) unsafe fn write(&self, slot: *mut u8, t: &Transition) {
        // SAFETY: the caller guarantees `slot` covers the whole slot and is
        // exclusively ours; the offsets are in bounds and suitably aligned.
        unsafe {
            slot.add(Self::ACTION_OFFSET).cast::<u32>().write(t.action);
            slot.add(Self::RET_OFFSET).cast::<f32>().write(t.ret);
            std::ptr::copy_nonoverlapping(
                t.obs.as_ptr(),
                slot.add(Self::OBS_OFFSET),
                self.obs_bytes,
            );
        }
    }

    /// Copies the slot at `slot` out: observation into `obs`, returns (action, ret).
    ///
    /// # Safety
    /// `slot` must be valid for reads of `slot_bytes()` bytes, 8-byte aligned,
    /// not concurrently written, and `obs.len() == self.obs_bytes`.
    pub(super) unsafe fn read(&self, slot: *const u8, obs: &mut [u8]) -> (u32, f32) {
        // SAFETY: as for `write`, guaranteed by the caller (committed slot).
        unsafe {
            let action = slot.add(Self::ACTION_OFFSET).cast::<u32>().read();
            let ret = slot.add(Self::RET_OFFSET).cast::<f32>().read();
            std::ptr::copy_nonoverlapping(
                slot.add(Self::OBS_OFFSET),
                obs.as_mut_ptr(),
                self.obs_bytes,
            );
            (action, ret)
        }
    }
}
