//! The messages of the `async_rl.v1.ActorLink/Session` gRPC stream, as prost structs written
//! by hand (the protobuf schema is in each field's attribute; no .proto file and no protoc).
//!
//! One session is one bidirectional stream: the host sends [`Up`] messages (a [`Hello`] first,
//! then [`Experience`] and [`Heartbeat`]), the learner sends [`Down`] messages (a [`Welcome`]
//! first, then [`Ack`], [`Snapshot`], [`Heartbeat`] and at the end [`Stop`]). Experience is the
//! queue's own slot bytes ([`crate::shm::SlotLayout`], little-endian), LZ4-compressed, so both
//! transports carry the one layout definition.

/// Host to learner.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Up {
    #[prost(oneof = "up::Kind", tags = "1, 2, 3")]
    pub kind: Option<up::Kind>,
}

pub mod up {
    /// What an [`super::Up`] carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Experience(super::Experience),
        #[prost(message, tag = "3")]
        Heartbeat(super::Heartbeat),
    }
}

/// Learner to host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Down {
    #[prost(oneof = "down::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<down::Kind>,
}

pub mod down {
    /// What a [`super::Down`] carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Welcome(super::Welcome),
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        #[prost(message, tag = "3")]
        Snapshot(super::Snapshot),
        #[prost(message, tag = "4")]
        Stop(super::Stop),
        #[prost(message, tag = "5")]
        Heartbeat(super::Heartbeat),
    }
}

/// The first message of a session: who the host is and what it runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the host's build.
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// The host's build (crate version): config and slots are exchanged in its encoding.
    #[prost(string, tag = "2")]
    pub build: String,
    /// Random per host process, kept across its reconnections: the learner numbers the host's
    /// messages by it and counts each once.
    #[prost(uint64, tag = "3")]
    pub host_id: u64,
    /// The host's name, for logs and metrics.
    #[prost(string, tag = "4")]
    pub name: String,
    /// Actor processes the host runs (one queue lane each on the learner).
    #[prost(uint32, tag = "5")]
    pub processes: u32,
    /// The learner run this host served before (0: none), so that a restarted learner is told
    /// apart from a dropped connection.
    #[prost(uint64, tag = "6")]
    pub run_id: u64,
}

/// The learner's answer to [`Hello`]: the run's settings and where the host stands.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// Random per learner process.
    #[prost(uint64, tag = "2")]
    pub run_id: u64,
    /// The run's [`crate::config::Config`], bincode (serde) encoded.
    #[prost(bytes = "vec", tag = "3")]
    pub config: Vec<u8>,
    /// The game's display name, its action count and slot size, for a clear refusal by a host
    /// whose ROM differs.
    #[prost(string, tag = "4")]
    pub game: String,
    #[prost(uint32, tag = "5")]
    pub num_actions: u32,
    #[prost(uint64, tag = "6")]
    pub slot_bytes: u64,
    /// Parameters of a snapshot.
    #[prost(uint64, tag = "7")]
    pub numel: u64,
    /// Final epsilon of each of the host's processes.
    #[prost(double, repeated, tag = "8")]
    pub final_epsilons: Vec<f64>,
    /// Seed base of the host's processes (distinct per host and session).
    #[prost(uint64, tag = "9")]
    pub seed: u64,
    /// The last message of this host that the learner counted (0: none): the host resends
    /// the ones after it.
    #[prost(uint64, tag = "10")]
    pub last_seq: u64,
    /// The run's frame count now.
    #[prost(uint64, tag = "11")]
    pub frames: u64,
    /// Most slots per [`Experience`].
    #[prost(uint32, tag = "12")]
    pub max_slots: u32,
    /// The host's number in this run (for names and metrics).
    #[prost(uint32, tag = "13")]
    pub host: u32,
}

/// A batch of experience and what happened on the host since its last message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Experience {
    /// 1, 2, ... per host (across its sessions); the learner counts each number once.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Emulator frames the host's actors played since its previous message.
    #[prost(uint64, tag = "2")]
    pub frames: u64,
    /// Slots in `payload`.
    #[prost(uint32, tag = "3")]
    pub slots: u32,
    /// `slots` queue slots back to back, LZ4 block-compressed (lz4_flex, size not prepended:
    /// it is `slots * slot_bytes`).
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    /// Games that ended, in order.
    #[prost(message, repeated, tag = "5")]
    pub episodes: Vec<Episode>,
    /// Failures of the host's actor processes (each replaced by the host), for the log.
    #[prost(string, repeated, tag = "6")]
    pub failures: Vec<String>,
    /// The learner's snapshot version that the host's actors hold now.
    #[prost(uint64, tag = "7")]
    pub snapshot_version: u64,
    /// Actor restarts on the host so far.
    #[prost(uint32, tag = "8")]
    pub restarts: u32,
}

/// One finished game.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Episode {
    /// Unclipped game score.
    #[prost(float, tag = "1")]
    pub score: f32,
    /// Its length in emulator frames.
    #[prost(uint64, tag = "2")]
    pub frames: u64,
}

/// The learner counted the host's messages up to `seq`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The run's frame count right after counting `seq`.
    #[prost(uint64, tag = "2")]
    pub frames: u64,
}

/// A weight snapshot: sent when its version changed since the last one the host got.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// `numel` f32 values (little-endian), LZ4 block-compressed.
    #[prost(bytes = "vec", tag = "2")]
    pub weights: Vec<u8>,
}

/// The learner is going away.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stop {
    #[prost(string, tag = "1")]
    pub reason: String,
    /// True when the run is over (the host exits); false when the learner was stopped and
    /// may come back (the host reconnects).
    #[prost(bool, tag = "2")]
    pub finished: bool,
}

/// Liveness, both ways; the host's says which snapshot its actors hold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    #[prost(uint64, tag = "1")]
    pub snapshot_version: u64,
}
