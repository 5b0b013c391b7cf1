//! Fuzz targets for the files and bytes a run reads from outside (README, "Files a run
//! reads"): checkpoints, replay memories and queue slots here, the remote wire messages in
//! `src/remote/fuzz_tests.rs`. Each target feeds a decoder mutated valid inputs (bit flips,
//! overwritten words with edge values, cuts, insertions; with the file's checksum recomputed
//! half of the time, so that the checks behind it are reached) and arbitrary bytes, and
//! asserts it answers with a value or an error, never a panic; what it accepts must be usable.
//!
//! In the suite each target runs a fixed, small number of cases (a few seconds in all); set
//! `ASYNC_RL_FUZZ_CASES=N` for a longer run, e.g.
//! `ASYNC_RL_FUZZ_CASES=20000 cargo test --release --lib fuzz`.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use rand::{rngs::StdRng, SeedableRng};
use tch::Tensor;

use crate::checkpoint::{self, TrainingState};
use crate::config::{Config, Network};
use crate::env::ObsSpec;
use crate::replay::{Priorities, ReplayMemory, Sample};
use crate::shm::SlotLayout;

/// `default` cases, or `ASYNC_RL_FUZZ_CASES`; failures are not persisted to files (a failure
/// found is kept as a named regression test instead).
pub(crate) fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("ASYNC_RL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Outcomes of a target's cases by kind (`ok`, or the start of the error), printed after a
/// run with `ASYNC_RL_FUZZ_CASES` set: how far the inputs got.
#[derive(Default)]
pub(crate) struct Outcomes(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Outcomes {
    pub(crate) fn note(&self, outcome: &str) {
        // Numbers vary case by case: keep the words.
        let kind: String = outcome
            .split_whitespace()
            .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
            .take(5)
            .collect::<Vec<_>>()
            .join(" ");
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    pub(crate) fn report(&self, target: &str) {
        if std::env::var_os("ASYNC_RL_FUZZ_CASES").is_none() {
            return;
        }
        let map = self.0.lock().unwrap();
        let total: u64 = map.values().sum();
        eprintln!("fuzz target {target}: {total} executions");
        for (kind, n) in map.iter() {
            eprintln!("  {n:>8}  {kind}");
        }
    }
}

/// One change to a byte string.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    /// XOR one byte.
    Flip(Index, u8),
    /// Overwrite `width` bytes (1, 2, 4 or 8) with a little-endian value.
    Word(Index, u8, u64),
    /// Cut the string at a point.
    Cut(Index),
    /// Insert bytes at a point.
    Insert(Index, Vec<u8>),
    /// Remove up to 16 bytes at a point.
    Remove(Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let edge = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u32::MAX as u64),
        Just(i32::MAX as u64),
        Just(0x7fc0_0000),           // f32 NaN
        Just(0x7f80_0000),           // f32 infinity
        Just(0xff80_0000),           // f32 -infinity
        Just(0x7ff8_0000_0000_0000), // f64 NaN
        Just(1 << 40),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        4 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), edge)
            .prop_map(|(i, w, v)| Edit::Word(i, w, v)),
        1 => any::<Index>().prop_map(Edit::Cut),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1..16u8).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

/// `bytes` with `edits` applied in order.
pub(crate) fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Flip(i, x) => {
                let at = i.index(b.len());
                b[at] ^= x;
            }
            Edit::Word(i, w, v) => {
                let at = i.index(b.len());
                let w = (*w as usize).min(b.len() - at);
                b[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            Edit::Cut(i) => b.truncate(i.index(b.len())),
            Edit::Insert(i, x) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            Edit::Remove(i, n) => {
                let at = i.index(b.len());
                let end = (at + *n as usize).min(b.len());
                b.drain(at..end);
            }
        }
    }
    b
}

/// One of `seeds` with up to 5 edits, and whether to recompute its checksum after them.
pub(crate) fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let n = seeds.len();
    (0..n, prop::collection::vec(edit(), 1..6), any::<bool>())
        .prop_map(move |(i, edits, resum)| (apply(&seeds[i], &edits), resum))
}

/// Mutated seeds most of the time, arbitrary bytes otherwise.
pub(crate) fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        6 => mutated(seeds),
        1 => (prop::collection::vec(any::<u8>(), 0..512), Just(false)),
    ]
}

// --- Checkpoints -------------------------------------------------------------------------

/// A small checkpoint's bytes: a CartPole MLP's shape of tensors, an extra (target) tensor.
fn checkpoint_seed(dir: &std::path::Path) -> Vec<u8> {
    let state = TrainingState {
        format_version: checkpoint::FORMAT_VERSION,
        game: "CartPole".into(),
        network: Network::Mlp,
        num_actions: 2,
        obs: ObsSpec::Vector(4),
        frames: 1000,
        steps: 1000,
        updates: 10,
        episodes: 3,
        wall_s: 1.5,
        config: Config::default(),
    };
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 3.5, 4.0, 5.0]).reshape([2, 3]);
    let b = Tensor::from_slice(&[1i64, 2]);
    let params = vec![("w".to_string(), w.shallow_clone()), ("b".to_string(), b)];
    let optimizer = vec![
        ("rmsprop/w".to_string(), w.zeros_like()),
        ("rmsprop/b".to_string(), Tensor::from_slice(&[0i64, 0])),
    ];
    let extra = vec![("target/w".to_string(), w.ones_like())];
    let path = dir.join("seed.safetensors");
    checkpoint::save(&path, &state, &params, &optimizer, &extra).unwrap();
    std::fs::read(&path).unwrap()
}

/// `bytes` with the checksum in its header made right again, if the header parses.
fn resum_checkpoint(mut bytes: Vec<u8>) -> Vec<u8> {
    let Ok((n, header)) = safetensors::SafeTensors::read_metadata(&bytes) else {
        return bytes;
    };
    let data = &bytes[8 + n..];
    let infos = header.tensors();
    let parts: Vec<_> = infos
        .iter()
        .map(|(name, i)| {
            (
                name.as_str(),
                i.dtype,
                i.shape.as_slice(),
                &data[i.data_offsets.0..i.data_offsets.1],
            )
        })
        .collect();
    let sum = format!("{:08x}", checkpoint::checksum_of(parts));
    let needle = b"crc32:";
    if let Some(at) = bytes[8..8 + n].windows(6).position(|w| w == needle) {
        let at = 8 + at + 6;
        if at + 8 <= 8 + n {
            bytes[at..at + 8].copy_from_slice(sum.as_bytes());
        }
    }
    bytes
}

/// The checkpoint target: decode, and what decodes has its training state and tensors.
/// Returns the outcome.
pub(crate) fn checkpoint_target(bytes: &[u8]) -> String {
    match checkpoint::decode_bytes(bytes) {
        Ok(ck) => {
            assert_eq!(ck.state.format_version, checkpoint::FORMAT_VERSION);
            for t in ck.params.values().chain(ck.optimizer.values()) {
                let _ = t.numel();
            }
            "ok".into()
        }
        Err(e) => e,
    }
}

#[test]
fn fuzz_checkpoint_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let seed = checkpoint_seed(dir.path());
    assert_eq!(checkpoint_target(&seed), "ok", "the seed decodes");
    let outcomes = Outcomes::default();
    proptest!(cases(200), |((bytes, resum) in inputs(vec![seed.clone()]))| {
        let bytes = if resum { resum_checkpoint(bytes) } else { bytes };
        outcomes.note(&checkpoint_target(&bytes));
    });
    outcomes.report("checkpoint");
}

// --- Replay memories ---------------------------------------------------------------------

const REPLAY_ACTIONS: usize = 4;

/// The memories the replay target loads into: frames LZ4 or raw, prioritized or not, and a
/// vector memory.
fn replay_kinds() -> Vec<(ObsSpec, bool, bool)> {
    vec![
        (ObsSpec::Frames([4, 3, 3]), true, true),
        (ObsSpec::Frames([4, 3, 3]), false, false),
        (ObsSpec::Vector(3), true, false),
    ]
}

fn replay_memory(kind: (ObsSpec, bool, bool)) -> ReplayMemory {
    let (obs, lz4, prioritized) = kind;
    let p = prioritized.then_some(Priorities {
        alpha: 0.6,
        epsilon: 1e-6,
    });
    ReplayMemory::new(obs, 6, p, lz4)
}

/// A saved memory of `kind`, with a few episodes in it (more than its capacity).
fn replay_seed(kind: (ObsSpec, bool, bool), dir: &std::path::Path) -> Vec<u8> {
    let mut m = replay_memory(kind);
    let bytes = kind.0.bytes();
    let obs = |t: usize| -> Vec<u8> { (0..bytes).map(|k| ((t * 7 + k / 9) % 5) as u8).collect() };
    for t in 0..9 {
        m.insert(
            &obs(t),
            (t % REPLAY_ACTIONS) as u32,
            t as f32 * 0.5,
            0.99,
            &obs(t + 1),
        );
    }
    if kind.2 {
        m.update_priorities(&[0, 2], &[0.5, 2.0]);
    }
    let path = dir.join("seed.replay");
    m.save(&path).unwrap();
    std::fs::read(&path).unwrap()
}

/// The replay target: load into a memory of `kind`; what loads samples and reads back.
/// Returns the outcome.
pub(crate) fn replay_target(kind: (ObsSpec, bool, bool), bytes: &[u8]) -> String {
    let mut m = replay_memory(kind);
    let loaded = m.load_from(bytes, REPLAY_ACTIONS);
    if loaded.is_ok() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = Sample::default();
        for _ in 0..3 {
            if m.sample(4, 0.4, &mut rng, &mut out) {
                assert!(out.actions.iter().all(|&a| (a as usize) < REPLAY_ACTIONS));
                assert!(out.returns.iter().all(|r| r.is_finite()));
                assert!(out.weights.iter().all(|w| w.is_finite()));
            }
        }
    } else {
        assert!(m.is_empty(), "a refused file leaves the memory empty");
    }
    match loaded {
        Ok(()) => "ok".into(),
        Err(e) => e.trim_start_matches("replay memory <bytes>: ").to_string(),
    }
}

#[test]
fn fuzz_replay_loading() {
    let dir = tempfile::tempdir().unwrap();
    for kind in replay_kinds() {
        let seed = replay_seed(kind, dir.path());
        let mut m = replay_memory(kind);
        m.load_from(&seed, REPLAY_ACTIONS).expect("the seed loads");
        let outcomes = Outcomes::default();
        proptest!(cases(150), |((bytes, resum) in inputs(vec![seed.clone()]))| {
            let bytes = if resum && bytes.len() >= 4 {
                let mut b = bytes;
                let end = b.len() - 4;
                let sum = crc32fast::hash(&b[..end]);
                b[end..].copy_from_slice(&sum.to_le_bytes());
                b
            } else {
                bytes
            };
            outcomes.note(&replay_target(kind, &bytes));
        });
        outcomes.report(&format!("replay {kind:?}"));
    }
}

// --- Queue slots -------------------------------------------------------------------------

/// The slot layouts the slot target checks against: transitions with and without the next
/// observation, and segments.
pub(crate) fn slot_layouts() -> Vec<SlotLayout> {
    vec![
        SlotLayout::transitions(12, false),
        SlotLayout::transitions(12, true),
        SlotLayout::segments(12, 5, 4),
    ]
}

/// The slot target: check a raw slot (an answer either way, never a panic); a slot that
/// passes can have its version read. Returns the outcome.
pub(crate) fn slot_target(layout: &SlotLayout, slot: &[u8], num_actions: usize) -> String {
    match layout.check_raw(slot, num_actions) {
        Ok(()) => {
            let _ = SlotLayout::raw_version(slot);
            "ok".into()
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn fuzz_slot_checks() {
    for layout in slot_layouts() {
        let bytes = layout.slot_bytes().unwrap();
        // A valid slot: zeros are one for transitions; a segment needs a length (3 of 5).
        let mut good = vec![0u8; bytes];
        if bytes == SlotLayout::segments(12, 5, 4).slot_bytes().unwrap() {
            good[..4].copy_from_slice(&3u32.to_le_bytes());
        }
        assert_eq!(
            layout.check_raw(&good, 1).map_err(|e| e.to_string()),
            Ok(())
        );
        let strategy = (
            prop_oneof![
                8 => mutated(vec![good.clone()]).prop_map(|(b, _)| b),
                1 => prop::collection::vec(any::<u8>(), 0..bytes + 16),
                1 => prop::collection::vec(any::<u8>(), bytes..=bytes),
            ],
            0..8usize,
        );
        let outcomes = Outcomes::default();
        proptest!(cases(500), |((slot, num_actions) in strategy.clone())| {
            outcomes.note(&slot_target(&layout, &slot, num_actions));
        });
        outcomes.report(&format!("slot ({} bytes)", bytes));
    }
}
