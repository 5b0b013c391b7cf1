//! Saving and restoring a replay memory (`--save-replay`): one binary file beside the
//! checkpoint, `model-<frames>.replay`, written atomically (as checkpoints are:
//! [`crate::atomic_file`]), with a CRC-32 of its contents checked on load.
//!
//! Layout (little-endian): `b"ARLREPLY"`, format version u32, then the geometry as u64
//! (pieces per observation, bytes per piece, capacity, piece-ring size, transitions inserted,
//! pieces written, prioritized 0/1, LZ4 0/1) and the largest priority f64; then the used part
//! of the piece ring (each stored piece's length as u32, then their bytes, then their hashes)
//! and of the transition ring (piece numbers of observations and next observations, actions,
//! returns, discounts, priorities when prioritized); last the CRC-32 (IEEE) of everything
//! before it, u32.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::ReplayMemory;
use crate::atomic_file::{self, AtomicFile};

const MAGIC: &[u8; 8] = b"ARLREPLY";
const VERSION: u32 = 1;

/// A writer that sums what passes through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that sums what passes through it.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_into<T: bytemuck::Pod>(r: &mut impl Read, out: &mut [T]) -> std::io::Result<()> {
    r.read_exact(bytemuck::cast_slice_mut(out))
}

impl ReplayMemory {
    /// Writes the memory to `path` atomically (see the module documentation). Errors name the
    /// file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let write = |file: &mut AtomicFile| -> std::io::Result<()> {
            let mut w = Summing {
                inner: BufWriter::with_capacity(1 << 20, file),
                crc: crc32fast::Hasher::new(),
            };
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            let (slots, hashes, written) = self.frames.raw();
            let ring = self.frames.capacity() as u64;
            for v in [
                self.pieces as u64,
                self.piece_bytes as u64,
                self.capacity as u64,
                ring,
                self.inserted,
                written,
                u64::from(self.prioritized.is_some()),
                u64::from(self.frames.is_compressed()),
            ] {
                w.write_all(&v.to_le_bytes())?;
            }
            w.write_all(&self.max_priority.to_le_bytes())?;
            let lengths: Vec<u32> = slots.iter().map(|s| s.len() as u32).collect();
            w.write_all(bytemuck::cast_slice(&lengths))?;
            for s in slots {
                w.write_all(s)?;
            }
            w.write_all(bytemuck::cast_slice(hashes))?;
            let n = self.len();
            let p = self.pieces;
            w.write_all(bytemuck::cast_slice(&self.obs_seq[..n * p]))?;
            w.write_all(bytemuck::cast_slice(&self.next_seq[..n * p]))?;
            w.write_all(bytemuck::cast_slice(&self.actions[..n]))?;
            w.write_all(bytemuck::cast_slice(&self.returns[..n]))?;
            w.write_all(bytemuck::cast_slice(&self.discounts[..n]))?;
            if let Some((_, tree)) = &self.prioritized {
                let leaves: Vec<f64> = (0..n).map(|i| tree.get(i)).collect();
                w.write_all(bytemuck::cast_slice(&leaves))?;
            }
            let sum = w.crc.clone().finalize();
            let mut inner = w.inner;
            inner.write_all(&sum.to_le_bytes())?;
            inner.flush()
        };
        atomic_file::write(path, write)
            .map_err(|e| anyhow::Error::new(e.error))
            .with_context(|| format!("writing the replay memory {}", path.display()))
    }

    /// Replaces this memory's contents with those saved in `path`, which must have been saved
    /// from a memory of the same observations, capacity and prioritization. Errors name the
    /// file and what differs; on error this memory is left empty or unchanged.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let ctx = || format!("replay memory {}", path.display());
        let file = File::open(path).with_context(ctx)?;
        let mut r = Checked {
            inner: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).with_context(ctx)?;
        ensure!(&magic == MAGIC, "{}: not a replay memory file", ctx());
        let mut v = [0u8; 4];
        r.read_exact(&mut v).with_context(ctx)?;
        let version = u32::from_le_bytes(v);
        ensure!(
            version == VERSION,
            "{}: format version {version}, this build reads version {VERSION}",
            ctx()
        );
        let mut head = [0u64; 8];
        for h in head.iter_mut() {
            *h = read_u64(&mut r).with_context(ctx)?;
        }
        let [pieces, piece_bytes, capacity, ring, inserted, written, prioritized, lz4] = head;
        let mut mp = [0u8; 8];
        r.read_exact(&mut mp).with_context(ctx)?;
        let max_priority = f64::from_le_bytes(mp);
        let ours = [
            self.pieces as u64,
            self.piece_bytes as u64,
            self.capacity as u64,
            self.frames.capacity() as u64,
        ];
        if [pieces, piece_bytes, capacity, ring] != ours {
            bail!(
                "{}: saved from a memory of {capacity} transitions of {pieces} x {piece_bytes}-byte pieces; this run's holds {} of {} x {} (give the same --replay-size and game)",
                ctx(),
                self.capacity,
                self.pieces,
                self.piece_bytes
            );
        }
        if (prioritized == 1) != self.prioritized.is_some() {
            bail!(
                "{}: saved {} --prioritized; this run is {}",
                ctx(),
                if prioritized == 1 { "with" } else { "without" },
                if self.prioritized.is_some() {
                    "prioritized"
                } else {
                    "not prioritized"
                }
            );
        }
        if (lz4 == 1) != self.frames.is_compressed() {
            let name = |c: bool| if c { "lz4" } else { "none" };
            bail!(
                "{}: saved with --replay-compression {}; this run uses {} (resume with --replay-compression {})",
                ctx(),
                name(lz4 == 1),
                name(self.frames.is_compressed()),
                name(lz4 == 1)
            );
        }
        if written > u64::MAX / 2 || inserted > u64::MAX / 2 {
            bail!("{}: its counters are out of range", ctx());
        }
        let used_pieces = written.min(ring) as usize;
        let n = (inserted as usize).min(self.capacity);
        let p = self.pieces;
        let pb = self.piece_bytes;
        // Read straight into this memory (a full Atari memory is gigabytes: no second copy);
        // on any failure it is emptied rather than left half-loaded.
        let mut leaves = vec![0f64; if prioritized == 1 { n } else { 0 }];
        let mut body = |m: &mut ReplayMemory| -> Result<()> {
            let mut lengths = vec![0u32; used_pieces];
            read_into(&mut r, &mut lengths).with_context(ctx)?;
            let mut slots = Vec::with_capacity(used_pieces);
            for len in lengths {
                // A stored piece is at most an incompressible piece plus LZ4's overhead.
                ensure!(
                    (len as usize) <= pb + pb / 200 + 64,
                    "{}: a stored piece of {len} bytes (pieces are {pb})",
                    ctx()
                );
                let mut piece = vec![0u8; len as usize].into_boxed_slice();
                r.read_exact(&mut piece).with_context(ctx)?;
                slots.push(piece);
            }
            let mut hashes = vec![0u64; used_pieces];
            read_into(&mut r, &mut hashes).with_context(ctx)?;
            read_into(&mut r, &mut m.obs_seq[..n * p]).with_context(ctx)?;
            read_into(&mut r, &mut m.next_seq[..n * p]).with_context(ctx)?;
            read_into(&mut r, &mut m.actions[..n]).with_context(ctx)?;
            read_into(&mut r, &mut m.returns[..n]).with_context(ctx)?;
            read_into(&mut r, &mut m.discounts[..n]).with_context(ctx)?;
            read_into(&mut r, &mut leaves).with_context(ctx)?;
            let actual = r.crc.clone().finalize();
            let mut s = [0u8; 4];
            r.inner.read_exact(&mut s).with_context(ctx)?;
            let stored = u32::from_le_bytes(s);
            ensure!(
                stored == actual,
                "{}: corrupted: its checksum is {stored:#010x} but its contents sum to {actual:#010x}",
                ctx()
            );
            ensure!(
                r.inner.read(&mut [0u8; 1]).with_context(ctx)? == 0,
                "{}: has bytes after its checksum",
                ctx()
            );
            m.frames.restore(slots, &hashes, written);
            Ok(())
        };
        if let Err(e) = body(self) {
            self.clear();
            return Err(e);
        }
        self.inserted = inserted;
        self.max_priority = max_priority;
        if let Some((_, tree)) = &mut self.prioritized {
            for i in 0..self.capacity {
                tree.set(i, leaves.get(i).copied().unwrap_or(0.0));
            }
        }
        Ok(())
    }
}
