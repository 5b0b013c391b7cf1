//! Checkpoints: one self-contained `model-<frames>.safetensors` file per save, holding the
//! network's parameters, the optimizer state and the training state (game, network, counters and
//! the config), so that `--checkpoint N` resumes exactly and `play --model` needs nothing else.
//!
//! The file is a [safetensors](https://github.com/huggingface/safetensors) file, read by the
//! `safetensors` crate: a JSON header and raw little-endian tensor data, nothing in it is ever
//! executed (libtorch's own `.pt` archives are read by a pickle-based loader that can run code
//! from the file). Tensors: parameters under `param/<name>`, RMSProp's state under
//! `rmsprop/<name>` (or Adam's under `adam/m/<name>`, `adam/v/<name>` and `adam/step`), a
//! learning rule's other tensors under their own names (e.g.
//! `target/<name>`), and the [`TrainingState`] encoded with bincode 2 in a u8 tensor named
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

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::atomic_file;
use crate::config::{Config, Network};
use crate::env::ObsSpec;

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
/// a checkpoint `play` reads like any other (its optimizer state is empty: it is for playing,
/// not for resuming), beside `model-best.eval.json` with the evaluation's scores. Neither
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
    /// RMSProp state by parameter name.
    pub rmsprop: HashMap<String, Tensor>,
    /// A learning rule's other tensors by full name (e.g. `target/<param>`, the target network),
    /// and Adam's state (`adam/...`).
    pub extra: HashMap<String, Tensor>,
}

/// One tensor's bytes on their way into a safetensors file.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A CPU copy of `t`'s bytes (C order, little-endian as x86 and ARM hold them).
fn raw(t: &Tensor) -> Result<Raw, tch::TchError> {
    let t = t
        .f_detach()?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?;
    let kind = t.f_kind()?;
    let dtype = Dtype::try_from(kind)?;
    let n = t.numel();
    let mut data = vec![0u8; n * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, n)?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(Raw { dtype, shape, data })
}

/// The CRC-32 (IEEE) a checkpoint's header carries: over the tensors in name order, each
/// one's name, a 0 byte, its dtype's name, a 0 byte, its dimensions as u64 little-endian, the
/// number of its bytes as u64 little-endian, and its bytes.
pub fn checksum_of<'a>(
    tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> u32 {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, dtype, shape, data) in sorted {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(format!("{dtype:?}").as_bytes());
        h.update(&[0]);
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize()
}

/// Writes a checkpoint (the module documentation gives the layout) atomically
/// ([`atomic_file`]: temporary file, fsync, rename, fsync of the directory), with a learning
/// rule's `extra` tensors under their own names (`<prefix>/<name>`, any prefix but `param` and
/// `rmsprop`). Refuses weights that are not all finite, so a diverged run never replaces a
/// good checkpoint.
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
    let other = |e: &dyn std::fmt::Display| werr(std::io::Error::other(first_line(&e.to_string())));
    if let Some((name, _)) = params
        .iter()
        .find(|(_, p)| p.isfinite().all().int64_value(&[]) == 0)
    {
        return Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            param: name.clone(),
        });
    }
    let bytes =
        bincode::serde::encode_to_vec(state, bincode::config::standard()).map_err(|e| other(&e))?;
    let mut named: BTreeMap<String, Raw> = BTreeMap::new();
    for (name, p) in params {
        named.insert(format!("param/{name}"), raw(p).map_err(|e| other(&e))?);
    }
    for ((name, _), v) in params.iter().zip(rmsprop) {
        named.insert(format!("rmsprop/{name}"), raw(v).map_err(|e| other(&e))?);
    }
    for (name, t) in extra {
        named.insert(name.clone(), raw(t).map_err(|e| other(&e))?);
    }
    named.insert(
        "state".to_string(),
        Raw {
            dtype: Dtype::U8,
            shape: vec![bytes.len()],
            data: bytes,
        },
    );
    let sum = checksum_of(
        named
            .iter()
            .map(|(n, r)| (n.as_str(), r.dtype, r.shape.as_slice(), r.data.as_slice())),
    );
    let metadata: HashMap<String, String> = [
        ("format", FORMAT_NAME.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("checksum", format!("crc32:{sum:08x}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let file =
        safetensors::tensor::serialize(named.iter(), &Some(metadata)).map_err(|e| other(&e))?;
    // Out of space or killed mid-write: the older checkpoints are untouched.
    atomic_file::write(path, |f| f.write_all(&file)).map_err(|e| werr(e.error))
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

/// What [`decode`] found wrong, before the file's name is known.
#[derive(Debug)]
enum Flaw {
    Unreadable(String),
    Foreign(String),
    Mismatch(String),
    Corrupted { stored: u32, actual: u32 },
}

impl Flaw {
    fn at(self, path: &Path) -> CheckpointError {
        let path = path.to_path_buf();
        match self {
            Flaw::Unreadable(reason) => CheckpointError::Unreadable { path, reason },
            Flaw::Foreign(reason) => CheckpointError::Foreign { path, reason },
            Flaw::Mismatch(reason) => CheckpointError::Mismatch { path, reason },
            Flaw::Corrupted { stored, actual } => CheckpointError::Corrupted {
                path,
                stored,
                actual,
            },
        }
    }
}

/// Decodes the bytes of a safetensors checkpoint (see [`load`]); the error says what is wrong.
/// Public for the fuzz targets (`src/fuzz_tests.rs`), which feed it arbitrary bytes.
#[doc(hidden)]
pub fn decode_bytes(bytes: &[u8]) -> Result<Checkpoint, String> {
    decode(bytes).map_err(|e| format!("{:?}", e))
}

fn decode(bytes: &[u8]) -> Result<Checkpoint, Flaw> {
    // The header alone (JSON, parsed by the safetensors crate, which also checks that the
    // tensors' offsets, shapes and dtypes tile the data exactly); no tensor is built yet.
    let (n, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Flaw::Unreadable(format!("safetensors header: {e}")))?;
    let data = bytes
        .get(8 + n..)
        .ok_or_else(|| Flaw::Unreadable("truncated header".into()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(Flaw::Foreign(format!(
            "its header's metadata has no `format: {FORMAT_NAME}`"
        )));
    }
    let version = meta.get("format_version").map(String::as_str).unwrap_or("");
    if version != FORMAT_VERSION.to_string() {
        return Err(Flaw::Mismatch(format!(
            "format version {version:?}, this build reads version {FORMAT_VERSION} (and {LEGACY_FORMAT_VERSION}, the .{LEGACY_EXTENSION} files of older builds)"
        )));
    }
    let stored = meta
        .get("checksum")
        .and_then(|c| c.strip_prefix("crc32:"))
        .filter(|h| h.len() == 8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| {
            Flaw::Foreign("its header has no `checksum: crc32:<8 hex digits>`".into())
        })?;
    let infos = header.tensors();
    let mut parts = Vec::with_capacity(infos.len());
    for (name, info) in &infos {
        let (s, e) = info.data_offsets;
        let slice = data
            .get(s..e)
            .ok_or_else(|| Flaw::Unreadable(format!("tensor `{name}` lies outside the file")))?;
        parts.push((name.as_str(), info.dtype, info.shape.as_slice(), slice));
    }
    let actual = checksum_of(parts.iter().copied());
    if actual != stored {
        return Err(Flaw::Corrupted { stored, actual });
    }
    // Checked: now the training state and the tensors.
    let state_bytes = parts
        .iter()
        .find(|p| p.0 == "state")
        .filter(|p| p.1 == Dtype::U8 && p.2.len() == 1)
        .map(|p| p.3)
        .ok_or_else(|| Flaw::Foreign("it has no `state` record of bytes".into()))?;
    let state = decode_state(state_bytes).map_err(Flaw::Unreadable)?;
    if state.format_version != FORMAT_VERSION {
        return Err(Flaw::Mismatch(format!(
            "its training state is of format version {}, its header says {FORMAT_VERSION}",
            state.format_version
        )));
    }
    let mut params = HashMap::new();
    let mut rmsprop = HashMap::new();
    let mut extra = HashMap::new();
    for (name, dtype, shape, slice) in parts {
        if name == "state" {
            continue;
        }
        let kind = Kind::try_from(dtype).map_err(|_| {
            Flaw::Foreign(format!(
                "tensor `{name}` has dtype {dtype:?}, which libtorch does not hold"
            ))
        })?;
        let size: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(slice, &size, kind).map_err(|e| {
            Flaw::Unreadable(format!("tensor `{name}`: {}", first_line(&e.to_string())))
        })?;
        if let Some(n) = name.strip_prefix("param/") {
            params.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("rmsprop/") {
            rmsprop.insert(n.to_string(), t);
        } else {
            extra.insert(name.to_string(), t);
        }
    }
    Ok(Checkpoint {
        state,
        params,
        rmsprop,
        extra,
    })
}

/// The [`TrainingState`] in a checkpoint's `state` bytes (bincode 2, at most
/// [`MAX_STATE_BYTES`]).
fn decode_state(bytes: &[u8]) -> Result<TrainingState, String> {
    if bytes.len() > MAX_STATE_BYTES {
        return Err(format!(
            "training state of {} bytes (at most {MAX_STATE_BYTES})",
            bytes.len()
        ));
    }
    let config = bincode::config::standard().with_limit::<MAX_STATE_BYTES>();
    bincode::serde::decode_from_slice(bytes, config)
        .map(|(s, _)| s)
        .map_err(|e| format!("training state: {e}"))
}

/// Reads a format-2 checkpoint, libtorch's archive (`Tensor::load_multi`) of older builds.
fn load_legacy(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let named = Tensor::load_multi(path).map_err(|e| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        reason: first_line(&e.to_string()),
    })?;
    let foreign = |reason: &str| CheckpointError::Foreign {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let bytes_of = |t: &Tensor, what: &str| -> Result<Vec<u8>, CheckpointError> {
        if t.kind() != Kind::Uint8 || t.dim() != 1 {
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
    if version != LEGACY_FORMAT_VERSION {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("format version {version}, this build reads version {FORMAT_VERSION} (and {LEGACY_FORMAT_VERSION}, the .{LEGACY_EXTENSION} files of older builds)"),
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
    let actual = legacy_checksum(&rest).map_err(|e| foreign(&e.to_string()))?;
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
    let state = decode_state(&bytes).map_err(|reason| CheckpointError::Unreadable {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Checkpoint {
        state,
        params,
        rmsprop,
        extra,
    })
}

/// An in-memory `Write` that libtorch's stream writer can own while we keep a handle on it.
#[cfg(test)]
#[derive(Clone, Default)]
struct SharedBuf(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

#[cfg(test)]
impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Format 2's CRC-32 (IEEE) over the records in name order: each name, its shape and its raw
/// bytes.
fn legacy_checksum(named: &[(String, Tensor)]) -> Result<u32, tch::TchError> {
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
        // A damaged tensor parses as any other; the checksum catches it.
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

        // A safetensors file that is not ours.
        let path = dir.path().join("other.safetensors");
        Tensor::write_safetensors(&[("x", Tensor::from_slice(&[1f32]))], &path).unwrap();
        let err = load(&path).err().unwrap();
        assert!(matches!(err, CheckpointError::Foreign { .. }), "{err}");

        // Another format version in the header (checked before the checksum).
        let path = write(dir.path(), 3000);
        let mut bytes = std::fs::read(&path).unwrap();
        let needle = b"\"format_version\":\"3\"";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[at + needle.len() - 2] = b'9';
        std::fs::write(&path, &bytes).unwrap();
        let err = load(&path).err().unwrap();
        assert!(
            err.to_string()
                .contains("format version \"9\", this build reads version 3"),
            "{err}"
        );

        // An older build's archive of another format version.
        let path = legacy_path_for(dir.path(), 4000);
        let mut old = state();
        old.format_version = 1;
        let w = Tensor::from_slice(&[1f32]);
        save_legacy(
            &path,
            &old,
            &[("w".into(), w.shallow_clone())],
            &[w.zeros_like()],
        );
        let err = load(&path).err().unwrap();
        assert!(
            err.to_string()
                .contains("format version 1, this build reads version 3"),
            "{err}"
        );

        // Bytes that are neither format.
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffjunk").unwrap();
        let err = load(&path).err().unwrap();
        assert!(matches!(err, CheckpointError::Unreadable { .. }), "{err}");
    }

    /// What older builds wrote: format 2, libtorch's archive with the checksum as a record.
    fn save_legacy(
        path: &Path,
        state: &TrainingState,
        params: &[(String, Tensor)],
        rmsprop: &[Tensor],
    ) {
        let bytes = bincode::serde::encode_to_vec(state, bincode::config::standard()).unwrap();
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (name, p) in params {
            named.push((format!("param/{name}"), p.detach()));
        }
        for ((name, _), v) in params.iter().zip(rmsprop) {
            named.push((format!("rmsprop/{name}"), v.shallow_clone()));
        }
        named.push(("state".to_string(), Tensor::from_slice(&bytes)));
        let sum = legacy_checksum(&named).unwrap();
        named.push((
            "checksum".to_string(),
            Tensor::from_slice(&sum.to_le_bytes()),
        ));
        let archive = SharedBuf::default();
        Tensor::save_multi_to_stream(&named, archive.clone()).unwrap();
        std::fs::write(path, archive.0.take()).unwrap();
    }

    #[test]
    fn older_builds_pt_files_are_found_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::from_slice(&[3.0f32, 4.0]);
        let mut st = state();
        st.format_version = LEGACY_FORMAT_VERSION;
        save_legacy(
            &legacy_path_for(dir.path(), 1000),
            &st,
            &[("w".into(), w.shallow_clone())],
            &[w.ones_like()],
        );
        write(dir.path(), 2000);
        assert_eq!(list(dir.path()), vec![1000, 2000]);
        assert_eq!(find(dir.path(), 1000), legacy_path_for(dir.path(), 1000));
        assert_eq!(find(dir.path(), 2000), path_for(dir.path(), 2000));
        let found = open(dir.path(), "1000").unwrap();
        assert_eq!(found.path, legacy_path_for(dir.path(), 1000));
        assert_eq!(found.checkpoint.state, st);
        assert!(found.checkpoint.params["w"].equal(&w));
        assert!(found.checkpoint.rmsprop["w"].equal(&w.ones_like()));
        // A flipped byte in an old file is still caught by its own checksum.
        let path = legacy_path_for(dir.path(), 1000);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(4)
            .position(|x| x == 3.0f32.to_le_bytes())
            .unwrap();
        bytes[at + 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load(&path),
            Err(CheckpointError::Corrupted { .. })
        ));
        // Pruning removes either name; a frame count saved under both names counts once.
        save_legacy(
            &legacy_path_for(dir.path(), 2000),
            &st,
            &[("w".into(), w.shallow_clone())],
            &[w.ones_like()],
        );
        assert_eq!(list(dir.path()), vec![1000, 2000]);
        assert_eq!(
            find(dir.path(), 2000),
            path_for(dir.path(), 2000),
            "the new file first"
        );
        prune(dir.path(), 1).unwrap();
        assert!(!legacy_path_for(dir.path(), 1000).exists());
        assert_eq!(list(dir.path()), vec![2000]);
    }

    #[test]
    fn the_file_is_plain_safetensors_with_the_checksum_in_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), 1000);
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        assert_eq!(names, ["param/w", "rmsprop/w", "state"]);
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["format"], FORMAT_NAME);
        assert_eq!(meta["format_version"], "3");
        assert!(meta["checksum"].starts_with("crc32:"), "{meta:?}");
        // What any safetensors reader (tch's here, PyTorch's in the README) sees.
        let read = Tensor::read_safetensors(&path).unwrap();
        let w = &read.iter().find(|(n, _)| n == "param/w").unwrap().1;
        assert!(w.equal(&Tensor::from_slice(&[1234.5f32; 64])));
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
        assert!(found.skipped[0]
            .to_string()
            .contains("model-3000.safetensors"));
        // An explicit frame count does not fall back.
        assert!(open(dir.path(), "3000").is_err());
        // Nothing usable: every failure is listed.
        for f in [1000, 2000] {
            std::fs::write(path_for(dir.path(), f), b"junk").unwrap();
        }
        let err = open(dir.path(), "latest").err().unwrap().to_string();
        for f in [
            "model-1000.safetensors",
            "model-2000.safetensors",
            "model-3000.safetensors",
        ] {
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
        for name in [
            "model-5000.safetensors",
            "model-5000.pt",
            "model-5000.replay",
            "model-best.eval.json",
        ] {
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
