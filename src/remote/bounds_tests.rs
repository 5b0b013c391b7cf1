//! The bounds on what a host reports: derived from the settings, checked on slot values, and
//! the ledger that bounds frames and games by the steps delivered.

use super::*;
use crate::shm::SlotLayout;

fn cfg(args: &[&str]) -> Config {
    let mut all = vec!["learner"];
    all.extend_from_slice(args);
    <Config as clap::Parser>::parse_from(all)
}

const TRANSITIONS: SlotLayout = SlotLayout::transitions(8, false);
const SEGMENTS: SlotLayout = SlotLayout::segments(2, 3, 1);

#[test]
fn the_bounds_follow_the_settings() {
    let b = HostBounds::of(&cfg(&[]), &TRANSITIONS);
    // Clipped rewards, gamma 0.99: horizon 100 steps; returns with the actor's bootstrap up
    // to a million times that.
    assert_eq!(b.reward, 1.0);
    assert!((b.ret - 100.0).abs() < 1e-3, "{}", b.ret);
    assert!(
        (b.bootstrapped_ret - 1e8).abs() < 1e3,
        "{}",
        b.bootstrapped_ret
    );
    // Frame skip 4: 8 frames per delivered step; a game start is 30 no-ops and 4 steps.
    assert_eq!((b.frames_per_step, b.frames_per_game), (8, 46));
    assert_eq!(b.game_frames, 108_000 + 46 + 4);
    let unclipped = HostBounds::of(&cfg(&["--remote-reward-bound", "5"]), &TRANSITIONS);
    assert!((unclipped.ret - 500.0).abs() < 1e-2);
    // gamma 1: the horizon is the longest game.
    let undiscounted = HostBounds::of(
        &cfg(&["--gamma", "1", "--max-episode-frames", "500"]),
        &TRANSITIONS,
    );
    assert_eq!(undiscounted.ret, 500.0);
    let fire = HostBounds::of(&cfg(&["--fire-on-life-loss"]), &TRANSITIONS);
    assert_eq!(fire.frames_per_step, 32);
}

fn transition(ret: f32, discount: f32) -> Vec<u8> {
    let mut slot = vec![0u8; TRANSITIONS.slot_bytes().unwrap()];
    slot[4..8].copy_from_slice(&ret.to_le_bytes());
    slot[8..12].copy_from_slice(&discount.to_le_bytes());
    slot
}

/// A segment slot of `SEGMENTS` with these rewards and log-probabilities (len = their count).
fn segment(rewards: &[f32], logps: &[f32]) -> Vec<u8> {
    let mut slot = vec![0u8; SEGMENTS.slot_bytes().unwrap()];
    slot[0..4].copy_from_slice(&(rewards.len() as u32).to_le_bytes());
    for (k, (r, l)) in rewards.iter().zip(logps).enumerate() {
        slot[28 + 4 * k..32 + 4 * k].copy_from_slice(&r.to_le_bytes());
        slot[40 + 4 * k..44 + 4 * k].copy_from_slice(&l.to_le_bytes());
    }
    slot
}

#[test]
fn slot_values_beyond_the_bounds_are_refused() {
    let b = HostBounds::of(&cfg(&[]), &TRANSITIONS);
    // The actor's bootstrap overshoots; a reward sum the learner bootstraps cannot.
    assert_eq!(
        b.check_slot(&TRANSITIONS, 0, &transition(-5000.0, 0.0)),
        Ok(1)
    );
    assert_eq!(
        b.check_slot(&TRANSITIONS, 0, &transition(-99.0, 0.95)),
        Ok(1)
    );
    assert!(matches!(
        b.check_slot(&TRANSITIONS, 0, &transition(101.0, 0.95)),
        Err(BoundError::Return { slot: 0, .. })
    ));
    assert_eq!(
        b.check_slot(&TRANSITIONS, 3, &transition(3e38, 0.0)),
        Err(BoundError::Return {
            slot: 3,
            value: 3e38,
            bound: b.bootstrapped_ret
        })
    );
    let s = HostBounds::of(&cfg(&[]), &SEGMENTS);
    let ok = segment(&[1.0, -1.0], &[-0.5, -90.0]);
    assert_eq!(SEGMENTS.check_raw(&ok, 2), Ok(()));
    assert_eq!(s.check_slot(&SEGMENTS, 0, &ok), Ok(2));
    let err = s
        .check_slot(&SEGMENTS, 1, &segment(&[0.0, 3e38], &[-0.1, -0.1]))
        .unwrap_err();
    assert!(matches!(err, BoundError::Reward { slot: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("--remote-reward-bound"), "{err}");
    let err = s
        .check_slot(&SEGMENTS, 0, &segment(&[0.0], &[-1e30]))
        .unwrap_err();
    assert!(
        matches!(err, BoundError::LogProb { slot: 0, .. }),
        "{err:?}"
    );
    // Steps past len are not read.
    let mut past = segment(&[0.5], &[-0.1]);
    past[32..36].copy_from_slice(&3e38f32.to_le_bytes());
    assert_eq!(s.check_slot(&SEGMENTS, 0, &past), Ok(1));
}

fn message(frames: u64, games: usize) -> wire::Experience {
    wire::Experience {
        seq: 1,
        frames,
        episodes: vec![
            wire::Episode {
                score: 1.0,
                frames: 100
            };
            games
        ],
        ..Default::default()
    }
}

#[test]
fn frames_and_games_are_bounded_by_the_steps_delivered() {
    let b = HostBounds::of(&cfg(&[]), &TRANSITIONS);
    let mut ledger = Ledger::default();
    ledger.joined(&b, 2);
    let (grant_frames, grant_games) = b.grant(2);
    assert_eq!((ledger.frames, ledger.games), (grant_frames, grant_games));
    // An honest host: 4 frames per step, a game now and then, for a long while.
    for k in 0..10_000u64 {
        ledger
            .count(&b, &message(64 * 4, usize::from(k % 10 == 0)), 64)
            .unwrap();
    }
    // What it earned beyond its grant is not saved up.
    assert_eq!((ledger.frames, ledger.games), (grant_frames, grant_games));
    // 2^40 frames in one message: refused, the ledger unchanged.
    let before = ledger;
    let err = ledger.count(&b, &message(1 << 40, 0), 64).unwrap_err();
    assert!(matches!(err, BoundError::Frames { reported, .. } if reported == 1 << 40));
    assert_eq!(ledger, before);
    // A fresh host that delivers one slot cannot report 4,096 games, nor its grant of
    // frames many times over.
    let mut fresh = Ledger::default();
    fresh.joined(&b, 1);
    let err = fresh.count(&b, &message(4, 4096), 1).unwrap_err();
    assert!(
        matches!(err, BoundError::Games { reported: 4096, .. }),
        "{err:?}"
    );
    let (g1, _) = b.grant(1);
    fresh.count(&b, &message(g1, 0), 0).unwrap();
    let err = fresh.count(&b, &message(9, 0), 1).unwrap_err();
    assert_eq!(
        err,
        BoundError::Frames {
            reported: 9,
            allowed: 8
        }
    );
    // A game longer than any.
    let mut long = message(0, 1);
    long.episodes[0].frames = 1 << 30;
    assert!(matches!(
        fresh.count(&b, &long, 1),
        Err(BoundError::GameFrames { .. })
    ));
    // A reconnection does not refill the ledger.
    let spent = fresh.frames;
    fresh.joined(&b, 1);
    assert_eq!(fresh.frames, spent);
    assert!(spent < g1);
}

#[test]
fn host_text_is_capped_and_made_printable() {
    assert_eq!(printable("host-1", 64), "host-1");
    assert_eq!(printable("a\nb\u{1b}[31m", 64), "a?b?[31m");
    let long = printable(&"x".repeat(10_000), 200);
    assert!(long.starts_with(&"x".repeat(200)));
    assert!(long.ends_with("... (9800 more characters)"), "{long}");
    assert!(long.len() < 240);
    // Multi-byte characters are cut at a character, not a byte.
    assert_eq!(printable("ééé", 2), "éé... (1 more characters)");
}
