//! A FIFO store of observation pieces (one 84x84 frame of an Atari stack, or a whole vector
//! observation) that keeps each distinct piece once while it is recent, optionally compressed
//! with LZ4.
//!
//! Why: an Atari transition holds 4 stacked frames and the observation it bootstraps from
//! another 4, but consecutive stacks share 3 of their 4 frames, and a transition's next
//! observation is a later transition's observation. Storing whole stacks, 1,000,000
//! transitions would take 56 GB with their next observations; storing each frame once, 6.9 GB;
//! each frame once and LZ4-compressed (Atari screens are mostly flat colour), a few hundred
//! MB. The README's "Replay memory" gives the measurements (`examples/replay_bench.rs`).
//!
//! Pieces get consecutive sequence numbers; the store keeps the newest `capacity` of them in a
//! ring, so piece `seq` lives in slot `seq % capacity` until `capacity` more are written (then
//! [`FrameStore::read`] says it is gone). A piece equal to one written at most `fresh` pieces
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
    lz4: bool,
    /// One stored piece per ring slot (LZ4 block, or the raw bytes): piece `seq` in slot
    /// `seq % capacity`.
    slots: Vec<Box<[u8]>>,
    /// The hash of the (uncompressed) piece in each ring slot.
    hashes: Vec<u64>,
    /// Pieces written so far (the next sequence number).
    written: u64,
    /// Hash -> sequence number of the newest live piece with that hash.
    index: HashMap<u64, u64>,
    /// A piece's worth of bytes, for comparing a compressed candidate.
    scratch: Vec<u8>,
    /// Lookups answered by an existing piece (for measurements).
    pub reused: u64,
    /// Bytes held in the slots (compressed when `lz4`).
    stored_bytes: usize,
}

impl FrameStore {
    /// A store of `capacity` pieces of `piece_bytes` bytes, LZ4-compressed when `lz4`, that
    /// reuses duplicates written at most `fresh` pieces ago. Panics if `capacity` or
    /// `piece_bytes` is 0.
    pub fn new(piece_bytes: usize, capacity: usize, fresh: u64, lz4: bool) -> Self {
        assert!(piece_bytes > 0 && capacity > 0, "an empty frame store");
        FrameStore {
            piece_bytes,
            capacity,
            fresh,
            lz4,
            slots: vec![Box::default(); capacity],
            hashes: vec![0; capacity],
            written: 0,
            index: HashMap::new(),
            scratch: vec![0; piece_bytes],
            reused: 0,
            stored_bytes: 0,
        }
    }

    /// Bytes per piece (uncompressed).
    pub fn piece_bytes(&self) -> usize {
        self.piece_bytes
    }

    /// Ring size in pieces.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether pieces are stored LZ4-compressed.
    pub fn is_compressed(&self) -> bool {
        self.lz4
    }

    /// Pieces written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes the stored pieces take (compressed when LZ4), without per-slot overhead.
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Whether piece `seq` is still stored.
    pub fn is_live(&self, seq: u64) -> bool {
        seq < self.written && self.written - seq <= self.capacity as u64
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.capacity as u64) as usize
    }

    /// Copies (decompresses) piece `seq` into `out` (`piece_bytes` long); false once the piece
    /// was overwritten (or was never written), or if its stored bytes do not decode to exactly
    /// one piece (which neither [`FrameStore::insert`] nor a checked load lets in).
    pub fn read(&self, seq: u64, out: &mut [u8]) -> bool {
        if !self.is_live(seq) || out.len() != self.piece_bytes {
            return false;
        }
        let Some(stored) = self.slots.get(self.slot(seq)) else {
            return false;
        };
        if self.lz4 {
            matches!(lz4_flex::block::decompress_into(stored, out), Ok(n) if n == self.piece_bytes)
        } else if stored.len() == out.len() {
            out.copy_from_slice(stored);
            true
        } else {
            false
        }
    }

    /// Stores `piece` (`piece_bytes` long; panics otherwise) unless an equal piece was written
    /// at most `fresh` pieces ago, and returns the sequence number to refer to it by.
    pub fn insert(&mut self, piece: &[u8]) -> u64 {
        assert_eq!(piece.len(), self.piece_bytes, "piece size");
        let hash = xxh3_64(piece);
        if let Some(&seq) = self.index.get(&hash) {
            if self.written - seq <= self.fresh && self.is_live(seq) {
                let mut scratch = std::mem::take(&mut self.scratch);
                let same = self.read(seq, &mut scratch) && scratch == piece;
                self.scratch = scratch;
                if same {
                    self.reused += 1;
                    return seq;
                }
            }
        }
        let seq = self.written;
        let slot = self.slot(seq);
        if seq >= self.capacity as u64 {
            // The piece written `capacity` ago leaves; forget its hash if it is the newest.
            let old = self.hashes[slot];
            if self.index.get(&old) == Some(&(seq - self.capacity as u64)) {
                self.index.remove(&old);
            }
        }
        let stored: Box<[u8]> = if self.lz4 {
            lz4_flex::block::compress(piece).into_boxed_slice()
        } else {
            piece.into()
        };
        self.stored_bytes = self.stored_bytes + stored.len() - self.slots[slot].len();
        self.slots[slot] = stored;
        self.hashes[slot] = hash;
        self.index.insert(hash, seq);
        self.written += 1;
        seq
    }

    /// The used slots in ring order (slot 0 first), their hashes, and the pieces written: what
    /// [`FrameStore::restore`] takes back.
    pub(super) fn raw(&self) -> (&[Box<[u8]>], &[u64], u64) {
        let used = self.written.min(self.capacity as u64) as usize;
        (&self.slots[..used], &self.hashes[..used], self.written)
    }

    /// Forgets every piece.
    pub(super) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = Box::default());
        self.written = 0;
        self.stored_bytes = 0;
        self.index.clear();
    }

    /// Takes back the state of [`FrameStore::raw`] (same geometry and compression; checked by
    /// the caller): the used slots, their hashes, and the pieces written. Rebuilds the index.
    pub(super) fn restore(&mut self, slots: Vec<Box<[u8]>>, hashes: &[u64], written: u64) {
        self.clear();
        self.stored_bytes = slots.iter().map(|s| s.len()).sum();
        for (i, s) in slots.into_iter().enumerate() {
            self.slots[i] = s;
        }
        self.hashes[..hashes.len()].copy_from_slice(hashes);
        self.written = written;
        let live = written.min(self.capacity as u64);
        for seq in written - live..written {
            let slot = self.slot(seq);
            self.index.insert(self.hashes[slot], seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(s: &FrameStore, seq: u64) -> Option<Vec<u8>> {
        let mut out = vec![0; s.piece_bytes()];
        s.read(seq, &mut out).then_some(out)
    }

    #[test]
    fn duplicates_are_stored_once_while_fresh() {
        for lz4 in [false, true] {
            duplicates_once(lz4);
        }
    }

    fn duplicates_once(lz4: bool) {
        let mut s = FrameStore::new(3, 8, 4, lz4);
        let a = s.insert(&[1, 2, 3]);
        let b = s.insert(&[4, 5, 6]);
        assert_eq!(s.insert(&[1, 2, 3]), a, "a fresh duplicate is reused");
        assert_eq!((s.written(), s.reused), (2, 1));
        assert_eq!(get(&s, b), Some(vec![4, 5, 6]));
        // Four more pieces: [1, 2, 3] is now more than `fresh` old and is written again.
        for i in 0..4u8 {
            s.insert(&[i, i, 100]);
        }
        let again = s.insert(&[1, 2, 3]);
        assert_ne!(again, a);
        assert_eq!(get(&s, again), Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_ring_forgets_the_oldest_piece_first() {
        let mut s = FrameStore::new(1, 4, 0, false);
        let seqs: Vec<u64> = (0..6u8).map(|i| s.insert(&[i])).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(get(&s, 0), None);
        assert_eq!(get(&s, 1), None);
        assert_eq!(get(&s, 2), Some(vec![2]));
        assert_eq!(get(&s, 5), Some(vec![5]));
        assert_eq!(get(&s, 6), None, "not written yet");
        // The overwritten pieces' hashes are gone: an old value is stored anew.
        let mut t = FrameStore::new(1, 2, 10, false);
        t.insert(&[7]);
        t.insert(&[8]);
        t.insert(&[9]); // evicts [7]
        assert_eq!(t.insert(&[7]), 3);
    }

    #[test]
    fn restore_rebuilds_the_same_store() {
        let mut s = FrameStore::new(2, 3, 8, true);
        for i in 0..5u8 {
            s.insert(&[i, i]);
        }
        let (slots, hashes, written) = s.raw();
        let mut r = FrameStore::new(2, 3, 8, true);
        r.restore(slots.to_vec(), hashes, written);
        for seq in 0..6 {
            assert_eq!(get(&r, seq), get(&s, seq));
        }
        assert_eq!(r.stored_bytes(), s.stored_bytes());
        assert_eq!(r.insert(&[4, 4]), 4, "the restored index finds duplicates");
    }

    #[test]
    fn lz4_round_trips_frames_exactly_and_stores_flat_screens_small() {
        let mut s = FrameStore::new(84 * 84, 16, 4, true);
        let mut frame = vec![87u8; 84 * 84];
        for (i, px) in frame.iter_mut().enumerate().step_by(97) {
            *px = (i % 251) as u8;
        }
        let seq = s.insert(&frame);
        assert_eq!(get(&s, seq), Some(frame.clone()));
        assert!(s.stored_bytes() < 84 * 84 / 4, "{} bytes", s.stored_bytes());
        // Noise does not compress, and still round-trips.
        let noise: Vec<u8> = (0..84 * 84u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let n = s.insert(&noise);
        assert_eq!(get(&s, n), Some(noise));
    }
}
