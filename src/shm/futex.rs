//! Thin wrappers over the Linux `futex(2)` syscall so that processes sharing a
//! memory segment can sleep on a 32-bit word in that segment instead of
//! spinning. The shared (non-`_PRIVATE`) operations are used on purpose: the
//! waiter and the waker usually live in different processes, and only the
//! shared variants key the wait queue on the underlying page, not on the
//! process's virtual address.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, for at most `timeout`.
///
/// Returns when another thread or process calls [`wake`] on the same word, when
/// the word no longer holds `expected` at the time of the call, on timeout, or
/// on a signal. Callers must re-check their condition afterwards: spurious
/// returns are allowed. Errors from the syscall (`EAGAIN`, `ETIMEDOUT`,
/// `EINTR`) are deliberately folded into "returned"; the caller's loop decides.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, 4-byte aligned u32 for the duration of the call
    // (borrowed), `ts` lives on our stack, and FUTEX_WAIT only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `count` waiters sleeping on `word` (use `i32::MAX` for all).
///
/// Returns the number of waiters woken (0 on error; a failed wake is harmless
/// because every waiter also sleeps with a bounded timeout).
pub fn wake(word: &AtomicU32, count: i32) -> usize {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not dereference
    // the remaining (unused) pointer arguments.
    let woken = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(woken).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_immediately_on_value_mismatch() {
        let w = AtomicU32::new(5);
        let t0 = Instant::now();
        wait(&w, 4, Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let t0 = Instant::now();
        wait(&w, 0, Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn wake_releases_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let h = std::thread::spawn(move || {
            let t0 = Instant::now();
            while w2.load(Ordering::SeqCst) == 0 {
                wait(&w2, 0, Duration::from_secs(5));
            }
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::SeqCst);
        wake(&w, i32::MAX);
        assert!(h.join().unwrap() < Duration::from_secs(4));
    }
}
