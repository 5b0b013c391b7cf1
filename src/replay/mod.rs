//! The replay memory of the `dqn` rule: a FIFO ring of the newest `capacity` transitions
//! (Mnih et al. 2015), sampled uniformly or, with priorities, proportionally (Schaul et al.
//! 2016, "Prioritized Experience Replay"; new transitions get the largest priority so far).
//!
//! A transition is (s, a, G, discount, s'): the discounted reward sum `G` of up to n steps,
//! `discount = gamma^k` (0 after a terminal) and the observation `s'` it bootstraps from.
//! Observations are stored as pieces in a [`FrameStore`] (each 84x84 frame of an Atari stack
//! once; a vector observation whole), so a transition costs about one frame (7 KB) instead of
//! eight (56 KB): 1,000,000 Atari transitions fit in 7 GB, or, with the pieces LZ4-compressed
//! (`--replay-compression lz4`, the default), in a few hundred MB (Pong: about 300 bytes a
//! frame).
//!
//! Every transition refers to its pieces by sequence number. The piece ring is a little larger
//! than the transition ring, so the pieces of the oldest transition normally outlive it; a
//! transition whose piece was overwritten anyway (an episode that produced unusually many new
//! pieces) is never handed out: sampling skips it (and zeroes its priority).

pub mod frames;
mod persist;
pub use persist::{ReplayFileError, MAX_ABS_RETURN};
pub mod sum_tree;

use rand::Rng;

use crate::env::ObsSpec;
pub use frames::FrameStore;
pub use sum_tree::SumTree;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How the replay memory stores its (deduplicated) observation pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayCompression {
    /// LZ4 blocks (lz4_flex): an Atari frame of 7,056 bytes takes a few hundred.
    Lz4,
    /// Raw bytes: more memory, no decompression when sampling.
    None,
}

/// Proportional prioritization's settings (Schaul et al. 2016, section 3.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Priorities {
    /// Exponent of |TD error| in the priority (0.6 in the paper's proportional variant).
    pub alpha: f64,
    /// Added to |TD error| so no transition gets priority 0.
    pub epsilon: f64,
}

/// A sampled batch, with its buffers kept between calls.
#[derive(Default)]
pub struct Sample {
    /// Ring indices of the sampled transitions (for [`ReplayMemory::update_priorities`]).
    pub indices: Vec<usize>,
    /// Observations, `[batch * obs_bytes]` u8, row-major.
    pub obs: Vec<u8>,
    /// Next observations, same layout.
    pub next_obs: Vec<u8>,
    /// Actions `[batch]`.
    pub actions: Vec<i64>,
    /// Discounted reward sums `[batch]`.
    pub returns: Vec<f32>,
    /// Bootstrap weights `gamma^k` (0 after a terminal) `[batch]`.
    pub discounts: Vec<f32>,
    /// Importance-sampling weights `[batch]`, normalised by the batch's largest (all 1 for
    /// uniform sampling).
    pub weights: Vec<f32>,
    /// Mean sampling priority (prioritized replay; 0 otherwise).
    pub priority_mean: f64,
}

/// The replay memory; see the module documentation.
pub struct ReplayMemory {
    obs: ObsSpec,
    /// Pieces per observation and bytes per piece.
    pieces: usize,
    piece_bytes: usize,
    capacity: usize,
    frames: FrameStore,
    /// `[capacity * pieces]` sequence numbers of each transition's observation pieces.
    obs_seq: Vec<u64>,
    /// Same, of the next observation.
    next_seq: Vec<u64>,
    actions: Vec<u32>,
    returns: Vec<f32>,
    discounts: Vec<f32>,
    /// Transitions inserted so far (the next one goes to `inserted % capacity`).
    inserted: u64,
    prioritized: Option<(Priorities, SumTree)>,
    /// The largest priority given so far (new transitions get it).
    max_priority: f64,
}

/// The pieces of an observation: its frames `[h, w]` for stacked frames, the whole thing for
/// a vector.
fn piece_geometry(obs: ObsSpec) -> (usize, usize) {
    match obs {
        ObsSpec::Frames([c, h, w]) => (c, h * w),
        ObsSpec::Vector(_) => (1, obs.bytes()),
    }
}

impl ReplayMemory {
    /// A memory of `capacity` transitions of observations `obs`, prioritized when
    /// `prioritized` is given, its pieces LZ4-compressed when `lz4`. The piece ring holds `capacity + capacity/32 + 4096` pieces
    /// (`* pieces per observation` for vectors, which share nothing); duplicates are
    /// reused while they are at most `capacity/64 + 64` pieces old. Panics if `capacity` is 0.
    pub fn new(obs: ObsSpec, capacity: usize, prioritized: Option<Priorities>, lz4: bool) -> Self {
        assert!(capacity > 0, "a replay memory of 0 transitions");
        let (pieces, piece_bytes) = piece_geometry(obs);
        let ring = match obs {
            // A transition adds about one new frame: its newest. The slack covers episode
            // starts and the frames of next observations not yet anyone's observation.
            ObsSpec::Frames(_) => capacity + capacity / 32 + 4096,
            // A vector transition adds its observation (and, at an episode's end, the next).
            ObsSpec::Vector(_) => 2 * capacity + 64,
        };
        let fresh = (capacity / 64 + 64) as u64;
        ReplayMemory {
            obs,
            pieces,
            piece_bytes,
            capacity,
            frames: FrameStore::new(piece_bytes, ring, fresh, lz4),
            obs_seq: vec![0; capacity * pieces],
            next_seq: vec![0; capacity * pieces],
            actions: vec![0; capacity],
            returns: vec![0.0; capacity],
            discounts: vec![0.0; capacity],
            inserted: 0,
            prioritized: prioritized.map(|p| (p, SumTree::new(capacity))),
            max_priority: 1.0,
        }
    }

    /// Transitions held (at most the capacity).
    pub fn len(&self) -> usize {
        (self.inserted as usize).min(self.capacity)
    }

    /// True before the first insertion.
    pub fn is_empty(&self) -> bool {
        self.inserted == 0
    }

    /// Capacity in transitions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Transitions inserted since the memory was made (or restored with them).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// The piece store (for measurements).
    pub fn frames(&self) -> &FrameStore {
        &self.frames
    }

    /// Inserts (s, a, G, discount, s'), overwriting the oldest transition when full, and
    /// returns its ring index. `obs` and `next_obs` are `obs.bytes()` long (panics otherwise).
    pub fn insert(
        &mut self,
        obs: &[u8],
        action: u32,
        ret: f32,
        discount: f32,
        next_obs: &[u8],
    ) -> usize {
        let (p, pb) = (self.pieces, self.piece_bytes);
        assert_eq!(obs.len(), p * pb, "observation size");
        assert_eq!(next_obs.len(), p * pb, "next observation size");
        let i = (self.inserted % self.capacity as u64) as usize;
        for k in 0..p {
            self.obs_seq[i * p + k] = self.frames.insert(&obs[k * pb..(k + 1) * pb]);
        }
        for k in 0..p {
            self.next_seq[i * p + k] = self.frames.insert(&next_obs[k * pb..(k + 1) * pb]);
        }
        self.actions[i] = action;
        self.returns[i] = ret;
        self.discounts[i] = discount;
        self.inserted += 1;
        if let Some((_, tree)) = &mut self.prioritized {
            tree.set(i, self.max_priority);
        }
        i
    }

    /// Forgets every transition (the memory stays allocated).
    pub fn clear(&mut self) {
        self.inserted = 0;
        self.frames.clear();
        self.max_priority = 1.0;
        if let Some((_, tree)) = &mut self.prioritized {
            for i in 0..self.capacity {
                tree.set(i, 0.0);
            }
        }
    }

    /// Whether every piece of transition `i` is still stored.
    fn is_valid(&self, i: usize) -> bool {
        pieces_live(&self.obs_seq, &self.next_seq, &self.frames, self.pieces, i)
    }

    /// Copies the observation whose pieces are `seqs` into `out`.
    fn gather(&self, seqs: &[u64], out: &mut [u8]) {
        let pb = self.piece_bytes;
        for (k, &s) in seqs.iter().enumerate() {
            let live = self.frames.read(s, &mut out[k * pb..(k + 1) * pb]);
            assert!(live, "a valid transition's piece");
        }
    }

    /// Samples `batch` transitions into `out`: uniformly, or with probability
    /// `P(i) = p_i / sum_j p_j` when prioritized, with importance-sampling weights
    /// `w_i = (N P(i))^-beta / max_batch w` (Schaul et al. 2016, section 3.4; normalised by the
    /// batch's largest weight, as Dopamine does). Returns false (and samples nothing) when the
    /// memory holds no usable transition.
    pub fn sample(
        &mut self,
        batch: usize,
        beta: f64,
        rng: &mut impl Rng,
        out: &mut Sample,
    ) -> bool {
        out.indices.clear();
        let n = self.len();
        if n == 0 {
            return false;
        }
        if let Some((_, tree)) = &mut self.prioritized {
            let mut drawn = Vec::with_capacity(batch);
            // Stratified draws; one whose pieces are gone gets priority 0 and is drawn again.
            for _attempt in 0..8 {
                if tree.total() <= 0.0 {
                    return false;
                }
                tree.sample_stratified(batch - out.indices.len(), rng, &mut drawn);
                for &i in &drawn {
                    if pieces_live(&self.obs_seq, &self.next_seq, &self.frames, self.pieces, i) {
                        out.indices.push(i);
                    } else {
                        tree.set(i, 0.0);
                    }
                }
                if out.indices.len() == batch {
                    break;
                }
            }
        } else {
            let mut attempts = 0;
            while out.indices.len() < batch && attempts < 64 * batch {
                attempts += 1;
                let i = rng.gen_range(0..n);
                if self.is_valid(i) {
                    out.indices.push(i);
                }
            }
        }
        if out.indices.len() < batch {
            out.indices.clear();
            return false;
        }
        self.fill(beta, out);
        true
    }

    /// Fills `out`'s data for `out.indices`.
    fn fill(&self, beta: f64, out: &mut Sample) {
        let b = out.indices.len();
        let ob = self.obs.bytes();
        let p = self.pieces;
        out.obs.resize(b * ob, 0);
        out.next_obs.resize(b * ob, 0);
        out.actions.clear();
        out.returns.clear();
        out.discounts.clear();
        out.weights.clear();
        for (r, &i) in out.indices.iter().enumerate() {
            self.gather(
                &self.obs_seq[i * p..(i + 1) * p],
                &mut out.obs[r * ob..(r + 1) * ob],
            );
            self.gather(
                &self.next_seq[i * p..(i + 1) * p],
                &mut out.next_obs[r * ob..(r + 1) * ob],
            );
            out.actions.push(i64::from(self.actions[i]));
            out.returns.push(self.returns[i]);
            out.discounts.push(self.discounts[i]);
        }
        match &self.prioritized {
            Some((_, tree)) => {
                let (total, n) = (tree.total(), self.len() as f64);
                let mut sum = 0.0;
                for &i in &out.indices {
                    let pi = tree.get(i);
                    sum += pi;
                    out.weights.push(is_weight(pi / total, n, beta) as f32);
                }
                out.priority_mean = sum / b as f64;
                let max = out.weights.iter().copied().fold(0.0f32, f32::max);
                for w in &mut out.weights {
                    *w /= max;
                }
            }
            None => {
                out.weights.resize(b, 1.0);
                out.priority_mean = 0.0;
            }
        }
    }

    /// Sets the priorities of ring indices `indices` from their absolute TD errors:
    /// `p_i = (|delta_i| + epsilon)^alpha`. No effect without prioritization. An index whose
    /// transition was overwritten since it was sampled gets the new one's priority changed;
    /// the new one had the largest priority, so at worst it is replayed a little less soon.
    pub fn update_priorities(&mut self, indices: &[usize], abs_td: &[f32]) {
        let Some((cfg, tree)) = &mut self.prioritized else {
            return;
        };
        for (&i, &d) in indices.iter().zip(abs_td) {
            let p = priority(f64::from(d), *cfg);
            tree.set(i, p);
            self.max_priority = self.max_priority.max(p);
        }
    }
}

/// Whether every piece of transition `i` (observation and next observation, `p` pieces each)
/// is still in `frames`; on borrowed parts, so that the priority tree can be borrowed mutably
/// beside them.
fn pieces_live(obs: &[u64], next: &[u64], frames: &FrameStore, p: usize, i: usize) -> bool {
    obs[i * p..(i + 1) * p]
        .iter()
        .chain(&next[i * p..(i + 1) * p])
        .all(|&s| frames.is_live(s))
}

/// A transition's priority from its absolute TD error: `(|delta| + epsilon)^alpha`.
pub fn priority(abs_td: f64, p: Priorities) -> f64 {
    (abs_td.abs() + p.epsilon).powf(p.alpha)
}

/// The unnormalised importance-sampling weight `(n * prob)^-beta` of a transition drawn with
/// probability `prob` from `n` (Schaul et al. 2016, section 3.4).
pub fn is_weight(prob: f64, n: f64, beta: f64) -> f64 {
    (n * prob).powf(-beta)
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
