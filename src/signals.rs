//! SIGINT, SIGTERM and SIGHUP (a closed terminal): the first asks the learner to stop after a final checkpoint; the second
//! stops at once, after killing the actors and unlinking this run's shared-memory segments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static ACTOR_PIDS: OnceLock<Arc<Mutex<Vec<u32>>>> = OnceLock::new();

/// Registers the list of actor pids that a second signal kills.
pub fn set_actor_pids(pids: Arc<Mutex<Vec<u32>>>) {
    let _ = ACTOR_PIDS.set(pids);
}

/// Installs the handlers and returns the stop flag that the first signal sets.
pub fn install() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let flag = stop.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for (count, sig) in signals.forever().enumerate() {
            if count == 0 {
                flag.store(true, Ordering::SeqCst);
                crate::say_err!("\nsignal {sig}: stopping after a final checkpoint (send it again to stop at once)");
                continue;
            }
            crate::say_err!("\nsignal {sig} again: stopping now");
            if let Some(pids) = ACTOR_PIDS.get() {
                for pid in pids.lock().map(|p| p.clone()).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = crate::shm::remove_segments_of(std::process::id());
            // SAFETY: _exit ends the process without running atexit handlers or C++ static
            // destructors. `std::process::exit` would run libtorch's destructors while the
            // main thread may still be training with it, which crashed the learner (SIGSEGV).
            unsafe { libc::_exit(130) }
        }
    })?;
    Ok(stop)
}
