//! Thin safe wrapper over ALE 0.6's C API (`ale-sys`). All of the crate's
//! `unsafe` lives here.
//!
//! ALE calls `exit(1)` on a missing ROM file or one whose name it does not
//! know, so both constructors validate in Rust first (via
//! [`crate::game`]). Settings that ALE only reads at load time (seed, sticky
//! actions, frame skip) are set before `loadROM`. ALE's logger is switched
//! to errors only, so it prints nothing in normal use.

use std::ffi::CString;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, Once};

use ale_sys::ALEInterface;

use crate::game::{self, GameError, MAX_ROM_BYTES, MIN_ROM_BYTES};
use crate::preprocess::{ShapeError, SCREEN_H, SCREEN_W};

/// ALE's `Logger::mode` value for "errors only".
const LOGGER_ERROR: i32 = 2;

/// ALE 0.6's NTSC palette as `0xRRGGBB`: the 128 colours that [`Ale::rgb_screen`] writes
/// (ALE's `NTSCPalette`, `src/common/Palettes.hpp`, its even entries; the odd ones are their
/// grey levels). The games ALE ships are NTSC games, so their screens use these colours only.
pub const NTSC_PALETTE: [u32; 128] = [
    0x000000, 0x4a4a4a, 0x6f6f6f, 0x8e8e8e, 0xaaaaaa, 0xc0c0c0, 0xd6d6d6, 0xececec, 0x484800,
    0x69690f, 0x86861d, 0xa2a22a, 0xbbbb35, 0xd2d240, 0xe8e84a, 0xfcfc54, 0x7c2c00, 0x904811,
    0xa26221, 0xb47a30, 0xc3903d, 0xd2a44a, 0xdfb755, 0xecc860, 0x901c00, 0xa33915, 0xb55328,
    0xc66c3a, 0xd5824a, 0xe39759, 0xf0aa67, 0xfcbc74, 0x940000, 0xa71a1a, 0xb83232, 0xc84848,
    0xd65c5c, 0xe46f6f, 0xf08080, 0xfc9090, 0x840064, 0x97197a, 0xa8308f, 0xb846a2, 0xc659b3,
    0xd46cc3, 0xe07cd2, 0xec8ce0, 0x500084, 0x68199a, 0x7d30ad, 0x9246c0, 0xa459d0, 0xb56ce0,
    0xc57cee, 0xd48cfc, 0x140090, 0x331aa3, 0x4e32b5, 0x6848c6, 0x7f5cd5, 0x956fe3, 0xa980f0,
    0xbc90fc, 0x000094, 0x181aa7, 0x2d32b8, 0x4248c8, 0x545cd6, 0x656fe4, 0x7580f0, 0x8490fc,
    0x001c88, 0x183b9d, 0x2d57b0, 0x4272c2, 0x548ad2, 0x65a0e1, 0x75b5ef, 0x84c8fc, 0x003064,
    0x185080, 0x2d6d98, 0x4288b0, 0x54a0c5, 0x65b7d9, 0x75cceb, 0x84e0fc, 0x004030, 0x18624e,
    0x2d8169, 0x429e82, 0x54b899, 0x65d1ae, 0x75e7c2, 0x84fcd4, 0x004400, 0x1a661a, 0x328432,
    0x48a048, 0x5cba5c, 0x6fd26f, 0x80e880, 0x90fc90, 0x143c00, 0x355f18, 0x527e2d, 0x6e9c42,
    0x87b754, 0x9ed065, 0xb4e775, 0xc8fc84, 0x303800, 0x505916, 0x6d762b, 0x88923e, 0xa0ab4f,
    0xb7c25f, 0xccd86e, 0xe0ec7c, 0x482c00, 0x694d14, 0x866a26, 0xa28638, 0xbb9f47, 0xd2b656,
    0xe8cc63, 0xfce070,
];

/// Serialises ALE construction and ROM loading: ALE sets process-wide state
/// there (stdio buffering, the logger mode, Stella's lazily built tables).
static CONSTRUCT: Mutex<()> = Mutex::new(());
static QUIET_LOGGER: Once = Once::new();

/// Emulator settings fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AleSettings {
    /// ALE's `random_seed` (drives sticky actions); must be in
    /// `1..=i32::MAX` since ALE treats 0 as "seed from the clock".
    pub seed: i32,
    /// Probability in `[0, 1]` that ALE repeats the previous action instead
    /// of the chosen one, per emulator frame (ALE's default is 0.25; DQN
    /// used 0.0).
    pub repeat_action_probability: f32,
}

impl Default for AleSettings {
    fn default() -> Self {
        AleSettings {
            seed: 1,
            repeat_action_probability: 0.0,
        }
    }
}

/// Errors from the emulator wrapper.
#[derive(Debug, thiserror::Error)]
pub enum AleError {
    /// Seed outside `1..=i32::MAX`.
    #[error("ALE seed must be in 1..=2147483647, got {0}")]
    InvalidSeed(i32),
    /// Sticky-action probability outside `[0, 1]` or not finite.
    #[error("repeat_action_probability must be in [0, 1], got {0}")]
    InvalidStickiness(f32),
    /// ROM name or file rejected before reaching ALE.
    #[error(transparent)]
    Rom(#[from] GameError),
    /// ROM bytes of implausible size for an Atari 2600 cartridge.
    #[error("ROM bytes for {rom} are {len} bytes; expected {MIN_ROM_BYTES}..={MAX_ROM_BYTES}")]
    RomBytes {
        /// The stem the bytes were given for.
        rom: String,
        /// Their length.
        len: usize,
    },
    /// Could not write the ROM bytes to a temporary file.
    #[error("cannot write temporary ROM file: {0}")]
    TempRom(#[source] std::io::Error),
    /// The ROM path contains a NUL byte and cannot be passed to C.
    #[error("ROM path {} contains a NUL byte", .0.display())]
    PathNul(PathBuf),
    /// `ALE_new` returned null.
    #[error("ALE_new returned a null interface")]
    NullHandle,
    /// ALE reported a screen size other than 160x210.
    #[error("unexpected ALE screen size {width}x{height}; expected {SCREEN_W}x{SCREEN_H}")]
    ScreenSize {
        /// Reported width in pixels.
        width: i32,
        /// Reported height in pixels.
        height: i32,
    },
    /// ALE reported an empty minimal action set.
    #[error("ALE reported no legal actions")]
    NoActions,
    /// An action index outside the minimal action set.
    #[error("action index {index} out of range (minimal action set has {len})")]
    InvalidAction {
        /// The index given.
        index: usize,
        /// Size of the minimal action set.
        len: usize,
    },
    /// A screen buffer of the wrong length.
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// Owned ALE 0.6 interface with a loaded ROM. `Drop` calls `ALE_del`.
///
/// Not `Send`/`Sync`: create one per thread.
pub struct Ale {
    ptr: NonNull<ALEInterface>,
    /// Minimal action set as ALE action ids (e.g. `[0, 1, 3, 4]` for
    /// Breakout: NOOP, FIRE, RIGHT, LEFT).
    actions: Vec<i32>,
    _not_send: PhantomData<*mut ()>,
}

impl Drop for Ale {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `ALE_new`, is non-null, and is deleted
        // exactly once here; no borrow of it outlives `self`.
        unsafe { ale_sys::ALE_del(self.ptr.as_ptr()) }
    }
}

fn check_settings(s: &AleSettings) -> Result<(), AleError> {
    if s.seed < 1 {
        return Err(AleError::InvalidSeed(s.seed));
    }
    let p = s.repeat_action_probability;
    if !p.is_finite() || !(0.0..=1.0).contains(&p) {
        return Err(AleError::InvalidStickiness(p));
    }
    Ok(())
}

impl Ale {
    /// Loads ROM `bytes` for the ALE stem `rom` (e.g. `"breakout"`, see
    /// [`game::SUPPORTED_ROMS`]): writes them as `<rom>.bin` in a fresh
    /// temporary directory, loads that, and deletes the directory.
    ///
    /// Errors: unknown stem, implausible size, bad settings, I/O.
    pub fn from_bytes(rom: &str, bytes: &[u8], settings: AleSettings) -> Result<Self, AleError> {
        check_settings(&settings)?;
        if !game::SUPPORTED_ROMS.contains(&rom) {
            return Err(game::resolve_game(rom)
                .err()
                .unwrap_or(GameError::Unknown {
                    input: rom.to_string(),
                    suggestions: Vec::new(),
                })
                .into());
        }
        let len = bytes.len() as u64;
        if !(MIN_ROM_BYTES..=MAX_ROM_BYTES).contains(&len) {
            return Err(AleError::RomBytes {
                rom: rom.to_string(),
                len: bytes.len(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("async-rl-rom")
            .tempdir()
            .map_err(AleError::TempRom)?;
        let path = dir.path().join(format!("{rom}.bin"));
        std::fs::write(&path, bytes).map_err(AleError::TempRom)?;
        let ale = Self::load(&path, settings);
        // ALE keeps the cartridge in memory; the file is no longer needed.
        drop(dir);
        ale
    }

    /// Loads a ROM file after [`game::validate_rom_file`] accepts it.
    ///
    /// Errors: invalid file or name, bad settings.
    pub fn from_path(path: &Path, settings: AleSettings) -> Result<Self, AleError> {
        check_settings(&settings)?;
        game::validate_rom_file(path)?;
        Self::load(path, settings)
    }

    fn load(path: &Path, settings: AleSettings) -> Result<Self, AleError> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| AleError::PathNul(path.to_path_buf()))?;
        let _guard = CONSTRUCT
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        QUIET_LOGGER.call_once(|| {
            // SAFETY: sets a process-wide int in ALE's Logger; called once,
            // under the construction lock, before any ALE is created here.
            unsafe { ale_sys::setLoggerMode(LOGGER_ERROR) }
        });
        // SAFETY: plain constructor call; a null result is handled below.
        let raw = unsafe { ale_sys::ALE_new() };
        let ptr = NonNull::new(raw).ok_or(AleError::NullHandle)?;
        let mut ale = Ale {
            ptr,
            actions: Vec::new(),
            _not_send: PhantomData,
        };
        let p = ale.ptr.as_ptr();
        // SAFETY: `p` is a live interface owned by `ale`; keys are valid
        // NUL-terminated literals that ALE copies; settings were validated.
        unsafe {
            ale_sys::setInt(p, c"random_seed".as_ptr(), settings.seed);
            ale_sys::setFloat(
                p,
                c"repeat_action_probability".as_ptr(),
                settings.repeat_action_probability,
            );
            ale_sys::setInt(p, c"frame_skip".as_ptr(), 1);
            ale_sys::setBool(p, c"color_averaging".as_ptr(), false);
            ale_sys::setInt(p, c"max_num_frames_per_episode".as_ptr(), 0);
        }
        // SAFETY: `p` is live; `c_path` names an existing regular file whose
        // stem ALE supports (checked by the callers), so ALE will not exit.
        unsafe { ale_sys::loadROM(p, c_path.as_ptr()) };
        // SAFETY: `p` is live and has a ROM loaded.
        let (width, height) = unsafe { (ale_sys::getScreenWidth(p), ale_sys::getScreenHeight(p)) };
        if width as usize != SCREEN_W || height as usize != SCREEN_H {
            return Err(AleError::ScreenSize { width, height });
        }
        // SAFETY: `p` is live and has a ROM loaded.
        let n = unsafe { ale_sys::getMinimalActionSize(p) };
        if n <= 0 {
            return Err(AleError::NoActions);
        }
        let mut actions = vec![0i32; n as usize];
        // SAFETY: `actions` has exactly `getMinimalActionSize` slots, which
        // is how many ints ALE writes.
        unsafe { ale_sys::getMinimalActionSet(p, actions.as_mut_ptr()) };
        ale.actions = actions;
        Ok(ale)
    }

    /// The minimal action set as ALE action ids (0 NOOP, 1 FIRE, 2 UP,
    /// 3 RIGHT, 4 LEFT, 5 DOWN, ... 17 DOWNLEFTFIRE); indices into this slice
    /// are what [`Ale::act`] takes.
    pub fn minimal_action_set(&self) -> &[i32] {
        &self.actions
    }

    /// Plays minimal-set action `index` for one emulator frame (this wrapper
    /// sets ALE's frame_skip to 1) and returns the raw game reward.
    ///
    /// Errors: [`AleError::InvalidAction`] if `index` is out of range.
    pub fn act(&mut self, index: usize) -> Result<i32, AleError> {
        let Some(&id) = self.actions.get(index) else {
            return Err(AleError::InvalidAction {
                index,
                len: self.actions.len(),
            });
        };
        // SAFETY: the interface is live; `id` comes from ALE's own minimal
        // action set, so it is a valid `Action` value.
        Ok(unsafe { ale_sys::act(self.ptr.as_ptr(), id) })
    }

    /// Whether the game has ended (all lives lost or the game's own end).
    pub fn game_over(&self) -> bool {
        // SAFETY: the interface is live and has a ROM loaded.
        unsafe { ale_sys::game_over(self.ptr.as_ptr()) }
    }

    /// Resets the game to its start (ALE's own reset; deterministic).
    pub fn reset_game(&mut self) {
        // SAFETY: the interface is live and has a ROM loaded.
        unsafe { ale_sys::reset_game(self.ptr.as_ptr()) }
    }

    /// Lives left as the game reports them (0 for games without lives).
    pub fn lives(&self) -> i32 {
        // SAFETY: the interface is live and has a ROM loaded.
        unsafe { ale_sys::lives(self.ptr.as_ptr()) }
    }

    /// Emulator frames since the last reset, as ALE counts them.
    pub fn episode_frame_number(&self) -> i32 {
        // SAFETY: the interface is live and has a ROM loaded.
        unsafe { ale_sys::getEpisodeFrameNumber(self.ptr.as_ptr()) }
    }

    /// Writes the current screen as grayscale (ALE's palette luminance),
    /// `[210, 160] u8` row-major, into `out`.
    ///
    /// Errors: [`ShapeError`] unless `out.len() == 210 * 160`.
    pub fn grayscale_screen(&self, out: &mut [u8]) -> Result<(), AleError> {
        check_len("grayscale screen", SCREEN_H * SCREEN_W, out.len())?;
        // SAFETY: the interface is live; `out` holds exactly width*height
        // bytes (160x210, checked at load), which is what ALE writes.
        unsafe { ale_sys::getScreenGrayscale(self.ptr.as_ptr(), out.as_mut_ptr()) };
        Ok(())
    }

    /// Writes the current screen as RGB, `[210, 160, 3] u8` row-major, into
    /// `out`.
    ///
    /// Errors: [`ShapeError`] unless `out.len() == 210 * 160 * 3`.
    pub fn rgb_screen(&self, out: &mut [u8]) -> Result<(), AleError> {
        check_len("RGB screen", SCREEN_H * SCREEN_W * 3, out.len())?;
        // SAFETY: the interface is live; `out` holds exactly
        // width*height*3 bytes, which is what ALE writes.
        unsafe { ale_sys::getScreenRGB(self.ptr.as_ptr(), out.as_mut_ptr()) };
        Ok(())
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), AleError> {
    Ok(crate::preprocess::check(what, expected, got)?)
}
