//! Format 2, the libtorch archives (`model-<frames>.pt`) of older builds: still read, with
//! their own checksum checked.

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use super::format::decode_state;
use super::{
    first_line, Checkpoint, CheckpointError, FORMAT_VERSION, LEGACY_EXTENSION,
    LEGACY_FORMAT_VERSION,
};

/// Reads a format-2 checkpoint, libtorch's archive (`Tensor::load_multi`) of older builds.
pub(super) fn load_legacy(path: &Path) -> Result<Checkpoint, CheckpointError> {
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
    let mut optimizer = HashMap::new();
    let mut extra = HashMap::new();
    for (name, t) in named {
        if let Some(n) = name.strip_prefix("param/") {
            params.insert(n.to_string(), t);
        } else if crate::optim::is_state_name(&name) {
            optimizer.insert(name, t);
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
        optimizer,
        extra,
    })
}

/// An in-memory `Write` that libtorch's stream writer can own while we keep a handle on it.
#[cfg(test)]
#[derive(Clone, Default)]
pub(super) struct SharedBuf(pub(super) std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for SharedBuf {
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
pub(super) fn legacy_checksum(named: &[(String, Tensor)]) -> Result<u32, tch::TchError> {
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
