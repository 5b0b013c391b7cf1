//! Request slots for batched inference on the learner (`--inference learner`): each actor
//! process owns one slot, writes the observations of the environments whose outputs it needs
//! (up to `rows`), posts a request and sleeps until the learner's inference server has
//! answered it with one row of network outputs per observation, computed in a batched forward
//! pass together with the other actors' requests (SEED RL, Espeholt et al. 2020; Sample
//! Factory's policy workers).
//!
//! Synchronisation: per slot, two counters. The actor writes its observations and row count,
//! then increments `request` (Release); the server reads them after seeing `request !=
//! response` (Acquire), computes, writes the outputs and stores `response = request`
//! (Release), then wakes the actor with a futex on `response`. A global `posted` epoch, with a
//! `server_waiting` flag, lets an idle server sleep on a futex instead of polling. Every wait
//! is bounded and re-checks `closed`, so neither side can hang on the other: a dead actor only
//! leaves its slot idle (the server never waits for a particular slot), and a stopped server
//! closes the segment, which turns every wait into [`InferenceError::Closed`].
//!
//! Segment layout: `[Header (128-byte aligned)][SlotCtrl; slots][per slot: obs area (rows *
//! obs_bytes), outputs (rows * width f32)]`, each area padded to 128 bytes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::futex;
use super::mapping::{Mapping, SegmentError, SegmentHeader};

/// "ARLINFER" in ASCII.
const INFERENCE_MAGIC: u64 = u64::from_le_bytes(*b"ARLINFER");
const ALIGN: usize = 128;
/// Upper bound on one futex sleep: `close()` and a lost wake-up cost at most this.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Errors from requests and answers through [`InferenceSlots`] (creating and opening the slots
/// fail with a [`SegmentError`]).
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("slot {slot} does not exist: the segment has {slots}")]
    BadSlot { slot: usize, slots: usize },
    #[error("a request of {rows} rows; a slot holds 1 to {max}")]
    BadRows { rows: usize, max: usize },
    #[error("a request of {rows} rows needs {expected} observation bytes and {outputs} outputs, got {got_obs} and {got_out}")]
    BadLength {
        rows: usize,
        expected: usize,
        outputs: usize,
        got_obs: usize,
        got_out: usize,
    },
    #[error("the inference server stopped (the learner is shutting down)")]
    Closed,
}

#[repr(C, align(128))]
struct Header {
    magic: AtomicU64,
    slots: AtomicU64,
    rows: AtomicU64,
    obs_bytes: AtomicU64,
    width: AtomicU64,
    /// Set once by [`InferenceSlots::close`].
    closed: AtomicU32,
    /// Incremented by every request; the idle server sleeps on it.
    posted: AtomicU32,
    /// 1 while the server is about to sleep on `posted` (posters then wake it).
    server_waiting: AtomicU32,
}

#[repr(C, align(128))]
struct SlotCtrl {
    /// Requests posted by the slot's actor (wrapping).
    request: AtomicU32,
    /// The last request answered; the actor sleeps on it.
    response: AtomicU32,
    /// Rows of the pending request.
    rows: AtomicU32,
    /// The weights' version that answered the last request.
    version: AtomicU32,
    /// Steps on which the actor needed no outputs (all its environments explored), so that the
    /// server need not wait for it.
    skips: AtomicU32,
}

// SAFETY: `Header` is made of atomics only (`AtomicU64`s, `AtomicU32`s and padding), so any
// bytes are a valid header and processes may share it.
unsafe impl SegmentHeader for Header {
    const KIND: &'static str = "inference";
    const MAGIC: u64 = INFERENCE_MAGIC;

    fn magic(&self) -> &AtomicU64 {
        &self.magic
    }
}

/// Byte sizes: (obs area, outputs area, per-slot stride, total). Errors: `Invalid` when a
/// size is 0, `TooLarge`.
fn sizes(
    slots: usize,
    rows: usize,
    obs_bytes: usize,
    width: usize,
) -> Result<(usize, usize, usize, usize), SegmentError> {
    if slots == 0 || rows == 0 || obs_bytes == 0 || width == 0 {
        return Err(SegmentError::Invalid {
            kind: Header::KIND,
            reason: format!("an inference segment needs at least one slot, one row, observation bytes and an output width (got slots {slots}, rows {rows}, obs_bytes {obs_bytes}, width {width})"),
        });
    }
    let too_large = || SegmentError::TooLarge {
        kind: Header::KIND,
        shape: format!("{slots} slots x {rows} rows"),
    };
    let pad = |b: usize| b.checked_next_multiple_of(ALIGN);
    let obs = rows
        .checked_mul(obs_bytes)
        .and_then(pad)
        .ok_or_else(too_large)?;
    let out = rows
        .checked_mul(width)
        .and_then(|n| n.checked_mul(4))
        .and_then(pad)
        .ok_or_else(too_large)?;
    let stride = obs.checked_add(out).ok_or_else(too_large)?;
    let total = stride
        .checked_mul(slots)
        .and_then(|b| b.checked_add(size_of::<Header>()))
        .and_then(|b| b.checked_add(slots.checked_mul(size_of::<SlotCtrl>())?))
        .ok_or_else(too_large)?;
    Ok((obs, out, stride, total))
}

/// A request the server took from a slot: answer it with [`InferenceSlots::answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub slot: usize,
    /// The request's number, handed back to `answer`.
    pub request: u32,
    pub rows: usize,
}

/// The shared request slots of one run: `slots` actors, each asking for up to `rows` rows of
/// `width` f32 outputs for observations of `obs_bytes` bytes. The creator (the learner) owns the
/// segment and unlinks it on drop; actors open it.
pub struct InferenceSlots {
    seg: Mapping<Header>,
    slots: usize,
    rows: usize,
    obs_bytes: usize,
    width: usize,
    obs_area: usize,
    stride: usize,
}

// SAFETY: the control words are atomics; the data areas of a slot are written by one side at a
// time, as the request/response counters hand them over (see the module docs), and only
// through raw-pointer copies. The mapping lives (and is unmapped) with `self.seg`.
unsafe impl Send for InferenceSlots {}
// SAFETY: as for `Send`.
unsafe impl Sync for InferenceSlots {}

impl InferenceSlots {
    /// Creates and owns segment `name`. Errors: `Invalid` (a size is 0), `TooLarge`, `Shm`
    /// (e.g. the name exists).
    pub fn create(
        name: &str,
        slots: usize,
        rows: usize,
        obs_bytes: usize,
        width: usize,
    ) -> Result<Self, SegmentError> {
        let (obs_area, _, stride, total) = sizes(slots, rows, obs_bytes, width)?;
        let seg = Mapping::create(name, total, |h: &Header| {
            h.slots.store(slots as u64, Ordering::Relaxed);
            h.rows.store(rows as u64, Ordering::Relaxed);
            h.obs_bytes.store(obs_bytes as u64, Ordering::Relaxed);
            h.width.store(width as u64, Ordering::Relaxed);
        })?;
        Ok(InferenceSlots {
            seg,
            slots,
            rows,
            obs_bytes,
            width,
            obs_area,
            stride,
        })
    }

    /// Opens an existing segment; checks its magic and size. Errors: `Shm` (e.g. no such
    /// segment), `TooSmall`, `BadMagic`, `SizeMismatch`, and `Invalid` or `TooLarge` for a
    /// header that records no possible segment.
    pub fn open(name: &str) -> Result<Self, SegmentError> {
        let (seg, (slots, rows, obs_bytes, width, obs_area, stride)) =
            Mapping::open(name, |h: &Header| {
                let get = |w: &AtomicU64| {
                    usize::try_from(w.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
                };
                let (slots, rows, obs_bytes, width) = (
                    get(&h.slots),
                    get(&h.rows),
                    get(&h.obs_bytes),
                    get(&h.width),
                );
                let (obs_area, _, stride, total) = sizes(slots, rows, obs_bytes, width)?;
                Ok(((slots, rows, obs_bytes, width, obs_area, stride), total))
            })?;
        Ok(InferenceSlots {
            seg,
            slots,
            rows,
            obs_bytes,
            width,
            obs_area,
            stride,
        })
    }

    fn header(&self) -> &Header {
        self.seg.header()
    }

    fn ctrl(&self, slot: usize) -> &SlotCtrl {
        debug_assert!(slot < self.slots);
        // SAFETY: the controls follow the header, one per slot, inside the mapping (whose
        // length is `sizes`'s total: made so by `Mapping::create`, checked by `Mapping::open`);
        // they are all atomics.
        unsafe {
            &*self
                .seg
                .as_ptr()
                .add(size_of::<Header>() + slot * size_of::<SlotCtrl>())
                .cast::<SlotCtrl>()
        }
    }

    /// Start of slot `slot`'s observation area; its outputs follow at `obs_area`.
    fn data(&self, slot: usize) -> *mut u8 {
        // SAFETY (of the offset): inside the mapping by `sizes` (see `ctrl`).
        unsafe {
            self.seg
                .as_ptr()
                .add(size_of::<Header>() + self.slots * size_of::<SlotCtrl>() + slot * self.stride)
        }
    }

    /// Number of slots (actors).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Rows a slot holds (environments per actor).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of one observation.
    pub fn obs_bytes(&self) -> usize {
        self.obs_bytes
    }

    /// f32 outputs per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Actor side: asks for the outputs of the `rows` observations in `obs` (back to back) and
    /// waits for them, writing `rows * width` floats into `out`. Returns the version of the
    /// weights that answered. Errors: `Closed` when the server stops (checked at least every
    /// 50 ms while waiting), or a bad slot or length.
    pub fn request(
        &self,
        slot: usize,
        obs: &[u8],
        rows: usize,
        out: &mut [f32],
    ) -> Result<u32, InferenceError> {
        let n = self.post(slot, obs, rows, out.len())?;
        self.wait_answer(slot, n, out)
    }

    /// The first half of [`InferenceSlots::request`]: writes the observations and posts the
    /// request; returns its number for [`InferenceSlots::wait_answer`].
    pub fn post(
        &self,
        slot: usize,
        obs: &[u8],
        rows: usize,
        outputs: usize,
    ) -> Result<u32, InferenceError> {
        if slot >= self.slots {
            return Err(InferenceError::BadSlot {
                slot,
                slots: self.slots,
            });
        }
        if rows == 0 || rows > self.rows {
            return Err(InferenceError::BadRows {
                rows,
                max: self.rows,
            });
        }
        if obs.len() != rows * self.obs_bytes || outputs < rows * self.width {
            return Err(InferenceError::BadLength {
                rows,
                expected: rows * self.obs_bytes,
                outputs: rows * self.width,
                got_obs: obs.len(),
                got_out: outputs,
            });
        }
        if self.is_closed() {
            return Err(InferenceError::Closed);
        }
        let c = self.ctrl(slot);
        // SAFETY: the slot's observation area is `rows * obs_bytes` long at least (checked
        // above against `self.rows`); the server reads it only between our `request` store and
        // its `response` store, and we answered our previous request's wait before this post.
        unsafe { std::ptr::copy_nonoverlapping(obs.as_ptr(), self.data(slot), obs.len()) };
        c.rows.store(rows as u32, Ordering::Relaxed);
        let n = c.request.load(Ordering::Relaxed).wrapping_add(1);
        c.request.store(n, Ordering::SeqCst);
        let h = self.header();
        h.posted.fetch_add(1, Ordering::SeqCst);
        if h.server_waiting.load(Ordering::SeqCst) != 0 {
            futex::wake(&h.posted, 1);
        }
        Ok(n)
    }

    /// Waits until request `n` of `slot` is answered and copies its outputs into `out`.
    pub fn wait_answer(&self, slot: usize, n: u32, out: &mut [f32]) -> Result<u32, InferenceError> {
        let c = self.ctrl(slot);
        let rows = c.rows.load(Ordering::Relaxed) as usize;
        loop {
            let r = c.response.load(Ordering::Acquire);
            if r == n {
                break;
            }
            if self.is_closed() {
                return Err(InferenceError::Closed);
            }
            futex::wait(&c.response, r, MAX_WAIT);
        }
        let len = rows * self.width;
        // SAFETY: the server wrote `rows * width` f32s at the slot's outputs before storing
        // `response = n` (Release; our Acquire load above saw it) and touches them no more
        // until our next request; `out` is at least that long (checked by `post`).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.data(slot).add(self.obs_area).cast::<f32>(),
                out.as_mut_ptr(),
                len,
            )
        };
        Ok(c.version.load(Ordering::Relaxed))
    }

    /// Actor side: this step needs no outputs (every environment explores). The server then
    /// counts the slot as accounted for and need not wait for its request to fill a batch.
    pub fn skip(&self, slot: usize) {
        if slot >= self.slots {
            return;
        }
        self.ctrl(slot).skips.fetch_add(1, Ordering::SeqCst);
        let h = self.header();
        h.posted.fetch_add(1, Ordering::SeqCst);
        if h.server_waiting.load(Ordering::SeqCst) != 0 {
            futex::wake(&h.posted, 1);
        }
    }

    /// Server side: how many steps slot `slot`'s actor has skipped (see
    /// [`InferenceSlots::skip`]).
    pub fn skips(&self, slot: usize) -> u32 {
        self.ctrl(slot).skips.load(Ordering::SeqCst)
    }

    /// Server side: the slots with a request not yet answered, in slot order.
    pub fn pending(&self, into: &mut Vec<Pending>) {
        into.clear();
        for slot in 0..self.slots {
            let c = self.ctrl(slot);
            let request = c.request.load(Ordering::Acquire);
            if request != c.response.load(Ordering::Relaxed) {
                let rows = (c.rows.load(Ordering::Relaxed) as usize).clamp(1, self.rows);
                into.push(Pending {
                    slot,
                    request,
                    rows,
                });
            }
        }
    }

    /// Server side: copies the observations of pending request `p` into `dst` (`p.rows *
    /// obs_bytes` bytes).
    pub fn read_obs(&self, p: &Pending, dst: &mut [u8]) {
        let len = p.rows * self.obs_bytes;
        assert!(
            dst.len() >= len && p.slot < self.slots,
            "read_obs: destination too short"
        );
        // SAFETY: the area is at least `rows * obs_bytes` long (`p.rows` is clamped to the
        // slot's rows); the actor does not write it until we answer (see `post`).
        unsafe { std::ptr::copy_nonoverlapping(self.data(p.slot), dst.as_mut_ptr(), len) };
    }

    /// Server side: answers request `p` with `outputs` (`p.rows * width` f32s), computed by
    /// weights `version`, and wakes the actor.
    pub fn answer(&self, p: &Pending, outputs: &[f32], version: u32) {
        let len = p.rows * self.width;
        assert!(
            outputs.len() >= len && p.slot < self.slots,
            "answer: outputs too short"
        );
        let c = self.ctrl(p.slot);
        // SAFETY: the outputs area holds `rows * width` f32s; the actor reads it only after the
        // `response` store below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                outputs.as_ptr(),
                self.data(p.slot).add(self.obs_area).cast::<f32>(),
                len,
            )
        };
        c.version.store(version, Ordering::Relaxed);
        c.response.store(p.request, Ordering::Release);
        futex::wake(&c.response, i32::MAX);
    }

    /// Server side: the current request epoch, to pass to [`InferenceSlots::wait_for_post`].
    pub fn epoch(&self) -> u32 {
        self.header().posted.load(Ordering::SeqCst)
    }

    /// Server side: sleeps until a request is posted after `epoch` was read, for at most
    /// `timeout` (and at most 50 ms), or returns at once if one already was.
    pub fn wait_for_post(&self, epoch: u32, timeout: Duration) {
        let h = self.header();
        h.server_waiting.store(1, Ordering::SeqCst);
        if h.posted.load(Ordering::SeqCst) == epoch && !self.is_closed() {
            futex::wait(&h.posted, epoch, timeout.min(MAX_WAIT));
        }
        h.server_waiting.store(0, Ordering::SeqCst);
    }

    /// Stops the service for good: every waiting actor gets `Closed`. Idempotent.
    pub fn close(&self) {
        let h = self.header();
        h.closed.store(1, Ordering::SeqCst);
        for slot in 0..self.slots {
            futex::wake(&self.ctrl(slot).response, i32::MAX);
        }
        h.posted.fetch_add(1, Ordering::SeqCst);
        futex::wake(&h.posted, i32::MAX);
    }

    /// True once [`InferenceSlots::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.header().closed.load(Ordering::SeqCst) != 0
    }
}

impl Drop for InferenceSlots {
    fn drop(&mut self) {
        if self.seg.is_owner() {
            self.close();
        }
    }
}

/// When a batch of pending requests should be computed: as soon as `rows` reach `full` or
/// every actor is `accounted` for (it waits for an answer, or said it needs none this step),
/// or once the oldest has waited `wait` (measured from `since`, when the server first saw one
/// pending).
pub fn batch_due(
    rows: usize,
    full: usize,
    accounted: bool,
    since: Instant,
    now: Instant,
    wait: Duration,
) -> bool {
    rows >= full || accounted || now.duration_since(since) >= wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn name(tag: &str) -> String {
        super::super::segment_name(&format!("test-infer-{tag}"))
    }

    #[test]
    fn a_request_is_answered_with_the_servers_rows_and_version() {
        let slots = Arc::new(InferenceSlots::create(&name("answer"), 2, 3, 4, 2).unwrap());
        let actor = {
            let s = slots.clone();
            std::thread::spawn(move || {
                let mut out = [0f32; 4];
                let v = s
                    .request(1, &[1, 2, 3, 4, 5, 6, 7, 8], 2, &mut out)
                    .unwrap();
                (v, out)
            })
        };
        let mut pending = Vec::new();
        while pending.is_empty() {
            slots.pending(&mut pending);
            std::thread::yield_now();
        }
        assert_eq!(
            pending,
            vec![Pending {
                slot: 1,
                request: 1,
                rows: 2
            }]
        );
        let mut obs = [0u8; 8];
        slots.read_obs(&pending[0], &mut obs);
        assert_eq!(obs, [1, 2, 3, 4, 5, 6, 7, 8]);
        // The outputs: each observation's byte sum and its first byte.
        let outputs: Vec<f32> = obs
            .chunks(4)
            .flat_map(|o| [o.iter().map(|&b| b as f32).sum(), o[0] as f32])
            .collect();
        slots.answer(&pending[0], &outputs, 7);
        let (v, out) = actor.join().unwrap();
        assert_eq!(v, 7);
        assert_eq!(out, [10.0, 1.0, 26.0, 5.0]);
        slots.pending(&mut pending);
        assert!(pending.is_empty(), "answered requests are not pending");
    }

    #[test]
    fn bad_requests_are_refused_and_close_releases_waiters() {
        let slots = Arc::new(InferenceSlots::create(&name("close"), 1, 2, 4, 1).unwrap());
        let mut out = [0f32; 2];
        assert!(matches!(
            slots.request(1, &[0; 4], 1, &mut out),
            Err(InferenceError::BadSlot { slot: 1, slots: 1 })
        ));
        assert!(matches!(
            slots.request(0, &[0; 12], 3, &mut out),
            Err(InferenceError::BadRows { rows: 3, max: 2 })
        ));
        assert!(matches!(
            slots.request(0, &[0; 3], 1, &mut out),
            Err(InferenceError::BadLength { .. })
        ));
        let waiter = {
            let s = slots.clone();
            std::thread::spawn(move || s.request(0, &[0; 4], 1, &mut [0f32; 1]))
        };
        std::thread::sleep(Duration::from_millis(20));
        slots.close();
        assert!(matches!(
            waiter.join().unwrap(),
            Err(InferenceError::Closed)
        ));
        assert!(matches!(
            slots.request(0, &[0; 4], 1, &mut out),
            Err(InferenceError::Closed)
        ));
    }

    #[test]
    fn an_opened_segment_sees_the_creators_shape_and_a_foreign_one_is_refused() {
        let n = name("open");
        let created = InferenceSlots::create(&n, 3, 2, 5, 6).unwrap();
        let opened = InferenceSlots::open(&n).unwrap();
        assert_eq!(
            (
                opened.slots(),
                opened.rows(),
                opened.obs_bytes(),
                opened.width()
            ),
            (3, 2, 5, 6)
        );
        drop(created);
        assert!(InferenceSlots::open(&n).is_err(), "the owner unlinks it");
        let snap = name("not-inference");
        let _w = super::super::WeightSnapshot::create(&snap, 1024).unwrap();
        let err = InferenceSlots::open(&snap).err().unwrap();
        assert!(
            matches!(
                err,
                SegmentError::BadMagic {
                    kind: "inference",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("not an inference segment"),
            "{err}"
        );
        let err = InferenceSlots::create(&name("empty"), 0, 1, 1, 1)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                SegmentError::Invalid {
                    kind: "inference",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("(got slots 0, rows 1, obs_bytes 1, width 1)"),
            "{err}"
        );
    }

    #[test]
    fn an_idle_server_wakes_for_a_post() {
        let slots = Arc::new(InferenceSlots::create(&name("wake"), 1, 1, 1, 1).unwrap());
        let epoch = slots.epoch();
        let poster = {
            let s = slots.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                s.post(0, &[9], 1, 1).unwrap()
            })
        };
        let t = Instant::now();
        slots.wait_for_post(epoch, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(poster.join().unwrap(), 1);
        // A post made before the wait: it returns at once.
        let t = Instant::now();
        slots.wait_for_post(epoch, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_millis(40), "{:?}", t.elapsed());
    }

    #[test]
    fn a_batch_is_due_when_full_or_all_accounted_for_or_when_the_oldest_waited_long_enough() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(2);
        assert!(!batch_due(3, 4, false, t0, t0, wait));
        assert!(batch_due(4, 4, false, t0, t0, wait));
        assert!(batch_due(3, 4, true, t0, t0, wait));
        assert!(batch_due(1, 4, false, t0, t0 + wait, wait));
    }
}
