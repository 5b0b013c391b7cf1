//! Unit tests for `replay`: the ring, frame storage across episode boundaries, importance
//! sampling weights worked by hand, prioritized sampling, and saving and loading the memory.

use super::*;
use rand::{rngs::StdRng, SeedableRng};

/// A vector observation of one f32, as bytes.
fn v(x: f32) -> [u8; 4] {
    x.to_ne_bytes()
}

/// Reads transition `i` back as (obs, next_obs, action, ret, discount).
fn read(m: &ReplayMemory, i: usize) -> (Vec<u8>, Vec<u8>, i64, f32, f32) {
    let mut s = Sample {
        indices: vec![i],
        ..Sample::default()
    };
    m.fill(1.0, &mut s);
    (
        s.obs.clone(),
        s.next_obs.clone(),
        s.actions[0],
        s.returns[0],
        s.discounts[0],
    )
}

#[test]
fn the_ring_overwrites_the_oldest_transition_first() {
    let mut m = ReplayMemory::new(ObsSpec::Vector(1), 3, None, false);
    let idx: Vec<usize> = (0..5)
        .map(|t| m.insert(&v(t as f32), t, t as f32, 0.9, &v(t as f32 + 1.0)))
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 0, 1]);
    assert_eq!((m.len(), m.inserted()), (3, 5));
    // Slots 0 and 1 hold transitions 3 and 4, slot 2 still transition 2.
    assert_eq!(read(&m, 0).3, 3.0);
    assert_eq!(read(&m, 1).3, 4.0);
    assert_eq!(read(&m, 2).3, 2.0);
    let mut rng = StdRng::seed_from_u64(0);
    let mut s = Sample::default();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        assert!(m.sample(2, 1.0, &mut rng, &mut s));
        seen.extend(s.returns.iter().map(|r| *r as i32));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
}

/// Atari-like stacks: 4 frames of `[2, 2]`, each step shifting in one new frame; a new episode
/// starts with its first frame repeated 4 times. Returns each step's stack.
fn episodes(lengths: &[usize]) -> Vec<Vec<u8>> {
    let mut stacks = Vec::new();
    let mut next = 1u8;
    for &len in lengths {
        let first = [next; 4];
        next = next.wrapping_add(1);
        let mut stack: Vec<[u8; 4]> = vec![first; 4];
        for _ in 0..len {
            stacks.push(stack.concat());
            stack.remove(0);
            stack.push([next, next.wrapping_mul(3), 7, next ^ 0x55]);
            next = next.wrapping_add(1);
        }
        stacks.push(stack.concat()); // the episode's last observation
    }
    stacks
}

#[test]
fn frames_round_trip_exactly_across_episode_boundaries_and_are_stored_once() {
    for lz4 in [false, true] {
        round_trip(lz4);
    }
}

fn round_trip(lz4: bool) {
    let obs = ObsSpec::Frames([4, 2, 2]);
    let n = 3;
    let lengths = [5, 1, 9, 4];
    let stacks = episodes(&lengths);
    let mut m = ReplayMemory::new(obs, 1000, None, lz4);
    let mut expect = Vec::new();
    let mut start = 0;
    for &len in &lengths {
        // Transitions (s_t, s_min(t+n, end)) of this episode, as the n-step window emits them.
        for t in 0..len {
            let next = (t + n).min(len);
            let (o, no) = (&stacks[start + t], &stacks[start + next]);
            let discount = if t + n <= len { 0.5 } else { 0.0 };
            let i = m.insert(o, t as u32, t as f32, discount, no);
            expect.push((i, o.clone(), no.clone(), t as i64, t as f32, discount));
        }
        start += len + 1;
    }
    for (i, o, no, a, r, d) in expect {
        assert_eq!(read(&m, i), (o, no, a, r, d), "transition {i}");
    }
    // Each distinct frame once: one per step, one per episode's first frame and one per
    // episode's final frame... at most steps + 2 x episodes.
    let steps: usize = lengths.iter().sum();
    let written = m.frames().written() as usize;
    assert!(
        written <= steps + 2 * lengths.len(),
        "{written} frames stored for {steps} steps"
    );
    assert!(m.frames().reused > 0);
}

#[test]
fn a_transition_whose_frames_were_overwritten_is_never_sampled() {
    let mut m = ReplayMemory::new(ObsSpec::Vector(1), 4, None, false);
    // A piece ring too small for the memory: only the newest 4 pieces survive.
    m.frames = FrameStore::new(4, 4, 0, false);
    for t in 0..4 {
        m.insert(
            &v(t as f32 * 10.0),
            0,
            t as f32,
            0.5,
            &v(t as f32 * 10.0 + 1.0),
        );
    }
    // Transitions 0 and 1 lost their pieces to 2 and 3.
    assert!(!m.is_valid(0) && !m.is_valid(1));
    assert!(m.is_valid(2) && m.is_valid(3));
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = Sample::default();
    for _ in 0..100 {
        assert!(m.sample(2, 1.0, &mut rng, &mut s));
        assert!(s.returns.iter().all(|r| *r >= 2.0), "{:?}", s.returns);
    }
    // Prioritized: an invalid transition drawn gets priority 0 and is replaced.
    let p = Priorities {
        alpha: 1.0,
        epsilon: 0.0,
    };
    let mut m = ReplayMemory::new(ObsSpec::Vector(1), 4, Some(p), false);
    m.frames = FrameStore::new(4, 4, 0, false);
    for t in 0..4 {
        m.insert(
            &v(t as f32 * 10.0),
            0,
            t as f32,
            0.5,
            &v(t as f32 * 10.0 + 1.0),
        );
    }
    for _ in 0..20 {
        assert!(m.sample(4, 1.0, &mut rng, &mut s));
        assert!(s.returns.iter().all(|r| *r >= 2.0), "{:?}", s.returns);
    }
    let tree = &m.prioritized.as_ref().unwrap().1;
    assert_eq!((tree.get(0), tree.get(1)), (0.0, 0.0));
}

#[test]
fn importance_sampling_weights_worked_by_hand() {
    // alpha 0.5, epsilon 0: |delta| = 1, 4, 9, 16 give priorities 1, 2, 3, 4 (total 10).
    let p = Priorities {
        alpha: 0.5,
        epsilon: 0.0,
    };
    let mut m = ReplayMemory::new(ObsSpec::Vector(1), 4, Some(p), false);
    for t in 0..4 {
        m.insert(&v(t as f32), t, 0.0, 0.0, &v(t as f32));
    }
    m.update_priorities(&[0, 1, 2, 3], &[1.0, 4.0, 9.0, 16.0]);
    // P(i) = p_i / 10; w_i = (4 P(i))^-beta. beta = 1: w = 10/4, 10/8, 10/12, 10/16; the
    // largest (transition 0's, 2.5) normalises when transition 0 is in the batch.
    let mut s = Sample {
        indices: vec![0, 1, 2, 3],
        ..Sample::default()
    };
    m.fill(1.0, &mut s);
    let expect = [1.0, 0.5, 1.0 / 3.0, 0.25];
    for (w, e) in s.weights.iter().zip(expect) {
        assert!((w - e).abs() < 1e-6, "{:?} vs {expect:?}", s.weights);
    }
    assert!((s.priority_mean - 2.5).abs() < 1e-9);
    // beta = 0.5 on transitions 2 and 3: w = sqrt(10/12), sqrt(10/16), normalised by the first.
    let mut s = Sample {
        indices: vec![2, 3],
        ..Sample::default()
    };
    m.fill(0.5, &mut s);
    let w3 = ((10.0f64 / 16.0).sqrt() / (10.0f64 / 12.0).sqrt()) as f32;
    assert!((s.weights[0] - 1.0).abs() < 1e-6 && (s.weights[1] - w3).abs() < 1e-6);
    assert_eq!(
        is_weight(0.1, 4.0, 1.0),
        2.5,
        "(N P)^-beta with N = 4, P = 0.1"
    );
    assert!(
        (priority(
            -3.0,
            Priorities {
                alpha: 0.5,
                epsilon: 1.0
            }
        ) - 2.0)
            .abs()
            < 1e-12
    );
}

#[test]
fn prioritized_sampling_follows_the_priorities_and_new_transitions_get_the_largest() {
    let p = Priorities {
        alpha: 1.0,
        epsilon: 0.0,
    };
    let mut m = ReplayMemory::new(ObsSpec::Vector(1), 8, Some(p), false);
    for t in 0..4 {
        m.insert(&v(t as f32), t, t as f32, 0.0, &v(0.0));
    }
    m.update_priorities(&[0, 1, 2, 3], &[1.0, 2.0, 3.0, 6.0]);
    // A new transition gets the largest priority so far: 6.
    let i = m.insert(&v(9.0), 4, 4.0, 0.0, &v(0.0));
    assert_eq!(m.prioritized.as_ref().unwrap().1.get(i), 6.0);
    let mut rng = StdRng::seed_from_u64(3);
    let mut s = Sample::default();
    let mut counts = [0f64; 5];
    let draws = 20_000;
    for _ in 0..draws / 10 {
        assert!(m.sample(10, 0.4, &mut rng, &mut s));
        for &r in &s.returns {
            counts[r as usize] += 1.0;
        }
    }
    // Expected shares 1, 2, 3, 6, 6 of 18; chi-squared with 4 degrees of freedom below
    // 18.47 (its 0.999 quantile).
    let expect = [1.0, 2.0, 3.0, 6.0, 6.0].map(|p| p / 18.0 * draws as f64);
    let chi2: f64 = counts
        .iter()
        .zip(expect)
        .map(|(c, e)| (c - e).powi(2) / e)
        .sum();
    assert!(chi2 < 18.47, "chi2 {chi2}: {counts:?} vs {expect:?}");
}

#[test]
fn save_and_load_round_trip_and_damage_is_named() {
    let p = Priorities {
        alpha: 0.6,
        epsilon: 1e-6,
    };
    let obs = ObsSpec::Frames([4, 2, 2]);
    let stacks = episodes(&[6, 3]);
    let mut m = ReplayMemory::new(obs, 5, Some(p), true);
    for t in 0..stacks.len() - 1 {
        m.insert(&stacks[t], t as u32, t as f32, 0.99, &stacks[t + 1]);
    }
    m.update_priorities(&[0, 1], &[0.5, 3.0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model-1.replay");
    m.save(&path).unwrap();
    let mut r = ReplayMemory::new(obs, 5, Some(p), true);
    r.load(&path, 16).unwrap();
    assert_eq!((r.len(), r.inserted()), (m.len(), m.inserted()));
    for i in 0..m.len() {
        assert_eq!(read(&r, i), read(&m, i));
        let (a, b) = (
            &m.prioritized.as_ref().unwrap().1,
            &r.prioritized.as_ref().unwrap().1,
        );
        assert_eq!(a.get(i), b.get(i));
    }
    assert_eq!(r.max_priority, m.max_priority);
    // Another capacity or prioritization is refused, naming the file.
    let err = ReplayMemory::new(obs, 6, Some(p), true)
        .load(&path, 16)
        .unwrap_err();
    assert!(format!("{err:#}").contains("--replay-size"), "{err:#}");
    let err = ReplayMemory::new(obs, 5, None, true)
        .load(&path, 16)
        .unwrap_err();
    assert!(format!("{err:#}").contains("--prioritized"), "{err:#}");
    let err = ReplayMemory::new(obs, 5, Some(p), false)
        .load(&path, 16)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("--replay-compression"),
        "{err:#}"
    );
    // A flipped byte is caught by the checksum, and the memory is left empty.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = r.load(&path, 16).unwrap_err();
    assert!(format!("{err:#}").contains("corrupted"), "{err:#}");
    assert!(r.is_empty());
    // A truncated file too.
    std::fs::write(&path, &bytes[..bytes.len() - 9]).unwrap();
    assert!(r.load(&path, 16).is_err());
}

/// `bytes` with its trailing CRC-32 recomputed, as a file made on purpose would have it.
fn resummed(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = bytes.len() - 4;
    let sum = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// The error of loading `bytes` (saved from a memory like `fresh()`) from a file, as text.
fn load_error(dir: &std::path::Path, bytes: &[u8], fresh: impl Fn() -> ReplayMemory) -> String {
    let path = dir.join("model-2.replay");
    std::fs::write(&path, bytes).unwrap();
    let mut m = fresh();
    let err = m
        .load(&path, 16)
        .expect_err("a damaged file must be refused");
    assert!(m.is_empty(), "a refused file leaves the memory empty");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    text
}

#[test]
fn damaged_contents_are_named_never_a_panic() {
    let p = Priorities {
        alpha: 0.6,
        epsilon: 1e-6,
    };
    let obs = ObsSpec::Frames([4, 2, 2]);
    let stacks = episodes(&[6, 3]);
    for lz4 in [true, false] {
        let fresh = || ReplayMemory::new(obs, 5, Some(p), lz4);
        let mut m = fresh();
        for t in 0..stacks.len() - 1 {
            m.insert(&stacks[t], t as u32, t as f32, 0.99, &stacks[t + 1]);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-1.replay");
        m.save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut r = fresh();
        r.load(&path, 16).unwrap();
        // The transitions' arrays, counted from the end: crc 4, priorities 8n, discounts 4n,
        // returns 4n, actions 4n, next pieces 8np, pieces 8np.
        let (n, np) = (m.len(), m.len() * m.pieces);
        let end = good.len() - 4;
        let leaves = end - 8 * n;
        let discounts = leaves - 4 * n;
        let returns = discounts - 4 * n;
        let actions = returns - 4 * n;
        let obs_seq = actions - 16 * np;
        let patch = |at: usize, with: &[u8]| {
            let mut b = good.clone();
            b[at..at + with.len()].copy_from_slice(with);
            resummed(b)
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                patch(actions + 4, &16u32.to_le_bytes()),
                "transition 1 has action 16",
            ),
            (
                patch(returns, &f32::NAN.to_le_bytes()),
                "transition 0 has return NaN",
            ),
            (
                patch(returns + 8, &1e30f32.to_le_bytes()),
                "transition 2 has return",
            ),
            (
                patch(discounts, &1.5f32.to_le_bytes()),
                "transition 0 has discount 1.5",
            ),
            (
                patch(leaves + 8, &(-1f64).to_le_bytes()),
                "transition 1 has priority -1",
            ),
            (
                patch(leaves, &f64::INFINITY.to_le_bytes()),
                "transition 0 has priority inf",
            ),
            (
                patch(obs_seq, &u64::MAX.to_le_bytes()),
                "transition 0 refers to piece",
            ),
            // The largest priority (header offset 76).
            (
                patch(76, &f64::NAN.to_le_bytes()),
                "largest priority is NaN",
            ),
            // Pieces written (header offset 52): more than the transitions could write.
            (
                patch(52, &1000u64.to_le_bytes()),
                "counters are inconsistent",
            ),
            // The first stored piece's length (right after the 84-byte header).
            (
                patch(84, &(if lz4 { 9999u32 } else { 3 }).to_le_bytes()),
                "stored piece 0 is",
            ),
            // The first stored piece's bytes, changed: not its hash (or not LZ4) any more.
            (
                patch(
                    84 + 4 * m.frames.written().min(m.frames.capacity() as u64) as usize,
                    &[0xFF, 0xFF],
                ),
                "stored piece 0",
            ),
            // Cut short, inside the returns.
            (
                good[..returns + 2].to_vec(),
                "truncated (it ends inside its returns)",
            ),
        ];
        for (bytes, needle) in cases {
            let err = load_error(dir.path(), &bytes, fresh);
            assert!(err.contains(needle), "lz4 {lz4}: {err} (wanted {needle})");
        }
        // A game of fewer actions than the file's.
        std::fs::write(&path, &good).unwrap();
        let err = fresh().load(&path, 3).unwrap_err().to_string();
        assert!(err.contains("; this game has 3 actions (0..2)"), "{err}");
    }
}
