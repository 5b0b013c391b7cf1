//! A bound on the log lines that peers can make the learner write: every refusal (a wrong
//! token, a failed TLS handshake, a connection over a cap, a silent connection) is one line
//! for people, and HTTP/2 multiplexing lets one peer cause thousands a second. Each kind of
//! line gets a [`LogLimiter`]: a token bucket that lets a short burst through, then about one
//! line a second, and counts what it held back into the next line it lets through.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket of log lines: at most `burst` lines at once, refilled at `per_second`
/// lines a second; a line that finds the bucket empty is suppressed and counted, and the
/// next line let through ends with ` (N more suppressed since the last such line)`.
pub struct LogLimiter {
    burst: f64,
    per_second: f64,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    at: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A bucket of `burst` lines (at least 1), refilled at `per_second` lines a second.
    pub fn new(burst: u32, per_second: f64) -> LogLimiter {
        let burst = f64::from(burst.max(1));
        LogLimiter {
            burst,
            per_second: per_second.max(0.0),
            state: Mutex::new(State {
                tokens: burst,
                at: None,
                suppressed: 0,
            }),
        }
    }

    /// The limiter every kind of refusal line uses: a burst of 5, then 1 line a second.
    pub fn refusals() -> LogLimiter {
        LogLimiter::new(5, 1.0)
    }

    /// The line to write for an event at `now` (`line` is only called then), with the count
    /// of suppressed lines appended; `None`: suppressed (and counted).
    pub fn line_at(&self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = s.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
            s.tokens = (s.tokens + refill).min(self.burst);
        }
        s.at = Some(now);
        if s.tokens < 1.0 {
            s.suppressed += 1;
            return None;
        }
        s.tokens -= 1.0;
        let suppressed = std::mem::take(&mut s.suppressed);
        drop(s);
        let line = line();
        Some(if suppressed > 0 {
            format!("{line} ({suppressed} more suppressed since the last such line)")
        } else {
            line
        })
    }

    /// Writes `line` through `log` now, unless the bucket is empty.
    pub fn log(&self, log: &(dyn Fn(&str) + Send + Sync), line: impl FnOnce() -> String) {
        if let Some(line) = self.line_at(Instant::now(), line) {
            log(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_one_line_a_second_with_the_suppressed_count() {
        let l = LogLimiter::new(3, 1.0);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut out = Vec::new();
        // 1000 events in the first 2.5 s, 2.5 ms apart.
        for k in 0..1000u64 {
            if let Some(line) = l.line_at(at(k * 5 / 2), || format!("event {k}")) {
                out.push(line);
            }
        }
        // 3 at once, then about one a second (refilled near 1 s and 2 s), each with the count
        // of the lines held back before it.
        let count = |line: &str| -> u64 {
            line.split(" (")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map_or(0, |n| n.parse().unwrap())
        };
        assert_eq!(out.len(), 5, "{out:?}");
        assert_eq!(&out[..3], &["event 0", "event 1", "event 2"]);
        assert!(
            out[3].starts_with("event 39") || out[3].starts_with("event 40"),
            "{out:?}"
        );
        assert!(
            out[3].ends_with(" more suppressed since the last such line)"),
            "{out:?}"
        );
        assert!(count(&out[4]) > 390, "{out:?}");
        // Quiet for a while: the bucket is full again, and the count was not lost: every
        // event was either written or counted in a line.
        let later: Vec<String> = (0..4)
            .filter_map(|k| l.line_at(at(10_000 + k), || format!("later {k}")))
            .collect();
        assert_eq!(later.len(), 3, "{later:?}");
        assert!(later[0].starts_with("later 0 ("), "{later:?}");
        assert_eq!(&later[1..], &["later 1", "later 2"]);
        let counted: u64 = out.iter().chain(&later).map(|l| count(l)).sum();
        assert_eq!(counted + 5, 1000);
    }

    #[test]
    fn the_line_is_not_built_when_suppressed() {
        let l = LogLimiter::new(1, 0.0);
        let t = Instant::now();
        assert!(l.line_at(t, || "first".into()).is_some());
        assert!(l.line_at(t, || panic!("built a suppressed line")).is_none());
    }
}
