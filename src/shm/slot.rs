//! The layout of one experience-queue slot, kept in this one file because learning rules add
//! per-transition fields; everything that reads or writes slot bytes goes through here.

use super::batch::{Batch, Segment, Transition};

/// Why a [`SlotLayout`] cannot be used (see [`SlotLayout::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A segment shape with an unroll of 0.
    #[error("a segment needs at least one step")]
    NoSteps,
    /// Segment frames whose size does not divide the observation's.
    #[error(
        "segment frames of {frame_bytes} bytes do not divide observations of {obs_bytes} bytes"
    )]
    FramesDoNotDivide {
        /// Bytes of one frame.
        frame_bytes: usize,
        /// Bytes of one observation.
        obs_bytes: usize,
    },
    /// A segment layout that also asks for a next observation.
    #[error("segments carry no separate next observation")]
    NextObsInSegments,
}

/// Why a raw slot (from a remote actor host) cannot be trained on (see
/// [`SlotLayout::check_raw`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BadSlot {
    /// The layout's slot size overflows `usize`.
    #[error("slot size overflows")]
    SizeOverflows,
    /// A slot of another size than the layout's.
    #[error("a slot of {found} bytes; the layout's are {expected}")]
    Length {
        /// The slot's bytes.
        found: usize,
        /// The layout's slot bytes.
        expected: usize,
    },
    /// A transition's action outside `0..num_actions`.
    #[error("action {action}; the game has {num_actions}")]
    Action {
        /// The action.
        action: u32,
        /// The game's action count.
        num_actions: usize,
    },
    /// A transition's return that is not finite.
    #[error("return {0}")]
    Return(f32),
    /// A transition's discount outside [0, 1].
    #[error("discount {0}; valid: 0 to 1")]
    Discount(f32),
    /// A segment length outside 1..=unroll.
    #[error("a segment of {len} steps; valid: 1 to {unroll}")]
    SegmentLength {
        /// The length the slot states.
        len: usize,
        /// The layout's unroll.
        unroll: usize,
    },
    /// A segment's terminal flag other than 0 or 1.
    #[error("terminal flag {0}; valid: 0 or 1")]
    Terminal(u32),
    /// A segment step's action outside `0..num_actions`.
    #[error("action {action} at step {step}; the game has {num_actions}")]
    StepAction {
        /// The action.
        action: u32,
        /// The step, from 0.
        step: usize,
        /// The game's action count.
        num_actions: usize,
    },
    /// A segment step's reward that is not finite.
    #[error("reward {reward} at step {step}")]
    Reward {
        /// The reward.
        reward: f32,
        /// The step, from 0.
        step: usize,
    },
    /// A segment step's behaviour log-probability that is not finite, or positive.
    #[error("behaviour log-probability {logp} at step {step}")]
    LogProb {
        /// The log-probability.
        logp: f32,
        /// The step, from 0.
        step: usize,
    },
    /// A continuous action value that is not finite.
    #[error("continuous action value {value} (value {index} of the slot)")]
    ActionValue {
        /// The value.
        value: f32,
        /// Its index among the slot's action values.
        index: usize,
    },
}

/// What [`SlotLayout::raw_numbers`] reads of a raw slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawNumbers {
    /// Agent steps the slot holds (1 for a transition).
    pub steps: usize,
    /// `|ret|` of a transition (0 for a segment).
    pub ret: f32,
    /// A transition's discount: > 0 when the learner bootstraps (`ret` is then a reward sum
    /// only), 0 when `ret` holds the actor's own bootstrap or the game ended (0 for a
    /// segment).
    pub discount: f32,
    /// The largest `|reward|` of a segment's steps (0 for a transition).
    pub reward: f32,
    /// The smallest behaviour log-probability of a segment's steps (0 for a transition).
    pub min_logp: f32,
}

/// A queue whose slots hold segments of consecutive agent steps (IMPALA's unrolls) instead of
/// single transitions.
///
/// A segment of `len <= unroll` steps stores its `len + 1` stacked observations as
/// `stack + len` frames of `frame_bytes` each: the first observation whole (`stack` frames,
/// `stack = obs_bytes / frame_bytes`), then only the newest frame of each later one, since
/// consecutive stacked observations share all but one frame. Observation t is frames
/// `t .. t + stack`. A 20-step Atari segment takes 24 frames (169 KB) instead of 21 whole
/// stacks (593 KB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentShape {
    /// Most agent steps per segment (`--unroll`), >= 1.
    pub unroll: usize,
    /// Bytes of one frame of the stack (84 * 84 for Atari; the whole observation, i.e.
    /// `obs_bytes`, for vector observations). Must divide `obs_bytes`.
    pub frame_bytes: usize,
}

/// Layout of one queue slot -- the single place that defines it.
///
/// A transition slot is
/// `{ action: u32 @ 0, ret: f32 @ 4, discount: f32 @ 8, version: u32 @ 12,
///    obs: [u8; obs_bytes] @ 16, next_obs: [u8; obs_bytes] @ 16 + obs_bytes (only when
///    `next_obs`) }`,
/// padded to a multiple of 8 bytes ([`SlotLayout::slot_bytes`]). `obs_bytes` is the stacked
/// u8 observation size (4*84*84 = 28224 bytes for Atari). `version` is the weight snapshot's
/// version the actor acted with (its low 32 bits), for the learner's snapshot age.
///
/// A segment slot (`segment` is `Some`, see [`SegmentShape`]; T = `unroll`) is
/// `{ len: u32 @ 0, terminal: u32 @ 4, version: u32 @ 12, actions: [u32; T] @ 16,
///    rewards: [f32; T] @ 16 + 4T, behaviour_logp: [f32; T] @ 16 + 8T,
///    frames: [u8; (stack + T) * frame_bytes] @ 16 + 12T }`, padded to 8 bytes; only the
/// first `len` steps and `stack + len` frames are meaningful.
///
/// The learner's target for a transition is `ret + discount * bootstrap(next_obs)`: the n-step
/// Q rule's actors bootstrap themselves and push `discount = 0` without a next observation;
/// the replay rule (`dqn`) pushes the discounted reward sum, `gamma^k` and the observation k
/// steps later, which the learner values with its target network.
///
/// With continuous actions (`action_dims` = d > 0, a Gymnasium `Box` action space), every
/// slot also ends in the actions as f32: `action_values: [f32; steps * d]` at
/// [`SlotLayout::action_values_offset`] (one action of d values for a transition, T for a
/// segment), and the u32 action fields are 0.
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
    /// Segments of agent steps instead of single transitions (then `next_obs` is false).
    pub segment: Option<SegmentShape>,
    /// Dimensions of a continuous action (0: discrete actions, the u32 fields).
    pub action_dims: usize,
}

impl SlotLayout {
    /// Byte offset of the `action: u32` field.
    pub const ACTION_OFFSET: usize = 0;
    /// Byte offset of the `ret: f32` (n-step return, or discounted reward sum) field.
    pub const RET_OFFSET: usize = 4;
    /// Byte offset of the `discount: f32` field (the bootstrap's weight, 0 when none).
    pub const DISCOUNT_OFFSET: usize = 8;
    /// Byte offset of the `version: u32` field (the acting snapshot's version).
    pub const VERSION_OFFSET: usize = 12;
    /// Byte offset of the observation bytes (a segment's action array).
    pub const OBS_OFFSET: usize = 16;
    /// Slots are padded to a multiple of this many bytes.
    pub const ALIGN: usize = 8;
    /// Atari: 4 stacked 84x84 u8 frames, no next observation.
    pub const ATARI: SlotLayout = SlotLayout {
        obs_bytes: 4 * 84 * 84,
        next_obs: false,
        segment: None,
        action_dims: 0,
    };

    /// A layout of `obs_bytes` observations without a next observation.
    pub const fn new(obs_bytes: usize) -> Self {
        SlotLayout {
            obs_bytes,
            next_obs: false,
            segment: None,
            action_dims: 0,
        }
    }

    /// A layout of transitions with `obs_bytes` observations and, when `next_obs`, the
    /// bootstrap observation.
    pub const fn transitions(obs_bytes: usize, next_obs: bool) -> Self {
        SlotLayout {
            obs_bytes,
            next_obs,
            segment: None,
            action_dims: 0,
        }
    }

    /// A layout of segments of up to `unroll` steps of `obs_bytes` observations stacked from
    /// frames of `frame_bytes` (see [`SegmentShape`]).
    pub const fn segments(obs_bytes: usize, unroll: usize, frame_bytes: usize) -> Self {
        SlotLayout {
            obs_bytes,
            next_obs: false,
            segment: Some(SegmentShape {
                unroll,
                frame_bytes,
            }),
            action_dims: 0,
        }
    }

    /// This layout with continuous actions of `dims` dimensions (0: discrete).
    pub const fn with_action_dims(self, dims: usize) -> Self {
        SlotLayout {
            action_dims: dims,
            ..self
        }
    }

    /// f32 action values per slot: `steps() * action_dims` (0 for discrete actions).
    pub fn action_values(&self) -> usize {
        self.steps() * self.action_dims
    }

    /// Byte offset of the continuous actions `[f32; steps * action_dims]`, after the
    /// observations (meaningful when `action_dims > 0`). `None` on overflow.
    pub fn action_values_offset(&self) -> Option<usize> {
        let arrays = self.segment.map_or(Some(0), |s| s.unroll.checked_mul(12))?;
        Self::OBS_OFFSET
            .checked_add(arrays)?
            .checked_add(self.obs_region_bytes()?)?
            .checked_next_multiple_of(4)
    }

    /// Frames per stacked observation (1 without segments).
    pub fn stack(&self) -> usize {
        match self.segment {
            Some(s) if s.frame_bytes > 0 => self.obs_bytes / s.frame_bytes,
            _ => 1,
        }
    }

    /// Steps per slot: `unroll` for segments, 1 for transitions.
    pub fn steps(&self) -> usize {
        self.segment.map_or(1, |s| s.unroll)
    }

    /// Observation bytes per slot: one observation (two with `next_obs`), or a segment's
    /// `(stack + unroll) * frame_bytes` frames. `None` on overflow.
    pub fn obs_region_bytes(&self) -> Option<usize> {
        match self.segment {
            Some(s) => self
                .stack()
                .checked_add(s.unroll)?
                .checked_mul(s.frame_bytes),
            None if self.next_obs => self.obs_bytes.checked_mul(2),
            None => Some(self.obs_bytes),
        }
    }

    /// Why this layout cannot be used, if it cannot.
    ///
    /// # Errors
    ///
    /// [`LayoutError`]: a segment shape whose frames do not divide the observation, an
    /// unroll of 0, or segments with a next observation.
    pub fn check(&self) -> Result<(), LayoutError> {
        if let Some(s) = self.segment {
            if s.unroll == 0 {
                return Err(LayoutError::NoSteps);
            }
            if s.frame_bytes == 0 || !self.obs_bytes.is_multiple_of(s.frame_bytes) {
                return Err(LayoutError::FramesDoNotDivide {
                    frame_bytes: s.frame_bytes,
                    obs_bytes: self.obs_bytes,
                });
            }
            if self.next_obs {
                return Err(LayoutError::NextObsInSegments);
            }
        }
        Ok(())
    }

    /// Size in bytes of one padded slot, or `None` on arithmetic overflow.
    pub fn slot_bytes(&self) -> Option<usize> {
        let values = self.steps().checked_mul(self.action_dims)?.checked_mul(4)?;
        self.action_values_offset()?
            .checked_add(values)?
            .checked_next_multiple_of(Self::ALIGN)
    }

    /// Why the raw slot `slot` (from a remote actor host, see `crate::remote`) cannot be
    /// trained on, if it cannot. Reading a slot never goes out of bounds whatever it holds;
    /// this check keeps garbage from reaching the loss.
    ///
    /// # Errors
    ///
    /// [`BadSlot`]: a wrong length, an action outside `0..num_actions`, a non-finite return,
    /// reward or log-probability, a discount outside [0, 1], a positive log-probability, or a
    /// segment length outside 1..=unroll.
    pub fn check_raw(&self, slot: &[u8], num_actions: usize) -> Result<(), BadSlot> {
        let want = self.slot_bytes().ok_or(BadSlot::SizeOverflows)?;
        if slot.len() != want {
            return Err(BadSlot::Length {
                found: slot.len(),
                expected: want,
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().unwrap());
        let f32_at = |at: usize| f32::from_le_bytes(slot[at..at + 4].try_into().unwrap());
        // Continuous actions: the u32 fields are unused (0), the values must be finite.
        let action_ok = |a: u32| {
            if self.action_dims > 0 {
                a == 0
            } else {
                (a as usize) < num_actions
            }
        };
        if self.action_dims > 0 {
            let at = self.action_values_offset().ok_or(BadSlot::SizeOverflows)?;
            for i in 0..self.action_values() {
                let v = f32_at(at + 4 * i);
                if !v.is_finite() {
                    return Err(BadSlot::ActionValue { value: v, index: i });
                }
            }
        }
        match self.segment {
            None => {
                let action = u32_at(Self::ACTION_OFFSET);
                if !action_ok(action) {
                    return Err(BadSlot::Action {
                        action,
                        num_actions,
                    });
                }
                let ret = f32_at(Self::RET_OFFSET);
                if !ret.is_finite() {
                    return Err(BadSlot::Return(ret));
                }
                let d = f32_at(Self::DISCOUNT_OFFSET);
                if !(0.0..=1.0).contains(&d) {
                    return Err(BadSlot::Discount(d));
                }
            }
            Some(shape) => {
                let unroll = shape.unroll;
                let len = u32_at(0) as usize;
                if len == 0 || len > unroll {
                    return Err(BadSlot::SegmentLength { len, unroll });
                }
                if u32_at(4) > 1 {
                    return Err(BadSlot::Terminal(u32_at(4)));
                }
                let arrays = Self::OBS_OFFSET;
                for step in 0..len {
                    let action = u32_at(arrays + 4 * step);
                    if !action_ok(action) {
                        return Err(BadSlot::StepAction {
                            action,
                            step,
                            num_actions,
                        });
                    }
                    let reward = f32_at(arrays + 4 * unroll + 4 * step);
                    if !reward.is_finite() {
                        return Err(BadSlot::Reward { reward, step });
                    }
                    let logp = f32_at(arrays + 8 * unroll + 4 * step);
                    // A density's log (continuous actions) may be positive; a probability's not.
                    if !logp.is_finite() || (logp > 0.0 && self.action_dims == 0) {
                        return Err(BadSlot::LogProb { logp, step });
                    }
                }
            }
        }
        Ok(())
    }

    /// The numbers of the raw slot `slot` (checked by [`SlotLayout::check_raw`] first) that a
    /// remote host could make absurd without breaking the layout: its agent steps (1 for a
    /// transition, `len` for a segment), and the largest magnitudes of its return (transitions)
    /// and rewards (a segment's first `len`), and its smallest behaviour log-probability
    /// (segments; 0 for transitions). Bounds on them are the remote server's
    /// (`crate::remote::bounds`).
    pub fn raw_numbers(&self, slot: &[u8]) -> RawNumbers {
        let u32_at = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().unwrap());
        let f32_at = |at: usize| f32::from_le_bytes(slot[at..at + 4].try_into().unwrap());
        match self.segment {
            None => RawNumbers {
                steps: 1,
                ret: f32_at(Self::RET_OFFSET).abs(),
                discount: f32_at(Self::DISCOUNT_OFFSET),
                reward: 0.0,
                min_logp: 0.0,
            },
            Some(shape) => {
                let unroll = shape.unroll;
                let len = (u32_at(0) as usize).min(unroll);
                let arrays = Self::OBS_OFFSET;
                let mut n = RawNumbers {
                    steps: len,
                    ret: 0.0,
                    discount: 0.0,
                    reward: 0.0,
                    min_logp: 0.0,
                };
                for step in 0..len {
                    n.reward = n.reward.max(f32_at(arrays + 4 * unroll + 4 * step).abs());
                    n.min_logp = n.min_logp.min(f32_at(arrays + 8 * unroll + 4 * step));
                }
                n
            }
        }
    }

    /// The snapshot version stamped in the raw slot `slot`.
    pub fn raw_version(slot: &[u8]) -> u32 {
        u32::from_le_bytes(
            slot[Self::VERSION_OFFSET..Self::VERSION_OFFSET + 4]
                .try_into()
                .unwrap(),
        )
    }

    /// Stamps snapshot `version` into the raw slot `slot` (a relay maps its local snapshot
    /// versions to the learner's).
    pub fn set_raw_version(slot: &mut [u8], version: u32) {
        slot[Self::VERSION_OFFSET..Self::VERSION_OFFSET + 4]
            .copy_from_slice(&version.to_le_bytes());
    }

    /// Copies `t` into the slot at `slot`.
    ///
    /// # Safety
    /// `slot` must be valid for writes of `slot_bytes()` bytes, 8-byte aligned,
    /// not concurrently accessed, `t.obs.len() == self.obs_bytes`, and `t.next_obs` must be
    /// `Some` with `obs_bytes` bytes exactly when `self.next_obs`.
    pub(super) unsafe fn write(&self, slot: *mut u8, t: &Transition, version: u32) {
        // SAFETY: the caller guarantees `slot` covers the whole slot and is
        // exclusively ours; the offsets are in bounds and suitably aligned.
        unsafe {
            slot.add(Self::ACTION_OFFSET).cast::<u32>().write(t.action);
            slot.add(Self::VERSION_OFFSET).cast::<u32>().write(version);
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
            self.write_action_values(slot, t.action_values);
        }
    }

    /// Copies the continuous actions `values` (`action_values()` long, checked by the queue)
    /// to their place in the slot at `slot`; nothing for discrete actions.
    ///
    /// # Safety
    /// As for [`SlotLayout::write`].
    unsafe fn write_action_values(&self, slot: *mut u8, values: &[f32]) {
        let n = self.action_values().min(values.len());
        if let (true, Some(at)) = (n > 0, self.action_values_offset()) {
            // SAFETY: the values region lies inside the slot (slot_bytes counts it) and is
            // 4-byte aligned (the offset is a multiple of 4 in an 8-byte aligned slot).
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr(), slot.add(at).cast::<f32>(), n);
            }
        }
    }

    /// Copies segment `seg` (validated by the queue: `seg.check(self)`) into the slot at
    /// `slot`, stamped with snapshot `version`.
    ///
    /// # Safety
    /// As for [`SlotLayout::write`]; `self.segment` is `Some` and `seg` fits it.
    pub(super) unsafe fn write_segment(&self, slot: *mut u8, seg: &Segment, version: u32) {
        let t = self.steps();
        let len = seg.actions.len();
        // SAFETY: the caller guarantees `slot` covers the whole slot and is exclusively ours;
        // `len <= unroll` and the frames fit the frame region (checked by the queue).
        unsafe {
            slot.cast::<u32>().write(len as u32);
            slot.add(4).cast::<u32>().write(u32::from(seg.terminal));
            slot.add(8).cast::<u32>().write(0);
            slot.add(Self::VERSION_OFFSET).cast::<u32>().write(version);
            let arrays = slot.add(Self::OBS_OFFSET);
            std::ptr::copy_nonoverlapping(seg.actions.as_ptr(), arrays.cast::<u32>(), len);
            std::ptr::copy_nonoverlapping(
                seg.rewards.as_ptr(),
                arrays.add(4 * t).cast::<f32>(),
                len,
            );
            std::ptr::copy_nonoverlapping(
                seg.behaviour_logp.as_ptr(),
                arrays.add(8 * t).cast::<f32>(),
                len,
            );
            std::ptr::copy_nonoverlapping(
                seg.frames.as_ptr(),
                arrays.add(12 * t),
                seg.frames.len(),
            );
            self.write_action_values(slot, seg.action_values);
        }
    }

    /// Appends the slot at `slot` to `batch` as its next row (a transition, or a segment).
    ///
    /// # Safety
    /// `slot` must be valid for reads of `slot_bytes()` bytes, 8-byte aligned, not
    /// concurrently written and committed (written by [`SlotLayout::write`] or
    /// [`SlotLayout::write_segment`]); `batch` was made for this layout and is not full.
    pub(super) unsafe fn read_into(&self, slot: *const u8, batch: &mut Batch) {
        let i = batch.len();
        // SAFETY: as for `write`, guaranteed by the caller (committed slot); a segment's
        // `len` was written by `write_segment` (<= unroll) and is clamped again here.
        unsafe {
            batch.versions[i] = slot.add(Self::VERSION_OFFSET).cast::<u32>().read();
            match self.segment {
                None => {
                    batch.actions[i] =
                        i64::from(slot.add(Self::ACTION_OFFSET).cast::<u32>().read());
                    batch.returns[i] = slot.add(Self::RET_OFFSET).cast::<f32>().read();
                    batch.discounts[i] = slot.add(Self::DISCOUNT_OFFSET).cast::<f32>().read();
                    let (obs, next_obs, _) = batch.next_row();
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
                }
                Some(shape) => {
                    let t = shape.unroll;
                    let len = (slot.cast::<u32>().read() as usize).min(t);
                    batch.lens[i] = len as u32;
                    batch.terminal[i] = slot.add(4).cast::<u32>().read() != 0;
                    let arrays = slot.add(Self::OBS_OFFSET);
                    for k in 0..t {
                        // Steps past `len` are padding: zero, and masked by the learner.
                        batch.actions[i * t + k] = if k < len {
                            i64::from(arrays.cast::<u32>().add(k).read())
                        } else {
                            0
                        };
                    }
                    batch.rewards[i * t + len..(i + 1) * t].fill(0.0);
                    batch.behaviour_logp[i * t + len..(i + 1) * t].fill(0.0);
                    std::ptr::copy_nonoverlapping(
                        arrays.add(4 * t).cast::<f32>(),
                        batch.rewards[i * t..].as_mut_ptr(),
                        len,
                    );
                    std::ptr::copy_nonoverlapping(
                        arrays.add(8 * t).cast::<f32>(),
                        batch.behaviour_logp[i * t..].as_mut_ptr(),
                        len,
                    );
                    let frames = (self.stack() + len) * shape.frame_bytes;
                    let (obs, _, _) = batch.next_row();
                    std::ptr::copy_nonoverlapping(arrays.add(12 * t), obs.as_mut_ptr(), frames);
                }
            }
            let n = self.action_values();
            if let (true, Some(at)) = (n > 0, self.action_values_offset()) {
                std::ptr::copy_nonoverlapping(
                    slot.add(at).cast::<f32>(),
                    batch.action_values[i * n..(i + 1) * n].as_mut_ptr(),
                    n,
                );
            }
        }
        batch.commit_row();
    }
}
