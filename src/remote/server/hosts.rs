//! The learner's record of each remote host, kept across its sessions (a host that
//! reconnects keeps its number and counters): its [`HostStats`] and the last message number
//! counted, which makes a message sent again after a reconnection count once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::HostStats;
use crate::remote::bounds::{printable, HostBounds, Ledger, MAX_LOGGED_CHARS};
use crate::remote::wire;

/// A host that left is forgotten after this long (its counters, its last message number):
/// longer than a host waits for the learner by default (`--reconnect-for`, 600 s), so a host
/// that comes back still finds its record.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Failure lines of one message logged; the rest are counted in one line.
const FAILURES_LOGGED: usize = 8;

/// Records kept besides the connected hosts': the oldest that left are forgotten first when
/// there are more than `remote_lanes + EXTRA_RECORDS` (hosts that come and go faster than
/// [`FORGET_AFTER`]).
const EXTRA_RECORDS: usize = 256;

/// Forgets the hosts that left more than [`FORGET_AFTER`] ago, and the oldest that left
/// while there are more than `remote_lanes + EXTRA_RECORDS` records (at most `remote_lanes`
/// hosts are connected: one lane each at least).
pub(super) fn forget_departed(hosts: &mut HashMap<u64, Arc<HostRecord>>, remote_lanes: usize) {
    let now = Instant::now();
    hosts.retain(|_, r| {
        r.left_at()
            .is_none_or(|t| now.duration_since(t) < FORGET_AFTER)
    });
    let most = remote_lanes + EXTRA_RECORDS;
    if hosts.len() > most {
        let mut departed: Vec<(Instant, u64)> = hosts
            .iter()
            .filter_map(|(id, r)| r.left_at().map(|t| (t, *id)))
            .collect();
        departed.sort();
        for (_, id) in departed.into_iter().take(hosts.len() - most) {
            hosts.remove(&id);
        }
    }
}

/// One host across its sessions.
///
/// Two locks, not one: `last_seq` is held while a message is counted, which includes waiting
/// for room in the queue, and the learner's metrics and the session's reader must still read
/// and update `stats` meanwhile. Lock order: `last_seq`, then `ledger`, the reports, `stats`.
pub(super) struct HostRecord {
    /// The last message number counted; held while a message is counted, so that two
    /// sessions of one host (a stale one not yet noticed and its reconnection) count each
    /// number once.
    pub(super) last_seq: Mutex<u64>,
    /// The frames and games it may still report ([`Ledger`]); counted with `last_seq` held
    /// (lock order: `last_seq`, then `ledger`), never held while waiting.
    pub(super) ledger: Mutex<Ledger>,
    pub(super) stats: Mutex<HostStats>,
    /// When its last session ended (`None` while one is connected, or before the first).
    left_at: Mutex<Option<Instant>>,
}

impl HostRecord {
    /// Host number `host`, named `name`, never connected yet.
    pub(super) fn new(host: u32, name: String) -> HostRecord {
        HostRecord {
            last_seq: Mutex::new(0),
            ledger: Mutex::new(Ledger::default()),
            left_at: Mutex::new(None),
            stats: Mutex::new(HostStats {
                host,
                name,
                ..HostStats::default()
            }),
        }
    }

    /// A session of this host opened with `processes` processes: it is connected, and its
    /// ledger holds at least the session's grant under `bounds`.
    pub(super) fn joined(&self, processes: u32, bounds: &HostBounds) {
        // Not `last_seq`: a pusher holds it while it waits for room in the queue, and this
        // runs under the hosts' lock, which the learner's metrics take.
        self.ledger.lock().unwrap().joined(bounds, processes);
        *self.left_at.lock().unwrap() = None;
        let mut st = self.stats.lock().unwrap();
        if st.connected || st.frames > 0 || st.slots > 0 {
            st.reconnects += 1;
        }
        st.connected = true;
        st.processes = processes;
    }

    /// Whether a session of it is connected.
    pub(super) fn is_connected(&self) -> bool {
        self.stats.lock().unwrap().connected
    }

    /// When its last session ended, if none is connected.
    fn left_at(&self) -> Option<Instant> {
        *self.left_at.lock().unwrap()
    }

    /// Its session ended: nothing of it is in flight any more.
    pub(super) fn left(&self) {
        let mut st = self.stats.lock().unwrap();
        st.connected = false;
        st.in_flight = 0;
        *self.left_at.lock().unwrap() = Some(Instant::now());
    }

    /// A message of `slots` slots arrived: they wait for room in the queue.
    pub(super) fn arrived(&self, slots: u32) {
        self.stats.lock().unwrap().in_flight += u64::from(slots);
    }

    /// A message of `slots` slots was dealt with (counted, or already counted).
    pub(super) fn dealt_with(&self, slots: u32) {
        let mut st = self.stats.lock().unwrap();
        st.in_flight = st.in_flight.saturating_sub(u64::from(slots));
    }

    /// Its actors hold the learner's snapshot `version`.
    pub(super) fn holds(&self, version: u64) {
        self.stats.lock().unwrap().snapshot_version = version;
    }

    /// Message `e` (`wire_bytes` on the wire, slots of `steps_per_slot` steps) was counted;
    /// logs the failures it reports.
    pub(super) fn counted(
        &self,
        e: &wire::Experience,
        wire_bytes: u64,
        steps_per_slot: u64,
        log: &dyn Fn(&str),
    ) {
        let mut st = self.stats.lock().unwrap();
        st.frames += e.frames;
        st.slots += u64::from(e.slots);
        st.transitions += u64::from(e.slots) * steps_per_slot;
        st.wire_bytes += wire_bytes;
        st.snapshot_version = e.snapshot_version;
        st.restarts = e.restarts;
        // The host's own text: a few lines, each capped and made printable.
        for f in e.failures.iter().take(FAILURES_LOGGED) {
            log(&format!("{}: {}", st.name, printable(f, MAX_LOGGED_CHARS)));
        }
        if e.failures.len() > FAILURES_LOGGED {
            log(&format!(
                "{}: {} more failures in one message (not shown)",
                st.name,
                e.failures.len() - FAILURES_LOGGED
            ));
        }
    }

    /// The host's number.
    pub(super) fn host(&self) -> u32 {
        self.stats.lock().unwrap().host
    }
}
