//! Checkpoints: one self-contained `model-<frames>.pt` file per save, holding the network's
//! parameters, the RMSProp state and the training state (game, network, counters and the
//! config), so that `--checkpoint N` resumes exactly and `play --model` needs nothing else.
//!
//! The file is libtorch's named-tensor archive (`Tensor::save_multi`): parameters under
//! `param/<name>`, optimizer state under `rmsprop/<name>`, the [`TrainingState`] encoded with
//! bincode 2 in a u8 tensor named `state` (its first field is the format version, so a file of
//! another version is named as such), and a CRC-32 of all of that in `checksum`, so a flipped
//! byte anywhere is caught on load. It is written to a temporary file, fsynced, renamed into
//! place and the directory fsynced ([`crate::atomic_file`]), so a crash or a full disk never leaves a half-written
//! checkpoint under its name, and the previous checkpoints stay intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::atomic_file;
use crate::config::{Config, Network};
use crate::env::ObsSpec;

/// Bumped whenever the layout of a checkpoint changes. Version 2 added the checksum and
/// stores the config as TOML text.
pub const FORMAT_VERSION: u32 = 2;

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
    #[error("checkpoint {path}: not a readable checkpoint (truncated, corrupted, or not a libtorch archive): {reason}")]
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

/// The weights of the best periodic evaluation (`--eval-every`): `<dir>/model-best.pt`, a
/// checkpoint `play` reads like any other (its optimizer state is empty: it is for playing,
/// not for resuming), beside `model-best.eval.json` with the evaluation's scores. Neither
/// `list`, `latest` nor `--keep-checkpoints` counts it.
pub fn best_path(dir: &Path) -> PathBuf {
    dir.join("model-best.pt")
}

/// The scores of the evaluation `model-best.pt` holds: `<dir>/model-best.eval.json`.
pub fn best_scores_path(dir: &Path) -> PathBuf {
    dir.join("model-best.eval.json")
}

/// The replay memory saved beside checkpoint `frames` (`--save-replay`):
/// `<dir>/model-<frames>.replay`.
pub fn replay_path_for(dir: &Path, frames: u64) -> PathBuf {
    dir.join(format!("model-{frames}.replay"))
}

/// The checkpoint file of `frames` frames in run directory `dir`: `model-<frames>.pt`.
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
        let path = path_for(dir, frames);
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
            path: dir.join("model-*.pt"),
            available: vec![],
        })
    } else {
        Err(CheckpointError::NoneUsable {
            dir: dir.to_path_buf(),
            failures: skipped,
        })
    }
}

/// Deletes all but the newest `keep` checkpoints in `dir` (`keep` 0 keeps all); returns the
/// deleted paths.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let frames = list(dir);
    if keep == 0 || frames.len() <= keep {
        return Ok(vec![]);
    }
    let mut removed = Vec::new();
    for f in &frames[..frames.len() - keep] {
        let path = path_for(dir, *f);
        std::fs::remove_file(&path)?;
        removed.push(path);
        // Its replay memory (--save-replay) goes with it.
        let replay = replay_path_for(dir, *f);
        if replay.exists() {
            std::fs::remove_file(&replay)?;
            removed.push(replay);
        }
    }
    Ok(removed)
}

/// Removes the temporary files of the learner's saves that a crash interrupted (checkpoints,
/// replay memories, `model-best.eval.json`: `.model-*.pt.*.tmp` and the like, as
/// [`atomic_file`] names them; also `model-*.pt.tmp` and `model-*.replay.tmp`, the names of
/// older builds); returns their paths.
pub fn remove_partial(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let ours = |dest: &str| {
        dest.starts_with("model-")
            && (dest.ends_with(".pt")
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
    /// RMSProp state by parameter name.
    pub rmsprop: HashMap<String, Tensor>,
    /// A learning rule's other tensors by full name (e.g. `target/<param>`, the target network).
    pub extra: HashMap<String, Tensor>,
}

/// Writes a checkpoint atomically ([`atomic_file`]: temporary file, fsync, rename, fsync of the
/// directory), with
/// a learning rule's `extra` tensors under their own names (`<prefix>/<name>`, any prefix but
/// `param` and `rmsprop`). Refuses weights that are not all finite, so a diverged run never
/// replaces a good checkpoint.
pub fn save(
    path: &Path,
    state: &TrainingState,
    params: &[(String, Tensor)],
    rmsprop: &[Tensor],
    extra: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let werr = |error| CheckpointError::Write {
        path: path.to_path_buf(),
        error,
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
    for (name, t) in extra {
        named.push((name.clone(), t.detach().to_device(tch::Device::Cpu)));
    }
    named.push(("state".to_string(), Tensor::from_slice(&bytes)));
    let sum = checksum(&named).map_err(|e| werr(std::io::Error::other(e.to_string())))?;
    named.push((
        "checksum".to_string(),
        Tensor::from_slice(&sum.to_le_bytes()),
    ));
    // Serialized in memory first: libtorch aborts the process (an exception from a destructor)
    // when its own file writer fails, e.g. on a full disk; our write reports the error instead.
    let archive = SharedBuf::default();
    Tensor::save_multi_to_stream(&named, archive.clone())
        .map_err(|e| werr(std::io::Error::other(first_line(&e.to_string()))))?;
    let bytes = archive.0.take();
    // Out of space or killed mid-write: the older checkpoints are untouched.
    atomic_file::write(path, |f| f.write_all(&bytes)).map_err(|e| werr(e.error))
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
    let foreign = |reason: &str| CheckpointError::Foreign {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let bytes_of = |t: &Tensor, what: &str| -> Result<Vec<u8>, CheckpointError> {
        if t.kind() != tch::Kind::Uint8 || t.dim() != 1 {
            return Err(foreign(&format!(
                "its `{what}` record is not a byte string"
            )));
        }
        Vec::try_from(t).map_err(|e: tch::TchError| foreign(&e.to_string()))
    };
    let state = named
        .iter()
        .find(|(n, _)| n == "state")
        .ok_or_else(|| foreign("it has no `state` record"))?;
    let bytes = bytes_of(&state.1, "state")?;
    // The format version leads the state, so any version can be named before anything else.
    let version: u32 = bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .map_err(|e| CheckpointError::Unreadable {
            path: path.to_path_buf(),
            reason: format!("training state: {e}"),
        })?
        .0;
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("format version {version}, this build reads version {FORMAT_VERSION}"),
        });
    }
    let stored = named
        .iter()
        .find(|(n, _)| n == "checksum")
        .ok_or_else(|| foreign("it has no `checksum` record"))
        .and_then(|(_, t)| bytes_of(t, "checksum"))?;
    let stored = <[u8; 4]>::try_from(stored.as_slice())
        .map(u32::from_le_bytes)
        .map_err(|_| foreign("its `checksum` record is not 4 bytes"))?;
    let rest: Vec<(String, Tensor)> = named
        .iter()
        .filter(|(n, _)| n != "checksum")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let actual = checksum(&rest).map_err(|e| foreign(&e.to_string()))?;
    if actual != stored {
        return Err(CheckpointError::Corrupted {
            path: path.to_path_buf(),
            stored,
            actual,
        });
    }
    let mut params = HashMap::new();
    let mut rmsprop = HashMap::new();
    let mut extra = HashMap::new();
    for (name, t) in named {
        if let Some(n) = name.strip_prefix("param/") {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("rmsprop/") {
            rmsprop.insert(n.to_string(), t);
        } else if name != "state" && name != "checksum" {
            extra.insert(name, t);
        }
    }
    let (state, _): (TrainingState, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).map_err(|e| {
            CheckpointError::Unreadable {
                path: path.to_path_buf(),
                reason: format!("training state: {e}"),
            }
        })?;
    Ok(Checkpoint {
        state,
        params,
        rmsprop,
        extra,
    })
}

/// An in-memory `Write` that libtorch's stream writer can own while we keep a handle on it.
#[derive(Clone, Default)]
struct SharedBuf(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CRC-32 (IEEE) over the records in name order: each name, its shape and its raw bytes.
fn checksum(named: &[(String, Tensor)]) -> Result<u32, tch::TchError> {
    let mut sorted: Vec<&(String, Tensor)> = named.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = crc32fast::Hasher::new();
    let mut buf = Vec::new();
    for (name, t) in sorted {
        h.update(name.as_bytes());
        for d in t.size() {
            h.update(&d.to_le_bytes());
        }
        let t = t.f_contiguous()?;
        let n = t.numel();
        buf.resize(n * t.f_kind()?.elt_size_in_bytes(), 0);
        t.f_copy_data_u8(&mut buf, n)?;
        h.update(&buf);
    }
    Ok(h.finalize())
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

    /// Saves a small checkpoint at `frames` in `dir` and returns its path.
    fn write(dir: &Path, frames: u64) -> PathBuf {
        let path = path_for(dir, frames);
        let w = Tensor::from_slice(&[1234.5f32; 64]);
        let params = vec![("w".to_string(), w.shallow_clone())];
        let mut st = state();
        st.frames = frames;
        save(&path, &st, &params, &[w.zeros_like()], &[]).unwrap();
        path
    }

    #[test]
    fn damaged_files_are_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A flipped byte inside the parameters' data.
        let path = write(dir.path(), 1000);
        let mut bytes = std::fs::read(&path).unwrap();
        let needle = 1234.5f32.to_le_bytes();
        let at = bytes.windows(4).position(|w| w == needle).unwrap();
        bytes[at + 10] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        // libtorch reads a damaged tensor without complaint; the checksum catches it.
        let err = load(&path).err().expect("a flipped byte must be caught");
        assert!(matches!(err, CheckpointError::Corrupted { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));

        // Truncated, as by a crash of a tool that copied it.
        let path = write(dir.path(), 2000);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&path).err().unwrap();
        assert!(matches!(err, CheckpointError::Unreadable { .. }), "{err}");

        // A libtorch archive that is not ours.
        let path = dir.path().join("other.pt");
        Tensor::save_multi(&[("x", Tensor::from_slice(&[1f32]))], &path).unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.to_string().contains("not an async-rl checkpoint"),
            "{err}"
        );

        // Another format version.
        let path = path_for(dir.path(), 3000);
        let mut old = state();
        old.format_version = 1;
        let w = Tensor::from_slice(&[1f32]);
        save(
            &path,
            &old,
            &[("w".into(), w.shallow_clone())],
            &[w.zeros_like()],
            &[],
        )
        .unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.to_string()
                .contains("format version 1, this build reads version 2"),
            "{err}"
        );
    }

    #[test]
    fn latest_falls_back_past_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in [1000, 2000, 3000] {
            write(dir.path(), f);
        }
        let newest = path_for(dir.path(), 3000);
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..100]).unwrap();
        let found = open(dir.path(), "latest").unwrap();
        assert_eq!(found.path, path_for(dir.path(), 2000));
        assert_eq!(found.checkpoint.state.frames, 2000);
        assert_eq!(found.skipped.len(), 1);
        assert!(found.skipped[0].to_string().contains("model-3000.pt"));
        // An explicit frame count does not fall back.
        assert!(open(dir.path(), "3000").is_err());
        // Nothing usable: every failure is listed.
        for f in [1000, 2000] {
            std::fs::write(path_for(dir.path(), f), b"junk").unwrap();
        }
        let err = open(dir.path(), "latest").err().unwrap().to_string();
        for f in ["model-1000.pt", "model-2000.pt", "model-3000.pt"] {
            assert!(err.contains(f), "{err}");
        }
        // No checkpoints at all.
        let empty = tempfile::tempdir().unwrap();
        let err = open(empty.path(), "latest").err().unwrap().to_string();
        assert!(err.contains("no checkpoints"), "{err}");
    }

    #[test]
    fn prune_keeps_the_newest_and_partial_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for f in [1000, 2000, 3000, 4000] {
            write(dir.path(), f);
        }
        assert!(prune(dir.path(), 0).unwrap().is_empty());
        let removed = prune(dir.path(), 2).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(list(dir.path()), vec![3000, 4000]);
        // What a save killed mid-write leaves (no destructor runs to remove it), of a
        // checkpoint, a replay memory and the best evaluation's scores; and what older builds
        // left. Other files stay.
        let mut partial = vec![];
        for name in ["model-5000.pt", "model-5000.replay", "model-best.eval.json"] {
            let mut f = atomic_file::AtomicFile::create(&dir.path().join(name)).unwrap();
            f.write_all(b"half").unwrap();
            partial.push(f.temporary_path().to_path_buf());
            std::mem::forget(f);
        }
        for name in ["model-4500.pt.tmp", "model-4500.replay.tmp"] {
            std::fs::write(dir.path().join(name), b"half").unwrap();
            partial.push(dir.path().join(name));
        }
        let kept = [
            "model-1000.eval.json",
            "notes.tmp",
            ".other.json.abc123.tmp",
        ];
        for name in kept {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut removed = remove_partial(dir.path()).unwrap();
        removed.sort();
        partial.sort();
        assert_eq!(removed, partial);
        assert_eq!(list(dir.path()), vec![3000, 4000]);
        for name in kept {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn round_trip_and_refusal_of_non_finite_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), 1000);
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let params = vec![("w".to_string(), w.shallow_clone())];
        save(&path, &state(), &params, &[w.zeros_like()], &[]).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.state, state());
        assert!(ck.params["w"].equal(&w));
        assert_eq!(list(dir.path()), vec![1000]);

        let bad = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, f32::NAN]))];
        let later = path_for(dir.path(), 2000);
        let err = save(&later, &state(), &bad, &[w.zeros_like()], &[]).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
        assert!(!later.exists());
        assert_eq!(
            list(dir.path()),
            vec![1000],
            "the good checkpoint stays the newest"
        );
    }
}
