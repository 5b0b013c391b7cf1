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
    /// Action index.
    pub action: u32,
    /// n-step return, or the discounted reward sum before the bootstrap.
    pub ret: f32,
    /// Weight of the learner's bootstrap value: `gamma^k`, or 0 (terminal, or none).
    pub discount: f32,
    /// The observation k steps later that the learner bootstraps from.
    pub next_obs: Option<&'a [u8]>,
}

/// Consumer-side batch buffer, allocated once and reused: `obs` is
/// `[capacity * obs_bytes]` u8 row-major (row i = transition i), `actions` is
/// `[capacity]` i64, `returns` and `discounts` are `[capacity]` f32, and `next_obs` is like
/// `obs` when the layout carries next observations (empty otherwise). Only the first
/// [`len`](Self::len) rows are meaningful.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Observations, `capacity * obs_bytes` bytes, row-major.
    pub obs: Vec<u8>,
    /// Actions, `capacity` entries (i64 for direct use as gather indices).
    pub actions: Vec<i64>,
    /// n-step returns (or discounted reward sums), `capacity` entries.
    pub returns: Vec<f32>,
    /// Bootstrap weights (`gamma^k`, 0 for none), `capacity` entries.
    pub discounts: Vec<f32>,
    /// Next observations, `capacity * obs_bytes` bytes when the layout has them, else empty.
    pub next_obs: Vec<u8>,
    len: usize,
    capacity: usize,
    layout: SlotLayout,
}

impl Batch {
    /// Allocates a zeroed batch of `capacity` rows for `layout`
    /// (`capacity * (obs_bytes + 16)` bytes, twice the observations with next ones).
    pub fn new(capacity: usize, layout: SlotLayout) -> Self {
        Self {
            obs: vec![0; capacity * layout.obs_bytes],
            actions: vec![0; capacity],
            returns: vec![0.0; capacity],
            discounts: vec![0.0; capacity],
            next_obs: if layout.next_obs {
                vec![0; capacity * layout.obs_bytes]
            } else {
                Vec::new()
            },
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

    /// Next observation bytes of row `i` (`obs_bytes` long; empty when the layout has none).
    pub fn next_obs_row(&self, i: usize) -> &[u8] {
        if self.next_obs.is_empty() {
            return &[];
        }
        let n = self.layout.obs_bytes;
        &self.next_obs[i * n..(i + 1) * n]
    }

    /// The next free row's observation and next-observation buffers (the latter empty
    /// without next observations) and its index (call only when not full; panics otherwise
    /// or if the buffers were shrunk).
    pub(crate) fn next_row(&mut self) -> (&mut [u8], &mut [u8], usize) {
        let n = self.layout.obs_bytes;
        let i = self.len;
        let next: &mut [u8] = if self.next_obs.is_empty() {
            &mut []
        } else {
            &mut self.next_obs[i * n..(i + 1) * n]
        };
        (&mut self.obs[i * n..(i + 1) * n], next, i)
    }

    /// Appends `t` as the next row (for batches made outside the queue, e.g. in tests and
    /// benchmarks). Errors, leaving the batch as it was: the batch is full, or `t`'s
    /// observations do not fit the layout (a wrong size, or a next observation missing or
    /// unexpected).
    pub fn push(&mut self, t: &Transition) -> Result<(), String> {
        let n = self.layout.obs_bytes;
        if self.is_full() {
            return Err(format!("the batch is full ({} rows)", self.capacity));
        }
        if t.obs.len() != n || t.next_obs.map(<[u8]>::len).unwrap_or(n) != n {
            return Err(format!("observations must be {n} bytes"));
        }
        if t.next_obs.is_some() != self.layout.next_obs {
            return Err(format!(
                "the layout {} next observations",
                if self.layout.next_obs {
                    "needs"
                } else {
                    "has no"
                }
            ));
        }
        let (obs, next, i) = self.next_row();
        obs.copy_from_slice(t.obs);
        if let Some(src) = t.next_obs {
            next.copy_from_slice(src);
        }
        self.actions[i] = i64::from(t.action);
        self.returns[i] = t.ret;
        self.discounts[i] = t.discount;
        self.commit_row();
        Ok(())
    }

    /// Marks the row returned by `next_row` as filled.
    pub(crate) fn commit_row(&mut self) {
        self.len += 1;
    }
}
