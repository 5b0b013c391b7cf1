//! Checkpoints: one self-contained `model-<frames>.safetensors` file per save, holding the
//! network's parameters, the optimizer state and the training state (game, network, counters and
//! the config), so that `--checkpoint N` resumes exactly and `play --model` needs nothing else.
//!
//! The file is a [safetensors](https://github.com/huggingface/safetensors) file, read by the
//! `safetensors` crate: a JSON header and raw little-endian tensor data, nothing in it is ever
//! executed (libtorch's own `.pt` archives are read by a pickle-based loader that can run code
//! from the file). Tensors: parameters under `param/<name>`, the optimizer's state under the
//! optimizer's names (RMSProp's `rmsprop/<name>`, Adam's `adam/m/<name>`, `adam/v/<name>` and
//! `adam/step`: [`crate::optim::STATE_PREFIXES`]; none in `model-best`), a learning rule's
//! other tensors under their own names (e.g. `target/<name>`), and the [`TrainingState`] encoded with bincode 2 in a u8 tensor named
//! `state`. The header's `__metadata__` holds `format` (`async-rl checkpoint`),
//! `format_version` and `checksum` (`crc32:<8 hex digits>`): a CRC-32 of every tensor's name,
//! dtype, shape and bytes in name order ([`checksum_of`]), checked on load after the header is
//! parsed and before any tensor or the training state is built, so a flipped byte anywhere is
//! caught. PyTorch reads the weights with `safetensors.torch.load_file` (README, "Files a run
//! reads").
//!
//! Files of format version 2 (`model-<frames>.pt`, libtorch's archive written by older
//! builds) still load, with a warning that libtorch's loader is for files one trusts;
//! `--checkpoint N` finds either name ([`find`]). Every file is written to a temporary file,
//! fsynced, renamed into place and the directory fsynced ([`crate::atomic_file`]), so a crash
//! or a full disk never leaves a half-written checkpoint under its name, and the previous
//! checkpoints stay intact.
//!
//! Here: the files' names, listing, `--checkpoint`'s resolution and pruning; `format.rs` writes
//! and decodes the safetensors file, `legacy.rs` reads format 2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::atomic_file;
use crate::config::{Config, Network};
use crate::env::ObsSpec;

mod format;
mod legacy;
#[cfg(test)]
mod tests;

use format::decode;
pub use format::{checksum_of, decode_bytes, save};
use legacy::load_legacy;

/// Bumped whenever the layout of a checkpoint changes. Version 2 added the checksum and
/// stores the config as TOML text; version 3 is the safetensors file.
pub const FORMAT_VERSION: u32 = 3;

/// The version of the libtorch `.pt` checkpoints of older builds, still read (with a warning).
pub const LEGACY_FORMAT_VERSION: u32 = 2;

/// The extension of checkpoints written now (`model-<frames>.safetensors`).
pub const EXTENSION: &str = "safetensors";

/// The extension of older builds' checkpoints (`model-<frames>.pt`), still found and read.
pub const LEGACY_EXTENSION: &str = "pt";

/// The header's `format` value that marks a file as ours.
const FORMAT_NAME: &str = "async-rl checkpoint";

/// The largest training state a checkpoint may hold (bincode; a real one is a few KB), so a
/// crafted length cannot make the decoder allocate without bound.
const MAX_STATE_BYTES: usize = 1 << 24;

/// What a checkpoint knows besides tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub format_version: u32,
    /// Display name of the environment, e.g. `Breakout`, `CartPole`.
    pub game: String,
    /// The network (resolved: never `auto`).
    pub network: Network,
    pub num_actions: usize,
    /// Observations: `Frames([4, 84, 84])` for Atari, `Vector(4)` for CartPole.
    pub obs: ObsSpec,
    /// Emulator frames over all actors.
    pub frames: u64,
    /// Agent steps over all actors (frames / frame skip).
    pub steps: u64,
    /// Learner updates (batches trained on).
    pub updates: u64,
    /// Finished games.
    pub episodes: u64,
    /// Seconds of training so far, over all resumed runs.
    pub wall_s: f64,
    /// The config the run was trained with (stored as TOML: settings added later read as
    /// their defaults).
    #[serde(with = "crate::config::as_toml")]
    pub config: Config,
}

/// A checkpoint that cannot be used, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: no such file{}", available_hint(.available))]
    Missing { path: PathBuf, available: Vec<u64> },
    #[error("checkpoint {path}: not a readable checkpoint (truncated, corrupted, or neither a safetensors file nor a libtorch archive): {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("checkpoint {path}: corrupted: its checksum is {stored:#010x} but its contents sum to {actual:#010x}")]
    Corrupted {
        path: PathBuf,
        stored: u32,
        actual: u32,
    },
    #[error("--checkpoint latest: no usable checkpoint in {dir}:\n  - {}", .failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  - "))]
    NoneUsable {
        dir: PathBuf,
        failures: Vec<CheckpointError>,
    },
    #[error("checkpoint {path}: not an async-rl checkpoint: {reason}")]
    Foreign { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error(
        "checkpoint {path}: not written: parameter `{param}` is not finite (training diverged)"
    )]
    NonFinite { path: PathBuf, param: String },
    #[error("checkpoint {path}: cannot write: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn available_hint(frames: &[u64]) -> String {
    if frames.is_empty() {
        "; the run directory has no checkpoints".to_string()
    } else {
        let list: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
        format!("; checkpoints in the run directory: {}", list.join(", "))
    }
}

/// The weights of the best periodic evaluation (`--eval-every`): `<dir>/model-best.safetensors`,
/// a checkpoint `play` reads like any other (it holds no optimizer state: it is for playing;
/// resuming it is refused, [`crate::optim::StateError::Empty`]), beside `model-best.eval.json` with the evaluation's scores. Neither
/// `list`, `latest` nor `--keep-checkpoints` counts it.
pub fn best_path(dir: &Path) -> PathBuf {
    dir.join(format!("model-best.{EXTENSION}"))
}

/// The scores of the evaluation `model-best.safetensors` holds: `<dir>/model-best.eval.json`.
pub fn best_scores_path(dir: &Path) -> PathBuf {
    dir.join("model-best.eval.json")
}

/// The replay memory saved beside checkpoint `frames` (`--save-replay`):
/// `<dir>/model-<frames>.replay`.
pub fn replay_path_for(dir: &Path, frames: u64) -> PathBuf {
    dir.join(format!("model-{frames}.replay"))
}

/// The checkpoint file a save of `frames` frames writes in run directory `dir`:
/// `model-<frames>.safetensors`. To read one, [`find`] also knows older builds' name.
pub fn path_for(dir: &Path, frames: u64) -> PathBuf {
    dir.join(format!("model-{frames}.{EXTENSION}"))
}

/// The older builds' name of checkpoint `frames` in `dir`: `model-<frames>.pt`.
pub fn legacy_path_for(dir: &Path, frames: u64) -> PathBuf {
    dir.join(format!("model-{frames}.{LEGACY_EXTENSION}"))
}

/// The checkpoint of `frames` frames in `dir`: `model-<frames>.safetensors` if it exists, else
/// an older build's `model-<frames>.pt` if that exists, else the former (to name in an error).
pub fn find(dir: &Path, frames: u64) -> PathBuf {
    let new = path_for(dir, frames);
    let legacy = legacy_path_for(dir, frames);
    if !new.is_file() && legacy.is_file() {
        legacy
    } else {
        new
    }
}

/// The frame count in a checkpoint's file name (`model-<frames>.safetensors` or
/// `model-<frames>.pt`), or `None` for any other name.
fn frames_in_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("model-")?;
    let digits = stem
        .strip_suffix(&format!(".{EXTENSION}"))
        .or_else(|| stem.strip_suffix(&format!(".{LEGACY_EXTENSION}")))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frame counts of the checkpoints in `dir` (`model-<frames>.safetensors`, or `.pt` of older
/// builds), ascending, each once.
pub fn list(dir: &Path) -> Vec<u64> {
    let mut frames: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| frames_in_name(&e.file_name().into_string().ok()?))
        .collect();
    frames.sort_unstable();
    frames.dedup();
    frames
}

/// Resolves `--checkpoint`: a frame count (in `dir`, either name: [`find`]), `latest` (the
/// newest in `dir`), or a path.
pub fn resolve(dir: &Path, spec: &str) -> Result<PathBuf, CheckpointError> {
    let path = if spec == "latest" {
        match list(dir).last() {
            Some(f) => find(dir, *f),
            None => {
                return Err(CheckpointError::Missing {
                    path: dir.join(format!("model-*.{EXTENSION}")),
                    available: vec![],
                })
            }
        }
    } else if let Ok(frames) = spec.parse::<u64>() {
        find(dir, frames)
    } else {
        PathBuf::from(spec)
    };
    if !path.is_file() {
        return Err(CheckpointError::Missing {
            available: list(dir),
            path,
        });
    }
    Ok(path)
}

/// A checkpoint found for `--checkpoint`, and the newer ones that `latest` had to pass over
/// because they could not be loaded (each error names its file and what is wrong).
pub struct Found {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    pub skipped: Vec<CheckpointError>,
}

/// Resolves and loads `--checkpoint` (see [`resolve`]). `latest` falls back from the newest
/// file to older ones until one loads, so a checkpoint truncated by a crash or corrupted on
/// disk costs only the progress since the one before it.
pub fn open(dir: &Path, spec: &str) -> Result<Found, CheckpointError> {
    if spec != "latest" {
        let path = resolve(dir, spec)?;
        let checkpoint = load(&path)?;
        return Ok(Found {
            path,
            checkpoint,
            skipped: vec![],
        });
    }
    let mut skipped = Vec::new();
    for frames in list(dir).into_iter().rev() {
        let path = find(dir, frames);
        match load(&path) {
            Ok(checkpoint) => {
                return Ok(Found {
                    path,
                    checkpoint,
                    skipped,
                })
            }
            Err(e) => skipped.push(e),
        }
    }
    if skipped.is_empty() {
        Err(CheckpointError::Missing {
            path: dir.join(format!("model-*.{EXTENSION}")),
            available: vec![],
        })
    } else {
        Err(CheckpointError::NoneUsable {
            dir: dir.to_path_buf(),
            failures: skipped,
        })
    }
}

/// Deletes all but the newest `keep` checkpoints in `dir` (`keep` 0 keeps all), under either
/// name, with their replay memories; returns the deleted paths.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let frames = list(dir);
    if keep == 0 || frames.len() <= keep {
        return Ok(vec![]);
    }
    let mut removed = Vec::new();
    for f in &frames[..frames.len() - keep] {
        // Its replay memory (--save-replay) goes with it.
        for path in [
            path_for(dir, *f),
            legacy_path_for(dir, *f),
            replay_path_for(dir, *f),
        ] {
            if path.exists() {
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// Removes the temporary files of the learner's saves that a crash interrupted (checkpoints,
/// replay memories, `model-best.eval.json`: `.model-*.safetensors.*.tmp` and the like, as
/// [`atomic_file`] names them; also `model-*.pt.tmp` and `model-*.replay.tmp`, the names of
/// older builds); returns their paths.
pub fn remove_partial(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let ours = |dest: &str| {
        dest.starts_with("model-")
            && (dest.ends_with(&format!(".{EXTENSION}"))
                || dest.ends_with(&format!(".{LEGACY_EXTENSION}"))
                || dest.ends_with(".replay")
                || dest == "model-best.eval.json")
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let partial = match atomic_file::destination_of(&name) {
            Some(dest) => ours(dest),
            None => name.strip_suffix(".tmp").is_some_and(ours),
        };
        if partial {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub state: TrainingState,
    /// Parameters by name (without the `param/` prefix).
    pub params: HashMap<String, Tensor>,
    /// The optimizer's state by full name (`rmsprop/<param>`, or `adam/m/<param>`,
    /// `adam/v/<param>` and `adam/step`: [`crate::optim::STATE_PREFIXES`]); empty in
    /// `model-best`.
    pub optimizer: HashMap<String, Tensor>,
    /// A learning rule's other tensors by full name (e.g. `target/<param>`, the target network).
    pub extra: HashMap<String, Tensor>,
}

/// Reads a checkpoint; every failure is a [`CheckpointError`] naming the file. A safetensors
/// checkpoint is checked (format, version, checksum) before any tensor is built; an older
/// build's libtorch archive (`.pt`) is read with libtorch's loader after a warning (see the
/// module documentation).
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    if !path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
            available: list(dir),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // A libtorch archive is a zip file.
    if bytes.starts_with(b"PK\x03\x04") {
        crate::say_err!(
            "warning: {} is a libtorch archive of an older build: it is read with libtorch's \
             loader, which can run code from the file; load such files only from yourself. \
             A resumed run writes its checkpoints as .{EXTENSION}.",
            path.display()
        );
        return load_legacy(path);
    }
    decode(&bytes).map_err(|e| e.at(path))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
