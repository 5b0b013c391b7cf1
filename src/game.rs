//! Resolving what the user typed to an Atari game.
//!
//! ALE 0.6 picks each game's reward/terminal logic from the ROM *file name*
//! (its snake_case stem, e.g. `space_invaders.bin`) and calls `exit(1)` when
//! the file is missing or the name is unknown. Everything that could trip
//! that is therefore checked here, in Rust, before ALE sees a path: user
//! spellings (ALE stems, CamelCase names, Gym ids) are normalised to a stem,
//! and user ROM files are validated.

use std::path::{Path, PathBuf};

use ale::BundledRom;

/// ALE 0.6's supported ROM names (snake_case file stems), in the order of
/// `games/Roms.cpp` in ALE 0.6 (alphabetical).
#[rustfmt::skip]
pub const SUPPORTED_ROMS: &[&str] = &[
    "adventure", "air_raid", "alien", "amidar", "assault", "asterix", "asteroids", "atlantis",
    "bank_heist", "battle_zone", "beam_rider", "berzerk", "bowling", "boxing", "breakout",
    "carnival", "centipede", "chopper_command", "crazy_climber", "defender", "demon_attack",
    "donkey_kong", "double_dunk", "elevator_action", "enduro", "fishing_derby", "freeway",
    "frogger", "frostbite", "galaxian", "gopher", "gravitar", "hero", "ice_hockey", "jamesbond",
    "journey_escape", "kaboom", "kangaroo", "keystone_kapers", "king_kong", "koolaid", "krull",
    "kung_fu_master", "laser_gates", "lost_luggage", "montezuma_revenge", "mr_do", "ms_pacman",
    "name_this_game", "phoenix", "pitfall", "pong", "pooyan", "private_eye", "qbert",
    "riverraid", "road_runner", "robotank", "seaquest", "sir_lancelot", "skiing", "solaris",
    "space_invaders", "star_gunner", "tennis", "tetris", "time_pilot", "trondead", "turmoil",
    "tutankham", "up_n_down", "venture", "video_pinball", "wizard_of_wor", "yars_revenge",
    "zaxxon",
];

/// Smallest ROM file accepted by [`validate_rom_file`], in bytes (2 KiB: the
/// smallest Atari 2600 cartridge).
pub const MIN_ROM_BYTES: u64 = 2 * 1024;
/// Largest ROM file accepted by [`validate_rom_file`], in bytes (512 KiB).
pub const MAX_ROM_BYTES: u64 = 512 * 1024;

/// Sticky-action probability implied by Gym's `-v0` and `ALE/...-v5` ids.
const STICKY_V0_V5: f32 = 0.25;

/// A game resolved from user input.
#[derive(Clone, Debug, PartialEq)]
pub struct GameSpec {
    /// ALE 0.6 snake_case ROM stem, e.g. `"space_invaders"`; the ROM file
    /// handed to ALE must be named `<rom>.bin`.
    pub rom: String,
    /// CamelCase ALE/Gym display name, e.g. `"SpaceInvaders"`.
    pub name: String,
    /// Sticky-action probability implied by a Gym id (`Some(0.25)` for `-v0`
    /// and `ALE/...-v5`, `Some(0.0)` for `-v4`); `None` when the input was a
    /// plain name, leaving the choice to the caller (our default is 0.0).
    pub repeat_action_probability: Option<f32>,
}

/// Errors from resolving a game name or validating a ROM file.
#[derive(Debug, thiserror::Error)]
pub enum GameError {
    /// The input matched no supported game.
    #[error(
        "unknown game {input:?}{}; run `learner --list-games` to list all supported games",
        fmt_suggestions(suggestions)
    )]
    Unknown {
        /// What the user typed.
        input: String,
        /// Up to 3 closest CamelCase names by edit distance, best first.
        suggestions: Vec<String>,
    },
    /// A Gym-style id with a version other than v0, v4 or v5.
    #[error(
        "unsupported Gym version in {input:?}: use -v0 (sticky actions 0.25), -v4 (no sticky actions) or ALE/<Name>-v5 (0.25)"
    )]
    UnsupportedVersion {
        /// What the user typed.
        input: String,
    },
    /// The ROM file does not exist.
    #[error("ROM file {} does not exist", path.display())]
    RomMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The ROM path exists but is not a regular file (e.g. a directory).
    #[error("ROM path {} is not a regular file", path.display())]
    RomNotFile {
        /// The path given.
        path: PathBuf,
    },
    /// The ROM file could not be opened or inspected.
    #[error("cannot read ROM file {}: {source}", path.display())]
    RomUnreadable {
        /// The path given.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The ROM file size is outside 2 KiB ..= 512 KiB.
    #[error(
        "ROM file {} is {size} bytes; Atari 2600 ROMs are between {MIN_ROM_BYTES} and {MAX_ROM_BYTES} bytes",
        path.display()
    )]
    RomSize {
        /// The path given.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// ALE 0.6 would not recognise the file name.
    #[error(
        "ROM file {} has name stem {stem:?}, which ALE 0.6 does not know; ALE picks the game by file name, so rename it to a supported snake_case name{} (run `learner --list-games`)",
        path.display(),
        rename_hint(suggestions)
    )]
    RomName {
        /// The path given.
        path: PathBuf,
        /// The stem ALE would derive (lowercased, up to the first `.`).
        stem: String,
        /// Up to 3 closest valid file names, e.g. `"breakout.bin"`.
        suggestions: Vec<String>,
    },
}

fn fmt_suggestions(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", s.join(", "))
    }
}

fn rename_hint(s: &[String]) -> String {
    match s.first() {
        Some(first) => format!(", e.g. rename it to {first}"),
        None => String::new(),
    }
}

/// CamelCase display name for a stem, capitalising each `_`-separated part
/// (`"space_invaders"` -> `"SpaceInvaders"`, `"up_n_down"` -> `"UpNDown"`,
/// `"jamesbond"` -> `"Jamesbond"`); matches Gym's names for ALE 0.6 games.
pub fn display_name(rom: &str) -> String {
    rom.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(c) => c.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// Resolves user input to a game, case-insensitively.
///
/// Accepted forms: ALE stems (`"space_invaders"`), CamelCase names
/// (`"SpaceInvaders"`, `"spaceinvaders"`), and Gym ids: `"Breakout-v0"`
/// (sticky 0.25), `"Breakout-v4"`, `"BreakoutNoFrameskip-v4"`,
/// `"BreakoutDeterministic-v4"` (sticky 0.0) and `"ALE/Breakout-v5"` (0.25).
/// A Gym id only sets [`GameSpec::repeat_action_probability`]: frame
/// skipping is always our own DeepMind max-pooled skip of 4, whatever the
/// id's `NoFrameskip`/`Deterministic` suffix says.
///
/// Errors: [`GameError::Unknown`] (with up to 3 suggestions) or
/// [`GameError::UnsupportedVersion`].
pub fn resolve_game(input: &str) -> Result<GameSpec, GameError> {
    let trimmed = input.trim();
    let mut s = trimmed.to_ascii_lowercase();
    let mut sticky = None;
    let had_ale_prefix = s.starts_with("ale/");
    if had_ale_prefix {
        s.drain(..4);
    }
    if let Some(pos) = s.rfind("-v") {
        let version = &s[pos + 2..];
        if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
            sticky = Some(match version {
                "0" | "5" => STICKY_V0_V5,
                "4" => 0.0,
                _ => {
                    return Err(GameError::UnsupportedVersion {
                        input: input.to_string(),
                    });
                }
            });
            s.truncate(pos);
            for suffix in ["noframeskip", "deterministic"] {
                if s.len() > suffix.len() && s.ends_with(suffix) {
                    s.truncate(s.len() - suffix.len());
                    break;
                }
            }
        }
    } else if had_ale_prefix {
        sticky = Some(STICKY_V0_V5);
    }
    let key = squash(&s);
    match SUPPORTED_ROMS.iter().find(|rom| squash(rom) == key) {
        Some(rom) => Ok(GameSpec {
            rom: rom.to_string(),
            name: display_name(rom),
            repeat_action_probability: sticky,
        }),
        None => Err(GameError::Unknown {
            input: input.to_string(),
            suggestions: closest(&key, 3).into_iter().map(display_name).collect(),
        }),
    }
}

/// Lowercase and drop `_`, `-` and spaces so all spellings compare equal.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Up to `n` supported stems closest to `key` (already squashed) by edit
/// distance, best first; only reasonably close ones are returned.
fn closest(key: &str, n: usize) -> Vec<&'static str> {
    let mut scored: Vec<(usize, &'static str)> = SUPPORTED_ROMS
        .iter()
        .map(|rom| (levenshtein(key, &squash(rom)), *rom))
        .collect();
    scored.sort_by_key(|&(d, rom)| (d, rom));
    let limit = (key.chars().count() / 2).max(3);
    scored
        .into_iter()
        .filter(|&(d, _)| d <= limit)
        .take(n)
        .map(|(_, rom)| rom)
        .collect()
}

/// Edit distance (insertions, deletions, substitutions, each cost 1) between
/// two strings, by characters; two-row dynamic programme.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The `ale` crate's bundled ROM for a stem (None for the ROMs it lacks:
/// donkey_kong, frogger, galaxian, keystone_kapers, king_kong, koolaid,
/// laser_gates, lost_luggage, mr_do, sir_lancelot, solaris, tetris,
/// trondead, turmoil).
pub(crate) fn bundled(rom: &str) -> Option<BundledRom> {
    use BundledRom::*;
    Some(match rom {
        "adventure" => Adventure,
        "air_raid" => AirRaid,
        "alien" => Alien,
        "amidar" => Amidar,
        "assault" => Assault,
        "asterix" => Asterix,
        "asteroids" => Asteroids,
        "atlantis" => Atlantis,
        "bank_heist" => BankHeist,
        "battle_zone" => BattleZone,
        "beam_rider" => BeamRider,
        "berzerk" => Berzerk,
        "bowling" => Bowling,
        "boxing" => Boxing,
        "breakout" => Breakout,
        "carnival" => Carnival,
        "centipede" => Centipede,
        "chopper_command" => ChopperCommand,
        "crazy_climber" => CrazyClimber,
        "defender" => Defender,
        "demon_attack" => DemonAttack,
        "double_dunk" => DoubleDunk,
        "elevator_action" => ElevatorAction,
        "enduro" => Enduro,
        "fishing_derby" => FishingDerby,
        "freeway" => Freeway,
        "frostbite" => Frostbite,
        "gopher" => Gopher,
        "gravitar" => Gravitar,
        "hero" => Hero,
        "ice_hockey" => IceHockey,
        "jamesbond" => JamesBond,
        "journey_escape" => JourneyEscape,
        "kaboom" => Kaboom,
        "kangaroo" => Kangaroo,
        "krull" => Krull,
        "kung_fu_master" => KungFuMaster,
        "montezuma_revenge" => MontezumaRevenge,
        "ms_pacman" => MsPacman,
        "name_this_game" => NameThisGame,
        "phoenix" => Phoenix,
        "pitfall" => Pitfall,
        "pong" => Pong,
        "pooyan" => Pooyan,
        "private_eye" => PrivateEye,
        "qbert" => QBert,
        "riverraid" => RiverRaid,
        "road_runner" => RoadRunner,
        "robotank" => RoboTank,
        "seaquest" => Seaquest,
        "skiing" => Skiing,
        "space_invaders" => SpaceInvaders,
        "star_gunner" => StarGunner,
        "tennis" => Tennis,
        "time_pilot" => TimePilot,
        "tutankham" => Tutankham,
        "up_n_down" => UpNDown,
        "venture" => Venture,
        "video_pinball" => VideoPinball,
        "wizard_of_wor" => WizardOfWor,
        "yars_revenge" => YarsRevenge,
        "zaxxon" => Zaxxon,
        _ => return None,
    })
}

/// The ROM bytes bundled in the `ale` crate for a stem (e.g. `"breakout"`),
/// or `None` when that game's ROM is not bundled (the user must then pass a
/// ROM file).
pub fn bundled_rom(rom: &str) -> Option<&'static [u8]> {
    bundled(rom).map(|r| r.data())
}

/// The stem ALE 0.6 derives from a ROM path: the file name, lowercased, up
/// to its first `.` (mirrors `buildRomRLWrapper` in ALE's `games/Roms.cpp`).
pub fn rom_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    stem.to_ascii_lowercase()
}

/// Validates a user ROM file before ALE sees it (ALE would `exit(1)`): it
/// must exist, be a regular readable file of 2 KiB ..= 512 KiB, and its stem
/// (lowercased, up to the first `.`) must be in [`SUPPORTED_ROMS`].
///
/// Returns the stem. Every error names the path; a bad name also suggests a
/// valid file name (e.g. "rename it to breakout.bin").
pub fn validate_rom_file(path: &Path) -> Result<String, GameError> {
    let owned = || path.to_path_buf();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GameError::RomMissing { path: owned() });
        }
        Err(source) => {
            return Err(GameError::RomUnreadable {
                path: owned(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(GameError::RomNotFile { path: owned() });
    }
    let size = meta.len();
    if !(MIN_ROM_BYTES..=MAX_ROM_BYTES).contains(&size) {
        return Err(GameError::RomSize {
            path: owned(),
            size,
        });
    }
    if let Err(source) = std::fs::File::open(path) {
        return Err(GameError::RomUnreadable {
            path: owned(),
            source,
        });
    }
    let stem = rom_stem(path);
    if SUPPORTED_ROMS.contains(&stem.as_str()) {
        return Ok(stem);
    }
    let suggestions = closest(&squash(&stem), 3)
        .into_iter()
        .map(|rom| format!("{rom}.bin"))
        .collect();
    Err(GameError::RomName {
        path: owned(),
        stem,
        suggestions,
    })
}

#[cfg(test)]
#[path = "game_tests.rs"]
mod tests;
