//! The environments actors act in, behind one interface: [`Environment`].
//!
//! Four kinds ship: Atari games ([`atari`], DeepMind's preprocessing over [`ale`], a
//! thin safe wrapper of ALE 0.6's C API that holds all the `unsafe` code), CartPole-v1
//! ([`cartpole`], pure Rust), Pendulum-v1 ([`pendulum`], pure Rust, continuous actions), and
//! any Gymnasium environment (`--game gymnasium:<id>`,
//! [`gymnasium`]: each in a Python worker process of its own). Users add their own by
//! implementing [`Environment`] and registering a factory under a name with [`register`] (see
//! [`registry`]), or in Python as a Gymnasium environment.

pub mod ale;
pub mod atari;
pub mod cartpole;
pub mod gymnasium;
pub mod pendulum;
pub mod registry;

use std::path::PathBuf;

pub use self::ale::{Ale, AleError, AleSettings};
pub use self::atari::{AtariConfig, AtariEnv};
pub use self::cartpole::CartPole;
pub use self::gymnasium::{GymEnv, GymError};
pub use self::pendulum::Pendulum;
pub use self::registry::{make, register, resolve, EnvFactory, EnvId, EnvSettings, ResolveError};

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
    /// [`Environment::screen_rgb`] on an environment without a screen.
    #[error("this environment has no screen (only its observations)")]
    NoScreen,
    /// `step` after game over or truncation without `reset`.
    #[error("the episode is over (game over or truncated); call reset() before step()")]
    EpisodeOver,
    /// A configuration value is out of range.
    #[error("invalid environment config: {0}")]
    Config(String),
    /// Internal buffer shape mismatch (a bug, reported rather than panicking).
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// An error of a user-registered environment.
    #[error("{0}")]
    Custom(String),
    /// A Gymnasium environment's error (Python's traceback included), or its worker's.
    #[error(transparent)]
    Gymnasium(#[from] GymError),
    /// A continuous (Box) action given to an environment with discrete actions, or the reverse.
    #[error("this environment's actions are {expected}, but it was given {given}")]
    ActionKind {
        /// The environment's action space, e.g. `"discrete (0..2)"`.
        expected: String,
        /// What it was given, e.g. `"a continuous action of 1 dimension"`.
        given: String,
    },
}

/// Outcome of one agent step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Raw game score gained during this step.
    pub reward: f32,
    /// `reward` sign-clipped to {-1, 0, +1}, for training.
    pub clipped_reward: f32,
    /// Terminal for training: game over, or a life lost when
    /// `terminal_on_life_loss`. Not set by truncation alone.
    pub terminal: bool,
    /// The game itself ended; call `reset` before stepping again.
    pub game_over: bool,
    /// The episode hit `max_episode_frames`; call `reset` before
    /// stepping again (bootstrap from the last observation when learning).
    pub truncated: bool,
    /// Emulator frames this step took: `frame_skip`, or fewer if the game
    /// ended mid-step.
    pub frames: u32,
}

/// What an environment's observations are, and so how a transition's observation bytes are
/// read (the queue's slots and the model's input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ObsSpec {
    /// Stacked u8 frames `[channels, height, width]` (Atari: `[4, 84, 84]`); the model scales
    /// them by 1/255.
    Frames([usize; 3]),
    /// A vector of `n` f32 features, stored as native-endian bytes (CartPole: 4).
    Vector(usize),
}

impl ObsSpec {
    /// Bytes of one observation.
    pub fn bytes(&self) -> usize {
        match self {
            ObsSpec::Frames(s) => s.iter().product(),
            ObsSpec::Vector(n) => 4 * n,
        }
    }
}

/// What an environment's actions are (Gymnasium's `Discrete` and `Box` spaces).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ActionSpec {
    /// `n` discrete actions `0..n`, stepped with [`Environment::step`].
    Discrete(usize),
    /// A real vector of `low.len()` dimensions, component `i` within `[low[i], high[i]]`
    /// (either may be infinite), stepped with [`Environment::step_continuous`].
    Box {
        /// Lower bounds, one per dimension.
        low: Vec<f32>,
        /// Upper bounds, one per dimension (`high[i] >= low[i]`).
        high: Vec<f32>,
    },
}

impl ActionSpec {
    /// The network's action width: the number of discrete actions, or the Box's dimensions.
    pub fn width(&self) -> usize {
        match self {
            ActionSpec::Discrete(n) => *n,
            ActionSpec::Box { low, .. } => low.len(),
        }
    }

    /// Whether the actions are a continuous Box.
    pub fn is_continuous(&self) -> bool {
        matches!(self, ActionSpec::Box { .. })
    }
}

impl std::fmt::Display for ActionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionSpec::Discrete(n) => write!(f, "discrete (0..{n})"),
            ActionSpec::Box { low, .. } => {
                write!(f, "continuous (a Box of {} dimensions)", low.len())
            }
        }
    }
}

/// An environment: a Markov decision process with discrete or continuous actions
/// ([`ActionSpec`]), stepped one agent step at a time. Not required to be `Send`: each actor
/// builds its own.
pub trait Environment {
    /// Shape and type of the observations.
    fn obs_spec(&self) -> ObsSpec;
    /// Number of discrete actions (actions are `0..num_actions()`); for a continuous action
    /// space, its number of dimensions ([`ActionSpec::width`]).
    fn num_actions(&self) -> usize;
    /// The action space: discrete by default (`Discrete(num_actions())`); environments with
    /// continuous actions return a `Box` and implement [`Environment::step_continuous`].
    fn action_spec(&self) -> ActionSpec {
        ActionSpec::Discrete(self.num_actions())
    }
    /// Starts a new episode; `obs()` is then its first observation.
    ///
    /// Errors: the simulator's own (a Python environment's `reset` raising, say).
    fn reset(&mut self) -> Result<(), EnvError>;
    /// The current observation, `obs_spec().bytes()` long.
    fn obs(&self) -> &[u8];
    /// One agent step. After a step with `game_over` or `truncated`, call `reset` first.
    /// Errors: an action out of range, a step after the episode ended, the simulator's own.
    fn step(&mut self, action: usize) -> Result<Step, EnvError>;
    /// One agent step with a continuous action (`action_spec().width()` values; the
    /// environment clips them to its bounds). After a step with `game_over` or `truncated`,
    /// call `reset` first.
    ///
    /// Errors: [`EnvError::ActionKind`] for environments with discrete actions (the default),
    /// a wrong length, a step after the episode ended, the simulator's own.
    fn step_continuous(&mut self, action: &[f32]) -> Result<Step, EnvError> {
        Err(EnvError::ActionKind {
            expected: self.action_spec().to_string(),
            given: format!("a continuous action of {} dimensions", action.len()),
        })
    }
    /// Unclipped score of the current episode so far.
    fn episode_return(&self) -> f32;
    /// Frames of the current episode so far (for Atari, emulator frames; else steps).
    fn episode_frames(&self) -> u64;
    /// Size `(width, height)` in pixels of the screen that [`Environment::screen_rgb`] writes
    /// (Atari: `(160, 210)`), or `None` when there is no screen to show: the default, for
    /// environments whose observations are all there is (CartPole).
    fn screen_size(&self) -> Option<(usize, usize)> {
        None
    }
    /// Writes the current screen for people to watch (`play`'s terminal display and GIFs; the
    /// agent never sees it) as RGB, `[height, width, 3] u8` row-major, with the size that
    /// [`Environment::screen_size`] reports.
    ///
    /// Errors: [`EnvError::NoScreen`] without a screen (the default); a buffer of another length.
    fn screen_rgb(&mut self, out: &mut [u8]) -> Result<(), EnvError> {
        let _ = out;
        Err(EnvError::NoScreen)
    }
}
