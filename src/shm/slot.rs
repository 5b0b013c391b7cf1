//! The layout of one experience-queue slot, kept in this one file because learning rules add
//! per-transition fields; everything that reads or writes slot bytes goes through here.

use super::batch::Transition;

/// Layout of one queue slot -- the single place that defines it.
///
/// A slot is
/// `{ action: u32 @ 0, ret: f32 @ 4, discount: f32 @ 8, obs: [u8; obs_bytes] @ 16,
///    next_obs: [u8; obs_bytes] @ 16 + obs_bytes (only when `next_obs`) }`,
/// padded to a multiple of 8 bytes ([`SlotLayout::slot_bytes`]). `obs_bytes` is the stacked
/// u8 observation size (4*84*84 = 28224 bytes for Atari).
///
/// The learner's target for a transition is `ret + discount * bootstrap(next_obs)`: the n-step
/// Q rule's actors bootstrap themselves and push `discount = 0` without a next observation;
/// the replay rule (`dqn`) pushes the discounted reward sum, `gamma^k` and the observation k
/// steps later, which the learner values with its target network.
///
/// Adding a field means: give it an offset here, extend `write`/`read` and
/// [`Batch`](super::Batch), and bump
/// [`QUEUE_LAYOUT_VERSION`](super::queue::QUEUE_LAYOUT_VERSION).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLayout {
    /// Bytes of observation payload per slot (must be > 0).
    pub obs_bytes: usize,
    /// Whether each slot also carries the bootstrap observation (`next_obs`).
    pub next_obs: bool,
}

impl SlotLayout {
    /// Byte offset of the `action: u32` field.
    pub const ACTION_OFFSET: usize = 0;
    /// Byte offset of the `ret: f32` (n-step return, or discounted reward sum) field.
    pub const RET_OFFSET: usize = 4;
    /// Byte offset of the `discount: f32` field (the bootstrap's weight, 0 when none).
    pub const DISCOUNT_OFFSET: usize = 8;
    /// Byte offset of the observation bytes.
    pub const OBS_OFFSET: usize = 16;
    /// Slots are padded to a multiple of this many bytes.
    pub const ALIGN: usize = 8;
    /// Atari: 4 stacked 84x84 u8 frames, no next observation.
    pub const ATARI: SlotLayout = SlotLayout {
        obs_bytes: 4 * 84 * 84,
        next_obs: false,
    };

    /// A layout of `obs_bytes` observations without a next observation.
    pub const fn new(obs_bytes: usize) -> Self {
        SlotLayout {
            obs_bytes,
            next_obs: false,
        }
    }

    /// Size in bytes of one padded slot, or `None` on arithmetic overflow.
    pub fn slot_bytes(&self) -> Option<usize> {
        let payload = if self.next_obs {
            self.obs_bytes.checked_mul(2)?
        } else {
            self.obs_bytes
        };
        Self::OBS_OFFSET
            .checked_add(payload)?
            .checked_next_multiple_of(Self::ALIGN)
    }

    /// Copies `t` into the slot at `slot`.
    ///
    /// # Safety
    /// `slot` must be valid for writes of `slot_bytes()` bytes, 8-byte aligned,
    /// not concurrently accessed, `t.obs.len() == self.obs_bytes`, and `t.next_obs` must be
    /// `Some` with `obs_bytes` bytes exactly when `self.next_obs`.
    pub(super) unsafe fn write(&self, slot: *mut u8, t: &Transition) {
        // SAFETY: the caller guarantees `slot` covers the whole slot and is
        // exclusively ours; the offsets are in bounds and suitably aligned.
        unsafe {
            slot.add(Self::ACTION_OFFSET).cast::<u32>().write(t.action);
            slot.add(Self::RET_OFFSET).cast::<f32>().write(t.ret);
            slot.add(Self::DISCOUNT_OFFSET)
                .cast::<f32>()
                .write(t.discount);
            std::ptr::copy_nonoverlapping(
                t.obs.as_ptr(),
                slot.add(Self::OBS_OFFSET),
                self.obs_bytes,
            );
            if let (true, Some(next)) = (self.next_obs, t.next_obs) {
                std::ptr::copy_nonoverlapping(
                    next.as_ptr(),
                    slot.add(Self::OBS_OFFSET + self.obs_bytes),
                    self.obs_bytes,
                );
            }
        }
    }

    /// Copies the slot at `slot` out: observation into `obs`, the next observation into
    /// `next_obs` (when the layout has one), and returns (action, ret, discount).
    ///
    /// # Safety
    /// `slot` must be valid for reads of `slot_bytes()` bytes, 8-byte aligned,
    /// not concurrently written, `obs.len() == self.obs_bytes`, and `next_obs.len()` must be
    /// `obs_bytes` when `self.next_obs`.
    pub(super) unsafe fn read(
        &self,
        slot: *const u8,
        obs: &mut [u8],
        next_obs: &mut [u8],
    ) -> (u32, f32, f32) {
        // SAFETY: as for `write`, guaranteed by the caller (committed slot).
        unsafe {
            let action = slot.add(Self::ACTION_OFFSET).cast::<u32>().read();
            let ret = slot.add(Self::RET_OFFSET).cast::<f32>().read();
            let discount = slot.add(Self::DISCOUNT_OFFSET).cast::<f32>().read();
            std::ptr::copy_nonoverlapping(
                slot.add(Self::OBS_OFFSET),
                obs.as_mut_ptr(),
                self.obs_bytes,
            );
            if self.next_obs {
                std::ptr::copy_nonoverlapping(
                    slot.add(Self::OBS_OFFSET + self.obs_bytes),
                    next_obs.as_mut_ptr(),
                    self.obs_bytes,
                );
            }
            (action, ret, discount)
        }
    }
}
