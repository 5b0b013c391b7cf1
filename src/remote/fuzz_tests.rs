//! Fuzz targets for the remote session's messages (see `src/fuzz_tests.rs` for the scheme
//! and `ASYNC_RL_FUZZ_CASES`): the learner's decoding of a host's [`Up`] messages (the Hello
//! check, experience and its slots) and a host's decoding of the learner's [`Down`] messages
//! (the Welcome's checks and config, snapshots).

use proptest::prelude::*;
use prost::Message;

use super::server::check_hello;
use super::wire::{self, down, up, Down, Up};
use crate::config::Config;
use crate::fuzz_tests::{cases, inputs, Outcomes};
use crate::shm::SlotLayout;

const ACTIONS: usize = 4;
const NUMEL: usize = 64;

fn layout() -> SlotLayout {
    SlotLayout::transitions(12, false)
}

fn up_seeds() -> Vec<Vec<u8>> {
    let hello = wire::Hello {
        protocol: super::PROTOCOL_VERSION,
        build: super::BUILD.to_string(),
        host_id: 5,
        name: "host-a".into(),
        processes: 2,
        run_id: 0,
    };
    let slot_bytes = layout().slot_bytes().unwrap();
    let experience = wire::Experience {
        seq: 1,
        frames: 100,
        slots: 2,
        payload: lz4_flex::block::compress(&vec![0u8; 2 * slot_bytes]),
        episodes: vec![wire::Episode {
            score: 1.0,
            frames: 10,
        }],
        failures: vec!["actor 1 failed".into()],
        snapshot_version: 3,
        restarts: 0,
    };
    [
        up::Kind::Hello(hello),
        up::Kind::Experience(experience),
        up::Kind::Heartbeat(wire::Heartbeat {
            snapshot_version: 2,
        }),
    ]
    .into_iter()
    .map(|k| Up { kind: Some(k) }.encode_to_vec())
    .collect()
}

fn down_seeds() -> Vec<Vec<u8>> {
    let config =
        bincode::serde::encode_to_vec(Config::default(), bincode::config::standard()).unwrap();
    let welcome = wire::Welcome {
        protocol: super::PROTOCOL_VERSION,
        run_id: 9,
        config,
        game: "CartPole".into(),
        num_actions: ACTIONS as u32,
        slot_bytes: layout().slot_bytes().unwrap() as u64,
        numel: NUMEL as u64,
        final_epsilons: vec![0.1, 0.01],
        seed: 7,
        last_seq: 0,
        frames: 1000,
        max_slots: 64,
        host: 1,
    };
    [
        down::Kind::Welcome(welcome),
        down::Kind::Snapshot(wire::Snapshot {
            version: 4,
            weights: super::compress_weights(&[0.25; NUMEL]),
        }),
        down::Kind::Ack(wire::Ack { seq: 1, frames: 5 }),
        down::Kind::Stop(wire::Stop {
            reason: "done".into(),
            finished: true,
        }),
    ]
    .into_iter()
    .map(|k| Down { kind: Some(k) }.encode_to_vec())
    .collect()
}

/// The Welcome's config decoded as the host decodes it (`Host::admit`, src/remote/host.rs).
fn welcome_config(bytes: &[u8]) -> Result<Config, bincode::error::DecodeError> {
    super::decode_welcome_config(bytes)
}

/// The learner's side: decode a host's message and check it as the service and a session do.
/// Returns the outcome.
fn up_target(bytes: &[u8]) -> String {
    let msg = match Up::decode(bytes) {
        Ok(m) => m,
        Err(_) => return "not a message".into(),
    };
    match msg.kind {
        Some(up::Kind::Hello(h)) => match check_hello(&h) {
            Ok(()) => {
                assert!((1..=1024).contains(&h.processes) && h.name.len() <= 256);
                "hello ok".into()
            }
            Err(s) => format!("hello refused: {}", s.message()),
        },
        Some(up::Kind::Experience(e)) => {
            let layout = layout();
            let bounds = super::bounds::HostBounds::of(&crate::config::Config::default(), &layout);
            match super::decode_experience(&e, &layout, ACTIONS, 64, &bounds) {
                Ok((raw, _steps)) => {
                    let slot_bytes = layout.slot_bytes().unwrap();
                    assert_eq!(raw.len(), e.slots as usize * slot_bytes);
                    for slot in raw.chunks_exact(slot_bytes) {
                        assert!(layout.check_raw(slot, ACTIONS).is_ok());
                    }
                    "experience ok".into()
                }
                Err(err) => format!("experience refused: {err}"),
            }
        }
        Some(up::Kind::Heartbeat(_)) => "heartbeat".into(),
        None => "empty".into(),
    }
}

/// A host's side: decode the learner's message and check it as the host does before it
/// starts anything (the Welcome's protocol and config, a snapshot's size).
fn down_target(bytes: &[u8]) -> String {
    let msg = match Down::decode(bytes) {
        Ok(m) => m,
        Err(_) => return "not a message".into(),
    };
    match msg.kind {
        Some(down::Kind::Welcome(w)) => {
            if w.protocol != super::PROTOCOL_VERSION {
                return "welcome of another protocol".into();
            }
            match welcome_config(&w.config) {
                Ok(_) => "welcome ok".into(),
                Err(e) => format!("welcome config refused: {e}"),
            }
        }
        Some(down::Kind::Snapshot(s)) => {
            let mut out = vec![0f32; NUMEL];
            match super::decompress_weights(&s.weights, &mut out) {
                Ok(()) => "snapshot ok".into(),
                Err(e) => format!("snapshot refused: {e}"),
            }
        }
        Some(_) => "other".into(),
        None => "empty".into(),
    }
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(1 << 40),
        Just((1 << 40) + 1),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn edge_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0f32),
        Just(1.5),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        any::<f32>()
    ]
}

/// Host messages built field by field (what byte edits rarely reach: a message that decodes
/// with odd values): Hellos, and experience whose payload is LZ4 of slots of any bytes, of
/// about the right size, or no LZ4 at all.
fn structured_up() -> impl Strategy<Value = Vec<u8>> {
    let slot_bytes = layout().slot_bytes().unwrap();
    let hello = (
        prop_oneof![Just(super::PROTOCOL_VERSION), any::<u32>()],
        prop_oneof![Just(super::BUILD.to_string()), ".{0,12}"],
        any::<u64>(),
        prop_oneof![".{0,8}", Just("x".repeat(257))],
        prop_oneof![Just(0u32), Just(1), Just(1024), Just(1025), any::<u32>()],
    )
        .prop_map(|(protocol, build, host_id, name, processes)| {
            up::Kind::Hello(wire::Hello {
                protocol,
                build,
                host_id,
                name,
                processes,
                run_id: 0,
            })
        });
    let payload = prop_oneof![
        // Slots of any bytes, as many as stated or a few bytes off.
        (
            0..4usize,
            -3..=3i64,
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(move |(n, off, fill)| {
                let len = (n as i64 * slot_bytes as i64 + off).max(0) as usize;
                let raw: Vec<u8> = (0..len)
                    .map(|i| fill.get(i % fill.len().max(1)).copied().unwrap_or(0))
                    .collect();
                lz4_flex::block::compress(&raw)
            }),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    let experience = (
        edge_u64(),
        edge_u64(),
        prop_oneof![0..4u32, Just(64), Just(65), any::<u32>()],
        payload,
        prop::collection::vec((edge_f32(), edge_u64()), 0..3),
        prop::collection::vec(".{0,4}", 0..3),
    )
        .prop_map(|(seq, frames, slots, payload, games, failures)| {
            up::Kind::Experience(wire::Experience {
                seq,
                frames,
                slots,
                payload,
                episodes: games
                    .into_iter()
                    .map(|(score, frames)| wire::Episode { score, frames })
                    .collect(),
                failures,
                snapshot_version: 0,
                restarts: 0,
            })
        });
    prop_oneof![hello, experience].prop_map(|k| Up { kind: Some(k) }.encode_to_vec())
}

#[test]
fn fuzz_host_messages_to_the_learner() {
    let seeds = up_seeds();
    for s in &seeds {
        up_target(s);
    }
    let outcomes = Outcomes::default();
    proptest!(cases(400), |((bytes, _) in inputs(seeds.clone()))| {
        outcomes.note(&up_target(&bytes));
    });
    outcomes.report("host messages (Up), bytes");
    let outcomes = Outcomes::default();
    proptest!(cases(400), |(bytes in structured_up())| {
        outcomes.note(&up_target(&bytes));
    });
    outcomes.report("host messages (Up), fields");
}

#[test]
fn fuzz_learner_messages_to_a_host() {
    let seeds = down_seeds();
    for s in &seeds {
        down_target(s);
    }
    let welcome = Down::decode(seeds[0].as_slice()).unwrap();
    let Some(down::Kind::Welcome(w)) = welcome.kind else {
        panic!("the first seed is a Welcome")
    };
    assert!(
        welcome_config(&w.config).is_ok(),
        "the seed's config decodes"
    );
    let outcomes = Outcomes::default();
    proptest!(cases(200), |((bytes, _) in inputs(seeds.clone()))| {
        outcomes.note(&down_target(&bytes));
    });
    outcomes.report("learner messages (Down)");
    // The Welcome's config bytes themselves, edited.
    let outcomes = Outcomes::default();
    proptest!(cases(200), |((bytes, _) in inputs(vec![w.config.clone()]))| {
        outcomes.note(&match welcome_config(&bytes) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        });
    });
    outcomes.report("Welcome config");
}

/// Found by `fuzz_learner_messages_to_a_host`: a Welcome whose config claims a string of
/// 8,773,780,690,723,227,060 bytes (bincode's varint: 253, then a u64) made the host's
/// decoder allocate that much and abort the process. It is an error now.
#[test]
fn a_welcome_config_claiming_a_huge_string_is_an_error_not_an_abort() {
    let mut bytes = vec![253u8];
    bytes.extend_from_slice(&8_773_780_690_723_227_060u64.to_le_bytes());
    bytes.extend_from_slice(b"Pong");
    let err = welcome_config(&bytes).expect_err("no config has such a string");
    assert!(err.to_string().contains("LimitExceeded"), "{err}");
    // And within a whole message, as the host receives it.
    let down = Down {
        kind: Some(down::Kind::Welcome(wire::Welcome {
            protocol: super::PROTOCOL_VERSION,
            config: bytes,
            ..wire::Welcome::default()
        })),
    }
    .encode_to_vec();
    assert!(down_target(&down).starts_with("welcome config refused"));
}
