//! Unit tests for the experience queue (single process; threads stand in for
//! actor processes). The multi-process tests live in `tests/queue.rs`.

use super::*;
use std::sync::Arc;
use std::time::Instant;

const L8: SlotLayout = SlotLayout::new(8);

fn name(tag: &str) -> String {
    crate::shm::segment_name(&format!("qtest-{tag}"))
}

fn obs(lane: u32, seq: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[..4].copy_from_slice(&lane.to_le_bytes());
    o[4..].copy_from_slice(&seq.to_le_bytes());
    o
}

fn push(q: &ExperienceQueue, lane: u32, seq: u32) {
    let o = obs(lane, seq);
    let t = Transition {
        obs: &o,
        action: lane * 1000 + seq,
        action_values: &[],
        ret: seq as f32 + 0.25,
        ..Default::default()
    };
    q.push(lane as usize, &t).unwrap();
}

/// (lane, seq) of every row, checking that obs/action/ret agree.
fn rows(b: &Batch) -> Vec<(u32, u32)> {
    (0..b.len())
        .map(|i| {
            let row = b.obs_row(i);
            let lane = u32::from_le_bytes(row[..4].try_into().unwrap());
            let seq = u32::from_le_bytes(row[4..].try_into().unwrap());
            assert_eq!(b.actions[i], i64::from(lane * 1000 + seq));
            assert_eq!(b.returns[i], seq as f32 + 0.25);
            (lane, seq)
        })
        .collect()
}

#[test]
fn slot_layout_is_padded() {
    // 16 bytes of fields (action, ret, discount, padding), then the observation(s).
    assert_eq!(SlotLayout::new(1).slot_bytes(), Some(24));
    assert_eq!(L8.slot_bytes(), Some(24));
    assert_eq!(SlotLayout::ATARI.slot_bytes(), Some(28240));
    let with_next = SlotLayout::transitions(9, true);
    assert_eq!(with_next.slot_bytes(), Some(40));
    assert_eq!(SlotLayout::new(usize::MAX).slot_bytes(), None);
    assert_eq!(size_of::<LaneCtrl>(), 256);
}

#[test]
fn ring_wraps_around() {
    let q = ExperienceQueue::create(&name("wrap"), 1, 3, L8).unwrap();
    let mut b = Batch::new(2, L8);
    for round in 0..10u32 {
        push(&q, 0, 2 * round);
        push(&q, 0, 2 * round + 1);
        b.clear();
        assert!(q.pop_into(&mut b, Duration::from_secs(1)).unwrap());
        assert_eq!(rows(&b), vec![(0, 2 * round), (0, 2 * round + 1)]);
    }
    assert_eq!(q.pushed(0), Some(20));
    assert!(q.is_empty());
}

#[test]
fn fill_and_len() {
    let q = ExperienceQueue::create(&name("fill"), 2, 5, L8).unwrap();
    assert_eq!((q.lanes(), q.capacity(), q.layout()), (2, 5, L8));
    assert_eq!(
        (q.lane_capacity(0), q.lane_capacity(1), q.lane_capacity(2)),
        (Some(3), Some(2), None)
    );
    for s in 0..3 {
        push(&q, 0, s);
        assert_eq!(q.len(), s as usize + 1);
    }
    push(&q, 1, 0);
    push(&q, 1, 1);
    assert_eq!(q.len(), 5);
    let mut b = Batch::new(4, L8);
    assert!(q.pop_into(&mut b, Duration::ZERO).unwrap());
    assert_eq!(q.len(), 1);
    b.clear();
    assert!(!q.pop_into(&mut b, Duration::ZERO).unwrap());
    assert_eq!((b.len(), q.len()), (1, 0));
}

#[test]
fn blocked_producer_resumes_when_consumer_pops() {
    let q = Arc::new(ExperienceQueue::create(&name("backpressure"), 1, 2, L8).unwrap());
    let q2 = Arc::clone(&q);
    let producer = std::thread::spawn(move || (0..200).for_each(|s| push(&q2, 0, s)));
    let mut b = Batch::new(7, L8);
    let mut got = Vec::new();
    while got.len() < 200 {
        b.clear();
        q.pop_into(&mut b, Duration::from_millis(5)).unwrap();
        got.extend(rows(&b));
    }
    producer.join().unwrap();
    assert_eq!(got, (0..200).map(|s| (0, s)).collect::<Vec<_>>());
}

#[test]
fn close_wakes_blocked_producer() {
    let q = Arc::new(ExperienceQueue::create(&name("close-prod"), 1, 1, L8).unwrap());
    push(&q, 0, 0);
    let q2 = Arc::clone(&q);
    let h = std::thread::spawn(move || {
        let o = [0u8; 8];
        let t0 = Instant::now();
        let r = q2.push(
            0,
            &Transition {
                obs: &o,
                action: 0,
                action_values: &[],
                ret: 0.0,
                ..Default::default()
            },
        );
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(150));
    let t_close = Instant::now();
    q.close();
    let (r, waited) = h.join().unwrap();
    assert_eq!(r, Err(PushError::Closed));
    assert!(waited >= Duration::from_millis(140), "push did not block");
    assert!(t_close.elapsed() < Duration::from_secs(1));
    // The committed transition survives the close; then the queue reports Closed.
    let mut b = Batch::new(4, L8);
    assert!(!q.pop_into(&mut b, Duration::from_secs(1)).unwrap());
    assert_eq!(rows(&b), vec![(0, 0)]);
    assert!(matches!(
        q.pop_into(&mut b, Duration::from_secs(1)),
        Err(QueueError::Closed)
    ));
    assert!(matches!(
        q.push(
            0,
            &Transition {
                obs: &[0; 8],
                action: 0,
                action_values: &[],
                ret: 0.0,
                ..Default::default()
            }
        ),
        Err(PushError::Closed)
    ));
}

#[test]
fn close_wakes_blocked_consumer() {
    let q = Arc::new(ExperienceQueue::create(&name("close-cons"), 2, 4, L8).unwrap());
    let q2 = Arc::clone(&q);
    let h = std::thread::spawn(move || {
        let mut b = Batch::new(4, L8);
        let t0 = Instant::now();
        let r = q2.pop_into(&mut b, Duration::from_secs(30));
        (r.map_err(|e| e.to_string()), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(150));
    // A second consumer in the same process is refused while the first waits.
    let mut b = Batch::new(1, L8);
    assert!(matches!(
        q.pop_into(&mut b, Duration::ZERO),
        Err(QueueError::ConsumerBusy)
    ));
    q.close();
    let (r, waited) = h.join().unwrap();
    assert_eq!(r, Err(QueueError::Closed.to_string()));
    assert!(
        waited < Duration::from_secs(2),
        "consumer not woken: {waited:?}"
    );
}

#[test]
fn pop_times_out_on_empty_queue() {
    let q = ExperienceQueue::create(&name("timeout"), 2, 2, L8).unwrap();
    let mut b = Batch::new(2, L8);
    let t0 = Instant::now();
    assert!(!q.pop_into(&mut b, Duration::from_millis(60)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(55));
    assert!(b.is_empty());
}

#[test]
fn batch_is_round_robin_across_lanes() {
    let q = ExperienceQueue::create(&name("rr"), 3, 12, L8).unwrap();
    (0..4).for_each(|s| push(&q, 0, s));
    (0..2).for_each(|s| push(&q, 1, s));
    (0..4).for_each(|s| push(&q, 2, s));
    let mut b = Batch::new(4, L8);
    assert!(q.pop_into(&mut b, Duration::ZERO).unwrap());
    assert_eq!(rows(&b), vec![(0, 0), (1, 0), (2, 0), (0, 1)]);
    b.clear();
    // Resumes at lane 1, not lane 0.
    assert!(q.pop_into(&mut b, Duration::ZERO).unwrap());
    assert_eq!(rows(&b), vec![(1, 1), (2, 1), (0, 2), (2, 2)]);
    b.clear();
    assert!(!q.pop_into(&mut b, Duration::ZERO).unwrap());
    assert_eq!(rows(&b), vec![(0, 3), (2, 3)]);
}

#[test]
fn bad_input_errors() {
    let n = name("errs");
    let invalid = |lanes, capacity, layout| {
        let err = ExperienceQueue::create(&n, lanes, capacity, layout)
            .err()
            .unwrap();
        assert!(
            matches!(err, SegmentError::Invalid { kind: "queue", .. }),
            "{err}"
        );
        err.to_string()
    };
    assert_eq!(invalid(0, 4, L8), "a queue needs at least one lane");
    assert_eq!(
        invalid(3, 2, L8),
        "capacity 2 is smaller than the number of lanes 3"
    );
    assert_eq!(invalid(1, 1, SlotLayout::new(0)), "obs_bytes must be > 0");
    let huge = SlotLayout::new(usize::MAX / 2);
    assert!(matches!(
        ExperienceQueue::create(&n, 1, 4, huge),
        Err(SegmentError::TooLarge { kind: "queue", .. })
    ));
    assert!(matches!(
        ExperienceQueue::open(&n),
        Err(SegmentError::Shm(_))
    ));

    let q = ExperienceQueue::create(&n, 2, 4, L8).unwrap();
    assert!(matches!(
        ExperienceQueue::create(&n, 2, 4, L8),
        Err(SegmentError::Shm(_))
    ));
    let bad = Transition {
        obs: &[0; 7],
        action: 0,
        action_values: &[],
        ret: 0.0,
        ..Default::default()
    };
    assert_eq!(
        q.push(0, &bad),
        Err(PushError::ObsLen {
            expected: 8,
            got: 7
        })
    );
    let ok = Transition {
        obs: &[0; 8],
        action: 0,
        action_values: &[],
        ret: 0.0,
        ..Default::default()
    };
    assert_eq!(
        q.push(2, &ok),
        Err(PushError::BadLane { lane: 2, lanes: 2 })
    );
    let mut b = Batch::new(2, SlotLayout::new(9));
    assert!(matches!(
        q.pop_into(&mut b, Duration::ZERO),
        Err(QueueError::BatchLayout { .. })
    ));

    let snap_name = name("errs-snap");
    let s = crate::shm::WeightSnapshot::create(&snap_name, 64).unwrap();
    let err = ExperienceQueue::open(&snap_name).err().unwrap();
    assert!(
        matches!(err, SegmentError::BadMagic { kind: "queue", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not a queue segment"), "{err}");
    drop(s);
}

#[test]
fn opener_shares_state_and_owner_drop_closes_and_unlinks() {
    let n = name("share");
    let path = std::path::Path::new("/dev/shm").join(&n);
    let owner = ExperienceQueue::create(&n, 2, 4, L8).unwrap();
    let actor = ExperienceQueue::open(&n).unwrap();
    assert!(owner.is_owner() && !actor.is_owner());
    assert_eq!(
        (actor.lanes(), actor.capacity(), actor.layout()),
        (2, 4, L8)
    );
    actor.frames().fetch_add(4, Ordering::Relaxed);
    assert_eq!(owner.frames().load(Ordering::Relaxed), 4);
    push(&actor, 1, 7);
    assert_eq!(owner.len(), 1);
    drop(ExperienceQueue::open(&n).unwrap());
    assert!(path.exists(), "an opener must not unlink");
    drop(owner);
    assert!(!path.exists(), "the owner unlinks on drop");
    assert!(actor.is_closed(), "owner drop closes the queue");
    assert!(matches!(
        actor.push(
            0,
            &Transition {
                obs: &[0; 8],
                action: 0,
                action_values: &[],
                ret: 0.0,
                ..Default::default()
            }
        ),
        Err(PushError::Closed)
    ));
}

#[test]
fn next_observations_and_discounts_round_trip() {
    let n = name("next");
    let layout = SlotLayout::transitions(3, true);
    let q = ExperienceQueue::create(&n, 1, 4, layout).unwrap();
    let t = Transition {
        obs: &[1, 2, 3],
        action: 2,
        action_values: &[],
        ret: 1.5,
        discount: 0.25,
        next_obs: Some(&[7, 8, 9]),
    };
    q.push(0, &t).unwrap();
    // A transition without the next observation the layout asks for is refused, as is one
    // with a next observation of the wrong size.
    assert_eq!(
        q.push(
            0,
            &Transition {
                next_obs: None,
                ..t
            }
        ),
        Err(PushError::NextObs { expected: true })
    );
    assert!(matches!(
        q.push(
            0,
            &Transition {
                next_obs: Some(&[1]),
                ..t
            }
        ),
        Err(PushError::ObsLen {
            expected: 3,
            got: 1
        })
    ));
    let mut b = Batch::new(1, layout);
    assert!(q.pop_into(&mut b, Duration::from_millis(100)).unwrap());
    assert_eq!(b.obs_row(0), &[1, 2, 3]);
    assert_eq!(b.next_obs_row(0), &[7, 8, 9]);
    assert_eq!((b.actions[0], b.returns[0], b.discounts[0]), (2, 1.5, 0.25));
    // A queue without next observations refuses one.
    let plain = ExperienceQueue::create(&name("plain"), 1, 4, SlotLayout::new(3)).unwrap();
    assert_eq!(
        plain.push(0, &t),
        Err(PushError::NextObs { expected: false })
    );
}

#[test]
fn batch_push_fills_rows_and_refuses_what_does_not_fit() {
    let layout = SlotLayout::transitions(2, true);
    let mut b = Batch::new(1, layout);
    let t = Transition {
        obs: &[1, 2],
        action: 3,
        action_values: &[],
        ret: 0.5,
        discount: 0.9,
        next_obs: Some(&[4, 5]),
    };
    assert!(b.push(&Transition { obs: &[1], ..t }).is_err());
    assert!(b
        .push(&Transition {
            next_obs: None,
            ..t
        })
        .is_err());
    assert!(b.is_empty(), "a refused row leaves the batch as it was");
    b.push(&t).unwrap();
    assert_eq!(
        (b.obs_row(0), b.next_obs_row(0)),
        (&[1u8, 2][..], &[4u8, 5][..])
    );
    assert_eq!((b.actions[0], b.returns[0], b.discounts[0]), (3, 0.5, 0.9));
    assert_eq!(b.push(&t), Err(BatchPushError::Full { capacity: 1 }));
    assert!(b.push(&t).unwrap_err().to_string().contains("full"));
    let mut plain = Batch::new(1, SlotLayout::new(2));
    assert_eq!(
        plain.push(&t),
        Err(BatchPushError::NextObs { needed: false })
    );
    assert!(plain
        .push(&t)
        .unwrap_err()
        .to_string()
        .contains("has no next observations"));
}

#[test]
fn a_lane_whose_tail_outruns_its_capacity_is_an_error_naming_it() {
    let q = ExperienceQueue::create(&name("corrupt"), 2, 4, L8).unwrap();
    push(&q, 0, 1);
    // A producer that wrote its control block wrongly: lane 1 claims 100 transitions.
    q.ctrl(&q.lanes[1]).prod.tail.store(100, Ordering::SeqCst);
    let mut b = Batch::new(4, L8);
    let err = q.pop_into(&mut b, Duration::from_millis(50)).unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::CorruptLane {
                lane: 1,
                tail: 100,
                capacity: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("lane 1 is corrupted"), "{err}");
}

#[test]
fn raw_slots_relayed_from_one_queue_to_another_arrive_unchanged() {
    // An actor host's relay: pop_raw on its own queue, push_raw into the learner's.
    let host = ExperienceQueue::create(&name("raw-host"), 2, 8, L8).unwrap();
    let learner = ExperienceQueue::create(&name("raw-learner"), 3, 18, L8).unwrap();
    for seq in 0..3 {
        push(&host, 0, seq);
        push(&host, 1, seq);
    }
    let mut raw = Vec::new();
    // At most 4 slots, round-robin over the lanes, handed out grouped by lane; then the rest.
    assert_eq!(host.pop_raw(&mut raw, 4, Duration::ZERO).unwrap(), 4);
    assert_eq!(raw.len(), 4 * host.slot_bytes());
    let first: Vec<[u8; 8]> = raw
        .chunks_exact(host.slot_bytes())
        .map(|s| s[16..24].try_into().unwrap())
        .collect();
    assert_eq!(first, vec![obs(0, 0), obs(0, 1), obs(1, 0), obs(1, 1)]);
    assert_eq!(host.pop_raw(&mut raw, 10, Duration::ZERO).unwrap(), 2);
    assert_eq!(
        host.pop_raw(&mut raw, 10, Duration::from_millis(20))
            .unwrap(),
        0
    );
    for slot in raw.chunks_exact(host.slot_bytes()) {
        L8.check_raw(slot, 2000).unwrap();
        learner.push_raw(2, slot).unwrap();
    }
    let mut batch = Batch::new(6, L8);
    assert!(learner.pop_into(&mut batch, Duration::ZERO).unwrap());
    let mut got = rows(&batch);
    got.sort();
    assert_eq!(got, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    // A slot of another size is refused, not truncated.
    assert!(matches!(
        learner.push_raw(2, &raw[..10]),
        Err(PushError::Shape(_))
    ));
}

#[test]
fn check_raw_refuses_what_would_poison_the_loss() {
    let layout = SlotLayout::transitions(8, false);
    let mut slot = vec![0u8; layout.slot_bytes().unwrap()];
    assert_eq!(layout.check_raw(&slot, 4), Ok(()));
    slot[0] = 4; // action 4 of 4
    assert_eq!(
        layout.check_raw(&slot, 4),
        Err(BadSlot::Action {
            action: 4,
            num_actions: 4
        })
    );
    assert!(layout
        .check_raw(&slot, 4)
        .unwrap_err()
        .to_string()
        .contains("action 4"));
    slot[0] = 1;
    slot[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(layout
        .check_raw(&slot, 4)
        .unwrap_err()
        .to_string()
        .contains("return"));
    slot[4..8].copy_from_slice(&1.5f32.to_le_bytes());
    slot[8..12].copy_from_slice(&1.5f32.to_le_bytes());
    assert!(layout
        .check_raw(&slot, 4)
        .unwrap_err()
        .to_string()
        .contains("discount"));
    assert!(layout
        .check_raw(&slot[1..], 4)
        .unwrap_err()
        .to_string()
        .contains("bytes"));
    // Segments: the length, the terminal flag, each action, reward and log-probability.
    let seg = SlotLayout::segments(4, 3, 2);
    let mut s = vec![0u8; seg.slot_bytes().unwrap()];
    let put = |s: &mut [u8], at: usize, v: [u8; 4]| s[at..at + 4].copy_from_slice(&v);
    assert!(seg
        .check_raw(&s, 4)
        .unwrap_err()
        .to_string()
        .contains("0 steps"));
    put(&mut s, 0, 2u32.to_le_bytes());
    assert_eq!(seg.check_raw(&s, 4), Ok(()));
    put(&mut s, 0, 4u32.to_le_bytes());
    assert!(seg
        .check_raw(&s, 4)
        .unwrap_err()
        .to_string()
        .contains("4 steps"));
    put(&mut s, 0, 2u32.to_le_bytes());
    put(&mut s, 4, 2u32.to_le_bytes());
    assert!(seg
        .check_raw(&s, 4)
        .unwrap_err()
        .to_string()
        .contains("terminal"));
    put(&mut s, 4, 1u32.to_le_bytes());
    put(&mut s, 16 + 4, 9u32.to_le_bytes()); // action of step 1
    assert_eq!(
        seg.check_raw(&s, 4),
        Err(BadSlot::StepAction {
            action: 9,
            step: 1,
            num_actions: 4
        })
    );
    assert!(seg
        .check_raw(&s, 4)
        .unwrap_err()
        .to_string()
        .contains("step 1"));
    put(&mut s, 16 + 4, 3u32.to_le_bytes());
    put(&mut s, 16 + 8 * 3, 0.5f32.to_le_bytes()); // log-probability of step 0
    assert!(seg
        .check_raw(&s, 4)
        .unwrap_err()
        .to_string()
        .contains("log-probability"));
    put(&mut s, 16 + 8 * 3, (-0.5f32).to_le_bytes());
    // Past the length, anything goes (padding).
    put(&mut s, 16 + 4 * 2, 99u32.to_le_bytes());
    assert_eq!(seg.check_raw(&s, 4), Ok(()));
    let mut v = s.clone();
    SlotLayout::set_raw_version(&mut v, 77);
    assert_eq!(SlotLayout::raw_version(&v), 77);
}
