//! The state an actor host's pump thread and its sessions share: the current session, the
//! messages the learner has not acked, the frame bookkeeping, the snapshot-version map and
//! the counters of the summary.
//!
//! What changes together lives in one [`State`] behind one lock, changed only by the methods
//! of [`Link`], each named for what happened ([`Link::sent`], [`Link::acked`],
//! [`Link::new_session`], [`Link::failed`], ...), so that each invariant is kept in one place:
//! a message sent is numbered and kept in `unacked` in one step; an ack pops `unacked`, counts
//! its frames and moves the frame offset in one step; a new session trims or drops `unacked`
//! and becomes the pump's target in one step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::super::wire::{self, Up};

/// Experience messages the host sends ahead of the learner's acks: enough to keep loopback
/// and a LAN busy, few enough that experience does not wait long in flight (it ages there,
/// which on-policy rules feel: see `LANE_SLOTS`).
const WINDOW: usize = 2;

/// Local snapshot versions remembered for mapping slots' versions to the learner's.
const VERSIONS_KEPT: usize = 1024;

/// The shared state of the pump and the sessions.
pub(super) struct Link {
    state: Mutex<State>,
    /// Set when the host shuts down. An atomic, not part of [`State`]: the pump polls it on
    /// every turn of its loop, on its own, and it needs no consistency with the rest.
    done: AtomicBool,
}

/// What changes together (see the module's comment).
struct State {
    /// The current session: its number and where its Experience goes.
    session: Option<Session>,
    /// Sessions opened so far (the next one's number is this plus one).
    sessions: u64,
    /// Sent, not acked yet, in order.
    unacked: VecDeque<Pending>,
    /// The local frame counter's bookkeeping.
    frames: FrameSync,
    /// Local snapshot version -> the learner's, newest last.
    versions: VecDeque<(u32, u32)>,
    /// The learner's snapshot version that the actors hold.
    remote_version: u64,
    /// The number of the last message sent.
    seq: u64,
    /// Games played here, and frames of the messages the learner acked.
    games: u64,
    acked_frames: u64,
    /// Set by the pump when it gives up (its error says why).
    failed: Option<String>,
}

/// A session the pump sends to: its number and its channel.
#[derive(Clone)]
pub(super) struct Session {
    pub number: u64,
    pub tx: mpsc::Sender<Up>,
}

/// A message not yet acked, and the local frame count it reported up to.
struct Pending {
    msg: wire::Experience,
    produced: u64,
}

/// What the pump does next (see [`Link::turn`]).
pub(super) enum Turn {
    /// No session: wait for one.
    Idle,
    /// A session the pump does not serve yet: resend these, in order, before anything new.
    Resend(Session, Vec<wire::Experience>),
    /// The window of unacked messages is full: wait for an ack.
    Full,
    /// Send new experience on the session the pump serves.
    Send,
}

/// What a new session found (see [`Link::new_session`]).
pub(super) struct Joined {
    /// The session's number.
    pub number: u64,
    /// Unacked messages of an old run dropped (a learner restarted); `None` when the learner
    /// runs the run this host knew, or none was known.
    pub dropped: Option<usize>,
}

/// The counters of the `host summary` line.
pub(super) struct Summary {
    pub played: u64,
    pub games: u64,
    pub acked_frames: u64,
    pub messages: u64,
}

/// The host's actors count their frames in the local queue's counter and read it for their
/// epsilon schedule; it must show the run's frames. `counter = produced + offset`, where
/// `produced` counts the frames played here; each ack of the learner (the run's frames right
/// after counting a message) moves `offset` so that the counter is the run's count plus what
/// was played here since that message.
struct FrameSync {
    offset: u64,
    /// `produced` as reported by the newest message.
    reported: u64,
}

impl FrameSync {
    /// Frames played here since the last message, and all played here; marks them reported.
    fn take(&mut self, counter: &AtomicU64) -> (u64, u64) {
        let produced = counter.load(Ordering::SeqCst).wrapping_sub(self.offset);
        let delta = produced.wrapping_sub(self.reported);
        self.reported = produced;
        (delta, produced)
    }

    /// The learner had `frames` frames right after counting a message that reported local
    /// production up to `produced`.
    fn sync(&mut self, counter: &AtomicU64, frames: u64, produced: u64) {
        let offset = frames.wrapping_sub(produced);
        counter.fetch_add(offset.wrapping_sub(self.offset), Ordering::SeqCst);
        self.offset = offset;
    }
}

impl Link {
    /// A link with no session and nothing sent.
    pub fn new() -> Link {
        Link {
            state: Mutex::new(State {
                session: None,
                sessions: 0,
                unacked: VecDeque::new(),
                frames: FrameSync {
                    offset: 0,
                    reported: 0,
                },
                versions: VecDeque::new(),
                remote_version: 0,
                seq: 0,
                games: 0,
                acked_frames: 0,
                failed: None,
            }),
            done: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The actors start with the local counter at the run's `frames`.
    pub fn started(&self, frames: u64) {
        self.state().frames = FrameSync {
            offset: frames,
            reported: 0,
        };
    }

    /// A session was welcomed by a learner of run `run_id` (`known_run`: the run this host
    /// knew, 0 for none) at `frames` frames, having counted this host's messages up to
    /// `last_seq`: what it counted is forgotten (or, for a new run, everything unacked is),
    /// and the session becomes the pump's target. `counter` is the local frame counter.
    pub fn new_session(
        &self,
        tx: mpsc::Sender<Up>,
        welcome: &wire::Welcome,
        known_run: u64,
        counter: &AtomicU64,
    ) -> Joined {
        let mut s = self.state();
        let dropped = if welcome.run_id != known_run {
            // A new learner (the first, or one restarted from a checkpoint): what the old one
            // did not ack belongs to the old run.
            let n = s.unacked.len();
            s.unacked.clear();
            let reported = s.frames.reported;
            s.frames.sync(counter, welcome.frames, reported);
            (known_run != 0).then_some(n)
        } else {
            s.unacked.retain(|p| p.msg.seq > welcome.last_seq);
            None
        };
        s.sessions += 1;
        let number = s.sessions;
        s.session = Some(Session { number, tx });
        Joined { number, dropped }
    }

    /// Session `number` ended (a newer one stays).
    pub fn end_session(&self, number: u64) {
        let mut s = self.state();
        if s.session.as_ref().is_some_and(|x| x.number == number) {
            s.session = None;
        }
    }

    /// What the pump, serving session `serving`, does next.
    pub fn turn(&self, serving: Option<u64>) -> Turn {
        let s = self.state();
        match &s.session {
            None => Turn::Idle,
            Some(current) if Some(current.number) != serving => Turn::Resend(
                current.clone(),
                s.unacked.iter().map(|p| p.msg.clone()).collect(),
            ),
            Some(_) if s.unacked.len() >= WINDOW => Turn::Full,
            Some(_) => Turn::Send,
        }
    }

    /// The learner's version for local snapshot version `local` (0 when unknown).
    pub fn remote_of(&self, local: u32) -> u32 {
        self.state()
            .versions
            .iter()
            .rev()
            .find(|(l, _)| *l == local)
            .map_or(0, |(_, r)| *r)
    }

    /// Numbers `msg`, fills in the frames played here since the last message and the
    /// snapshot version the actors hold, and keeps it until it is acked; returns it to send.
    pub fn sent(&self, counter: &AtomicU64, mut msg: wire::Experience) -> wire::Experience {
        let mut s = self.state();
        let (frames, produced) = s.frames.take(counter);
        s.seq += 1;
        msg.seq = s.seq;
        msg.frames = frames;
        msg.snapshot_version = s.remote_version;
        s.unacked.push_back(Pending {
            msg: msg.clone(),
            produced,
        });
        msg
    }

    /// The learner counted everything up to `ack.seq` and then had `ack.frames` frames; moves
    /// `counter` (the local frame counter, when the actors run) to match.
    pub fn acked(&self, ack: &wire::Ack, counter: Option<&AtomicU64>) {
        let mut s = self.state();
        let mut produced = None;
        while s.unacked.front().is_some_and(|p| p.msg.seq <= ack.seq) {
            let p = s.unacked.pop_front().expect("checked");
            s.acked_frames += p.msg.frames;
            produced = Some(p.produced);
        }
        if let (Some(produced), Some(counter)) = (produced, counter) {
            s.frames.sync(counter, ack.frames, produced);
        }
    }

    /// The learner's snapshot `remote` was published here as local version `local`.
    pub fn published(&self, local: u32, remote: u64) {
        let mut s = self.state();
        s.versions.push_back((local, remote as u32));
        if s.versions.len() > VERSIONS_KEPT {
            s.versions.pop_front();
        }
        s.remote_version = remote;
    }

    /// The learner's snapshot version the actors hold.
    pub fn remote_version(&self) -> u64 {
        self.state().remote_version
    }

    /// A game ended here.
    pub fn game_ended(&self) {
        self.state().games += 1;
    }

    /// The pump gave up: `why`.
    pub fn failed(&self, why: String) {
        self.state().failed = Some(why);
    }

    /// Why the pump gave up, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// The host shuts down: the pump stops.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether the host shuts down.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The summary's counters; `counter` is the local frame counter.
    pub fn summary(&self, counter: &AtomicU64) -> Summary {
        let s = self.state();
        Summary {
            played: counter.load(Ordering::SeqCst).wrapping_sub(s.frames.offset),
            games: s.games,
            acked_frames: s.acked_frames,
            messages: s.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experience(frames_played: u64, counter: &AtomicU64, link: &Link) -> wire::Experience {
        counter.fetch_add(frames_played, Ordering::SeqCst);
        link.sent(counter, wire::Experience::default())
    }

    fn welcome(run_id: u64, frames: u64, last_seq: u64) -> wire::Welcome {
        wire::Welcome {
            run_id,
            frames,
            last_seq,
            ..wire::Welcome::default()
        }
    }

    #[test]
    fn the_host_counter_is_the_runs_frames_plus_what_was_played_here_since() {
        // Welcomed at 1,000 frames.
        let counter = AtomicU64::new(1000);
        let mut f = FrameSync {
            offset: 1000,
            reported: 0,
        };
        counter.fetch_add(40, Ordering::SeqCst);
        assert_eq!(f.take(&counter), (40, 40));
        // 8 more played here before the ack; the learner counted the message at 5,000
        // (other hosts played too).
        counter.fetch_add(8, Ordering::SeqCst);
        f.sync(&counter, 5000, 40);
        assert_eq!(counter.load(Ordering::SeqCst), 5008);
        assert_eq!(f.take(&counter), (8, 48));
        // A learner restarted from a checkpoint at 3,000 frames: the counter follows it down,
        // keeping the 2 frames played here since the last message.
        counter.fetch_add(2, Ordering::SeqCst);
        f.sync(&counter, 3000, 48);
        assert_eq!(counter.load(Ordering::SeqCst), 3002);
        assert_eq!(f.take(&counter), (2, 50));
    }

    #[test]
    fn local_snapshot_versions_map_to_the_learners() {
        let link = Link::new();
        link.published(1, 17);
        link.published(2, 19);
        assert_eq!(link.remote_of(2), 19);
        assert_eq!(link.remote_of(1), 17);
        assert_eq!(link.remote_of(3), 0);
        assert_eq!(link.remote_version(), 19);
    }

    #[test]
    fn messages_are_kept_until_acked_and_resent_on_a_new_session() {
        let link = Link::new();
        let counter = AtomicU64::new(100);
        link.started(100);
        assert!(matches!(link.turn(None), Turn::Idle));
        let (tx, _rx) = mpsc::channel(4);
        let joined = link.new_session(tx.clone(), &welcome(7, 100, 0), 0, &counter);
        assert_eq!((joined.number, joined.dropped), (1, None));
        assert!(matches!(link.turn(None), Turn::Resend(s, m) if s.number == 1 && m.is_empty()));
        assert!(matches!(link.turn(Some(1)), Turn::Send));
        let first = experience(10, &counter, &link);
        let second = experience(5, &counter, &link);
        assert_eq!(
            (first.seq, first.frames, second.seq, second.frames),
            (1, 10, 2, 5)
        );
        assert!(matches!(link.turn(Some(1)), Turn::Full));
        // The learner counted the first at 500 frames: the counter shows that plus the 5
        // played since.
        link.acked(
            &wire::Ack {
                seq: 1,
                frames: 500,
            },
            Some(&counter),
        );
        assert_eq!(counter.load(Ordering::SeqCst), 505);
        assert!(matches!(link.turn(Some(1)), Turn::Send));
        // A reconnection to the same run that counted nothing more resends the second.
        link.end_session(1);
        assert!(matches!(link.turn(Some(1)), Turn::Idle));
        let joined = link.new_session(tx.clone(), &welcome(7, 500, 1), 7, &counter);
        assert_eq!((joined.number, joined.dropped), (2, None));
        match link.turn(Some(1)) {
            Turn::Resend(s, m) => {
                assert_eq!(s.number, 2);
                assert_eq!(m.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
            }
            _ => panic!("expected a resend"),
        }
        // A restarted learner: the second is dropped.
        let joined = link.new_session(tx, &welcome(8, 300, 0), 7, &counter);
        assert_eq!((joined.number, joined.dropped), (3, Some(1)));
        assert!(matches!(link.turn(Some(3)), Turn::Send));
        link.game_ended();
        let summary = link.summary(&counter);
        assert_eq!(
            (
                summary.played,
                summary.games,
                summary.acked_frames,
                summary.messages
            ),
            (15, 1, 10, 2)
        );
    }
}
