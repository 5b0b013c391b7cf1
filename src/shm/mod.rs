//! Shared-memory plumbing between the actor processes and the learner: the
//! bounded experience queue (actors -> learner), the weight snapshot
//! (learner -> actors), the inference request slots (actors <-> learner), the
//! segment helper they share, futex helpers, and the naming/cleanup convention for
//! the POSIX shared-memory segments so that segments left behind by crashed
//! runs can be found and removed.

mod batch;
mod consumer;
pub mod futex;
pub mod inference;
mod mapping;
pub mod queue;
mod queue_layout;
mod slot;
pub mod snapshot;

pub use inference::{InferenceError, InferenceSlots};
pub use mapping::SegmentError;
pub use queue::{
    BadSlot, Batch, BatchPushError, ExperienceQueue, LayoutError, PushError, QueueError,
    RawNumbers, Segment, SegmentMismatch, SegmentShape, SlotLayout, Transition,
};
pub use snapshot::{SnapshotError, WeightSnapshot};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Prefix of every segment this project creates (`/dev/shm/async-rl-...`).
pub const SEGMENT_PREFIX: &str = "async-rl-";

/// Directory where Linux exposes POSIX shared-memory objects.
const SHM_DIR: &str = "/dev/shm";

/// Returns `"async-rl-<pid>-<kind>"` for the current process's pid: the name of
/// the segment as it appears in `/dev/shm` (no leading slash). `kind` should be
/// a short tag without `/` (e.g. "queue", "weights").
pub fn segment_name(kind: &str) -> String {
    format!("{SEGMENT_PREFIX}{}-{kind}", std::process::id())
}

/// The id handed to `shm_open` for segment `name`: POSIX wants one leading
/// slash (glibc maps "/x" to `/dev/shm/x`).
pub(crate) fn os_id(name: &str) -> String {
    format!("/{}", name.trim_start_matches('/'))
}

/// Extracts `<pid>` from `"async-rl-<pid>-<kind>"`, or `None` if the name does
/// not follow the convention.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(SEGMENT_PREFIX)?;
    let (pid, kind) = rest.split_once('-')?;
    if pid.is_empty() || kind.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse::<i32>().ok().filter(|&p| p > 0)
}

/// Scans `/dev/shm` for segments named `async-rl-<pid>-*` whose `<pid>` is not
/// alive (`kill(pid, 0)` fails with `ESRCH`) and `shm_unlink`s them. Returns the
/// names removed (no leading slash). Segments of live pids (including pids of
/// other users, `EPERM`) are never touched. Errors: failure to read the
/// directory (a missing `/dev/shm` yields an empty list); per-entry unlink
/// races (already gone) are ignored.
pub fn remove_stale_segments() -> std::io::Result<Vec<String>> {
    remove_segments_where(|pid| kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH))
}

/// Unlinks every `async-rl-<pid>-*` segment of process `pid` (used by the learner when it must
/// stop at once, before its owners' destructors can run). Returns the names removed.
pub fn remove_segments_of(pid: u32) -> std::io::Result<Vec<String>> {
    remove_segments_where(|owner| owner == pid as i32)
}

/// Unlinks the project's segments whose owner pid satisfies `doomed`.
fn remove_segments_where(doomed: impl Fn(i32) -> bool) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(SHM_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !doomed(pid) {
            continue;
        }
        match nix::sys::mman::shm_unlink(os_id(&name).as_str()) {
            Ok(()) => removed.push(name),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn segment_name_has_pid_and_kind() {
        let n = segment_name("queue");
        assert_eq!(n, format!("async-rl-{}-queue", std::process::id()));
        assert_eq!(owner_pid(&n), Some(std::process::id() as i32));
        assert_eq!(os_id(&n), format!("/{n}"));
        assert_eq!(owner_pid("async-rl-12x-q"), None);
        assert_eq!(owner_pid("async-rl-12"), None);
        assert_eq!(owner_pid("async-rl--q"), None);
        assert_eq!(owner_pid("other-12-q"), None);
    }

    #[test]
    fn segment_lands_in_dev_shm_under_its_name() {
        let n = segment_name("naming");
        let w = WeightSnapshot::create(&n, 3).unwrap();
        assert!(Path::new(SHM_DIR).join(&n).exists());
        drop(w);
        assert!(!Path::new(SHM_DIR).join(&n).exists());
    }

    /// A pid that is guaranteed dead: a child we spawned and reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn removes_dead_pid_segments_and_keeps_live_ones() {
        let dead = format!("{SEGMENT_PREFIX}{}-stale-test", dead_pid());
        let live = segment_name("live-test");
        // Simulate a crashed run: create, then drop ownership so it stays.
        let mut stale = shared_memory::ShmemConf::new()
            .size(64)
            .os_id(os_id(&dead))
            .create()
            .unwrap();
        stale.set_owner(false);
        drop(stale);
        let keep = WeightSnapshot::create(&live, 16).unwrap();
        assert!(Path::new(SHM_DIR).join(&dead).exists());

        let removed = remove_stale_segments().unwrap();
        assert!(removed.contains(&dead), "{removed:?}");
        assert!(!removed.contains(&live));
        assert!(!Path::new(SHM_DIR).join(&dead).exists());
        assert!(Path::new(SHM_DIR).join(&live).exists());
        // The live segment is still usable.
        assert_eq!(WeightSnapshot::open(&live).unwrap().numel(), 16);
        drop(keep);
    }
}
