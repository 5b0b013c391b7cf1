//! Atomic file writes: a file appears under its name whole or not at all, and a file it
//! replaces stays intact until then, whatever happens mid-write (a full disk, a kill, a
//! power cut after the rename).
//!
//! Every file the project writes for later (checkpoints, replay memories, evaluation reports,
//! `model-best.eval.json`, GIF recordings) goes through here: a temporary file in the
//! destination's directory (so the rename stays on one file system), the caller's writes,
//! an fsync of the file, a rename over the destination and an fsync of the directory (so the
//! rename itself survives a crash). The temporary file is named
//! `.<file name>.<6 random characters>.tmp` and is removed on any failure; only a killed
//! process leaves one, which [`destination_of`] recognizes (see
//! [`crate::checkpoint::remove_partial`]).
//!
//! [`write`] writes a whole file from a closure; [`AtomicFile`] is the same in steps, for a
//! writer that outlives one call (a GIF recorded game by game).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A write that failed, naming the destination (the file nothing was written to).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {error}", path.display())]
pub struct WriteError {
    /// The destination.
    pub path: PathBuf,
    /// What failed: creating the temporary file, the caller's writes, the fsyncs or the
    /// rename.
    pub error: io::Error,
}

/// A file being written to a temporary name beside `path` (a [`Write`]r, unbuffered: wrap it
/// in a `BufWriter` for small writes), renamed into place by [`AtomicFile::commit`]. Dropped
/// without a commit, the temporary file is removed and the destination is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: NamedTempFile,
}

impl AtomicFile {
    /// Creates the temporary file for `path` in its directory, with the permissions
    /// `File::create` would give (0o666 less the umask). Errors: the directory does not exist
    /// or is not writable, or `path` is a directory.
    pub fn create(path: &Path) -> Result<AtomicFile, WriteError> {
        let err = |error| WriteError {
            path: path.to_path_buf(),
            error,
        };
        if path.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            // A temporary file's default is 0o600.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(directory_of(path))
            .map_err(err)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file being written.
    pub fn temporary_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Fsyncs the file, renames it over the destination (replacing any file there) and fsyncs
    /// the directory. Returns the file, open, under its new name. On an error the temporary
    /// file is removed; the destination is untouched unless the rename succeeded and only the
    /// directory's fsync failed.
    pub fn commit(self) -> Result<File, WriteError> {
        let AtomicFile { path, tmp } = self;
        let err = |error| WriteError {
            path: path.clone(),
            error,
        };
        tmp.as_file().sync_all().map_err(err)?;
        // On failure the PersistError's temporary file is dropped, which removes it.
        let file = tmp.persist(&path).map_err(|e| err(e.error))?;
        File::open(directory_of(&path))
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(file)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.tmp.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

/// Writes `path` atomically: `write` fills the temporary file (buffer it if it writes in small
/// pieces, and flush the buffer before returning), then [`AtomicFile::commit`]. Returns what
/// `write` returns. If `write` fails (or panics), the temporary file is removed and the
/// destination is untouched. Errors name `path`.
pub fn write<T>(
    path: &Path,
    write: impl FnOnce(&mut AtomicFile) -> io::Result<T>,
) -> Result<T, WriteError> {
    let mut file = AtomicFile::create(path)?;
    let value = write(&mut file).map_err(|error| WriteError {
        path: path.to_path_buf(),
        error,
    })?;
    file.commit()?;
    Ok(value)
}

/// The destination's file name of a temporary file named `name` (e.g. `model-5000.safetensors` for
/// `.model-5000.safetensors.Ab3xYz.tmp`), or `None` if `name` is not one of ours.
pub fn destination_of(name: &str) -> Option<&str> {
    let (dest, random) = name
        .strip_prefix('.')?
        .strip_suffix(".tmp")?
        .rsplit_once('.')?;
    (!dest.is_empty() && !random.is_empty()).then_some(dest)
}

/// The directory `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let n = write(&path, |f| {
            f.write_all(b"{}")?;
            Ok(2)
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(names(dir.path()), ["a.json"]);
        // The permissions File::create gives (0o666 less the umask), not a temporary file's.
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
        };
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        assert_eq!(mode(&path), mode(&plain));
    }

    #[test]
    fn a_rename_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        std::fs::write(&path, b"old contents, longer than the new").unwrap();
        write(&path, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["m.pt"]);
    }

    #[test]
    fn a_failed_write_leaves_the_destination_untouched_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.replay");
        std::fs::write(&path, b"good").unwrap();
        let err = write(&path, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.path, path);
        let msg = err.to_string();
        assert!(
            msg.contains("m.replay") && msg.contains("disk full"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(names(dir.path()), ["m.replay"]);

        // A panic mid-write, the same.
        let caught = std::panic::catch_unwind(|| {
            let _ = write(&path, |f| -> io::Result<()> {
                f.write_all(b"half")?;
                panic!("mid-write")
            });
        });
        assert!(caught.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(names(dir.path()), ["m.replay"]);

        // A new file that fails is not created at all.
        let new = dir.path().join("new.json");
        assert!(write(&new, |_| Err::<(), _>(io::Error::other("no"))).is_err());
        assert!(!new.exists());
    }

    #[test]
    fn the_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.gif");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"GIF89a").unwrap();
        assert!(!path.exists());
        assert!(f.temporary_path().exists());
        assert_eq!(f.path(), path);
        let file = f.commit().unwrap();
        assert_eq!(file.metadata().unwrap().len(), 6);
        assert_eq!(std::fs::read(&path).unwrap(), b"GIF89a");
        assert_eq!(names(dir.path()), ["r.gif"]);
        // Dropped without a commit: nothing is left.
        let mut f = AtomicFile::create(&dir.path().join("s.gif")).unwrap();
        f.write_all(b"GIF").unwrap();
        drop(f);
        assert_eq!(names(dir.path()), ["r.gif"]);
    }

    #[test]
    fn unwritable_destinations_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x.json");
        let err = write(&missing, |f| f.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x.json"), "{err}");
        let err = AtomicFile::create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn temporary_names_give_their_destination() {
        let dir = tempfile::tempdir().unwrap();
        let f = AtomicFile::create(&dir.path().join("model-5000.pt")).unwrap();
        let name = f.temporary_path().file_name().unwrap().to_str().unwrap();
        assert_eq!(destination_of(name), Some("model-5000.pt"), "{name}");
        assert_eq!(destination_of(".a.b.XyZ123.tmp"), Some("a.b"));
        for other in [
            "model-5000.pt",
            "model-5000.pt.tmp",
            ".model-5000.pt",
            ".x.tmp",
            "..tmp",
        ] {
            assert_eq!(destination_of(other), None, "{other}");
        }
    }
}
