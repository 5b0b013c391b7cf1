//! Records a game as an animated GIF (`play --record`), in the screen's own colours and size.
//!
//! Small files without losing a colour: the GIF's global palette is ALE's NTSC palette (the
//! 128 colours every Atari screen is drawn in, [`NTSC_PALETTE`]), so pixels are stored as their
//! exact palette index; each frame after the first holds only the rectangle that changed, with
//! the pixels that did not change inside it transparent (so they compress to almost nothing;
//! a screen identical to the one before is one transparent pixel). A screen with
//! colours outside the palette (an environment of your own) gets a local palette for its
//! frame, or is quantised (NeuQuant) when it has more than 255.
//!
//! Delays are in hundredths of a second, as GIF stores them; rounding is carried over from
//! frame to frame so that the animation's length stays exact (15 frames/s: 7, 7, 6, ...).
//! The file is written under a temporary name beside the target and renamed into place by
//! [`GifRecorder::finish`] ([`crate::atomic_file`]), so an unfinished recording never appears
//! under its name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use gif::{DisposalMethod, Encoder, Frame, Repeat};

use crate::atomic_file::AtomicFile;
use crate::env::ale::NTSC_PALETTE;

/// Palette index of transparent pixels (the first index after the 128 colours).
const TRANSPARENT: u8 = NTSC_PALETTE.len() as u8;

/// An error of a recording, naming its file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file cannot be created (no such directory, not writable, a directory).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing or finishing the file failed.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    /// A screen larger than GIF allows (65,535 pixels a side) or empty.
    #[error("cannot record a {width}x{height} screen as GIF (1..=65535 pixels a side)")]
    Size { width: usize, height: usize },
    /// A frame buffer of the wrong length (a caller's bug, reported rather than panicking).
    #[error("frame of {got} bytes for a {width}x{height} RGB screen ({} expected)", width * height * 3)]
    Shape {
        width: usize,
        height: usize,
        got: usize,
    },
}

/// Writes RGB screens, `[height, width, 3] u8`, as the frames of an animated GIF that loops.
pub struct GifRecorder {
    path: PathBuf,
    encoder: Encoder<BufWriter<AtomicFile>>,
    width: usize,
    height: usize,
    /// RGB colour (`0xRRGGBB`) to global palette index.
    index: HashMap<u32, u8>,
    /// The last screen pushed (empty before the first).
    prev: Vec<u8>,
    /// Seconds of animation pushed so far, and hundredths of a second given out as delays.
    seconds: f64,
    centis: u64,
    frames: usize,
}

fn rgb_at(rgb: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([0, rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]])
}

impl GifRecorder {
    /// Creates the recording of `width` x `height` screens for `path` (a temporary file in the
    /// same directory until [`GifRecorder::finish`]), so that a path that cannot be written
    /// fails now rather than after the game.
    pub fn create(path: &Path, width: usize, height: usize) -> Result<Self, RecordError> {
        if !(1..=usize::from(u16::MAX)).contains(&width)
            || !(1..=usize::from(u16::MAX)).contains(&height)
        {
            return Err(RecordError::Size { width, height });
        }
        let tmp = AtomicFile::create(path).map_err(|e| RecordError::Create {
            path: e.path,
            source: e.error,
        })?;
        let mut palette = Vec::with_capacity(3 * NTSC_PALETTE.len());
        for c in NTSC_PALETTE {
            palette.extend_from_slice(&c.to_be_bytes()[1..]);
        }
        let werr = |e: gif::EncodingError| RecordError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut encoder = Encoder::new(BufWriter::new(tmp), width as u16, height as u16, &palette)
            .map_err(werr)?;
        encoder.set_repeat(Repeat::Infinite).map_err(werr)?;
        Ok(GifRecorder {
            path: path.to_path_buf(),
            encoder,
            width,
            height,
            index: NTSC_PALETTE
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, i as u8))
                .collect(),
            prev: Vec::new(),
            seconds: 0.0,
            centis: 0,
            frames: 0,
        })
    }

    /// Frames pushed so far: the GIF's frames.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Appends a screen, `[height, width, 3] u8`, shown for `seconds`.
    pub fn push(&mut self, rgb: &[u8], seconds: f64) -> Result<(), RecordError> {
        let (w, h) = (self.width, self.height);
        if rgb.len() != w * h * 3 {
            return Err(RecordError::Shape {
                width: w,
                height: h,
                got: rgb.len(),
            });
        }
        self.frames += 1;
        self.seconds += seconds.max(0.0);
        let target = (self.seconds * 100.0).round() as u64;
        let delay = target.saturating_sub(self.centis);
        self.centis = target;

        let first = self.prev.is_empty();
        let changed = |i: usize| first || rgb[3 * i..3 * i + 3] != self.prev[3 * i..3 * i + 3];
        // Bounding box of the changed pixels.
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        for y in 0..h {
            for x in 0..w {
                if changed(y * w + x) {
                    (x0, y0) = (x0.min(x), y0.min(y));
                    (x1, y1) = (x1.max(x + 1), y1.max(y + 1));
                }
            }
        }
        // Nothing changed: one transparent pixel keeps the frame (and its delay).
        let (x0, y0, x1, y1) = if x0 >= x1 {
            (0, 0, 1, 1)
        } else {
            (x0, y0, x1, y1)
        };
        let (rw, rh) = (x1 - x0, y1 - y0);
        let mut indices = Vec::with_capacity(rw * rh);
        let mut in_global = true;
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * w + x;
                if !first && !changed(i) {
                    indices.push(TRANSPARENT);
                    continue;
                }
                match self.index.get(&rgb_at(rgb, i)) {
                    Some(&k) => indices.push(k),
                    None => in_global = false,
                }
            }
        }
        let mut frame = if in_global {
            let transparent = (!first).then_some(TRANSPARENT);
            Frame::from_indexed_pixels(rw as u16, rh as u16, indices, transparent)
        } else {
            self.local_frame(rgb, (x0, y0, rw, rh), first)
        };
        frame.left = x0 as u16;
        frame.top = y0 as u16;
        frame.dispose = DisposalMethod::Keep;
        frame.delay = delay.min(u64::from(u16::MAX)) as u16;
        self.encoder
            .write_frame(&frame)
            .map_err(|e| RecordError::Write {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        self.prev.clear();
        self.prev.extend_from_slice(rgb);
        Ok(())
    }

    /// A frame for the rectangle `(x0, y0, rw, rh)` whose colours are not all in the global
    /// palette: a local palette of its colours (255 at most, plus transparency), else NeuQuant.
    fn local_frame(
        &self,
        rgb: &[u8],
        (x0, y0, rw, rh): (usize, usize, usize, usize),
        first: bool,
    ) -> Frame<'static> {
        let w = self.width;
        let changed = |i: usize| first || rgb[3 * i..3 * i + 3] != self.prev[3 * i..3 * i + 3];
        // The colours of the changed pixels, up to 256 (one too many for a local palette).
        let mut colours: Vec<u32> = Vec::new();
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                let i = y * w + x;
                let c = rgb_at(rgb, i);
                if changed(i) && colours.len() < 256 && !colours.contains(&c) {
                    colours.push(c);
                }
            }
        }
        if colours.len() <= 255 {
            let lookup: HashMap<u32, u8> = colours
                .iter()
                .enumerate()
                .map(|(k, &c)| (c, k as u8))
                .collect();
            let transparent = colours.len() as u8;
            let mut indices = Vec::with_capacity(rw * rh);
            for y in y0..y0 + rh {
                for x in x0..x0 + rw {
                    let i = y * w + x;
                    indices.push(if changed(i) {
                        lookup[&rgb_at(rgb, i)]
                    } else {
                        transparent
                    });
                }
            }
            let mut palette = Vec::with_capacity(3 * colours.len() + 3);
            for c in &colours {
                palette.extend_from_slice(&c.to_be_bytes()[1..]);
            }
            palette.extend_from_slice(&[0, 0, 0]);
            return Frame::from_palette_pixels(
                rw as u16,
                rh as u16,
                indices,
                palette,
                (!first).then_some(transparent),
            );
        }
        let mut rect = Vec::with_capacity(rw * rh * 3);
        for y in y0..y0 + rh {
            rect.extend_from_slice(&rgb[3 * (y * w + x0)..3 * (y * w + x0 + rw)]);
        }
        Frame::from_rgb_speed(rw as u16, rh as u16, &rect, 10)
    }

    /// Writes the trailer and renames the file into place. Returns its size in bytes. A
    /// recording without frames is still a valid (empty) GIF.
    pub fn finish(self) -> Result<u64, RecordError> {
        let path = self.path.clone();
        let werr = |reason: String| RecordError::Write {
            path: path.clone(),
            reason,
        };
        let mut writer = self.encoder.into_inner().map_err(|e| werr(e.to_string()))?;
        writer.flush().map_err(|e| werr(e.to_string()))?;
        let tmp = writer.into_inner().map_err(|e| werr(e.to_string()))?;
        let file = tmp.commit().map_err(|e| werr(e.error.to_string()))?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    }
}

/// One decoded frame of a GIF: the whole picture after the frame is drawn, and its delay.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedFrame {
    /// `[height, width, 3] u8` row-major.
    pub rgb: Vec<u8>,
    /// Hundredths of a second.
    pub delay: u16,
}

/// Reads a GIF back as whole pictures (each frame drawn over the ones before, as a viewer
/// shows them; frames are assumed to keep what they do not cover, as [`GifRecorder`] writes
/// them). Returns `(width, height, frames)`. For tests and checks of recordings.
pub fn decode(path: &Path) -> Result<(usize, usize, Vec<DecodedFrame>), gif::DecodingError> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(File::open(path)?)?;
    let (w, h) = (decoder.width() as usize, decoder.height() as usize);
    let mut canvas = vec![0u8; w * h * 3];
    let mut frames = Vec::new();
    while let Some(frame) = decoder.read_next_frame()? {
        let (fl, ft) = (frame.left as usize, frame.top as usize);
        let fw = frame.width as usize;
        for (k, px) in frame.buffer.chunks_exact(4).enumerate() {
            let (x, y) = (fl + k % fw, ft + k / fw);
            if px[3] != 0 && x < w && y < h {
                canvas[3 * (y * w + x)..][..3].copy_from_slice(&px[..3]);
            }
        }
        frames.push(DecodedFrame {
            rgb: canvas.clone(),
            delay: frame.delay,
        });
    }
    Ok((w, h, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn colour(c: u32) -> [u8; 3] {
        let b = c.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// A `w` x `h` screen in palette colour `bg` with pixel (x, y) in palette colour `fg`.
    fn screen(w: usize, h: usize, bg: usize, fg: usize, x: usize, y: usize) -> Vec<u8> {
        let mut rgb: Vec<u8> = colour(NTSC_PALETTE[bg]).repeat(w * h);
        rgb[3 * (y * w + x)..][..3].copy_from_slice(&colour(NTSC_PALETTE[fg]));
        rgb
    }

    #[test]
    fn frames_decode_back_exactly_with_their_delays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gif");
        let (w, h) = (160, 210);
        let screens = [
            screen(w, h, 0, 70, 10, 20),
            screen(w, h, 0, 70, 11, 20),
            screen(w, h, 0, 70, 11, 20), // identical: one transparent pixel
            screen(w, h, 0, 127, 159, 209),
            screen(w, h, 5, 70, 0, 0), // every pixel changes
        ];
        let mut rec = GifRecorder::create(&path, w, h).unwrap();
        for s in &screens {
            rec.push(s, 4.0 / 60.0).unwrap();
        }
        assert_eq!(rec.frames(), 5);
        assert!(!path.exists(), "the file appears only when finished");
        let bytes = rec.finish().unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let (dw, dh, frames) = decode(&path).unwrap();
        assert_eq!((dw, dh), (w, h));
        assert_eq!(frames.len(), screens.len());
        for (f, s) in frames.iter().zip(&screens) {
            assert!(f.rgb == *s, "a decoded frame differs from its screen");
        }
        // 5 x 4/60 s = 33.3 hundredths, rounding carried over.
        let delays: Vec<u16> = frames.iter().map(|f| f.delay).collect();
        assert_eq!(delays, [7, 6, 7, 7, 6]);
        let pixel = &frames[0].rgb[3 * (20 * w + 10)..][..3];
        assert_eq!(pixel, colour(NTSC_PALETTE[70]));
    }

    #[test]
    fn colours_outside_the_palette_are_kept_or_quantised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.gif");
        let (w, h) = (20, 20);
        let mut odd = screen(w, h, 0, 0, 0, 0);
        odd[..3].copy_from_slice(&[1, 2, 3]); // not an NTSC colour
        let many: Vec<u8> = (0..w * h)
            .flat_map(|i| [i as u8, (i / 2) as u8, 9])
            .collect();
        let mut rec = GifRecorder::create(&path, w, h).unwrap();
        rec.push(&odd, 0.1).unwrap();
        rec.push(&many, 0.1).unwrap();
        rec.finish().unwrap();
        let (_, _, frames) = decode(&path).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames[0].rgb == odd, "a local palette keeps exact colours");
        let err = frames[1]
            .rgb
            .iter()
            .zip(&many)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / many.len() as f64;
        assert!(err < 8.0, "quantised colours are close: mean error {err}");
    }

    #[test]
    fn bad_paths_and_buffers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x.gif");
        let err = GifRecorder::create(&missing, 4, 4).err().unwrap();
        assert!(err.to_string().contains("no/such/dir/x.gif"), "{err}");
        let err = GifRecorder::create(dir.path(), 4, 4).err().unwrap();
        assert!(err.to_string().contains("directory"), "{err}");
        assert!(matches!(
            GifRecorder::create(&dir.path().join("z.gif"), 0, 4),
            Err(RecordError::Size { .. })
        ));
        let mut rec = GifRecorder::create(&dir.path().join("s.gif"), 4, 4).unwrap();
        assert!(matches!(
            rec.push(&[0; 5], 0.1),
            Err(RecordError::Shape { .. })
        ));
    }
}
