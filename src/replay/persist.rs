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
//!
//! A file may be damaged or made by someone else, so loading trusts nothing in it: every
//! length is bounded before anything is allocated, every piece is decoded (LZ4 or raw) into
//! exactly one piece's bytes and must match its stored hash, every transition must refer to
//! pieces that were written, with an action below the game's, a finite return within
//! +-[`MAX_ABS_RETURN`], a discount in [0, 1] and a finite non-negative priority; any failure
//! is a [`ReplayFileError`] naming the file and what is wrong, never a panic.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::ReplayMemory;
use crate::atomic_file::{self, AtomicFile};

const MAGIC: &[u8; 8] = b"ARLREPLY";
const VERSION: u32 = 1;

/// The largest return a saved transition may hold. An n-step return of clipped rewards is at
/// most n in size, CartPole's at most its episode length: one beyond this is damage, not
/// experience.
pub const MAX_ABS_RETURN: f32 = 1e6;

/// A replay memory file that cannot be written or used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReplayFileError {
    #[error("replay memory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replay memory {path}: truncated (it ends inside its {what})")]
    Truncated { path: PathBuf, what: &'static str },
    /// Damaged, or not made by this program: what is wrong.
    #[error("replay memory {path}: {what}")]
    Damaged { path: PathBuf, what: String },
    /// A sound file of another kind of run: what differs and what to give instead.
    #[error("replay memory {path}: {what}")]
    Mismatch { path: PathBuf, what: String },
}

/// What reading found wrong, before the file's name is attached.
enum Flaw {
    Io(std::io::Error),
    Truncated(&'static str),
    Damaged(String),
    Mismatch(String),
}

impl Flaw {
    fn at(self, path: &Path) -> ReplayFileError {
        let path = path.to_path_buf();
        match self {
            Flaw::Io(source) => ReplayFileError::Io { path, source },
            Flaw::Truncated(what) => ReplayFileError::Truncated { path, what },
            Flaw::Damaged(what) => ReplayFileError::Damaged { path, what },
            Flaw::Mismatch(what) => ReplayFileError::Mismatch { path, what },
        }
    }
}

/// `read_exact`, with the end of the file named as the part it cut.
fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), Flaw> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Flaw::Truncated(what),
        _ => Flaw::Io(e),
    })
}

fn read_pod<T: bytemuck::Pod>(
    r: &mut impl Read,
    out: &mut [T],
    what: &'static str,
) -> Result<(), Flaw> {
    read_exact(r, bytemuck::cast_slice_mut(out), what)
}

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

impl ReplayMemory {
    /// Writes the memory to `path` atomically (see the module documentation). Errors name the
    /// file.
    pub fn save(&self, path: &Path) -> Result<(), ReplayFileError> {
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
        atomic_file::write(path, write).map_err(|e| ReplayFileError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })
    }

    /// Replaces this memory's contents with those saved in `path`, which must have been saved
    /// from a memory of the same observations, capacity and prioritization, in a game of
    /// `num_actions` actions. Every piece and transition is checked (see the module
    /// documentation); errors name the file and what is wrong or differs; on error this memory
    /// is left empty or unchanged.
    pub fn load(&mut self, path: &Path, num_actions: usize) -> Result<(), ReplayFileError> {
        let file = File::open(path).map_err(|source| ReplayFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.read_from(BufReader::with_capacity(1 << 20, file), num_actions)
            .map_err(|f| f.at(path))
    }

    /// [`ReplayMemory::load`] from any reader; the error lacks the file's name. Public for the
    /// fuzz targets, which feed it arbitrary bytes.
    #[doc(hidden)]
    pub fn load_from(&mut self, bytes: &[u8], num_actions: usize) -> Result<(), String> {
        self.read_from(bytes, num_actions)
            .map_err(|f| f.at(Path::new("<bytes>")).to_string())
    }

    fn read_from(&mut self, inner: impl Read, num_actions: usize) -> Result<(), Flaw> {
        let mut r = Checked {
            inner,
            crc: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        read_exact(&mut r, &mut magic, "header")?;
        if &magic != MAGIC {
            return Err(Flaw::Damaged("not a replay memory file".into()));
        }
        let mut v = [0u8; 4];
        read_exact(&mut r, &mut v, "header")?;
        let version = u32::from_le_bytes(v);
        if version != VERSION {
            return Err(Flaw::Damaged(format!(
                "format version {version}, this build reads version {VERSION}"
            )));
        }
        let mut head = [0u64; 8];
        for h in head.iter_mut() {
            let mut b = [0u8; 8];
            read_exact(&mut r, &mut b, "header")?;
            *h = u64::from_le_bytes(b);
        }
        let [pieces, piece_bytes, capacity, ring, inserted, written, prioritized, lz4] = head;
        let mut mp = [0u8; 8];
        read_exact(&mut r, &mut mp, "header")?;
        let max_priority = f64::from_le_bytes(mp);
        let ours = [
            self.pieces as u64,
            self.piece_bytes as u64,
            self.capacity as u64,
            self.frames.capacity() as u64,
        ];
        if [pieces, piece_bytes, capacity, ring] != ours {
            return Err(Flaw::Mismatch(format!(
                "saved from a memory of {capacity} transitions of {pieces} x {piece_bytes}-byte pieces; this run's holds {} of {} x {} (give the same --replay-size and game)",
                self.capacity, self.pieces, self.piece_bytes
            )));
        }
        if prioritized > 1 || lz4 > 1 {
            return Err(Flaw::Damaged(format!(
                "its flags are prioritized {prioritized}, lz4 {lz4} (each 0 or 1)"
            )));
        }
        if (prioritized == 1) != self.prioritized.is_some() {
            return Err(Flaw::Mismatch(format!(
                "saved {} --prioritized; this run is {}",
                if prioritized == 1 { "with" } else { "without" },
                if self.prioritized.is_some() {
                    "prioritized"
                } else {
                    "not prioritized"
                }
            )));
        }
        if (lz4 == 1) != self.frames.is_compressed() {
            let name = |c: bool| if c { "lz4" } else { "none" };
            return Err(Flaw::Mismatch(format!(
                "saved with --replay-compression {}; this run uses {} (resume with --replay-compression {})",
                name(lz4 == 1),
                name(self.frames.is_compressed()),
                name(lz4 == 1)
            )));
        }
        // Each transition writes at most its two observations' pieces.
        let most_written = inserted.saturating_mul(2 * pieces);
        if written > u64::MAX / 2 || inserted > u64::MAX / 2 || written > most_written {
            return Err(Flaw::Damaged(format!(
                "its counters are inconsistent: {written} pieces written for {inserted} transitions of {pieces} pieces (at most {most_written})"
            )));
        }
        if !(max_priority.is_finite() && max_priority > 0.0) {
            return Err(Flaw::Damaged(format!(
                "its largest priority is {max_priority} (a finite number above 0)"
            )));
        }
        let used_pieces = written.min(ring) as usize;
        let n = (inserted as usize).min(self.capacity);
        let p = self.pieces;
        let pb = self.piece_bytes;
        let compressed = lz4 == 1;
        // Read straight into this memory (a full Atari memory is gigabytes: no second copy);
        // on any failure it is emptied rather than left half-loaded.
        let mut leaves = vec![0f64; if prioritized == 1 { n } else { 0 }];
        let mut body = |m: &mut ReplayMemory| -> Result<(), Flaw> {
            let mut lengths = vec![0u32; used_pieces];
            read_pod(&mut r, &mut lengths, "piece lengths")?;
            // A stored piece is exactly a piece raw, and at most an incompressible piece plus
            // LZ4's overhead compressed.
            let longest = if compressed { pb + pb / 200 + 64 } else { pb };
            let mut slots = Vec::with_capacity(used_pieces);
            for (k, &len) in lengths.iter().enumerate() {
                let len = len as usize;
                if len > longest || (!compressed && len != pb) {
                    return Err(Flaw::Damaged(format!(
                        "stored piece {k} is {len} bytes (pieces are {pb} bytes{})",
                        if compressed { ", LZ4-compressed" } else { "" }
                    )));
                }
                let mut piece = vec![0u8; len].into_boxed_slice();
                read_exact(&mut r, &mut piece, "pieces")?;
                slots.push(piece);
            }
            let mut hashes = vec![0u64; used_pieces];
            read_pod(&mut r, &mut hashes, "piece hashes")?;
            read_pod(&mut r, &mut m.obs_seq[..n * p], "observations")?;
            read_pod(&mut r, &mut m.next_seq[..n * p], "next observations")?;
            read_pod(&mut r, &mut m.actions[..n], "actions")?;
            read_pod(&mut r, &mut m.returns[..n], "returns")?;
            read_pod(&mut r, &mut m.discounts[..n], "discounts")?;
            read_pod(&mut r, &mut leaves, "priorities")?;
            let actual = r.crc.clone().finalize();
            let mut s = [0u8; 4];
            read_exact(&mut r.inner, &mut s, "checksum")?;
            let stored = u32::from_le_bytes(s);
            if stored != actual {
                return Err(Flaw::Damaged(format!(
                    "corrupted: its checksum is {stored:#010x} but its contents sum to {actual:#010x}"
                )));
            }
            match r.inner.read(&mut [0u8; 1]) {
                Ok(0) => {}
                Ok(_) => return Err(Flaw::Damaged("it has bytes after its checksum".into())),
                Err(e) => return Err(Flaw::Io(e)),
            }
            // The contents, whatever made the file.
            let mut scratch = vec![0u8; pb];
            for (k, (piece, &hash)) in slots.iter().zip(&hashes).enumerate() {
                let decoded = if compressed {
                    match lz4_flex::block::decompress_into(piece, &mut scratch) {
                        Ok(got) if got == pb => &scratch[..],
                        Ok(got) => {
                            return Err(Flaw::Damaged(format!(
                                "stored piece {k} decompresses to {got} bytes (pieces are {pb})"
                            )))
                        }
                        Err(e) => {
                            return Err(Flaw::Damaged(format!(
                                "stored piece {k} is not a valid LZ4 block: {e}"
                            )))
                        }
                    }
                } else {
                    &piece[..]
                };
                if xxh3_64(decoded) != hash {
                    return Err(Flaw::Damaged(format!(
                        "stored piece {k} does not match its hash"
                    )));
                }
            }
            for i in 0..n {
                let seqs = m.obs_seq[i * p..(i + 1) * p]
                    .iter()
                    .chain(&m.next_seq[i * p..(i + 1) * p]);
                if let Some(s) = seqs.copied().find(|&s| s >= written) {
                    return Err(Flaw::Damaged(format!(
                        "transition {i} refers to piece {s}, but {written} pieces were written"
                    )));
                }
                let action = m.actions[i];
                if action as usize >= num_actions {
                    return Err(Flaw::Damaged(format!(
                        "transition {i} has action {action}; this game has {num_actions} actions (0..{})",
                        num_actions.saturating_sub(1)
                    )));
                }
                let ret = m.returns[i];
                if !(ret.is_finite() && ret.abs() <= MAX_ABS_RETURN) {
                    return Err(Flaw::Damaged(format!(
                        "transition {i} has return {ret} (finite, at most {MAX_ABS_RETURN} in size)"
                    )));
                }
                let discount = m.discounts[i];
                if !(0.0..=1.0).contains(&discount) {
                    return Err(Flaw::Damaged(format!(
                        "transition {i} has discount {discount} (between 0 and 1)"
                    )));
                }
                if let Some(&leaf) = leaves.get(i) {
                    if !(leaf.is_finite() && leaf >= 0.0) {
                        return Err(Flaw::Damaged(format!(
                            "transition {i} has priority {leaf} (finite, 0 or more)"
                        )));
                    }
                }
            }
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
