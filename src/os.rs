//! What a process asks of the operating system about itself: an actor's scheduling priority
//! (`--actor-nice`). Signal handling is in [`crate::signals`]; starting, watching and stopping
//! actor processes in [`crate::supervisor`].

use anyhow::{Context, Result};

/// Adds `by` to this process's niceness (capped at 19, the lowest priority), so that an actor
/// yields the cores to the learner it feeds when they are oversubscribed (`--actor-nice`).
pub fn lower_priority(by: u32) -> Result<()> {
    if by == 0 {
        return Ok(());
    }
    nix::errno::Errno::clear();
    // SAFETY: getpriority takes no pointers; -1 is a valid niceness, so errno tells errors.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if current == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(std::io::Error::last_os_error()).context("--actor-nice: getpriority");
    }
    let target = current.saturating_add(by as i32).min(19);
    // SAFETY: setpriority takes no pointers; `0` is this process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("--actor-nice {by}: setpriority to {target}"));
    }
    Ok(())
}
