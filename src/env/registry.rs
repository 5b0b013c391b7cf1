//! Environments by name: `--game` resolves to a Gymnasium id (`gymnasium:<id>`), a registered
//! environment (CartPole is built in) or, failing those, to an Atari game; [`make`] builds it.
//!
//! To add an environment, implement [`Environment`] and register a factory before the learner's
//! command line runs, in your own binary (actors re-execute that same binary, so they see the
//! registration too):
//!
//! ```no_run
//! use async_rl::env::{self, EnvError, EnvSettings, Environment};
//! # struct MyEnv;
//! # impl MyEnv { fn new(_seed: u64) -> Self { MyEnv } }
//! # impl Environment for MyEnv {
//! #     fn obs_spec(&self) -> env::ObsSpec { env::ObsSpec::Vector(1) }
//! #     fn num_actions(&self) -> usize { 2 }
//! #     fn reset(&mut self) -> Result<(), EnvError> { Ok(()) }
//! #     fn obs(&self) -> &[u8] { &[0; 4] }
//! #     fn step(&mut self, _: usize) -> Result<env::Step, EnvError> { Err(EnvError::EpisodeOver) }
//! #     fn episode_return(&self) -> f32 { 0.0 }
//! #     fn episode_frames(&self) -> u64 { 0 }
//! # }
//! fn main() -> std::process::ExitCode {
//!     env::register("MyEnv", |s: &EnvSettings| Ok(Box::new(MyEnv::new(s.seed))));
//!     async_rl::cli::learner_main() // then: my-learner --game MyEnv
//! }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::atari::{AtariConfig, AtariEnv};
use super::cartpole::{self, CartPole};
use super::gymnasium::{self, GymEnv};
use super::pendulum::{self, Pendulum};
use super::{EnvError, Environment};
use crate::game::{self, GameError, GameSpec};

/// Settings every environment is built with (from the run's config). Environments use what
/// applies to them: CartPole only `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSettings {
    /// Seed of this environment instance (each actor has its own).
    pub seed: u64,
    /// Atari: emulator frames per agent step.
    pub frame_skip: u32,
    /// Atari: up to this many no-op frames at the start of a game.
    pub noop_max: u32,
    /// Atari: sticky-action probability; None = the Gym id's, else 0.
    pub repeat_action_probability: Option<f32>,
    /// Atari: a lost life is terminal for training.
    pub terminal_on_life_loss: bool,
    /// Atari: with `terminal_on_life_loss`, a lost life restarts play as a new game's start
    /// does (a no-op step, FIRE and action 2 on FIRE games, the frame stack refilled), as
    /// OpenAI baselines' EpisodicLifeEnv and FireResetEnv do in training.
    pub fire_on_life_loss: bool,
    /// Atari: games are truncated after this many frames.
    pub max_episode_frames: u64,
    /// Atari: a ROM file instead of the bundled ROM.
    pub rom: Option<PathBuf>,
    /// Gymnasium: the Python interpreter (`--python`); `None`: the default that
    /// [`gymnasium::python`] picks.
    pub python: Option<PathBuf>,
    /// Gymnasium: how long the worker may take to answer one request (`--python-timeout`).
    pub python_timeout: std::time::Duration,
    /// Gymnasium: make the environment with `render_mode="rgb_array"`, so that it has a screen
    /// ([`Environment::screen_rgb`]); `play` asks for it when it shows or records the screen.
    pub render: bool,
}

/// Builds a registered environment.
pub type EnvFactory = fn(&EnvSettings) -> Result<Box<dyn Environment>, EnvError>;

/// A resolved `--game`.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvId {
    /// A registered environment, by its registered name.
    Registered(String),
    /// An Atari game.
    Atari(GameSpec),
    /// A Gymnasium environment, by its Gymnasium id (`CartPole-v1`,
    /// `mypackage.envs:MyEnv-v0`), stepped in a Python worker ([`gymnasium`]).
    Gymnasium(String),
}

impl EnvId {
    /// Display name: `CartPole`, `Breakout`, `SpaceInvaders`; a Gymnasium id without its
    /// module (`Acrobot-v1`, `MyEnv-v0`), which names the run directory `runs/<name>`.
    pub fn name(&self) -> &str {
        match self {
            EnvId::Registered(name) => name,
            EnvId::Atari(spec) => &spec.name,
            EnvId::Gymnasium(id) => id.rsplit(':').next().unwrap_or(id),
        }
    }
}

struct Entry {
    name: String,
    aliases: Vec<String>,
    factory: EnvFactory,
}

fn registry() -> &'static Mutex<Vec<Entry>> {
    static REGISTRY: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(vec![
            Entry {
                name: "CartPole".into(),
                aliases: vec!["CartPole-v1".into()],
                factory: |s| Ok(Box::new(CartPole::new(s.seed, cartpole::MAX_STEPS))),
            },
            Entry {
                name: "Pendulum".into(),
                aliases: vec!["Pendulum-v1".into()],
                factory: |s| Ok(Box::new(Pendulum::new(s.seed, pendulum::MAX_STEPS))),
            },
        ])
    })
}

/// Registers `factory` under `name` (matched case-insensitively; replaces an entry of the
/// same name). Registered names take precedence over Atari games.
pub fn register(name: &str, factory: EnvFactory) {
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|e| !e.name.eq_ignore_ascii_case(name));
    reg.push(Entry {
        name: name.to_string(),
        aliases: vec![],
        factory,
    });
}

/// Names of the registered environments.
pub fn registered_names() -> Vec<String> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

/// Why `--game` (or `--rom`) names no environment this build can play. Messages name the flag
/// and what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `--rom` is not a usable ROM file.
    #[error("--rom: {0}")]
    Rom(GameError),
    /// `--game` is neither a registered environment nor an Atari game (or a bad Gym id).
    #[error("--game: {0}")]
    Game(GameError),
    /// `--game gymnasium:<id>` with a malformed id.
    #[error(
        "--game {input}: expected gymnasium:<EnvId> (e.g. gymnasium:CartPole-v1) or \
         gymnasium:<module>:<EnvId> (e.g. gymnasium:mypackage.envs:MyEnv-v0)"
    )]
    GymnasiumId {
        /// What `--game` said.
        input: String,
    },
    /// `--rom` given with a Gymnasium environment.
    #[error("--rom: {game} is a Gymnasium environment; --rom is for Atari games only")]
    RomNotAtari {
        /// What `--game` said.
        game: String,
    },
    /// ALE supports the game, but its ROM is not bundled and no `--rom` was given.
    #[error("--game {input}: ALE supports {name} but its ROM is not bundled; pass --rom path/to/{rom}.bin")]
    RomNotBundled {
        /// What `--game` said.
        input: String,
        /// The game's CamelCase name, e.g. `Tetris`.
        name: String,
        /// The game's ROM stem, e.g. `tetris`.
        rom: String,
    },
}

/// Resolves `--game` (and `--rom`).
///
/// # Errors
///
/// [`ResolveError`]: an unusable ROM file, an unknown game, or a game whose ROM is not
/// bundled; a malformed Gymnasium id (whether Gymnasium knows the id, only [`make`] finds out,
/// by asking it).
pub fn resolve(game_name: &str, rom: Option<&Path>) -> Result<EnvId, ResolveError> {
    if let Some(id) = game_name.strip_prefix(gymnasium::PREFIX) {
        if rom.is_some() {
            return Err(ResolveError::RomNotAtari {
                game: game_name.to_string(),
            });
        }
        let parts: Vec<&str> = id.split(':').collect();
        let valid = |p: &str| !p.is_empty() && !p.chars().any(char::is_whitespace);
        if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
            return Err(ResolveError::GymnasiumId {
                input: game_name.to_string(),
            });
        }
        return Ok(EnvId::Gymnasium(id.to_string()));
    }
    if let Some(rom) = rom {
        let stem = game::validate_rom_file(rom).map_err(ResolveError::Rom)?;
        return Ok(EnvId::Atari(GameSpec {
            name: game::display_name(&stem),
            rom: stem,
            repeat_action_probability: None,
        }));
    }
    {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        let found = reg.iter().find(|e| {
            e.name.eq_ignore_ascii_case(game_name)
                || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(game_name))
        });
        if let Some(e) = found {
            return Ok(EnvId::Registered(e.name.clone()));
        }
    }
    let spec = game::resolve_game(game_name).map_err(ResolveError::Game)?;
    if game::bundled_rom(&spec.rom).is_none() {
        return Err(ResolveError::RomNotBundled {
            input: game_name.to_string(),
            name: spec.name,
            rom: spec.rom,
        });
    }
    Ok(EnvId::Atari(spec))
}

/// Builds an instance of `id` with `settings`.
///
/// # Errors
///
/// The environment's: for Gymnasium, [`super::GymError`] (no interpreter, no gymnasium, an
/// unknown id or an import error with Python's traceback, an unsupported space).
pub fn make(id: &EnvId, settings: &EnvSettings) -> Result<Box<dyn Environment>, EnvError> {
    match id {
        EnvId::Gymnasium(gym_id) => Ok(Box::new(GymEnv::new(
            gym_id,
            &gymnasium::python(settings.python.as_deref()),
            settings.seed,
            settings.render,
            settings.python_timeout,
        )?)),
        EnvId::Registered(name) => {
            let factory = {
                let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
                reg.iter().find(|e| &e.name == name).map(|e| e.factory)
            };
            let factory = factory
                .ok_or_else(|| EnvError::Custom(format!("no environment registered as {name}")))?;
            factory(settings)
        }
        EnvId::Atari(spec) => Ok(Box::new(AtariEnv::new(&AtariConfig {
            game: spec.clone(),
            rom_path: settings.rom.clone(),
            seed: settings.seed,
            frame_skip: settings.frame_skip,
            noop_max: settings.noop_max,
            repeat_action_probability: settings
                .repeat_action_probability
                .or(spec.repeat_action_probability)
                .unwrap_or(0.0),
            terminal_on_life_loss: settings.terminal_on_life_loss,
            fire_on_life_loss: settings.fire_on_life_loss,
            max_episode_frames: settings.max_episode_frames,
        })?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::ObsSpec;

    fn settings() -> EnvSettings {
        EnvSettings {
            seed: 1,
            frame_skip: 4,
            noop_max: 30,
            repeat_action_probability: None,
            terminal_on_life_loss: true,
            fire_on_life_loss: false,
            max_episode_frames: 108_000,
            rom: None,
            python: None,
            python_timeout: std::time::Duration::from_secs(300),
            render: false,
        }
    }

    #[test]
    fn cartpole_and_atari_resolve_and_build() {
        for name in ["CartPole", "cartpole", "CartPole-v1"] {
            assert_eq!(
                resolve(name, None).unwrap(),
                EnvId::Registered("CartPole".into())
            );
        }
        let cp = make(&resolve("CartPole-v1", None).unwrap(), &settings()).unwrap();
        assert_eq!((cp.obs_spec(), cp.num_actions()), (ObsSpec::Vector(4), 2));
        let id = resolve("BreakoutNoFrameskip-v4", None).unwrap();
        assert_eq!(id.name(), "Breakout");
        let atari = make(&id, &settings()).unwrap();
        assert_eq!(
            (atari.obs_spec(), atari.num_actions()),
            (ObsSpec::Frames([4, 84, 84]), 4)
        );
        let tetris = resolve("Tetris", None).unwrap_err();
        assert!(
            matches!(&tetris, ResolveError::RomNotBundled { name, .. } if name == "Tetris"),
            "{tetris:?}"
        );
        assert!(tetris.to_string().contains("--rom"));
        let typo = resolve("CartPol", None).unwrap_err();
        assert!(
            matches!(typo, ResolveError::Game(GameError::Unknown { .. })),
            "{typo:?}"
        );
        assert!(typo.to_string().contains("--game"));
    }

    #[test]
    fn gymnasium_ids_resolve_with_or_without_a_module() {
        let id = resolve("gymnasium:CartPole-v1", None).unwrap();
        assert_eq!(id, EnvId::Gymnasium("CartPole-v1".into()));
        assert_eq!(id.name(), "CartPole-v1");
        let id = resolve("gymnasium:mypackage.envs:MyEnv-v0", None).unwrap();
        assert_eq!(id, EnvId::Gymnasium("mypackage.envs:MyEnv-v0".into()));
        assert_eq!(id.name(), "MyEnv-v0", "the run directory's name");
        for bad in [
            "gymnasium:",
            "gymnasium:a:b:c",
            "gymnasium::X-v0",
            "gymnasium:My Env",
        ] {
            let e = resolve(bad, None).unwrap_err();
            assert!(
                matches!(e, ResolveError::GymnasiumId { .. }),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains("gymnasium:<EnvId>"), "{e}");
        }
        let e = resolve("gymnasium:CartPole-v1", Some(Path::new("pong.bin"))).unwrap_err();
        assert!(e.to_string().starts_with("--rom"), "{e}");
    }

    #[test]
    fn registered_environments_take_precedence() {
        register("TestPong", |s| Ok(Box::new(CartPole::new(s.seed, 3))));
        assert!(registered_names().contains(&"TestPong".to_string()));
        let mut env = make(&resolve("testpong", None).unwrap(), &settings()).unwrap();
        env.reset().unwrap();
        let truncated = (0..3)
            .map(|_| env.step(1).unwrap())
            .any(|s| s.truncated || s.terminal);
        assert!(truncated, "the registered factory (3-step limit) was used");
    }
}
