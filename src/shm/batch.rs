//! Plain-memory types that cross the queue boundary: the producer's borrowed
//! [`Transition`] and the consumer's preallocated [`Batch`], kept apart from
//! the shared-memory machinery so the learner can use them without it.

use super::queue::SlotLayout;

/// One transition as pushed by an actor: `obs` is the stacked u8 observation
/// (exactly `SlotLayout::obs_bytes` bytes), `action` the action index taken, `ret` the
/// n-step return (or, for a rule that bootstraps on the learner, the discounted sum of the
/// rewards), `discount` the weight of the learner's bootstrap (`gamma^k`, 0 for none) and
/// `next_obs` the observation it bootstraps from (present exactly when the queue's layout
/// carries one). The learner's target is `ret + discount * bootstrap(next_obs)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transition<'a> {
    /// Observation bytes (`obs_bytes` long).
    pub obs: &'a [u8],
    /// Action index (0 with continuous actions).
    pub action: u32,
    /// The continuous action, `action_dims` values (empty for discrete actions).
    pub action_values: &'a [f32],
    /// n-step return, or the discounted reward sum before the bootstrap.
    pub ret: f32,
    /// Weight of the learner's bootstrap value: `gamma^k`, or 0 (terminal, or none).
    pub discount: f32,
    /// The observation k steps later that the learner bootstraps from.
    pub next_obs: Option<&'a [u8]>,
}

/// A segment of consecutive agent steps of one environment, as pushed by an IMPALA actor
/// (see [`super::slot::SegmentShape`]): `len = actions.len()` steps (1 to `unroll`), with
/// `frames` holding the `len + 1` stacked observations s_0..s_len as `stack + len` frames
/// (s_0 whole, then the newest frame of each later observation), `rewards` the clipped rewards
/// r_0..r_len-1, `behaviour_logp` the acting policy's log pi(a_t | s_t), and `terminal` true
/// when s_len is terminal (no bootstrap); otherwise the learner bootstraps from V(s_len).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Segment<'a> {
    pub frames: &'a [u8],
    /// Action indices, one per step (0 with continuous actions).
    pub actions: &'a [u32],
    /// Continuous actions, `len * action_dims` values (empty for discrete actions).
    pub action_values: &'a [f32],
    pub rewards: &'a [f32],
    pub behaviour_logp: &'a [f32],
    pub terminal: bool,
}

/// Why a [`Segment`] does not fit a queue's [`SlotLayout`] (see [`Segment::check`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentMismatch {
    /// The layout holds single transitions.
    #[error("the queue carries single transitions, not segments")]
    NotSegments,
    /// A segment of 0 steps, or more than the layout's unroll.
    #[error("a segment of {len} steps; the queue's hold 1 to {unroll}")]
    Length {
        /// The segment's steps.
        len: usize,
        /// The layout's unroll.
        unroll: usize,
    },
    /// Rewards or log-probabilities not one per action.
    #[error("{actions} actions but {rewards} rewards and {logps} log-probabilities")]
    Arrays {
        /// Actions in the segment.
        actions: usize,
        /// Rewards in the segment.
        rewards: usize,
        /// Log-probabilities in the segment.
        logps: usize,
    },
    /// Continuous action values that are not `action_dims` per step.
    #[error("{found} continuous action values; the layout needs {expected}")]
    ActionValues {
        /// Values in the segment.
        found: usize,
        /// `len * action_dims`.
        expected: usize,
    },
    /// Frame bytes that are not the frame stack plus one frame per step.
    #[error("{found} frame bytes for {len} steps; the layout needs {expected}")]
    Frames {
        /// The segment's frame bytes.
        found: usize,
        /// The segment's steps.
        len: usize,
        /// The bytes the layout needs for `len` steps.
        expected: usize,
    },
}

/// Why a row cannot be appended to a [`Batch`] (see [`Batch::push`], [`Batch::push_segment`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchPushError {
    /// The batch has `capacity` rows already.
    #[error("the batch is full ({capacity} rows)")]
    Full {
        /// The batch's rows.
        capacity: usize,
    },
    /// A transition pushed into a batch of segments.
    #[error("the layout holds segments (push_segment)")]
    HoldsSegments,
    /// An observation of another size than the layout's.
    #[error("observations must be {0} bytes")]
    ObsLen(usize),
    /// A next observation missing (`needed`) or unexpected (`!needed`).
    #[error("the layout {} next observations", if *.needed { "needs" } else { "has no" })]
    NextObs {
        /// Whether the layout carries next observations.
        needed: bool,
    },
    /// A continuous action of another length than the layout's `action_dims`.
    #[error("continuous actions must have {0} values")]
    ActionValues(usize),
    /// A segment that does not fit the layout.
    #[error(transparent)]
    Segment(#[from] SegmentMismatch),
}

impl Segment<'_> {
    /// Why this segment does not fit `layout`, if it does not.
    ///
    /// # Errors
    ///
    /// [`SegmentMismatch`]: the layout holds transitions, or the segment's length, arrays or
    /// frames do not fit it.
    pub fn check(&self, layout: &SlotLayout) -> Result<(), SegmentMismatch> {
        let Some(shape) = layout.segment else {
            return Err(SegmentMismatch::NotSegments);
        };
        let len = self.actions.len();
        if len == 0 || len > shape.unroll {
            return Err(SegmentMismatch::Length {
                len,
                unroll: shape.unroll,
            });
        }
        if self.action_values.len() != len * layout.action_dims {
            return Err(SegmentMismatch::ActionValues {
                found: self.action_values.len(),
                expected: len * layout.action_dims,
            });
        }
        if self.rewards.len() != len || self.behaviour_logp.len() != len {
            return Err(SegmentMismatch::Arrays {
                actions: len,
                rewards: self.rewards.len(),
                logps: self.behaviour_logp.len(),
            });
        }
        let frames = (layout.stack() + len) * shape.frame_bytes;
        if self.frames.len() != frames {
            return Err(SegmentMismatch::Frames {
                found: self.frames.len(),
                len,
                expected: frames,
            });
        }
        Ok(())
    }
}

/// Consumer-side batch buffer, allocated once and reused. Only the first
/// [`len`](Self::len) rows are meaningful; `versions` holds each row's acting snapshot
/// version (low 32 bits).
///
/// Transitions (row i = transition i): `obs` is `[capacity * obs_bytes]` u8 row-major,
/// `actions` is `[capacity]` i64, `returns` and `discounts` are `[capacity]` f32, and
/// `next_obs` is like `obs` when the layout carries next observations (empty otherwise).
///
/// Segments (row i = segment i, T = unroll): `obs` is `[capacity, stack + T, frame_bytes]`
/// frames, `actions`, `rewards` and `behaviour_logp` are `[capacity, T]` (zero past the
/// segment's length), `lens` and `terminal` are `[capacity]`; `returns`, `discounts` and
/// `next_obs` are empty.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Observations, `capacity * obs_bytes` bytes, row-major (segments: their frames).
    pub obs: Vec<u8>,
    /// Actions, `capacity` entries (segments: `capacity * unroll`; i64 for direct use as
    /// gather indices).
    pub actions: Vec<i64>,
    /// Segments: clipped rewards, `capacity * unroll`.
    pub rewards: Vec<f32>,
    /// Segments: the behaviour policy's log-probabilities of the actions, `capacity * unroll`.
    pub behaviour_logp: Vec<f32>,
    /// Segments: steps in each, `capacity`.
    pub lens: Vec<u32>,
    /// Segments: whether each ends in a terminal state, `capacity`.
    pub terminal: Vec<bool>,
    /// The acting snapshot's version of each row (low 32 bits), `capacity`.
    pub versions: Vec<u32>,
    /// n-step returns (or discounted reward sums), `capacity` entries.
    pub returns: Vec<f32>,
    /// Bootstrap weights (`gamma^k`, 0 for none), `capacity` entries.
    pub discounts: Vec<f32>,
    /// Next observations, `capacity * obs_bytes` bytes when the layout has them, else empty.
    pub next_obs: Vec<u8>,
    /// Continuous actions, `[capacity, steps, action_dims]` f32 (segments: zero past the
    /// segment's length); empty for discrete actions.
    pub action_values: Vec<f32>,
    len: usize,
    capacity: usize,
    layout: SlotLayout,
}

impl Batch {
    /// Allocates a zeroed batch of `capacity` rows for `layout` (about
    /// `capacity * slot_bytes` bytes).
    pub fn new(capacity: usize, layout: SlotLayout) -> Self {
        let steps = layout.steps();
        let seg = layout.segment.is_some();
        let per_step = |on: bool| if on { capacity * steps } else { 0 };
        Self {
            obs: vec![0; capacity * Self::row_bytes_of(&layout)],
            actions: vec![0; capacity * steps],
            rewards: vec![0.0; per_step(seg)],
            behaviour_logp: vec![0.0; per_step(seg)],
            lens: vec![0; if seg { capacity } else { 0 }],
            terminal: vec![false; if seg { capacity } else { 0 }],
            versions: vec![0; capacity],
            returns: vec![0.0; if seg { 0 } else { capacity }],
            discounts: vec![0.0; if seg { 0 } else { capacity }],
            next_obs: if layout.next_obs {
                vec![0; capacity * layout.obs_bytes]
            } else {
                Vec::new()
            },
            action_values: vec![0.0; capacity * layout.action_values()],
            len: 0,
            capacity,
            layout,
        }
    }

    /// Bytes of `obs` per row: one observation, or a segment's frames.
    fn row_bytes_of(layout: &SlotLayout) -> usize {
        match layout.segment {
            Some(s) => (layout.stack() + s.unroll) * s.frame_bytes,
            None => layout.obs_bytes,
        }
    }

    /// Segments: stacked observation `t` (0..=len) of row `i`, `obs_bytes` long. Panics
    /// outside the row.
    pub fn segment_obs(&self, i: usize, t: usize) -> &[u8] {
        let shape = self.layout.segment.expect("segment_obs: a segment layout");
        let row = Self::row_bytes_of(&self.layout);
        let start = i * row + t * shape.frame_bytes;
        &self.obs[start..start + self.layout.obs_bytes]
    }

    /// Number of filled rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Agent steps in the filled rows: one per transition, a segment's length per segment.
    pub fn steps(&self) -> usize {
        if self.layout.segment.is_some() {
            self.lens[..self.len].iter().map(|&l| l as usize).sum()
        } else {
            self.len
        }
    }

    /// True if no row is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of rows.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The slot layout this batch was allocated for.
    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// Forgets all rows (no deallocation, no zeroing).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// True when `len() == capacity()`.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Observation bytes of row `i` (`obs_bytes` long). Panics if `i >= capacity`.
    pub fn obs_row(&self, i: usize) -> &[u8] {
        let n = self.layout.obs_bytes;
        &self.obs[i * n..(i + 1) * n]
    }

    /// Next observation bytes of row `i` (`obs_bytes` long; empty when the layout has none).
    pub fn next_obs_row(&self, i: usize) -> &[u8] {
        if self.next_obs.is_empty() {
            return &[];
        }
        let n = self.layout.obs_bytes;
        &self.next_obs[i * n..(i + 1) * n]
    }

    /// The next free row's observation (segments: frame) and next-observation buffers (the
    /// latter empty without next observations) and its index (call only when not full;
    /// panics otherwise or if the buffers were shrunk).
    pub(crate) fn next_row(&mut self) -> (&mut [u8], &mut [u8], usize) {
        let n = self.layout.obs_bytes;
        let r = Self::row_bytes_of(&self.layout);
        let i = self.len;
        let next: &mut [u8] = if self.next_obs.is_empty() {
            &mut []
        } else {
            &mut self.next_obs[i * n..(i + 1) * n]
        };
        (&mut self.obs[i * r..(i + 1) * r], next, i)
    }

    /// Appends `t` as the next row (for batches made outside the queue, e.g. in tests and
    /// benchmarks). Errors, leaving the batch as it was: the batch is full, or `t`'s
    /// observations do not fit the layout (a wrong size, or a next observation missing or
    /// unexpected).
    ///
    /// # Errors
    ///
    /// [`BatchPushError`]: `Full`, `HoldsSegments`, `ObsLen` or `NextObs`.
    pub fn push(&mut self, t: &Transition) -> Result<(), BatchPushError> {
        let n = self.layout.obs_bytes;
        if self.is_full() {
            return Err(BatchPushError::Full {
                capacity: self.capacity,
            });
        }
        if self.layout.segment.is_some() {
            return Err(BatchPushError::HoldsSegments);
        }
        if t.obs.len() != n || t.next_obs.map(<[u8]>::len).unwrap_or(n) != n {
            return Err(BatchPushError::ObsLen(n));
        }
        if t.next_obs.is_some() != self.layout.next_obs {
            return Err(BatchPushError::NextObs {
                needed: self.layout.next_obs,
            });
        }
        let n = self.layout.action_values();
        if t.action_values.len() != n {
            return Err(BatchPushError::ActionValues(n));
        }
        let (obs, next, i) = self.next_row();
        obs.copy_from_slice(t.obs);
        if let Some(src) = t.next_obs {
            next.copy_from_slice(src);
        }
        self.actions[i] = i64::from(t.action);
        self.action_values[i * n..(i + 1) * n].copy_from_slice(t.action_values);
        self.returns[i] = t.ret;
        self.discounts[i] = t.discount;
        self.versions[i] = 0;
        self.commit_row();
        Ok(())
    }

    /// Appends segment `s` as the next row (for batches made outside the queue: tests,
    /// benchmarks). Errors, leaving the batch as it was: the batch is full, or `s` does not
    /// fit the layout ([`Segment::check`]).
    ///
    /// # Errors
    ///
    /// [`BatchPushError`]: `Full`, or `Segment` with why the segment does not fit.
    pub fn push_segment(&mut self, s: &Segment) -> Result<(), BatchPushError> {
        if self.is_full() {
            return Err(BatchPushError::Full {
                capacity: self.capacity,
            });
        }
        s.check(&self.layout)?;
        let t = self.layout.steps();
        let (obs, _, i) = self.next_row();
        obs[..s.frames.len()].copy_from_slice(s.frames);
        let len = s.actions.len();
        for k in 0..t {
            self.actions[i * t + k] = s.actions.get(k).map_or(0, |a| i64::from(*a));
            self.rewards[i * t + k] = s.rewards.get(k).copied().unwrap_or(0.0);
            self.behaviour_logp[i * t + k] = s.behaviour_logp.get(k).copied().unwrap_or(0.0);
        }
        let d = self.layout.action_dims;
        let row = &mut self.action_values[i * t * d..(i + 1) * t * d];
        row.fill(0.0);
        row[..s.action_values.len()].copy_from_slice(s.action_values);
        self.lens[i] = len as u32;
        self.terminal[i] = s.terminal;
        self.versions[i] = 0;
        self.commit_row();
        Ok(())
    }

    /// Keeps the rows for which `keep(i)` is true (i their index now), in order, moving them
    /// down over the others; returns how many rows were removed. (The on-policy PPO learner
    /// drops the segments acted by older snapshots this way.)
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) -> usize {
        let (t, r, n) = (
            self.layout.steps(),
            Self::row_bytes_of(&self.layout),
            self.layout.obs_bytes,
        );
        let seg = self.layout.segment.is_some();
        let mut kept = 0;
        for i in 0..self.len {
            if !keep(i) {
                continue;
            }
            if kept != i {
                self.obs.copy_within(i * r..(i + 1) * r, kept * r);
                self.actions.copy_within(i * t..(i + 1) * t, kept * t);
                self.versions[kept] = self.versions[i];
                if seg {
                    self.rewards.copy_within(i * t..(i + 1) * t, kept * t);
                    self.behaviour_logp
                        .copy_within(i * t..(i + 1) * t, kept * t);
                    self.lens[kept] = self.lens[i];
                    self.terminal[kept] = self.terminal[i];
                } else {
                    self.returns[kept] = self.returns[i];
                    self.discounts[kept] = self.discounts[i];
                    if !self.next_obs.is_empty() {
                        self.next_obs.copy_within(i * n..(i + 1) * n, kept * n);
                    }
                }
            }
            kept += 1;
        }
        let removed = self.len - kept;
        self.len = kept;
        removed
    }

    /// Marks the row returned by `next_row` as filled.
    pub(crate) fn commit_row(&mut self) {
        self.len += 1;
    }
}
