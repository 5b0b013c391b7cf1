//! Versioned weight snapshot in shared memory: the learner publishes its flat
//! f32 parameter vector here and every actor process copies the newest one
//! when `version()` changes. Two buffers, each guarded by a seqlock, let the
//! writer fill one while readers copy the other, and readers never return a
//! torn copy. All shared words are atomics (f32 stored as `AtomicU32` bits),
//! so a concurrent writer in another process is never a data race here.
//!
//! Segment layout: `[SnapHeader (128-byte aligned)][buffer 0][buffer 1]`,
//! each buffer `numel` `AtomicU32`s, padded to 128 bytes.

use super::mapping::{Mapping, SegmentError, SegmentHeader};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// "ARLSNAPS" in ASCII.
const SNAP_MAGIC: u64 = u64::from_le_bytes(*b"ARLSNAPS");
const ALIGN: usize = 128;

/// Errors from publishing and reading a [`WeightSnapshot`] (creating and opening one fail with
/// a [`SegmentError`]).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("slice has {got} elements, snapshot has {expected}")]
    LenMismatch { expected: usize, got: usize },
    #[error("only the handle that created the snapshot publishes; this one opened it to read")]
    NotWriter,
    #[error("no untorn copy of snapshot version {version} after {attempts} attempts in {READ_PATIENCE:?}: its writer died mid-write or publishes faster than a copy takes")]
    Torn { version: u64, attempts: u64 },
}

/// How long [`WeightSnapshot::read_into`] retries before it gives up with
/// [`SnapshotError::Torn`].
pub const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

#[repr(C)]
struct BufCtrl {
    /// Seqlock: odd while the writer is filling the buffer.
    seq: AtomicU64,
    /// Version held by the buffer once `seq` is even.
    version: AtomicU64,
}

#[repr(C, align(128))]
struct SnapHeader {
    magic: AtomicU64,
    numel: AtomicU64,
    /// Latest fully published version (0 = none yet).
    version: AtomicU64,
    bufs: [BufCtrl; 2],
}

// SAFETY: `SnapHeader` is made of atomics only (`AtomicU64`s and padding), so any bytes are a
// valid header and processes may share it.
unsafe impl SegmentHeader for SnapHeader {
    const KIND: &'static str = "snapshot";
    const MAGIC: u64 = SNAP_MAGIC;

    fn magic(&self) -> &AtomicU64 {
        &self.magic
    }
}

/// Returns (buffer stride in bytes, total segment size) of a snapshot of `numel` f32. Errors:
/// `Invalid` for 0, `TooLarge`.
fn sizes(numel: usize) -> Result<(usize, usize), SegmentError> {
    if numel == 0 {
        return Err(SegmentError::Invalid {
            kind: SnapHeader::KIND,
            reason: "a snapshot needs numel > 0".into(),
        });
    }
    let too_large = || SegmentError::TooLarge {
        kind: SnapHeader::KIND,
        shape: format!("{numel} f32"),
    };
    let stride = numel
        .checked_mul(size_of::<AtomicU32>())
        .and_then(|b| b.checked_next_multiple_of(ALIGN))
        .ok_or_else(too_large)?;
    let total = stride
        .checked_mul(2)
        .and_then(|b| b.checked_add(size_of::<SnapHeader>()))
        .ok_or_else(too_large)?;
    Ok((stride, total))
}

/// A shared, versioned flat f32 vector of `numel` parameters (single writer,
/// many readers, any processes). The creator owns the segment and unlinks it
/// on drop; openers never do.
pub struct WeightSnapshot {
    seg: Mapping<SnapHeader>,
    numel: usize,
    stride: usize,
}

// SAFETY: all access to the mapping goes through atomics; the mapping itself
// lives (and is unmapped) with `self.seg`.
unsafe impl Send for WeightSnapshot {}
// SAFETY: see `Send`; `publish` takes `&mut self` and only the creating
// handle may call it, so there is one writer.
unsafe impl Sync for WeightSnapshot {}

impl WeightSnapshot {
    /// Creates and owns the segment `name` holding `numel` f32 parameters
    /// (about `8 * numel` bytes: two buffers). Version 0 = nothing published.
    /// Errors: `Invalid` (`numel` 0), `TooLarge`, `Shm` (e.g. the name exists).
    pub fn create(name: &str, numel: usize) -> Result<Self, SegmentError> {
        let (stride, total) = sizes(numel)?;
        let seg = Mapping::create(name, total, |h: &SnapHeader| {
            h.numel.store(numel as u64, Ordering::Relaxed);
        })?;
        Ok(Self { seg, numel, stride })
    }

    /// Opens an existing snapshot segment; checks magic and size. Errors: `Shm` (e.g. no such
    /// segment), `TooSmall`, `BadMagic`, `SizeMismatch`, and `Invalid` or `TooLarge` for a
    /// header that records no possible snapshot.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        let (seg, (numel, stride)) = Mapping::open(name, |h: &SnapHeader| {
            let numel = h.numel.load(Ordering::Relaxed);
            let numel = usize::try_from(numel).map_err(|_| SegmentError::TooLarge {
                kind: SnapHeader::KIND,
                shape: format!("{numel} f32"),
            })?;
            let (stride, total) = sizes(numel)?;
            Ok(((numel, stride), total))
        })?;
        Ok(Self { seg, numel, stride })
    }

    fn header(&self) -> &SnapHeader {
        self.seg.header()
    }

    fn buffer(&self, b: usize) -> &[AtomicU32] {
        // Buffer `b` (0 or 1) starts at header + b * stride, holds `numel`
        // AtomicU32 (4-byte aligned) inside the mapping (whose length is
        // `sizes(numel)`'s total: made so by `Mapping::create`, checked by
        // `Mapping::open`), and is only ever accessed atomically.
        // SAFETY: the slice lies inside the mapping and is aligned, as above.
        unsafe {
            let p = self
                .seg
                .as_ptr()
                .add(size_of::<SnapHeader>() + b * self.stride);
            std::slice::from_raw_parts(p.cast::<AtomicU32>(), self.numel)
        }
    }

    /// Number of f32 parameters.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// True if this handle created (and will unlink) the segment.
    pub fn is_owner(&self) -> bool {
        self.seg.is_owner()
    }

    /// Single writer: publishes `data` (`len == numel`) as the next version and
    /// returns it (1, 2, ...). Only the handle that created the segment
    /// publishes, and only through `&mut self`, so two publishers can never
    /// pick the same sequence numbers (handles from [`WeightSnapshot::open`]
    /// read). Errors: `LenMismatch`, `NotWriter`.
    ///
    /// ```compile_fail
    /// // Publishing through a shared reference does not compile.
    /// fn publish_shared(w: &async_rl::shm::WeightSnapshot) {
    ///     w.publish(&[0.0]).unwrap();
    /// }
    /// ```
    pub fn publish(&mut self, data: &[f32]) -> Result<u64, SnapshotError> {
        if !self.is_owner() {
            return Err(SnapshotError::NotWriter);
        }
        if data.len() != self.numel {
            return Err(SnapshotError::LenMismatch {
                expected: self.numel,
                got: data.len(),
            });
        }
        let h = self.header();
        let v = h.version.load(Ordering::Acquire) + 1;
        let b = (v % 2) as usize;
        let ctrl = &h.bufs[b];
        // Next odd value, even if a previous writer died mid-write (seq odd).
        let start = (ctrl.seq.load(Ordering::Relaxed) + 1) | 1;
        ctrl.seq.store(start, Ordering::Relaxed);
        fence(Ordering::Release);
        for (dst, src) in self.buffer(b).iter().zip(data) {
            dst.store(src.to_bits(), Ordering::Relaxed);
        }
        ctrl.version.store(v, Ordering::Relaxed);
        ctrl.seq.store(start + 1, Ordering::Release);
        h.version.store(v, Ordering::Release);
        Ok(v)
    }

    /// Latest published version (one atomic load; 0 = nothing yet).
    pub fn version(&self) -> u64 {
        self.header().version.load(Ordering::Acquire)
    }

    /// Copies the latest published snapshot into `out` (`len == numel`) and
    /// returns its version; retries until it gets an untorn copy (the version
    /// returned may be newer than `version()` was at the call), for at most
    /// [`READ_PATIENCE`]. Returns `Ok(0)` without copying if nothing was
    /// published. Errors: `LenMismatch`; `Torn` when no untorn copy came in time.
    pub fn read_into(&self, out: &mut [f32]) -> Result<u64, SnapshotError> {
        if out.len() != self.numel {
            return Err(SnapshotError::LenMismatch {
                expected: self.numel,
                got: out.len(),
            });
        }
        let h = self.header();
        let mut attempts = 0u64;
        let started = std::time::Instant::now();
        loop {
            let v = h.version.load(Ordering::Acquire);
            if v == 0 {
                return Ok(0);
            }
            let b = (v % 2) as usize;
            let ctrl = &h.bufs[b];
            let s0 = ctrl.seq.load(Ordering::Acquire);
            if s0.is_multiple_of(2) {
                let got = ctrl.version.load(Ordering::Relaxed);
                for (dst, src) in out.iter_mut().zip(self.buffer(b)) {
                    *dst = f32::from_bits(src.load(Ordering::Relaxed));
                }
                fence(Ordering::Acquire);
                if ctrl.seq.load(Ordering::Relaxed) == s0 && got != 0 {
                    return Ok(got);
                }
            }
            attempts += 1;
            if attempts.is_multiple_of(16) {
                if started.elapsed() > READ_PATIENCE {
                    return Err(SnapshotError::Torn {
                        version: v,
                        attempts,
                    });
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        crate::shm::segment_name(&format!("snaptest-{tag}"))
    }

    #[test]
    fn a_buffer_left_mid_write_is_an_error_in_bounded_time_not_a_hang() {
        let mut w = WeightSnapshot::create(&name("mid-write"), 4).unwrap();
        let v = w.publish(&[1.0; 4]).unwrap();
        // A writer that died while filling the current version's buffer leaves its seq odd.
        w.header().bufs[(v % 2) as usize]
            .seq
            .fetch_add(1, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let err = w.read_into(&mut [0.0; 4]).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Torn { version, .. } if version == v),
            "{err}"
        );
        assert!(started.elapsed() < READ_PATIENCE * 3);
    }

    #[test]
    fn versions_count_up_and_round_trip() {
        let mut w = WeightSnapshot::create(&name("ver"), 1000).unwrap();
        let r = WeightSnapshot::open(&name("ver")).unwrap();
        assert!(w.is_owner() && !r.is_owner());
        assert_eq!(r.numel(), 1000);
        let mut out = vec![7.0f32; 1000];
        assert_eq!(r.read_into(&mut out).unwrap(), 0);
        assert!(
            out.iter().all(|&x| x == 7.0),
            "untouched before first publish"
        );
        for v in 1..=5u64 {
            let data: Vec<f32> = (0..1000).map(|i| i as f32 * v as f32 - 0.5).collect();
            assert_eq!(w.publish(&data).unwrap(), v);
            assert_eq!(r.version(), v);
            assert_eq!(r.read_into(&mut out).unwrap(), v);
            assert_eq!(out, data);
        }
    }

    #[test]
    fn bad_input_errors() {
        let zero = WeightSnapshot::create(&name("zero"), 0).err().unwrap();
        assert!(
            matches!(
                zero,
                SegmentError::Invalid {
                    kind: "snapshot",
                    ..
                }
            ),
            "{zero}"
        );
        assert_eq!(zero.to_string(), "a snapshot needs numel > 0");
        let mut w = WeightSnapshot::create(&name("bad"), 10).unwrap();
        assert!(matches!(
            w.publish(&[0.0; 9]),
            Err(SnapshotError::LenMismatch {
                expected: 10,
                got: 9
            })
        ));
        assert!(matches!(
            w.read_into(&mut [0.0; 11]),
            Err(SnapshotError::LenMismatch { .. })
        ));
        assert!(matches!(
            WeightSnapshot::create(&name("bad"), 10),
            Err(SegmentError::Shm(_))
        ));
        // A reader's handle cannot publish: one writer only.
        let mut reader = WeightSnapshot::open(&name("bad")).unwrap();
        assert!(matches!(
            reader.publish(&[0.0; 10]),
            Err(SnapshotError::NotWriter)
        ));
        assert_eq!(w.version(), 0);
        assert!(matches!(
            WeightSnapshot::open(&name("missing")),
            Err(SegmentError::Shm(_))
        ));
        let q =
            crate::shm::ExperienceQueue::create(&name("q"), 1, 1, crate::shm::SlotLayout::new(8))
                .unwrap();
        let err = WeightSnapshot::open(&name("q")).err().unwrap();
        assert!(
            matches!(
                err,
                SegmentError::BadMagic {
                    kind: "snapshot",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not a snapshot segment"), "{err}");
        drop(q);
    }

    #[test]
    fn owner_unlinks_opener_does_not() {
        let n = name("unlink");
        let path = std::path::Path::new("/dev/shm").join(&n);
        let w = WeightSnapshot::create(&n, 4).unwrap();
        assert!(path.exists());
        drop(WeightSnapshot::open(&n).unwrap());
        assert!(path.exists());
        drop(w);
        assert!(!path.exists());
    }

    #[test]
    fn readers_never_see_torn_copies() {
        // Every published vector is constant (all elements == version), so a
        // torn copy would show two different values.
        const N: usize = 4096;
        let mut w = WeightSnapshot::create(&name("torn"), N).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let r = WeightSnapshot::open(&name("torn")).unwrap();
                std::thread::spawn(move || {
                    let mut out = vec![0.0f32; N];
                    let mut last = 0;
                    while last < 2000 {
                        let v = r.read_into(&mut out).unwrap();
                        if v == 0 {
                            continue;
                        }
                        assert!(v >= last, "versions go backwards");
                        assert!(
                            out.iter().all(|&x| x == v as f32),
                            "torn copy at version {v}"
                        );
                        last = v;
                    }
                })
            })
            .collect();
        for v in 1..=2000u64 {
            w.publish(&vec![v as f32; N]).unwrap();
        }
        for h in readers {
            h.join().unwrap();
        }
    }
}
