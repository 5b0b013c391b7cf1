//! A FIFO store of observation pieces (one 84x84 frame of an Atari stack, or a whole vector
//! observation) that keeps each distinct piece once while it is recent.
//!
//! Why: an Atari transition holds 4 stacked frames and the observation it bootstraps from
//! another 4, but consecutive stacks share 3 of their 4 frames, and a transition's next
//! observation is a later transition's observation. Storing whole stacks, 1,000,000
//! transitions would take 28 GB (56 GB with next observations); storing each frame once, about
//! 7 GB (`docs/` and the README's "Replay memory" give the measurements, and why not LZ4).
//!
//! Pieces get consecutive sequence numbers; the store keeps the newest `capacity` of them in a
//! ring, so piece `seq` lives at `seq % capacity` until `capacity` more are written (then
//! [`FrameStore::get`] says it is gone). A piece equal to one written at most `fresh` pieces
//! ago (found by its xxh3 hash, then compared byte for byte) is not written again: its
//! sequence number is returned. Older duplicates are written afresh, so that what a new
//! transition refers to is never older than `fresh` pieces.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

/// The piece store; see the module documentation.
pub struct FrameStore {
    piece_bytes: usize,
    capacity: usize,
    fresh: u64,
    /// `capacity * piece_bytes` bytes: piece `seq` at `(seq % capacity) * piece_bytes`.
    data: Vec<u8>,
    /// The hash of the piece in each ring slot.
    hashes: Vec<u64>,
    /// Pieces written so far (the next sequence number).
    written: u64,
    /// Hash -> sequence number of the newest live piece with that hash.
    index: HashMap<u64, u64>,
    /// Lookups answered by an existing piece (for measurements).
    pub reused: u64,
}

impl FrameStore {
    /// A store of `capacity` pieces of `piece_bytes` bytes that reuses duplicates written at
    /// most `fresh` pieces ago. The ring is allocated zeroed (pages are touched as written).
    /// Panics if `capacity` or `piece_bytes` is 0.
    pub fn new(piece_bytes: usize, capacity: usize, fresh: u64) -> Self {
        assert!(piece_bytes > 0 && capacity > 0, "an empty frame store");
        FrameStore {
            piece_bytes,
            capacity,
            fresh,
            data: vec![0; capacity * piece_bytes],
            hashes: vec![0; capacity],
            written: 0,
            index: HashMap::new(),
            reused: 0,
        }
    }

    /// Bytes per piece.
    pub fn piece_bytes(&self) -> usize {
        self.piece_bytes
    }

    /// Ring size in pieces.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pieces written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether piece `seq` is still stored.
    pub fn is_live(&self, seq: u64) -> bool {
        seq < self.written && self.written - seq <= self.capacity as u64
    }

    /// The bytes of piece `seq`, or `None` once it was overwritten (or never written).
    pub fn get(&self, seq: u64) -> Option<&[u8]> {
        self.is_live(seq).then(|| self.slot(seq))
    }

    fn slot(&self, seq: u64) -> &[u8] {
        let at = (seq % self.capacity as u64) as usize * self.piece_bytes;
        &self.data[at..at + self.piece_bytes]
    }

    /// Stores `piece` (`piece_bytes` long; panics otherwise) unless an equal piece was written
    /// at most `fresh` pieces ago, and returns the sequence number to refer to it by.
    pub fn insert(&mut self, piece: &[u8]) -> u64 {
        assert_eq!(piece.len(), self.piece_bytes, "piece size");
        let hash = xxh3_64(piece);
        if let Some(&seq) = self.index.get(&hash) {
            if self.written - seq <= self.fresh && self.is_live(seq) && self.slot(seq) == piece {
                self.reused += 1;
                return seq;
            }
        }
        let seq = self.written;
        let slot = (seq % self.capacity as u64) as usize;
        if seq >= self.capacity as u64 {
            // The piece written `capacity` ago leaves; forget its hash if it is the newest.
            let old = self.hashes[slot];
            if self.index.get(&old) == Some(&(seq - self.capacity as u64)) {
                self.index.remove(&old);
            }
        }
        let at = slot * self.piece_bytes;
        self.data[at..at + self.piece_bytes].copy_from_slice(piece);
        self.hashes[slot] = hash;
        self.index.insert(hash, seq);
        self.written += 1;
        seq
    }

    /// The raw state, for saving: (ring bytes, hashes, written).
    pub(super) fn raw(&self) -> (&[u8], &[u64], u64) {
        (&self.data, &self.hashes, self.written)
    }

    /// The ring's bytes and hashes, for restoring them in place; call
    /// [`FrameStore::set_written`] after.
    pub(super) fn raw_mut(&mut self) -> (&mut [u8], &mut [u64]) {
        (&mut self.data, &mut self.hashes)
    }

    /// Forgets every piece (the bytes stay allocated).
    pub(super) fn clear(&mut self) {
        self.written = 0;
        self.index.clear();
    }

    /// After the ring was filled through [`FrameStore::raw_mut`]: `written` pieces were
    /// written; rebuilds the duplicate index.
    pub(super) fn set_written(&mut self, written: u64) {
        self.written = written;
        self.index.clear();
        let live = written.min(self.capacity as u64);
        for seq in written - live..written {
            let slot = (seq % self.capacity as u64) as usize;
            self.index.insert(self.hashes[slot], seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_stored_once_while_fresh() {
        let mut s = FrameStore::new(3, 8, 4);
        let a = s.insert(&[1, 2, 3]);
        let b = s.insert(&[4, 5, 6]);
        assert_eq!(s.insert(&[1, 2, 3]), a, "a fresh duplicate is reused");
        assert_eq!((s.written(), s.reused), (2, 1));
        assert_eq!(s.get(b), Some(&[4u8, 5, 6][..]));
        // Four more pieces: [1, 2, 3] is now more than `fresh` old and is written again.
        for i in 0..4u8 {
            s.insert(&[i, i, 100]);
        }
        let again = s.insert(&[1, 2, 3]);
        assert_ne!(again, a);
        assert_eq!(s.get(again), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn the_ring_forgets_the_oldest_piece_first() {
        let mut s = FrameStore::new(1, 4, 0);
        let seqs: Vec<u64> = (0..6u8).map(|i| s.insert(&[i])).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(s.get(0), None);
        assert_eq!(s.get(1), None);
        assert_eq!(s.get(2), Some(&[2u8][..]));
        assert_eq!(s.get(5), Some(&[5u8][..]));
        assert_eq!(s.get(6), None, "not written yet");
        // The overwritten pieces' hashes are gone: an old value is stored anew.
        let mut t = FrameStore::new(1, 2, 10);
        t.insert(&[7]);
        t.insert(&[8]);
        t.insert(&[9]); // evicts [7]
        assert_eq!(t.insert(&[7]), 3);
    }

    #[test]
    fn restore_rebuilds_the_same_store() {
        let mut s = FrameStore::new(2, 3, 8);
        for i in 0..5u8 {
            s.insert(&[i, i]);
        }
        let (data, hashes, written) = s.raw();
        let mut r = FrameStore::new(2, 3, 8);
        let (d, h) = r.raw_mut();
        d.copy_from_slice(data);
        h.copy_from_slice(hashes);
        r.set_written(written);
        for seq in 0..6 {
            assert_eq!(r.get(seq), s.get(seq));
        }
        assert_eq!(r.insert(&[4, 4]), 4, "the restored index finds duplicates");
    }
}
