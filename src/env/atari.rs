//! An Atari game as a reinforcement-learning environment, with DeepMind's
//! Nature DQN preprocessing (Mnih et al. 2015; the same steps as Gym's
//! `AtariPreprocessing` plus the `FireResetEnv`/`EpisodicLifeEnv` wrappers).
//!
//! Order of the steps, as seen by the agent:
//! 1. reset: `reset_game`, then a random 0..=`noop_max` NOOP frames, then
//!    FIRE and action 2 (one agent step each) for games that need FIRE to
//!    start;
//! 2. each agent step repeats the action for `frame_skip` emulator frames
//!    and takes the max over the last two frames (removes sprite flicker);
//! 3. grayscale (ALE's palette luminance), area resize 210x160 -> 84x84;
//! 4. a stack of the last 4 frames is the observation, `[4, 84, 84] u8`;
//! 5. rewards are sign-clipped for training, the raw score is kept too;
//! 6. a lost life is terminal for training only (the game goes on);
//! 7. episodes are truncated after `max_episode_frames` emulator frames.
//!
//! Units: a *frame* is one emulator frame (60 per second of game time); an
//! agent *step* is `frame_skip` frames.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ale::{Ale, AleSettings};
use super::{EnvError, Environment, ObsSpec, Step};
use crate::game::{self, GameSpec};
use crate::preprocess::{
    clip_reward, max_pool, FrameStack, Resizer, FRAME_LEN, OBS_H, OBS_W, SCREEN_H, SCREEN_W, STACK,
};

/// ALE action id of FIRE.
const ALE_FIRE: i32 = 1;
/// Largest accepted `frame_skip`, in frames.
const MAX_FRAME_SKIP: u32 = 64;
/// Names of ALE's 18 action ids, indexed by id.
const ACTION_NAMES: [&str; 18] = [
    "NOOP",
    "FIRE",
    "UP",
    "RIGHT",
    "LEFT",
    "DOWN",
    "UPRIGHT",
    "UPLEFT",
    "DOWNRIGHT",
    "DOWNLEFT",
    "UPFIRE",
    "RIGHTFIRE",
    "LEFTFIRE",
    "DOWNFIRE",
    "UPRIGHTFIRE",
    "UPLEFTFIRE",
    "DOWNRIGHTFIRE",
    "DOWNLEFTFIRE",
];

/// How to build an [`AtariEnv`].
#[derive(Clone, Debug, PartialEq)]
pub struct AtariConfig {
    /// The game (from [`game::resolve_game`]).
    pub game: GameSpec,
    /// A ROM file to load instead of the ROM bundled in the `ale` crate; its
    /// name stem must be `game.rom` (e.g. `breakout.bin`).
    pub rom_path: Option<PathBuf>,
    /// Seeds the no-op starts and ALE's own RNG (used by sticky actions).
    pub seed: u64,
    /// Emulator frames per agent step (DQN: 4), in `1..=64`.
    pub frame_skip: u32,
    /// Upper bound of the random number of NOOP *frames* played after each
    /// reset (DQN: 30), as in Gym's `AtariPreprocessing`.
    pub noop_max: u32,
    /// ALE sticky-action probability in `[0, 1]` (DQN: 0.0).
    pub repeat_action_probability: f32,
    /// Report a lost life as terminal (training: true; evaluation: false).
    pub terminal_on_life_loss: bool,
    /// With `terminal_on_life_loss`: after a lost life, play a no-op step, then FIRE and
    /// action 2 (one agent step each) on FIRE games, and refill the frame stack with the
    /// last frame, as OpenAI baselines' `EpisodicLifeEnv` and `FireResetEnv` do between the
    /// training "episodes" of one game (default false).
    pub fire_on_life_loss: bool,
    /// Truncate an episode after this many emulator frames, no-op and FIRE
    /// frames included (DQN: 108,000 = 30 minutes); 0 disables.
    pub max_episode_frames: u64,
}

impl AtariConfig {
    /// DQN defaults for `game`: bundled ROM, seed 0, frame skip 4, up to 30
    /// no-ops, life loss terminal, 108,000-frame episodes, and sticky actions
    /// from the Gym id if it implied any (else 0.0).
    pub fn new(game: GameSpec) -> Self {
        let repeat_action_probability = game.repeat_action_probability.unwrap_or(0.0);
        AtariConfig {
            game,
            rom_path: None,
            seed: 0,
            frame_skip: 4,
            noop_max: 30,
            repeat_action_probability,
            terminal_on_life_loss: true,
            fire_on_life_loss: false,
            max_episode_frames: 108_000,
        }
    }
}

/// One emulator with DeepMind preprocessing. Observations are
/// `[4, 84, 84] u8`, oldest frame first. Not `Send`: build one per thread.
pub struct AtariEnv {
    ale: Ale,
    rng: StdRng,
    resizer: Resizer,
    frame_skip: u32,
    noop_max: u32,
    terminal_on_life_loss: bool,
    fire_on_life_loss: bool,
    max_episode_frames: u64,
    fire_reset: bool,
    /// Last two grayscale screens of a skip, `[210, 160] u8` each.
    screens: [Vec<u8>; 2],
    /// Their elementwise max, `[210, 160] u8`.
    pooled: Vec<u8>,
    /// `pooled` resized, `[84, 84] u8`.
    small: Vec<u8>,
    stack: FrameStack,
    lives: i32,
    episode_return: f32,
    episode_frames: u64,
    /// Game over or truncated: `step` refuses until `reset`.
    episode_over: bool,
}

/// Maps the user seed to ALE's `random_seed` range `1..=i32::MAX`.
fn ale_seed(seed: u64) -> i32 {
    let mixed = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 33) % (i32::MAX as u64) + 1) as i32
}

impl AtariEnv {
    /// Loads the game (bundled ROM unless `cfg.rom_path` is given) and
    /// resets it, so [`AtariEnv::obs`] is valid at once.
    ///
    /// Errors: [`EnvError::NoBundledRom`] if the game has no bundled ROM and
    /// no path was given; [`EnvError::RomMismatch`] if the file's stem is
    /// another game; invalid ROM files; [`EnvError::Config`] for a
    /// `frame_skip` outside `1..=64`; bad stickiness.
    pub fn new(cfg: &AtariConfig) -> Result<Self, EnvError> {
        if !(1..=MAX_FRAME_SKIP).contains(&cfg.frame_skip) {
            return Err(EnvError::Config(format!(
                "frame_skip must be in 1..={MAX_FRAME_SKIP}, got {}",
                cfg.frame_skip
            )));
        }
        let settings = AleSettings {
            seed: ale_seed(cfg.seed),
            repeat_action_probability: cfg.repeat_action_probability,
        };
        let rom = &cfg.game.rom;
        let ale = match &cfg.rom_path {
            Some(path) => {
                let found = game::validate_rom_file(path)?;
                if &found != rom {
                    return Err(EnvError::RomMismatch {
                        path: path.clone(),
                        expected: rom.clone(),
                        found,
                    });
                }
                Ale::from_path(path, settings)?
            }
            None => {
                let bytes = game::bundled_rom(rom).ok_or_else(|| EnvError::NoBundledRom {
                    rom: rom.clone(),
                    name: cfg.game.name.clone(),
                })?;
                Ale::from_bytes(rom, bytes, settings)?
            }
        };
        let actions = ale.minimal_action_set();
        let fire_reset = actions.len() >= 3 && actions[1] == ALE_FIRE;
        let mut env = AtariEnv {
            ale,
            rng: StdRng::seed_from_u64(cfg.seed),
            resizer: Resizer::new(SCREEN_H, SCREEN_W, OBS_H, OBS_W),
            frame_skip: cfg.frame_skip,
            noop_max: cfg.noop_max,
            terminal_on_life_loss: cfg.terminal_on_life_loss,
            fire_on_life_loss: cfg.fire_on_life_loss,
            max_episode_frames: cfg.max_episode_frames,
            fire_reset,
            screens: [vec![0; SCREEN_H * SCREEN_W], vec![0; SCREEN_H * SCREEN_W]],
            pooled: vec![0; SCREEN_H * SCREEN_W],
            small: vec![0; FRAME_LEN],
            stack: FrameStack::new(),
            lives: 0,
            episode_return: 0.0,
            episode_frames: 0,
            episode_over: false,
        };
        env.try_reset()?;
        Ok(env)
    }

    /// Size of the game's minimal action set (e.g. 4 for Breakout, 6 for
    /// Pong); actions are indices `0..num_actions()`.
    pub fn num_actions(&self) -> usize {
        self.ale.minimal_action_set().len()
    }

    /// ALE names of the minimal action set, by index (e.g. Breakout:
    /// `["NOOP", "FIRE", "RIGHT", "LEFT"]`).
    pub fn action_names(&self) -> Vec<&'static str> {
        self.ale
            .minimal_action_set()
            .iter()
            .map(|&id| ACTION_NAMES.get(id as usize).copied().unwrap_or("UNKNOWN"))
            .collect()
    }

    /// Whether reset presses FIRE (minimal set has FIRE at index 1 and at
    /// least 3 actions, as in Gym's `FireResetEnv`).
    pub fn fire_on_reset(&self) -> bool {
        self.fire_reset
    }

    /// Observation shape `[4, 84, 84]` (stack, height, width; u8).
    pub fn obs_shape(&self) -> [usize; 3] {
        [STACK, OBS_H, OBS_W]
    }

    /// Starts a new game: `reset_game`, a random 0..=`noop_max` NOOP frames
    /// (from the env's own seeded RNG), then FIRE and action 2 for one agent
    /// step each on FIRE games. Returns the observation `[4, 84, 84] u8`
    /// with all 4 slots holding the first frame. Episode return and frame
    /// counters restart; rewards during the reset sequence are discarded,
    /// its frames are counted in [`AtariEnv::episode_frames`].
    pub fn reset(&mut self) -> &[u8] {
        // Buffers are sized at construction and every action index used
        // here is in range, so this cannot fail; keep the old obs if it did.
        let _ = self.try_reset();
        self.stack.as_slice()
    }

    fn try_reset(&mut self) -> Result<(), EnvError> {
        self.ale.reset_game();
        self.episode_frames = 0;
        let noops = self.rng.gen_range(0..=self.noop_max);
        self.play(0, noops)?;
        if self.fire_reset && !self.ale.game_over() {
            self.play(1, self.frame_skip)?;
            if !self.ale.game_over() {
                self.play(2, self.frame_skip)?;
            }
        }
        if self.ale.game_over() {
            // A game that ends during the start sequence: start plainly.
            self.ale.reset_game();
            self.episode_frames = 0;
            self.play(0, 0)?;
        }
        self.stack.reset(&self.small)?;
        self.lives = self.ale.lives();
        self.episode_return = 0.0;
        self.episode_over = false;
        Ok(())
    }

    /// Repeats minimal-set action `index` for up to `frames` emulator frames
    /// (stopping at game over), leaves the max of the last two screens
    /// resized in `self.small`, and returns (raw reward, frames played).
    fn play(&mut self, index: usize, frames: u32) -> Result<(i32, u32), EnvError> {
        let mut reward = 0i32;
        let mut played = 0u32;
        let mut have_prev = false;
        while played < frames {
            reward = reward.saturating_add(self.ale.act(index)?);
            played += 1;
            if played == frames || self.ale.game_over() {
                break;
            }
            if played + 1 == frames {
                let [prev, _] = &mut self.screens;
                self.ale.grayscale_screen(prev)?;
                have_prev = true;
            }
        }
        self.episode_frames += u64::from(played);
        let [prev, last] = &mut self.screens;
        self.ale.grayscale_screen(last)?;
        if have_prev {
            max_pool(prev, last, &mut self.pooled)?;
            self.resizer.resize(&self.pooled, &mut self.small)?;
        } else {
            self.resizer.resize(last, &mut self.small)?;
        }
        Ok((reward, played))
    }

    /// One agent step: plays minimal-set action `action` for `frame_skip`
    /// emulator frames (fewer if the game ends) and pushes the new frame
    /// onto the observation stack.
    ///
    /// After a step with `game_over` or `truncated`, call
    /// [`AtariEnv::reset`]; until then `step` returns
    /// [`EnvError::EpisodeOver`]. A life lost with `terminal_on_life_loss`
    /// only marks `terminal`: the game goes on and needs no reset.
    ///
    /// Errors: [`EnvError::InvalidAction`] if `action >= num_actions()`.
    pub fn step(&mut self, action: usize) -> Result<Step, EnvError> {
        let num_actions = self.num_actions();
        if action >= num_actions {
            return Err(EnvError::InvalidAction {
                action,
                num_actions,
            });
        }
        if self.episode_over {
            return Err(EnvError::EpisodeOver);
        }
        let (raw, mut frames) = self.play(action, self.frame_skip)?;
        self.stack.push(&self.small)?;
        let reward = raw as f32;
        self.episode_return += reward;
        let mut game_over = self.ale.game_over();
        let lives = self.ale.lives();
        let life_lost = lives < self.lives;
        self.lives = lives;
        if life_lost && self.terminal_on_life_loss && self.fire_on_life_loss && !game_over {
            // As baselines' EpisodicLifeEnv.reset (a no-op step) and FireResetEnv.reset
            // (FIRE, then action 2) between the "episodes" of one game; their rewards count
            // in the score only (the step is terminal for training anyway).
            let mut sequence = vec![0];
            if self.fire_reset {
                sequence.extend([1, 2]);
            }
            for a in sequence {
                let (r, f) = self.play(a, self.frame_skip)?;
                self.episode_return += r as f32;
                frames += f;
                if self.ale.game_over() {
                    break;
                }
            }
            self.stack.reset(&self.small)?;
            game_over = self.ale.game_over();
            self.lives = self.ale.lives();
        }
        let truncated = !game_over
            && self.max_episode_frames > 0
            && self.episode_frames >= self.max_episode_frames;
        self.episode_over = game_over || truncated;
        Ok(Step {
            reward,
            clipped_reward: clip_reward(reward),
            terminal: game_over || (self.terminal_on_life_loss && life_lost),
            game_over,
            truncated,
            frames,
        })
    }

    /// Current observation, `[4, 84, 84] u8` row-major, oldest frame first.
    pub fn obs(&self) -> &[u8] {
        self.stack.as_slice()
    }

    /// Raw game score of the current game since the last reset (sum of
    /// [`Step::reward`]).
    pub fn episode_return(&self) -> f32 {
        self.episode_return
    }

    /// Emulator frames since the last reset, no-op and FIRE frames included.
    pub fn episode_frames(&self) -> u64 {
        self.episode_frames
    }

    /// Lives left as the game reports them.
    pub fn lives(&self) -> i32 {
        self.lives
    }

    /// Writes the current screen as RGB, `[210, 160, 3] u8`, for rendering: the last emulator
    /// frame of the last step (not the max over two frames that the agent sees), in the colours
    /// of [`super::ale::NTSC_PALETTE`].
    ///
    /// Errors: [`EnvError::Ale`] (shape) unless `out.len() == 210 * 160 * 3`.
    pub fn rgb_screen(&mut self, out: &mut [u8]) -> Result<(), EnvError> {
        Ok(self.ale.rgb_screen(out)?)
    }
}

#[cfg(test)]
#[path = "atari_tests.rs"]
mod tests;

impl Environment for AtariEnv {
    fn obs_spec(&self) -> ObsSpec {
        ObsSpec::Frames(AtariEnv::obs_shape(self))
    }

    fn num_actions(&self) -> usize {
        AtariEnv::num_actions(self)
    }

    fn reset(&mut self) -> Result<(), EnvError> {
        AtariEnv::reset(self);
        Ok(())
    }

    fn obs(&self) -> &[u8] {
        AtariEnv::obs(self)
    }

    fn step(&mut self, action: usize) -> Result<Step, EnvError> {
        AtariEnv::step(self, action)
    }

    fn episode_return(&self) -> f32 {
        AtariEnv::episode_return(self)
    }

    fn episode_frames(&self) -> u64 {
        AtariEnv::episode_frames(self)
    }

    fn screen_size(&self) -> Option<(usize, usize)> {
        Some((SCREEN_W, SCREEN_H))
    }

    fn screen_rgb(&mut self, out: &mut [u8]) -> Result<(), EnvError> {
        self.rgb_screen(out)
    }
}
