//! Multi-process tests of the experience queue: producers are real processes
//! (this test binary re-executed as the `producer_child` test), the consumer is
//! the test process. They check the properties the learner relies on: nothing
//! lost, duplicated, reordered within a lane or corrupted under back-pressure,
//! and a SIGKILLed actor neither wedges the queue nor leaks a torn slot.

use async_rl::shm::{self, Batch, ExperienceQueue, PushError, QueueError, SlotLayout, Transition};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ENV_QUEUE: &str = "ASYNC_RL_TEST_QUEUE";
const ENV_LANE: &str = "ASYNC_RL_TEST_LANE";
/// Number of transitions to push, or "inf" to push until the queue closes.
const ENV_COUNT: &str = "ASYNC_RL_TEST_COUNT";
/// Set to "auto" to resume numbering at the lane's published tail.
const ENV_RESUME: &str = "ASYNC_RL_TEST_RESUME";
/// Observation size for the multi-process tests (not a multiple of 8 on
/// purpose, so slot padding is exercised).
const LAYOUT: SlotLayout = SlotLayout::new(203);

/// Deterministic observation bytes for transition `seq` of producer `lane`.
fn fill_obs(lane: u32, seq: u64, out: &mut [u8]) {
    let mut x = (u64::from(lane) << 40) ^ seq ^ 0x5DEE_CE66_D1CE_F00D;
    for chunk in out.chunks_mut(8) {
        // splitmix64 step
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn action_of(lane: u32, seq: u64) -> u32 {
    (lane << 24) | (seq as u32 & 0x00FF_FFFF)
}

fn ret_of(seq: u64) -> f32 {
    (seq % (1 << 24)) as f32 * 0.5
}

/// Producer body; a no-op unless the parent test set the environment.
#[test]
fn producer_child() {
    let Ok(name) = std::env::var(ENV_QUEUE) else {
        return;
    };
    let lane: u32 = std::env::var(ENV_LANE).unwrap().parse().unwrap();
    let count = match std::env::var(ENV_COUNT).unwrap().as_str() {
        "inf" => u64::MAX,
        n => n.parse().unwrap(),
    };
    let q = ExperienceQueue::open(&name).unwrap();
    assert!(!q.is_owner());
    let start = match std::env::var(ENV_RESUME).as_deref() {
        Ok("auto") => q.pushed(lane as usize).unwrap(),
        _ => 0,
    };
    let mut obs = vec![0u8; LAYOUT.obs_bytes];
    for seq in start..start.saturating_add(count) {
        fill_obs(lane, seq, &mut obs);
        let t = Transition {
            obs: &obs,
            action: action_of(lane, seq),
            action_values: &[],
            ret: ret_of(seq),
            ..Default::default()
        };
        match q.push(lane as usize, &t) {
            Ok(()) => {
                q.frames().fetch_add(1, Ordering::Relaxed);
            }
            Err(PushError::Closed) => break,
            Err(e) => panic!("push failed: {e}"),
        }
    }
}

fn spawn_producer(name: &str, lane: usize, count: &str, resume: bool) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "queue::producer_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ENV_QUEUE, name)
    .env(ENV_LANE, lane.to_string())
    .env(ENV_COUNT, count)
    .stdout(Stdio::null());
    if resume {
        cmd.env(ENV_RESUME, "auto");
    }
    cmd.spawn().unwrap()
}

/// Consumer-side verifier: per lane, sequence numbers must arrive exactly as
/// 0, 1, 2, ... (none lost, duplicated or reordered) with every byte intact.
struct Checker {
    next: Vec<u64>,
    expected: Vec<u8>,
}

impl Checker {
    fn new(lanes: usize) -> Self {
        Self {
            next: vec![0; lanes],
            expected: vec![0; LAYOUT.obs_bytes],
        }
    }

    fn check(&mut self, b: &Batch) {
        for i in 0..b.len() {
            let action = b.actions[i] as u32;
            let lane = (action >> 24) as usize;
            assert!(
                lane < self.next.len(),
                "row {i}: bad lane in action {action:#x}"
            );
            let seq = self.next[lane];
            assert_eq!(
                action,
                action_of(lane as u32, seq),
                "lane {lane}: lost/duplicated transition"
            );
            assert_eq!(
                b.returns[i],
                ret_of(seq),
                "lane {lane} seq {seq}: bad return"
            );
            fill_obs(lane as u32, seq, &mut self.expected);
            assert!(
                b.obs_row(i) == self.expected.as_slice(),
                "lane {lane} seq {seq}: corrupted obs"
            );
            self.next[lane] += 1;
        }
    }

    /// Pops and checks until `done(next)` holds; panics after `limit`.
    fn consume_until(
        &mut self,
        q: &ExperienceQueue,
        b: &mut Batch,
        limit: Duration,
        done: impl Fn(&[u64]) -> bool,
    ) {
        let t0 = Instant::now();
        while !done(&self.next) {
            assert!(t0.elapsed() < limit, "consumer stalled at {:?}", self.next);
            b.clear();
            q.pop_into(b, Duration::from_millis(50)).unwrap();
            self.check(b);
        }
    }
}

fn shm_path(name: &str) -> std::path::PathBuf {
    Path::new("/dev/shm").join(name)
}

#[test]
fn all_transitions_arrive_intact_across_processes() {
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: u64 = 20_000;
    let name = shm::segment_name("itest-intact");
    let q = ExperienceQueue::create(&name, PRODUCERS, 16, LAYOUT).unwrap();
    let children: Vec<Child> = (0..PRODUCERS)
        .map(|lane| spawn_producer(&name, lane, &PER_PRODUCER.to_string(), false))
        .collect();
    let mut checker = Checker::new(PRODUCERS);
    let mut batch = Batch::new(32, LAYOUT);
    let t0 = Instant::now();
    checker.consume_until(&q, &mut batch, Duration::from_secs(60), |n| {
        n.iter().all(|&x| x == PER_PRODUCER)
    });
    let elapsed = t0.elapsed();
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "producer exited with {status}");
    }
    assert!(q.is_empty());
    assert_eq!(
        q.frames().load(Ordering::Relaxed),
        PRODUCERS as u64 * PER_PRODUCER
    );
    // Nothing beyond what was checked: a further pop finds nothing.
    batch.clear();
    assert!(!q.pop_into(&mut batch, Duration::from_millis(10)).unwrap());
    assert!(batch.is_empty());
    let total = PRODUCERS as f64 * PER_PRODUCER as f64;
    println!("{total} transitions from {PRODUCERS} processes through 16 slots in {elapsed:?}");
    assert!(shm_path(&name).exists());
    drop(q);
    assert!(!shm_path(&name).exists(), "segment left in /dev/shm");
}

#[test]
fn killed_producer_neither_wedges_nor_corrupts() {
    const PRODUCERS: usize = 3;
    let name = shm::segment_name("itest-kill");
    let q = ExperienceQueue::create(&name, PRODUCERS, 12, LAYOUT).unwrap();
    let lane0_cap = q.lane_capacity(0).unwrap() as u64;
    let mut children: Vec<Child> = (0..PRODUCERS)
        .map(|lane| spawn_producer(&name, lane, "inf", false))
        .collect();
    let mut checker = Checker::new(PRODUCERS);
    let mut batch = Batch::new(8, LAYOUT);
    let limit = Duration::from_secs(30);
    for round in 0..3 {
        let target = checker.next[0] + 700;
        checker.consume_until(&q, &mut batch, limit, |n| n[0] >= target);
        children[0].kill().unwrap(); // SIGKILL, possibly mid-push
        let status = children[0].wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}");
        let at_kill = checker.next.clone();
        // The other lanes keep flowing: the queue is not wedged.
        checker.consume_until(&q, &mut batch, limit, |n| {
            n[1] >= at_kill[1] + 1000 && n[2] >= at_kill[2] + 1000
        });
        // Everything the dead producer committed was delivered, nothing more.
        assert_eq!(q.pushed(0), Some(checker.next[0]), "round {round}");
        assert!(checker.next[0] - at_kill[0] <= lane0_cap, "round {round}");
        // A replacement continues from the lane's published tail.
        children[0] = spawn_producer(&name, 0, "inf", true);
    }
    let target = checker.next[0] + 500;
    checker.consume_until(&q, &mut batch, limit, |n| n[0] >= target);
    q.close();
    // Drain whatever was committed before the close, then Closed.
    loop {
        batch.clear();
        match q.pop_into(&mut batch, Duration::from_secs(5)) {
            Ok(_) => checker.check(&batch),
            Err(QueueError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "producer exited with {status}");
    }
    println!("received per lane after 3 kills: {:?}", checker.next);
    drop(q);
    assert!(!shm_path(&name).exists(), "segment left in /dev/shm");
}

/// Producers SIGKILLed at random moments (random lane, random delay, seed printed) and
/// replaced, at least 20 times and for `ASYNC_RL_SOAK_SECS` (default 4 s): every committed transition arrives exactly
/// once, intact and in order, and nothing else arrives.
#[test]
fn producers_killed_at_random_moments_lose_and_duplicate_nothing() {
    use rand::{Rng, SeedableRng};
    const PRODUCERS: usize = 4;
    let secs: f64 = std::env::var("ASYNC_RL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("random kills with seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let name = shm::segment_name("itest-stress");
    let q = ExperienceQueue::create(&name, PRODUCERS, 32, LAYOUT).unwrap();
    let mut children: Vec<Child> = (0..PRODUCERS)
        .map(|lane| spawn_producer(&name, lane, "inf", false))
        .collect();
    let mut checker = Checker::new(PRODUCERS);
    let mut batch = Batch::new(16, LAYOUT);
    let t0 = Instant::now();
    let mut kills = 0;
    let mut spawned_at = [0u64; PRODUCERS];
    while kills < 20 || t0.elapsed().as_secs_f64() < secs {
        let lane = rng.gen_range(0..PRODUCERS);
        // Kill a producer that is running (delivered since it started), at a random moment.
        checker.consume_until(&q, &mut batch, Duration::from_secs(30), |n| {
            n[lane] > spawned_at[lane]
        });
        let until = Instant::now() + Duration::from_micros(rng.gen_range(0..20_000));
        while Instant::now() < until {
            batch.clear();
            q.pop_into(&mut batch, Duration::from_millis(1)).unwrap();
            checker.check(&batch);
        }
        children[lane].kill().unwrap();
        let status = children[lane].wait().unwrap();
        // (A producer may rarely finish its start-up after the kill was sent: still a kill.)
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        kills += 1;
        spawned_at[lane] = q.pushed(lane).unwrap();
        children[lane] = spawn_producer(&name, lane, "inf", true);
    }
    q.close();
    loop {
        batch.clear();
        match q.pop_into(&mut batch, Duration::from_secs(5)) {
            Ok(_) => checker.check(&batch),
            Err(QueueError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "producer exited with {status}");
    }
    for lane in 0..PRODUCERS {
        assert_eq!(
            q.pushed(lane),
            Some(checker.next[lane]),
            "lane {lane}: committed and received differ"
        );
    }
    let total: u64 = checker.next.iter().sum();
    println!(
        "{kills} producers SIGKILLed at random moments in {:.1} s; {total} transitions committed \
         and received exactly once, intact (per lane {:?})",
        t0.elapsed().as_secs_f64(),
        checker.next
    );
    drop(q);
    assert!(!shm_path(&name).exists(), "segment left in /dev/shm");
}

/// Not a benchmark: prints the push+pop rate for Atari-sized slots between two
/// threads (no assertion on time).
#[test]
fn throughput_two_threads_atari_obs() {
    const N: u64 = 100_000;
    let name = shm::segment_name("itest-rate");
    let q = std::sync::Arc::new(ExperienceQueue::create(&name, 1, 256, SlotLayout::ATARI).unwrap());
    let q2 = std::sync::Arc::clone(&q);
    let t0 = Instant::now();
    let producer = std::thread::spawn(move || {
        let mut obs = vec![0x5Au8; SlotLayout::ATARI.obs_bytes];
        for seq in 0..N {
            obs[..8].copy_from_slice(&seq.to_le_bytes());
            q2.push(
                0,
                &Transition {
                    obs: &obs,
                    action: seq as u32,
                    action_values: &[],
                    ret: 0.0,
                    ..Default::default()
                },
            )
            .unwrap();
        }
    });
    let mut batch = Batch::new(32, SlotLayout::ATARI);
    let mut got = 0u64;
    while got < N {
        batch.clear();
        q.pop_into(&mut batch, Duration::from_millis(100)).unwrap();
        for i in 0..batch.len() {
            let row = batch.obs_row(i);
            assert_eq!(u64::from_le_bytes(row[..8].try_into().unwrap()), got);
            assert_eq!(row[row.len() - 1], 0x5A);
            got += 1;
        }
    }
    producer.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let gb = N as f64 * SlotLayout::ATARI.obs_bytes as f64 / 1e9;
    println!(
        "push+pop {N} x 28224 B: {:.0} transitions/s, {:.2} GB/s ({secs:.2} s)",
        N as f64 / secs,
        gb / secs
    );
    drop(q);
    assert!(!shm_path(&name).exists());
}
