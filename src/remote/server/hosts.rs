//! The learner's record of each remote host, kept across its sessions (a host that
//! reconnects keeps its number and counters): its [`HostStats`] and the last message number
//! counted, which makes a message sent again after a reconnection count once.

use std::sync::Mutex;

use super::HostStats;
use crate::remote::wire;

/// One host across its sessions.
///
/// Two locks, not one: `last_seq` is held while a message is counted, which includes waiting
/// for room in the queue, and the learner's metrics and the session's reader must still read
/// and update `stats` meanwhile. Lock order: `last_seq`, then the reports, then `stats`.
pub(super) struct HostRecord {
    /// The last message number counted; held while a message is counted, so that two
    /// sessions of one host (a stale one not yet noticed and its reconnection) count each
    /// number once.
    pub(super) last_seq: Mutex<u64>,
    pub(super) stats: Mutex<HostStats>,
}

impl HostRecord {
    /// Host number `host`, named `name`, never connected yet.
    pub(super) fn new(host: u32, name: String) -> HostRecord {
        HostRecord {
            last_seq: Mutex::new(0),
            stats: Mutex::new(HostStats {
                host,
                name,
                ..HostStats::default()
            }),
        }
    }

    /// A session of this host opened with `processes` processes; returns the host's number.
    pub(super) fn joined(&self, processes: u32) -> u32 {
        let mut st = self.stats.lock().unwrap();
        if st.connected || st.frames > 0 || st.slots > 0 {
            st.reconnects += 1;
        }
        st.connected = true;
        st.processes = processes;
        st.host
    }

    /// Its session ended: nothing of it is in flight any more.
    pub(super) fn left(&self) {
        let mut st = self.stats.lock().unwrap();
        st.connected = false;
        st.in_flight = 0;
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
        for f in &e.failures {
            log(&format!("{}: {f}", st.name));
        }
    }

    /// The host's number.
    pub(super) fn host(&self) -> u32 {
        self.stats.lock().unwrap().host
    }
}
