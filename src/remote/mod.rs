//! Remote actor hosts: the gRPC transport between a learner (`--listen`) and the machines that
//! run actors for it (`--connect`).
//!
//! On every machine the actor loop is the same: actor processes push into a shared-memory
//! queue and read a shared-memory weight snapshot ([`crate::shm`]). On an actor host, the
//! queue's consumer and the snapshot's publisher is a relay ([`host`]) instead of a learner:
//! it forwards the queue's slots, unread, up one gRPC stream per host and publishes the
//! snapshots that come down. On the learner, each host's session ([`server`]) pushes those
//! slots into queue lanes of its own, so the training loop and the learning rules take remote
//! experience exactly as local experience. Neither the actor loop nor a rule knows which
//! transport carried it.
//!
//! The protocol (one bidirectional stream, `async_rl.v1.ActorLink/Session`, messages in
//! [`wire`]):
//! - the host opens with [`wire::Hello`]; the learner checks its token (`authorization:
//!   Bearer`, constant-time), protocol and build, gives it one queue lane per process, and
//!   answers [`wire::Welcome`] with the run's config, so nothing is configured twice;
//! - the host sends [`wire::Experience`] messages numbered 1, 2, ... (per host, across
//!   reconnections): LZ4-compressed slots, the frames played and the games ended since the
//!   last one. The learner counts each number once and acks it with the run's frame count;
//!   after a reconnection the host resends what was not acked, so a connection cut mid-stream
//!   neither loses nor double-counts frames and episodes. Experience is bounded by HTTP/2 flow
//!   control and the learner's queue: a session that cannot push stops reading;
//! - everything a host reports (slot values, frames, games) is bounded by what it could
//!   have done ([`bounds`]), and one host takes at most `--max-lanes-per-host` lanes under an
//!   id no live session has: a host with the token is trusted to be a host, not to tell the
//!   truth, and one that breaks a bound is disconnected while the run goes on;
//! - the learner sends a [`wire::Snapshot`] (LZ4) whenever its version changed (at most one
//!   queued per session: a host that stops reading pins one, and is dropped after 20 s);
//! - both sides send [`wire::Heartbeat`]s every second and drop a session silent for
//!   [`HEARTBEAT_TIMEOUT`]; the host then reconnects with capped exponential backoff and
//!   jitter, also to a learner restarted from a checkpoint (a new run id: unacked data of the
//!   old run is dropped);
//! - a learner that stops sends [`wire::Stop`]: hosts exit when the run is finished, and
//!   wait for the learner to come back when it was stopped by a signal.

#[cfg(target_endian = "big")]
compile_error!("queue slots travel as little-endian bytes: remote hosts need a little-endian CPU");

pub mod bounds;
pub mod host;
pub mod listener;
pub mod log_limit;
pub mod server;
mod tls;
pub mod wire;

pub use tls::{client_tls, server_tls};

/// The generated client and server of the `ActorLink` service (see build.rs).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/async_rl.v1.ActorLink.rs"));
}

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// Version of the session protocol; a host of another version is refused. 2: the Welcome's
/// config is encoded in groups (`config::Config` since the settings groups).
pub const PROTOCOL_VERSION: u32 = 2;

/// The build a host must match: the config and the slots travel in its encoding.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// How often each side sends a heartbeat when it has nothing else to send.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A session silent for this long is dropped (by either side).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new session has to send its [`wire::Hello`].
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of slots in one [`wire::Experience`] (before compression).
pub const MAX_MESSAGE_SLOT_BYTES: usize = 4 << 20;

/// Most slots in one [`wire::Experience`].
pub const MAX_MESSAGE_SLOTS: usize = 64;

/// Most games and failure lines in one [`wire::Experience`].
pub const MAX_MESSAGE_EVENTS: usize = 4096;

/// Most parameters of a network whose snapshots travel to hosts (64 Mi, 256 MiB of f32; the
/// networks here have a few million): a learner with a bigger one refuses `--listen`, and a
/// host accepts no bigger message before it knows the run's network.
pub const MAX_SNAPSHOT_PARAMS: usize = 64 << 20;

/// Most bytes of the run's config in a [`wire::Welcome`] (it encodes to a few KiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Slots per message for slots of `slot_bytes`: [`MAX_MESSAGE_SLOTS`], fewer for big slots,
/// at least 1.
pub fn max_slots(slot_bytes: usize) -> usize {
    (MAX_MESSAGE_SLOT_BYTES / slot_bytes.max(1)).clamp(1, MAX_MESSAGE_SLOTS)
}

/// Largest encoded message either side accepts for slots of `slot_bytes` and snapshots of
/// `numel` parameters: the biggest experience or snapshot LZ4 can produce, plus room for the
/// rest of the message.
pub fn max_message_bytes(slot_bytes: usize, numel: usize) -> usize {
    let slots = max_slots(slot_bytes) * slot_bytes;
    let weights = numel * 4;
    lz4_flex::block::get_maximum_output_size(slots.max(weights)) + (1 << 20)
}

/// The problems with the remote-host flags of `cfg`, one line each (part of
/// [`Config::validate`]).
pub fn check_flags(cfg: &Config) -> Vec<String> {
    let mut e = Vec::new();
    if cfg.listen.listen.is_some() && cfg.host.connect.is_some() {
        e.push("--listen and --connect: a process is either the learner (--listen) or an actor host (--connect), not both".into());
    }
    if let Some(addr) = &cfg.listen.listen {
        match addr.parse::<std::net::SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() => {
                if cfg.remote.auth_token_file.is_none() {
                    e.push(format!(
                        "--listen {addr}: any machine that reaches this port could join the run; give --auth-token-file FILE (a shared secret the hosts present too), or listen on 127.0.0.1"
                    ));
                }
                if cfg.remote.tls_cert.is_none() && !cfg.listen.insecure_plaintext {
                    e.push(format!(
                        "--listen {addr}: without TLS the token, the weights and the experience cross the network in clear text, and whoever reads the token can join the run; give --tls-cert and --tls-key (README.md, Security), or --insecure-plaintext on a network where no one else can read the traffic"
                    ));
                }
            }
            Ok(_) => {}
            Err(_) => e.push(format!(
                "--listen {addr}: not an IP address and port (e.g. 0.0.0.0:7070, 127.0.0.1:0 for any free port)"
            )),
        }
    }
    if let Some(target) = &cfg.host.connect {
        let port = target.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0) {
            e.push(format!(
                "--connect {target}: not HOST:PORT (e.g. learner-0.example.org:7070, 10.0.0.5:7070)"
            ));
        }
        if !(cfg.host.reconnect_for.is_finite() && cfg.host.reconnect_for > 0.0) {
            e.push(format!(
                "--reconnect-for {}: must be a positive number of seconds",
                cfg.host.reconnect_for
            ));
        }
    }
    let remote = cfg.listen.listen.is_some() || cfg.host.connect.is_some();
    let defaults = crate::config::ListenSettings::default();
    if cfg.listen.listen.is_none() {
        for (flag, given) in [
            (
                "--remote-lanes",
                cfg.listen.remote_lanes != defaults.remote_lanes,
            ),
            (
                "--max-connections",
                cfg.listen.max_connections != defaults.max_connections,
            ),
            (
                "--max-connections-per-peer",
                cfg.listen.max_connections_per_peer != defaults.max_connections_per_peer,
            ),
            (
                "--handshake-timeout",
                cfg.listen.handshake_timeout != defaults.handshake_timeout,
            ),
            ("--insecure-plaintext", cfg.listen.insecure_plaintext),
        ] {
            if given {
                e.push(format!(
                    "{flag}: only with --listen (the learner's side of remote actor hosts)"
                ));
            }
        }
    }
    if cfg.listen.insecure_plaintext && cfg.remote.tls_cert.is_some() {
        e.push("--insecure-plaintext with --tls-cert: the learner serves TLS; leave --insecure-plaintext out".into());
    }
    for (flag, given) in [
        ("--auth-token-file", cfg.remote.auth_token_file.is_some()),
        ("--tls-cert", cfg.remote.tls_cert.is_some()),
        ("--tls-key", cfg.remote.tls_key.is_some()),
        ("--tls-ca", cfg.remote.tls_ca.is_some()),
        ("--tls-domain", cfg.host.tls_domain.is_some()),
    ] {
        if given && !remote {
            e.push(format!(
                "{flag}: only with --listen (the learner) or --connect (an actor host)"
            ));
        }
    }
    if cfg.listen.listen.is_none() {
        if let Some(n) = cfg.listen.max_lanes_per_host {
            e.push(format!(
                "--max-lanes-per-host {n}: only with --listen (the learner)"
            ));
        }
        if cfg.listen.remote_reward_bound != 1.0 {
            e.push(format!(
                "--remote-reward-bound {}: only with --listen (the learner)",
                cfg.listen.remote_reward_bound
            ));
        }
    }
    if cfg.remote.tls_cert.is_some() != cfg.remote.tls_key.is_some() {
        e.push(
            "--tls-cert and --tls-key: give both (a certificate and its private key) or neither"
                .into(),
        );
    }
    if cfg.listen.listen.is_some() && cfg.remote.tls_ca.is_some() && cfg.remote.tls_cert.is_none() {
        e.push("--tls-ca with --listen asks for mutual TLS, which needs the learner's own --tls-cert and --tls-key".into());
    }
    if cfg.host.connect.is_some() && cfg.remote.tls_ca.is_none() {
        if cfg.remote.tls_cert.is_some() {
            e.push("--tls-cert with --connect is this host's client certificate for mutual TLS; TLS also needs --tls-ca (the CA that signed the learner's certificate)".into());
        }
        if cfg.host.tls_domain.is_some() {
            e.push("--tls-domain: only with --tls-ca (TLS)".into());
        }
    }
    if cfg.listen.listen.is_some() && cfg.host.tls_domain.is_some() {
        e.push(
            "--tls-domain: only with --connect (the name the learner's certificate must carry)"
                .into(),
        );
    }
    e
}

/// Why `--auth-token-file` cannot be used (see [`read_token`]); each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("--auth-token-file {}: {}", .0.display(), .1)]
    Unreadable(std::path::PathBuf, std::io::Error),
    /// Group or others have permissions on it: the secret would not be the owner's alone.
    #[error("--auth-token-file {}: mode {:03o} lets group or others at the run's secret; make it the owner's alone: `chmod 600 {}`", .0.display(), .1, .0.display())]
    Open(std::path::PathBuf, u32),
    /// Nothing but whitespace in it.
    #[error("--auth-token-file {}: the file is empty; put a secret in it (e.g. `(umask 077; head -c 32 /dev/urandom | base64 > {})`)", .0.display(), .0.display())]
    Empty(std::path::PathBuf),
    /// A character that cannot travel in a gRPC header.
    #[error("--auth-token-file {}: the secret must be printable ASCII (it travels in a gRPC header); e.g. `head -c 32 /dev/urandom | base64`", .0.display())]
    Unprintable(std::path::PathBuf),
}

/// The shared secret in `path` (surrounding whitespace removed).
///
/// # Errors
///
/// [`TokenFileError`]: the file cannot be read, group or others have any permission on it
/// (mode `& 0o077`, as ssh refuses private keys: whoever can read it can join the run, whoever
/// can write it can lock the hosts out), it is empty, or not printable ASCII.
pub fn read_token(path: &Path) -> Result<String, TokenFileError> {
    use std::os::unix::fs::PermissionsExt;
    let owned = || path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|e| TokenFileError::Unreadable(owned(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenFileError::Open(owned(), mode));
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Unreadable(owned(), e))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(TokenFileError::Empty(owned()));
    }
    if token.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(TokenFileError::Unprintable(owned()));
    }
    Ok(token)
}

/// `f32`s as little-endian bytes, LZ4-compressed (a snapshot on the wire).
pub fn compress_weights(weights: &[f32]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(weights.len() * 4);
    for w in weights {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    lz4_flex::block::compress(&raw)
}

/// The run's config in a [`wire::Welcome`] (bincode 2, serde), as a host decodes it: with a
/// limit of [`MAX_CONFIG_BYTES`], so that a length in the bytes (a damaged message, a
/// learner that is not one) cannot make the decoder allocate without bound; without it a
/// claimed string of 8 EB aborted the host (found by `fuzz_learner_messages_to_a_host`).
///
/// # Errors
///
/// bincode's error: bytes that are not a config.
pub fn decode_welcome_config(bytes: &[u8]) -> Result<Config, bincode::error::DecodeError> {
    let limited = bincode::config::standard().with_limit::<MAX_CONFIG_BYTES>();
    bincode::serde::decode_from_slice(bytes, limited).map(|(c, _)| c)
}

/// Why a weight snapshot from the learner does not fit this host's network (see
/// [`decompress_weights`]).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The data is not LZ4, or decompresses to more than the network's size.
    #[error("snapshot does not decompress: {0}")]
    Decompress(lz4_flex::block::DecompressError),
    /// The data decompresses to another size than the network's.
    #[error("snapshot of {bytes} bytes; the network has {params} parameters ({} bytes)", .params * 4)]
    Size {
        /// Bytes the data decompressed to.
        bytes: usize,
        /// The network's parameters.
        params: usize,
    },
}

/// Undoes [`compress_weights`] into `out` (`numel` values).
///
/// # Errors
///
/// [`WeightsError`]: the data does not decompress to exactly `out.len() * 4` bytes.
pub fn decompress_weights(data: &[u8], out: &mut [f32]) -> Result<(), WeightsError> {
    let raw = lz4_flex::block::decompress(data, out.len() * 4).map_err(WeightsError::Decompress)?;
    if raw.len() != out.len() * 4 {
        return Err(WeightsError::Size {
            bytes: raw.len(),
            params: out.len(),
        });
    }
    for (w, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
        *w = f32::from_le_bytes(b.try_into().unwrap());
    }
    Ok(())
}

/// Why an experience message from a host is refused (see [`decode_experience`]); the session
/// is refused with this reason.
#[derive(Debug, thiserror::Error)]
pub enum BadExperience {
    /// The queue layout's slot size overflows `usize`.
    #[error("slot size overflows")]
    SlotSizeOverflows,
    /// More slots than one message may carry.
    #[error("{slots} slots in one message; at most {max}")]
    TooManySlots {
        /// Slots the message states.
        slots: usize,
        /// The most one message may carry.
        max: usize,
    },
    /// More games and failures than one message may report.
    #[error("{games} games and {failures} failures in one message; at most {MAX_MESSAGE_EVENTS}")]
    TooManyEvents {
        /// Games reported.
        games: usize,
        /// Failures reported.
        failures: usize,
    },
    /// A game whose score is not finite or whose frame count is implausible.
    #[error("a game of score {score} and {frames} frames")]
    BadGame {
        /// The game's score.
        score: f32,
        /// The game's frames.
        frames: u64,
    },
    /// An implausible frame count (more than 2^40).
    #[error("{0} frames in one message")]
    TooManyFrames(u64),
    /// Message number 0.
    #[error("message number 0 (numbers start at 1)")]
    SeqZero,
    /// Payload bytes in a message of no slots.
    #[error("a payload without slots")]
    PayloadWithoutSlots,
    /// The payload is not LZ4, or decompresses to more than its slots.
    #[error("the slots do not decompress: {0}")]
    Decompress(lz4_flex::block::DecompressError),
    /// The payload decompresses to another size than its slots'.
    #[error("{bytes} bytes of slots for {slots} slots of {slot_bytes}")]
    SlotBytes {
        /// Bytes the payload decompressed to.
        bytes: usize,
        /// Slots the message states.
        slots: usize,
        /// Bytes of one slot.
        slot_bytes: usize,
    },
    /// A value beyond what a host could have produced ([`bounds::HostBounds`]).
    #[error(transparent)]
    Bound(#[from] bounds::BoundError),
    /// A slot that cannot be trained on.
    #[error("slot {index}: {reason}")]
    BadSlot {
        /// The slot's index in the message, from 0.
        index: usize,
        /// What is wrong with it.
        reason: crate::shm::BadSlot,
    },
}

/// The slots of experience message `e` for a queue of `layout`, checked: at most `max_slots`,
/// decompressing to exactly `slots * slot_bytes` bytes (never more: LZ4 is told the size), and
/// every slot valid for a game of `num_actions` actions ([`crate::shm::SlotLayout::check_raw`])
/// and within `bounds` ([`bounds::HostBounds::check_slot`]: rewards, returns,
/// log-probabilities). Also bounds the games and failures it reports and their values.
/// Returns the slots' bytes and the agent steps they hold.
///
/// # Errors
///
/// [`BadExperience`], naming the first thing wrong.
pub fn decode_experience(
    e: &wire::Experience,
    layout: &crate::shm::SlotLayout,
    num_actions: usize,
    max_slots: usize,
    bounds: &bounds::HostBounds,
) -> Result<(Vec<u8>, u64), BadExperience> {
    let slot_bytes = layout
        .slot_bytes()
        .ok_or(BadExperience::SlotSizeOverflows)?;
    let n = e.slots as usize;
    if n > max_slots {
        return Err(BadExperience::TooManySlots {
            slots: n,
            max: max_slots,
        });
    }
    if e.episodes.len() + e.failures.len() > MAX_MESSAGE_EVENTS {
        return Err(BadExperience::TooManyEvents {
            games: e.episodes.len(),
            failures: e.failures.len(),
        });
    }
    if let Some(bad) = e
        .episodes
        .iter()
        .find(|g| !g.score.is_finite() || g.frames > 1 << 40)
    {
        return Err(BadExperience::BadGame {
            score: bad.score,
            frames: bad.frames,
        });
    }
    // A host cannot have played more than 2^40 frames (100 years of an emulator) between two
    // messages: a bigger count is garbage that would end the run's schedules.
    if e.frames > 1 << 40 {
        return Err(BadExperience::TooManyFrames(e.frames));
    }
    if e.seq == 0 {
        return Err(BadExperience::SeqZero);
    }
    let raw = if n == 0 {
        if !e.payload.is_empty() {
            return Err(BadExperience::PayloadWithoutSlots);
        }
        Vec::new()
    } else {
        lz4_flex::block::decompress(&e.payload, n * slot_bytes)
            .map_err(BadExperience::Decompress)?
    };
    if raw.len() != n * slot_bytes {
        return Err(BadExperience::SlotBytes {
            bytes: raw.len(),
            slots: n,
            slot_bytes,
        });
    }
    let mut steps = 0u64;
    for (index, slot) in raw.chunks_exact(slot_bytes.max(1)).enumerate() {
        layout
            .check_raw(slot, num_actions)
            .map_err(|reason| BadExperience::BadSlot { index, reason })?;
        steps += bounds.check_slot(layout, index, slot)? as u64;
    }
    Ok((raw, steps))
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;

#[cfg(test)]
mod fuzz_tests;
