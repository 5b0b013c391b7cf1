//! The Atari environment the learners act in.
//!
//! Split in two so that all `unsafe` code lives in one small file:
//! [`ale`] is a thin safe wrapper over ALE 0.6's C API (from `ale-sys`), and
//! [`atari`] builds DeepMind's Nature DQN preprocessing on top of it.

pub mod ale;
pub mod atari;

use std::path::PathBuf;

pub use self::ale::{Ale, AleError, AleSettings};
pub use self::atari::{AtariConfig, AtariEnv, Step};

use crate::game::GameError;
use crate::preprocess::ShapeError;

/// Errors from building or stepping an [`AtariEnv`].
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Game name or ROM file problem (unknown game, invalid ROM file).
    #[error(transparent)]
    Game(#[from] GameError),
    /// The emulator wrapper refused a setting or failed to load the ROM.
    #[error(transparent)]
    Ale(#[from] AleError),
    /// The game's ROM is not bundled in the `ale` crate and no ROM file was
    /// given.
    #[error(
        "no bundled ROM for {name} ({rom}); pass a ROM file named {rom}.bin with --rom <path>"
    )]
    NoBundledRom {
        /// ALE stem, e.g. `"tetris"`.
        rom: String,
        /// CamelCase name, e.g. `"Tetris"`.
        name: String,
    },
    /// The ROM file is for another game than the one configured.
    #[error(
        "ROM file {} is for {found:?} but the configured game is {expected:?}",
        path.display()
    )]
    RomMismatch {
        /// The ROM path given.
        path: PathBuf,
        /// Stem of the configured game.
        expected: String,
        /// Stem ALE would read from the file name.
        found: String,
    },
    /// An action index outside the minimal action set.
    #[error(
        "action {action} is out of range: this game has {num_actions} actions (0..{num_actions})"
    )]
    InvalidAction {
        /// The index given.
        action: usize,
        /// Size of the minimal action set.
        num_actions: usize,
    },
    /// `step` after game over or truncation without `reset`.
    #[error("the episode is over (game over or truncated); call reset() before step()")]
    EpisodeOver,
    /// A configuration value is out of range.
    #[error("invalid environment config: {0}")]
    Config(String),
    /// Internal buffer shape mismatch (a bug, reported rather than panicking).
    #[error(transparent)]
    Shape(#[from] ShapeError),
}
