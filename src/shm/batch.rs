//! Plain-memory types that cross the queue boundary: the producer's borrowed
//! [`Transition`] and the consumer's preallocated [`Batch`], kept apart from
//! the shared-memory machinery so the learner can use them without it.

use super::queue::SlotLayout;

/// One transition as pushed by an actor: `obs` is the stacked u8 observation
/// (exactly `SlotLayout::obs_bytes` bytes), `action` the action index taken and
/// `ret` the n-step return (f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition<'a> {
    /// Observation bytes (`obs_bytes` long).
    pub obs: &'a [u8],
    /// Action index.
    pub action: u32,
    /// n-step return.
    pub ret: f32,
}

/// Consumer-side batch buffer, allocated once and reused: `obs` is
/// `[capacity * obs_bytes]` u8 row-major (row i = transition i), `actions` is
/// `[capacity]` i64, `returns` is `[capacity]` f32. Only the first
/// [`len`](Self::len) rows are meaningful.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Observations, `capacity * obs_bytes` bytes, row-major.
    pub obs: Vec<u8>,
    /// Actions, `capacity` entries (i64 for direct use as gather indices).
    pub actions: Vec<i64>,
    /// n-step returns, `capacity` entries.
    pub returns: Vec<f32>,
    len: usize,
    capacity: usize,
    layout: SlotLayout,
}

impl Batch {
    /// Allocates a zeroed batch of `capacity` rows for `layout`
    /// (`capacity * (obs_bytes + 12)` bytes in total).
    pub fn new(capacity: usize, layout: SlotLayout) -> Self {
        Self {
            obs: vec![0; capacity * layout.obs_bytes],
            actions: vec![0; capacity],
            returns: vec![0.0; capacity],
            len: 0,
            capacity,
            layout,
        }
    }

    /// Number of filled rows.
    pub fn len(&self) -> usize {
        self.len
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

    /// The next free row's observation buffer and its index (call only when
    /// not full; panics otherwise or if `obs` was shrunk).
    pub(crate) fn next_row(&mut self) -> (&mut [u8], usize) {
        let n = self.layout.obs_bytes;
        let i = self.len;
        (&mut self.obs[i * n..(i + 1) * n], i)
    }

    /// Marks the row returned by `next_row` as filled.
    pub(crate) fn commit_row(&mut self) {
        self.len += 1;
    }
}
