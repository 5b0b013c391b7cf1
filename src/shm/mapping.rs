//! One named shared-memory segment that starts with a self-describing header. The experience
//! queue, the weight snapshot and the inference request slots each create a segment of a
//! computed size, fill in their header and publish it by storing a magic number last; an opener
//! checks that the segment holds a header, the magic, the layout version (where the layout has
//! one) and that the segment's size is the one its header implies, before it trusts any other
//! byte. [`Mapping`] does those steps once, and [`SegmentError`] is their one error type; each
//! segment keeps its own memory layout (its [`SegmentHeader`] type and what follows it).

use shared_memory::{Shmem, ShmemConf, ShmemError};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Errors from creating or opening a shared-memory segment (an
/// [`ExperienceQueue`](super::ExperienceQueue), a [`WeightSnapshot`](super::WeightSnapshot) or
/// [`InferenceSlots`](super::InferenceSlots)). `kind` names the segment's type ("queue",
/// "snapshot", "inference").
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The shape asked for (at creation) or recorded in the header (at opening) is one no
    /// segment of this kind can have, e.g. a queue without lanes; `reason` says which.
    #[error("{reason}")]
    Invalid { kind: &'static str, reason: String },
    /// The segment's size for `shape` does not fit in a `usize`.
    #[error("{kind} segment of {shape} overflows the address space")]
    TooLarge { kind: &'static str, shape: String },
    /// Creating (e.g. the name exists), opening (e.g. no such segment) or mapping failed.
    #[error("shared memory: {0}")]
    Shm(#[from] ShmemError),
    /// The segment is `size` bytes, shorter than its kind's header.
    #[error(
        "segment of {size} bytes is too small to hold {} {kind} header",
        article(kind)
    )]
    TooSmall { kind: &'static str, size: usize },
    /// The header's magic number is not the kind's: another kind of segment, or one whose
    /// creator has not published its header yet.
    #[error(
        "bad magic {found:#x}: not {} {kind} segment (or not initialised yet)",
        article(kind)
    )]
    BadMagic { kind: &'static str, found: u64 },
    /// The segment was laid out by a build with another layout version.
    #[error("{kind} layout version {found}, this build expects {expected}")]
    VersionMismatch {
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    /// The segment is `found` bytes; the shape its header records needs `expected`.
    #[error("{kind} segment is {found} bytes, its header implies {expected}")]
    SizeMismatch {
        kind: &'static str,
        expected: usize,
        found: usize,
    },
}

/// "a" or "an", for the messages above.
fn article(kind: &str) -> &'static str {
    match kind.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

/// The header at the start of one kind of segment: it says where its magic number (and its
/// layout version, if it has one) lives; the rest of it is the segment's own business.
///
/// # Safety
///
/// An implementor must be made of atomics only (and padding), so that every byte pattern (the
/// zeros of a new segment, whatever another process wrote) is a valid value, and reading and
/// writing it through shared references from several threads and processes at once is not a
/// data race.
pub(super) unsafe trait SegmentHeader: Sized {
    /// The segment's kind in error messages ("queue").
    const KIND: &'static str;
    /// The number that identifies a published header of this kind.
    const MAGIC: u64;

    /// The header's magic word: zero until the creator has written the rest of the header.
    fn magic(&self) -> &AtomicU64;

    /// The header's layout-version word and the version this build writes and accepts, or
    /// `None` for a layout without one (its magic alone identifies it).
    fn version(&self) -> Option<(&AtomicU32, u32)> {
        None
    }
}

/// A mapped segment whose first bytes are an `H`. The creator owns the segment and unlinks it
/// when this value is dropped; openers never do. Not `Send` or `Sync` by itself (it holds the
/// mapping's address): the segment types that wrap it argue why they are.
pub(super) struct Mapping<H> {
    shm: Shmem,
    header: PhantomData<H>,
}

impl<H: SegmentHeader> Mapping<H> {
    /// The mapping is page-aligned (4096 bytes); the header must not need more.
    const ALIGNED: () = assert!(align_of::<H>() <= 4096);

    /// Creates and owns segment `name` (see [`super::segment_name`]) of `size` bytes, all
    /// zero; `init` fills in the header's fields, then the layout version and, last and with
    /// Release ordering, the magic are stored, so an opener that sees the magic sees the whole
    /// header. Errors: `TooSmall` if `size` cannot hold an `H`, `Shm` (e.g. the name exists).
    pub(super) fn create(
        name: &str,
        size: usize,
        init: impl FnOnce(&H),
    ) -> Result<Self, SegmentError> {
        let () = Self::ALIGNED;
        if size < size_of::<H>() {
            return Err(SegmentError::TooSmall {
                kind: H::KIND,
                size,
            });
        }
        let shm = ShmemConf::new()
            .size(size)
            .os_id(super::os_id(name))
            .create()?;
        let mapping = Self {
            shm,
            header: PhantomData,
        };
        let h = mapping.header();
        init(h);
        if let Some((word, version)) = h.version() {
            word.store(version, Ordering::Relaxed);
        }
        h.magic().store(H::MAGIC, Ordering::Release);
        Ok(mapping)
    }

    /// Opens the existing segment `name` without owning it. Checks that it holds an `H`, the
    /// magic (Acquire: the creator's header writes are then visible) and the layout version;
    /// then `shape` reads the rest of the header and returns what it describes together with
    /// the segment size that implies, which must be the segment's. Errors: `Shm` (e.g. no such
    /// segment), `TooSmall`, `BadMagic`, `VersionMismatch`, `SizeMismatch`, and those of
    /// `shape`.
    pub(super) fn open<T>(
        name: &str,
        shape: impl FnOnce(&H) -> Result<(T, usize), SegmentError>,
    ) -> Result<(Self, T), SegmentError> {
        let () = Self::ALIGNED;
        let shm = ShmemConf::new().os_id(super::os_id(name)).open()?;
        if shm.len() < size_of::<H>() {
            return Err(SegmentError::TooSmall {
                kind: H::KIND,
                size: shm.len(),
            });
        }
        let mapping = Self {
            shm,
            header: PhantomData,
        };
        let h = mapping.header();
        let found = h.magic().load(Ordering::Acquire);
        if found != H::MAGIC {
            return Err(SegmentError::BadMagic {
                kind: H::KIND,
                found,
            });
        }
        if let Some((word, expected)) = h.version() {
            let found = word.load(Ordering::Relaxed);
            if found != expected {
                return Err(SegmentError::VersionMismatch {
                    kind: H::KIND,
                    found,
                    expected,
                });
            }
        }
        let (described, expected) = shape(h)?;
        if expected != mapping.len() {
            return Err(SegmentError::SizeMismatch {
                kind: H::KIND,
                expected,
                found: mapping.len(),
            });
        }
        Ok((mapping, described))
    }

    /// The header at the start of the segment.
    pub(super) fn header(&self) -> &H {
        // `create` and `open` made sure the mapping is at least `size_of::<H>()` bytes long; it
        // is page-aligned, which `ALIGNED` shows is enough for `H`; and `H` is all atomics (the
        // `SegmentHeader` contract), so any bytes are a valid `H` and shared access from other
        // processes is not a data race. The mapping lives as long as `self`.
        // SAFETY: an in-bounds, aligned, always-valid `H`, as above.
        unsafe { &*self.shm.as_ptr().cast::<H>() }
    }

    /// Start of the mapping (the header's address); valid for [`Self::len`] bytes while
    /// `self` lives.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.shm.as_ptr()
    }

    /// Length of the mapping in bytes: the size the segment was created with.
    pub(super) fn len(&self) -> usize {
        self.shm.len()
    }

    /// True if this handle created (and will unlink) the segment.
    pub(super) fn is_owner(&self) -> bool {
        self.shm.is_owner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_memory::ShmemConf;

    #[repr(C)]
    struct TestHeader {
        magic: AtomicU64,
        version: AtomicU32,
        size: AtomicU32,
    }

    // SAFETY: atomics only.
    unsafe impl SegmentHeader for TestHeader {
        const KIND: &'static str = "test";
        const MAGIC: u64 = u64::from_le_bytes(*b"ARLTESTS");

        fn magic(&self) -> &AtomicU64 {
            &self.magic
        }

        fn version(&self) -> Option<(&AtomicU32, u32)> {
            Some((&self.version, 7))
        }
    }

    fn name(tag: &str) -> String {
        super::super::segment_name(&format!("maptest-{tag}"))
    }

    /// Opens `name`, taking the size its header records.
    fn open(name: &str) -> Result<(Mapping<TestHeader>, u32), SegmentError> {
        Mapping::open(name, |h: &TestHeader| {
            let size = h.size.load(Ordering::Relaxed);
            Ok((size, size as usize))
        })
    }

    fn create(name: &str, size: usize) -> Mapping<TestHeader> {
        Mapping::create(name, size, |h: &TestHeader| {
            h.size.store(size as u32, Ordering::Relaxed);
        })
        .unwrap()
    }

    #[test]
    fn an_opener_sees_the_creators_header_and_bytes() {
        let n = name("round-trip");
        let created = create(&n, 100);
        assert_eq!(created.header().version.load(Ordering::Relaxed), 7);
        // SAFETY: byte 99 is inside the 100-byte mapping; no one else touches it.
        unsafe { *created.as_ptr().add(99) = 42 };
        let (opened, size) = open(&n).unwrap();
        assert_eq!((size, opened.len()), (100, 100));
        assert!(created.is_owner() && !opened.is_owner());
        // SAFETY: as above; the opener's mapping shows the same bytes.
        assert_eq!(unsafe { *opened.as_ptr().add(99) }, 42);
    }

    #[test]
    fn an_opener_refuses_another_version_size_or_kind() {
        let n = name("checks");
        let created = create(&n, 64);
        created.header().version.store(6, Ordering::Relaxed);
        let err = open(&n).err().unwrap();
        assert!(
            matches!(
                err,
                SegmentError::VersionMismatch {
                    kind: "test",
                    found: 6,
                    expected: 7
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "test layout version 6, this build expects 7"
        );
        created.header().version.store(7, Ordering::Relaxed);
        created.header().size.store(65, Ordering::Relaxed);
        let err = open(&n).err().unwrap();
        assert!(
            matches!(
                err,
                SegmentError::SizeMismatch {
                    kind: "test",
                    expected: 65,
                    found: 64
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "test segment is 64 bytes, its header implies 65"
        );
        created.header().magic.store(0, Ordering::Relaxed);
        let err = open(&n).err().unwrap();
        assert!(
            matches!(err, SegmentError::BadMagic { found: 0, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "bad magic 0x0: not a test segment (or not initialised yet)"
        );
        assert!(matches!(open(&name("missing")), Err(SegmentError::Shm(_))));
        assert!(matches!(
            Mapping::<TestHeader>::create(&n, 64, |_| {}),
            Err(SegmentError::Shm(_))
        ));
    }

    #[test]
    fn a_segment_shorter_than_a_header_is_refused() {
        let n = name("short");
        assert!(matches!(
            Mapping::<TestHeader>::create(&n, 8, |_| {}),
            Err(SegmentError::TooSmall { size: 8, .. })
        ));
        let _short = ShmemConf::new()
            .size(8)
            .os_id(super::super::os_id(&n))
            .create()
            .unwrap();
        let err = open(&n).err().unwrap();
        assert!(
            matches!(err, SegmentError::TooSmall { size: 8, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "segment of 8 bytes is too small to hold a test header"
        );
        assert_eq!(article("inference"), "an");
        assert_eq!(article("queue"), "a");
    }
}
