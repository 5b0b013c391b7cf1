//! The safetensors checkpoint (format 3): writing it ([`save`]) and decoding it ([`decode`])
//! with its checksum checked before any tensor is built.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

use super::{
    first_line, Checkpoint, CheckpointError, TrainingState, FORMAT_NAME, FORMAT_VERSION,
    LEGACY_EXTENSION, LEGACY_FORMAT_VERSION, MAX_STATE_BYTES,
};
use crate::atomic_file;

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
/// ([`atomic_file`]: temporary file, fsync, rename, fsync of the directory): `params` under
/// `param/<name>`, the `optimizer` state under its own names (each with a prefix of
/// [`crate::optim::STATE_PREFIXES`]; `&[]` for weights only) and a learning rule's `extra`
/// tensors under theirs (`<prefix>/<name>`, any prefix but `param` and the optimizers').
/// Refuses weights that are not all finite, so a diverged run never replaces a good
/// checkpoint.
///
/// # Panics
///
/// When an `optimizer` or `extra` name is in the other's namespace (a programming error: the
/// file would load with the tensor in the wrong place).
pub fn save(
    path: &Path,
    state: &TrainingState,
    params: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    extra: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    for (name, _) in optimizer {
        assert!(
            crate::optim::is_state_name(name),
            "optimizer tensor `{name}`"
        );
    }
    for (name, _) in extra {
        assert!(
            !crate::optim::is_state_name(name) && !name.starts_with("param/") && name != "state",
            "extra tensor `{name}`"
        );
    }
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
    for (name, t) in optimizer.iter().chain(extra) {
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

/// What [`decode`] found wrong, before the file's name is known.
#[derive(Debug)]
pub(super) enum Flaw {
    Unreadable(String),
    Foreign(String),
    Mismatch(String),
    Corrupted { stored: u32, actual: u32 },
}

impl Flaw {
    pub(super) fn at(self, path: &Path) -> CheckpointError {
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

/// Decodes the bytes of a safetensors checkpoint (see [`load`](super::load)); the error says what is wrong.
/// Public for the fuzz targets (`src/fuzz_tests.rs`), which feed it arbitrary bytes.
#[doc(hidden)]
pub fn decode_bytes(bytes: &[u8]) -> Result<Checkpoint, String> {
    decode(bytes).map_err(|e| format!("{:?}", e))
}

/// Decodes a safetensors checkpoint: header, format, version and checksum first, then the
/// training state and the tensors (parameters, optimizer state, a rule's others).
pub(super) fn decode(bytes: &[u8]) -> Result<Checkpoint, Flaw> {
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
    let mut optimizer = HashMap::new();
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
        } else if crate::optim::is_state_name(name) {
            optimizer.insert(name.to_string(), t);
        } else {
            extra.insert(name.to_string(), t);
        }
    }
    Ok(Checkpoint {
        state,
        params,
        optimizer,
        extra,
    })
}

/// The [`TrainingState`] in a checkpoint's `state` bytes (bincode 2, at most
/// [`MAX_STATE_BYTES`]).
pub(super) fn decode_state(bytes: &[u8]) -> Result<TrainingState, String> {
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
