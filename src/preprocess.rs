//! Pure image and reward transforms of DeepMind's Nature DQN preprocessing
//! (Mnih et al. 2015), as also implemented by Gym's `AtariPreprocessing`:
//! max over the last two frames of a skip, grayscale, area resize to 84x84,
//! a stack of the last 4 frames, and sign-clipped rewards.
//!
//! They are kept apart from the emulator so they can be unit-tested on known
//! inputs. Length mismatches are reported as [`ShapeError`], never panics.

/// Height of the raw ALE screen, in pixels.
pub const SCREEN_H: usize = 210;
/// Width of the raw ALE screen, in pixels.
pub const SCREEN_W: usize = 160;
/// Height of one preprocessed observation frame, in pixels.
pub const OBS_H: usize = 84;
/// Width of one preprocessed observation frame, in pixels.
pub const OBS_W: usize = 84;
/// Number of frames in an observation stack.
pub const STACK: usize = 4;
/// Bytes in one preprocessed frame (`[84, 84] u8`).
pub const FRAME_LEN: usize = OBS_H * OBS_W;

/// A buffer had the wrong length for the requested transform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: expected {expected} elements, got {got}")]
pub struct ShapeError {
    /// Which buffer was wrong.
    pub what: &'static str,
    /// Length required.
    pub expected: usize,
    /// Length given.
    pub got: usize,
}

/// Ok if a buffer `what` has the `expected` length, else a [`ShapeError`] naming it.
pub(crate) fn check(what: &'static str, expected: usize, got: usize) -> Result<(), ShapeError> {
    if expected == got {
        Ok(())
    } else {
        Err(ShapeError {
            what,
            expected,
            got,
        })
    }
}

/// Elementwise max of two frames into `out` (all the same length, any
/// shape; in the env `[210, 160] u8` grayscale). Used on the last two
/// emulator frames of a skip to remove Atari sprite flicker (Nature DQN).
///
/// Errors: [`ShapeError`] if the three lengths differ.
pub fn max_pool(a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), ShapeError> {
    check("max_pool second frame", a.len(), b.len())?;
    check("max_pool output", a.len(), out.len())?;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x.max(y);
    }
    Ok(())
}

/// Converts interleaved RGB (`[h, w, 3] u8`) to luminance (`[h, w] u8`)
/// with ITU-R BT.601 weights (0.299 R + 0.587 G + 0.114 B), rounded.
/// Only a fallback: ALE's own grayscale screen is the primary path.
///
/// Errors: [`ShapeError`] unless `rgb.len() == 3 * out.len()`.
pub fn rgb_to_gray(rgb: &[u8], out: &mut [u8]) -> Result<(), ShapeError> {
    check("rgb_to_gray input", out.len() * 3, rgb.len())?;
    for (o, px) in out.iter_mut().zip(rgb.chunks_exact(3)) {
        // Fixed point: weights scaled by 2^16 sum to exactly 65536.
        let y = 19595 * u32::from(px[0]) + 38470 * u32::from(px[1]) + 7471 * u32::from(px[2]);
        *o = ((y + 32768) >> 16) as u8;
    }
    Ok(())
}

/// Widest source row the allocation-free separable path handles, in pixels.
const ROW_BUF: usize = 1024;

/// Weights of one axis: for each destination index, the source indices it
/// overlaps and the fraction of the destination pixel each covers.
#[derive(Clone, Debug)]
struct AxisWeights {
    /// `starts[i]..starts[i + 1]` indexes `taps` for destination index `i`.
    starts: Vec<usize>,
    /// `(source index, weight)`; weights of one destination sum to 1.
    taps: Vec<(usize, f32)>,
}

impl AxisWeights {
    /// Area weights mapping `src` pixels onto `dst` pixels: destination
    /// pixel `i` covers source interval `[i * s, (i + 1) * s)` with
    /// `s = src / dst`, and each source pixel contributes its overlap / s.
    fn new(src: usize, dst: usize) -> Self {
        let mut starts = Vec::with_capacity(dst + 1);
        let mut taps = Vec::new();
        starts.push(0);
        if src > 0 && dst > 0 {
            let scale = src as f64 / dst as f64;
            for i in 0..dst {
                let lo = i as f64 * scale;
                let hi = ((i + 1) as f64 * scale).min(src as f64);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).min(src);
                for s in first..last {
                    let overlap = hi.min((s + 1) as f64) - lo.max(s as f64);
                    if overlap > 1e-9 {
                        taps.push((s, (overlap / (hi - lo)) as f32));
                    }
                }
                starts.push(taps.len());
            }
        }
        AxisWeights { starts, taps }
    }

    fn taps(&self, i: usize) -> &[(usize, f32)] {
        &self.taps[self.starts[i]..self.starts[i + 1]]
    }
}

/// Area-averaging resize of a grayscale image (`[src_h, src_w] u8` to
/// `[dst_h, dst_w] u8`), like OpenCV's `INTER_AREA` when shrinking: each
/// output pixel is the mean of the source area it covers, with fractional
/// overlaps weighted. Weights are precomputed per axis in [`Resizer::new`]
/// (the filter is separable); [`Resizer::resize`] allocates nothing.
/// When enlarging, the same rule blends the (at most two) source pixels an
/// output pixel overlaps.
#[derive(Clone, Debug)]
pub struct Resizer {
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
    rows: AxisWeights,
    cols: AxisWeights,
}

impl Resizer {
    /// Precomputes weights for `[src_h, src_w] -> [dst_h, dst_w]`, in pixels.
    /// Zero sizes are allowed; such a resizer writes nothing.
    pub fn new(src_h: usize, src_w: usize, dst_h: usize, dst_w: usize) -> Self {
        Resizer {
            src_h,
            src_w,
            dst_h,
            dst_w,
            rows: AxisWeights::new(src_h, dst_h),
            cols: AxisWeights::new(src_w, dst_w),
        }
    }

    /// Resizes `src` (`[src_h, src_w] u8`, row-major) into `dst`
    /// (`[dst_h, dst_w] u8`), rounding to nearest.
    ///
    /// Errors: [`ShapeError`] if either length does not match.
    pub fn resize(&self, src: &[u8], dst: &mut [u8]) -> Result<(), ShapeError> {
        check("resize source", self.src_h * self.src_w, src.len())?;
        check("resize destination", self.dst_h * self.dst_w, dst.len())?;
        if self.src_h == 0 || self.src_w == 0 {
            return Ok(());
        }
        if self.src_w <= ROW_BUF {
            self.resize_rows(src, dst);
        } else {
            self.resize_pixels(src, dst);
        }
        Ok(())
    }

    /// Separable path: blend source rows into a stack row buffer (vertical
    /// pass), then blend its columns (horizontal pass). Needs
    /// `src_w <= ROW_BUF`.
    fn resize_rows(&self, src: &[u8], dst: &mut [u8]) {
        let mut row = [0.0f32; ROW_BUF];
        let row = &mut row[..self.src_w];
        for (y, out_row) in dst.chunks_exact_mut(self.dst_w).enumerate() {
            row.fill(0.0);
            for &(sy, wy) in self.rows.taps(y) {
                let src_row = &src[sy * self.src_w..(sy + 1) * self.src_w];
                for (acc, &p) in row.iter_mut().zip(src_row) {
                    *acc += wy * f32::from(p);
                }
            }
            for (x, out) in out_row.iter_mut().enumerate() {
                let v: f32 = self.cols.taps(x).iter().map(|&(sx, wx)| wx * row[sx]).sum();
                *out = (v + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// General path for wide images: each output pixel sums its taps.
    fn resize_pixels(&self, src: &[u8], dst: &mut [u8]) {
        for (y, out_row) in dst.chunks_exact_mut(self.dst_w).enumerate() {
            let row_taps = self.rows.taps(y);
            for (x, out) in out_row.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for &(sy, wy) in row_taps {
                    let src_row = &src[sy * self.src_w..(sy + 1) * self.src_w];
                    let v: f32 = self
                        .cols
                        .taps(x)
                        .iter()
                        .map(|&(sx, wx)| wx * f32::from(src_row[sx]))
                        .sum();
                    acc += wy * v;
                }
                *out = (acc + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// The last [`STACK`] preprocessed frames, `[4, 84, 84] u8` contiguous,
/// oldest first (index 3 is the newest), as the Q-network's input.
#[derive(Clone, Debug)]
pub struct FrameStack {
    data: Vec<u8>,
}

impl Default for FrameStack {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameStack {
    /// An all-zero stack.
    pub fn new() -> Self {
        FrameStack {
            data: vec![0; STACK * FRAME_LEN],
        }
    }

    /// Fills all [`STACK`] slots with `frame` (`[84, 84] u8`), as at the start
    /// of an episode.
    ///
    /// Errors: [`ShapeError`] unless `frame.len() == 84 * 84`.
    pub fn reset(&mut self, frame: &[u8]) -> Result<(), ShapeError> {
        check("frame stack frame", FRAME_LEN, frame.len())?;
        for slot in self.data.chunks_exact_mut(FRAME_LEN) {
            slot.copy_from_slice(frame);
        }
        Ok(())
    }

    /// Drops the oldest frame and appends `frame` (`[84, 84] u8`) as newest.
    ///
    /// Errors: [`ShapeError`] unless `frame.len() == 84 * 84`.
    pub fn push(&mut self, frame: &[u8]) -> Result<(), ShapeError> {
        check("frame stack frame", FRAME_LEN, frame.len())?;
        self.data.copy_within(FRAME_LEN.., 0);
        self.data[(STACK - 1) * FRAME_LEN..].copy_from_slice(frame);
        Ok(())
    }

    /// The whole stack, `[4, 84, 84] u8` row-major, oldest frame first;
    /// length `STACK * 84 * 84`.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// Frame `i` of the stack (0 = oldest), `[84, 84] u8`; `None` if
    /// `i >= STACK`.
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        self.data.chunks_exact(FRAME_LEN).nth(i)
    }
}

/// Sign-clips a reward to {-1, 0, +1} (Nature DQN reward clipping), so one
/// learning rate fits every game. NaN maps to 0.
pub fn clip_reward(r: f32) -> f32 {
    if r > 0.0 {
        1.0
    } else if r < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
#[path = "preprocess_tests.rs"]
mod tests;
