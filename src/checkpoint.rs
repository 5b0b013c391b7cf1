//! Checkpoints: one self-contained `model-<frames>.pt` file per save, holding the network's
//! parameters, the RMSProp state and the training state (game, network, counters and the
//! config), so that `--checkpoint N` resumes exactly and `play --model` needs nothing else.
//!
//! The file is libtorch's named-tensor archive (`Tensor::save_multi`): parameters under
//! `param/<name>`, optimizer state under `rmsprop/<name>`, and the [`TrainingState`] encoded
//! with bincode 2 in a u8 tensor named `state`. It is written to a temporary file, fsynced,
//! and renamed into place, so a crash never leaves a half-written checkpoint under its name.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::{Config, Network};
use crate::env::ObsSpec;

/// Bumped whenever the layout of a checkpoint changes.
pub const FORMAT_VERSION: u32 = 1;

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
    /// The config the run was trained with.
    pub config: Config,
}

/// A checkpoint that cannot be used, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: no such file{}", available_hint(.available))]
    Missing { path: PathBuf, available: Vec<u64> },
    #[error("checkpoint {path}: not a readable checkpoint (truncated, corrupted, or not a libtorch archive): {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("checkpoint {path}: not an async-rl checkpoint: {reason}")]
    Foreign { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error(
        "checkpoint {path}: not written: parameter `{param}` is not finite (training diverged)"
    )]
    NonFinite { path: PathBuf, param: String },
    #[error("checkpoint {path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
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

/// `<dir>/model-<frames>.pt`.
pub fn path_for(dir: &Path, frames: u64) -> PathBuf {
    dir.join(format!("model-{frames}.pt"))
}

/// Frame counts of the `model-<frames>.pt` files in `dir`, ascending.
pub fn list(dir: &Path) -> Vec<u64> {
    let mut frames: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".pt")?
                .parse()
                .ok()
        })
        .collect();
    frames.sort_unstable();
    frames
}

/// Resolves `--checkpoint`: a frame count (in `dir`), `latest` (the newest in `dir`), or a path.
pub fn resolve(dir: &Path, spec: &str) -> Result<PathBuf, CheckpointError> {
    let path = if spec == "latest" {
        match list(dir).last() {
            Some(f) => path_for(dir, *f),
            None => {
                return Err(CheckpointError::Missing {
                    path: dir.join("model-*.pt"),
                    available: vec![],
                })
            }
        }
    } else if let Ok(frames) = spec.parse::<u64>() {
        path_for(dir, frames)
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

/// A loaded checkpoint.
pub struct Checkpoint {
    pub state: TrainingState,
    /// Parameters by name (without the `param/` prefix).
    pub params: HashMap<String, Tensor>,
    /// RMSProp state by parameter name.
    pub rmsprop: HashMap<String, Tensor>,
}

/// Writes a checkpoint atomically (temporary file, fsync, rename, fsync of the directory).
/// Refuses weights that are not all finite, so a diverged run never replaces a good checkpoint.
pub fn save(
    path: &Path,
    state: &TrainingState,
    params: &[(String, Tensor)],
    rmsprop: &[Tensor],
) -> Result<(), CheckpointError> {
    let werr = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some((name, _)) = params
        .iter()
        .find(|(_, p)| p.isfinite().all().int64_value(&[]) == 0)
    {
        return Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            param: name.clone(),
        });
    }
    let bytes = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * params.len() + 1);
    for (name, p) in params {
        named.push((
            format!("param/{name}"),
            p.detach().to_device(tch::Device::Cpu),
        ));
    }
    for ((name, _), v) in params.iter().zip(rmsprop) {
        named.push((format!("rmsprop/{name}"), v.to_device(tch::Device::Cpu)));
    }
    named.push(("state".to_string(), Tensor::from_slice(&bytes)));
    let tmp = path.with_extension("pt.tmp");
    Tensor::save_multi(&named, &tmp).map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir).and_then(|f| f.sync_all()).map_err(werr)?;
    }
    Ok(())
}

/// Reads a checkpoint; every failure is a [`CheckpointError`] naming the file.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    if !path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Err(CheckpointError::Missing {
            path: path.to_path_buf(),
            available: list(dir),
        });
    }
    let named = Tensor::load_multi(path).map_err(|e| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        reason: first_line(&e.to_string()),
    })?;
    let mut params = HashMap::new();
    let mut rmsprop = HashMap::new();
    let mut state = None;
    for (name, t) in named {
        if let Some(n) = name.strip_prefix("param/") {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("rmsprop/") {
            rmsprop.insert(n.to_string(), t);
        } else if name == "state" {
            state = Some(t);
        }
    }
    let foreign = |reason: &str| CheckpointError::Foreign {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let state = state.ok_or_else(|| foreign("it has no `state` record"))?;
    if state.kind() != tch::Kind::Uint8 || state.dim() != 1 {
        return Err(foreign("its `state` record is not a byte string"));
    }
    let bytes: Vec<u8> =
        Vec::try_from(&state).map_err(|e: tch::TchError| foreign(&e.to_string()))?;
    let (state, _): (TrainingState, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).map_err(|e| {
            CheckpointError::Unreadable {
                path: path.to_path_buf(),
                reason: format!("training state: {e}"),
            }
        })?;
    if state.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "format version {}, this build reads version {FORMAT_VERSION}",
                state.format_version
            ),
        });
    }
    Ok(Checkpoint {
        state,
        params,
        rmsprop,
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrainingState {
        TrainingState {
            format_version: FORMAT_VERSION,
            game: "CartPole".into(),
            network: Network::Mlp,
            num_actions: 2,
            obs: ObsSpec::Vector(4),
            frames: 1000,
            steps: 1000,
            updates: 10,
            episodes: 3,
            wall_s: 1.5,
            config: Config::default(),
        }
    }

    #[test]
    fn round_trip_and_refusal_of_non_finite_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), 1000);
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let params = vec![("w".to_string(), w.shallow_clone())];
        save(&path, &state(), &params, &[w.zeros_like()]).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.state, state());
        assert!(ck.params["w"].equal(&w));
        assert_eq!(list(dir.path()), vec![1000]);

        let bad = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, f32::NAN]))];
        let later = path_for(dir.path(), 2000);
        let err = save(&later, &state(), &bad, &[w.zeros_like()]).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
        assert!(!later.exists());
        assert_eq!(
            list(dir.path()),
            vec![1000],
            "the good checkpoint stays the newest"
        );
    }
}
