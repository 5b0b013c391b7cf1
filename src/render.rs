//! Shows a game's screen on a terminal, for people watching `play`: 24-bit colour ANSI escape
//! sequences, two pixels per character cell (the upper half block `▀` drawn in the upper
//! pixel's colour on the lower pixel's colour), redrawn in place.
//!
//! An Atari screen (160x210) takes 160 columns and 105 rows, plus one status line; on a smaller
//! terminal the picture is scaled down (nearest pixel) to fit, keeping its proportions.
//! [`ansi_frame`] is the pure conversion; [`TerminalScreen`] owns the terminal while a game is
//! shown, sends only the lines that changed since the last frame, and gives the terminal back
//! (cursor, colours, previous contents) when dropped.

use std::fmt::Write as _;
use std::io::{self, Write};

/// Character rows and columns of the picture of a `width` x `height` screen on a terminal of
/// `term_cols` x `term_rows` cells, one row left for the status line: at most one column per
/// pixel and one row per two pixel rows, scaled down uniformly (nearest pixel) when the terminal
/// is smaller, never below 1x1. Returns `(cols, rows)`.
pub fn fit(width: usize, height: usize, term_cols: usize, term_rows: usize) -> (usize, usize) {
    let rows_full = height.div_ceil(2);
    let avail_rows = term_rows.saturating_sub(1);
    if width <= term_cols && rows_full <= avail_rows {
        return (width.max(1), rows_full.max(1));
    }
    // Scale uniformly (cols / width = 2 rows / height) by whichever dimension limits.
    let (cols, rows) = if term_cols * height <= 2 * avail_rows * width {
        (term_cols, term_cols * height / (2 * width.max(1)))
    } else {
        (2 * avail_rows * width / height.max(1), avail_rows)
    };
    (cols.clamp(1, width.max(1)), rows.clamp(1, rows_full.max(1)))
}

/// The picture of an RGB screen (`[height, width, 3] u8` row-major) as `rows` lines of `cols`
/// character cells. Cell (c, r) shows the pixels at x = c * width / cols and
/// y = (2r) * height / (2 rows) (upper half: `▀` in that foreground colour) and
/// y = (2r + 1) * height / (2 rows) (lower half: background colour); a cell whose two pixels
/// are one colour is a space on that background. A colour is only sent when it differs from
/// the cell before, and every line ends with `ESC[0m` (colours reset), without a newline.
///
/// Panics if `rgb` is shorter than `width * height * 3` (a caller's bug).
pub fn ansi_frame(
    rgb: &[u8],
    width: usize,
    height: usize,
    cols: usize,
    rows: usize,
) -> Vec<String> {
    assert!(
        rgb.len() >= width * height * 3,
        "screen buffer of {} bytes for {width}x{height}",
        rgb.len()
    );
    let pixel = |x: usize, y: usize| {
        let i = 3 * (y * width + x);
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    let pixel_rows = 2 * rows;
    let mut lines = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut out = String::new();
        let y_top = (2 * r) * height / pixel_rows;
        let y_bottom = (2 * r + 1) * height / pixel_rows;
        let (mut fg, mut bg) = (None, None);
        for c in 0..cols {
            let x = c * width / cols;
            let (top, bottom) = (pixel(x, y_top), pixel(x, y_bottom));
            if bg != Some(bottom) {
                let _ = write!(out, "\x1b[48;2;{};{};{}m", bottom[0], bottom[1], bottom[2]);
                bg = Some(bottom);
            }
            if top == bottom {
                out.push(' ');
                continue;
            }
            if fg != Some(top) {
                let _ = write!(out, "\x1b[38;2;{};{};{}m", top[0], top[1], top[2]);
                fg = Some(top);
            }
            out.push('▀');
        }
        out.push_str("\x1b[0m");
        lines.push(out);
    }
    lines
}

/// Size of the terminal as `(cols, rows)`, or `None` when stdout is not a terminal.
pub fn terminal_size() -> Option<(usize, usize)> {
    console::Term::stdout()
        .size_checked()
        .map(|(rows, cols)| (cols as usize, rows as usize))
}

/// The terminal while a game is shown on it: the alternate screen with the cursor hidden.
/// Dropping it (at the end, on an error, or unwinding from a panic) restores the colours, the
/// cursor and the previous contents of the terminal.
pub struct TerminalScreen {
    out: io::Stdout,
    buf: String,
    /// The lines on the terminal now: only lines that change are sent again.
    lines: Vec<String>,
    /// Terminal size at the last draw, to clear the screen when it changes.
    size: Option<(usize, usize)>,
}

impl TerminalScreen {
    /// Switches to the alternate screen and hides the cursor.
    pub fn enter() -> io::Result<Self> {
        let mut out = io::stdout();
        out.write_all(b"\x1b[?1049h\x1b[?25l")?;
        out.flush()?;
        Ok(TerminalScreen {
            out,
            buf: String::new(),
            lines: Vec::new(),
            size: None,
        })
    }

    /// Draws a screen (`[height, width, 3] u8`) from the top left corner, fitted to the
    /// terminal's current size (160x105 when the size is unknown), and `status` on the line
    /// below it. Only the lines that changed since the last draw are sent.
    pub fn draw(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        status: &str,
    ) -> io::Result<()> {
        let size = terminal_size();
        let (term_cols, term_rows) = size.unwrap_or((width, height.div_ceil(2) + 1));
        let (cols, rows) = fit(width, height, term_cols, term_rows);
        self.buf.clear();
        if size != self.size || self.lines.is_empty() {
            self.buf.push_str("\x1b[2J");
            self.size = size;
            self.lines.clear();
        }
        let lines = ansi_frame(rgb, width, height, cols, rows);
        for (r, line) in lines.iter().enumerate() {
            if self.lines.get(r) != Some(line) {
                let _ = write!(self.buf, "\x1b[{};1H{line}", r + 1);
            }
        }
        self.lines = lines;
        let status: String = status.chars().take(term_cols).collect();
        let _ = write!(self.buf, "\x1b[{};1H{status}\x1b[K", rows + 1);
        self.out.write_all(self.buf.as_bytes())?;
        self.out.flush()
    }
}

impl Drop for TerminalScreen {
    fn drop(&mut self) {
        let _ = self.out.write_all(b"\x1b[0m\x1b[?25h\x1b[?1049l");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2x2_screen_is_one_line_of_two_half_blocks() {
        // Row 0: red, green; row 1: blue, white.
        let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        assert_eq!(
            ansi_frame(&rgb, 2, 2, 2, 1),
            ["\x1b[48;2;0;0;255m\x1b[38;2;255;0;0m▀\
              \x1b[48;2;255;255;255m\x1b[38;2;0;255;0m▀\x1b[0m"]
        );
    }

    #[test]
    fn repeated_colours_are_sent_once_per_line_and_plain_cells_are_spaces() {
        let rgb = [7u8; 4 * 4 * 3];
        let line = "\x1b[48;2;7;7;7m    \x1b[0m";
        assert_eq!(ansi_frame(&rgb, 4, 4, 4, 2), [line, line]);
        // Upper row white, lower black: the colours are sent once for the line.
        let mut rgb = [0u8; 3 * 2 * 3];
        rgb[..9].fill(255);
        assert_eq!(
            ansi_frame(&rgb, 3, 2, 3, 1),
            ["\x1b[48;2;0;0;0m\x1b[38;2;255;255;255m▀▀▀\x1b[0m"]
        );
    }

    #[test]
    fn scaled_down_pictures_sample_the_nearest_pixel() {
        // 4x2 screen, columns 0 and 2 black, 1 and 3 white: 2 columns take pixels 0 and 2.
        let mut rgb = [0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in [1, 3] {
                rgb[3 * (4 * y + x)..][..3].copy_from_slice(&[255; 3]);
            }
        }
        assert_eq!(ansi_frame(&rgb, 4, 2, 2, 1), ["\x1b[48;2;0;0;0m  \x1b[0m"]);
    }

    #[test]
    fn fit_keeps_full_size_when_it_fits_and_scales_down_otherwise() {
        assert_eq!(fit(160, 210, 200, 120), (160, 105));
        assert_eq!(fit(160, 210, 160, 106), (160, 105));
        // One row short: scale 2 * 104 / 210.
        assert_eq!(fit(160, 210, 160, 105), (158, 104));
        // 80x24: rows limit (2 * 23 / 210).
        assert_eq!(fit(160, 210, 80, 24), (35, 23));
        // Narrow and tall: columns limit.
        assert_eq!(fit(160, 210, 80, 200), (80, 52));
        assert_eq!(fit(160, 210, 0, 0), (1, 1));
    }
}
