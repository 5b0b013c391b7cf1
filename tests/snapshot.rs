//! Torn weight reads, tested across processes: a writer republishes nips-sized parameter vectors
//! as fast as it can while reader processes (this test binary re-executed as `reader_child`)
//! copy snapshots and check a CRC-32 carried in each one. A single torn copy fails the test.
//!
//! `ASYNC_RL_SOAK_SECS` lengthens the run (default 4 s) for a soak outside CI.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_rl::shm::{self, WeightSnapshot};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ENV_NAME: &str = "ASYNC_RL_TEST_SNAPSHOT";
const ENV_SECS: &str = "ASYNC_RL_TEST_SECS";
/// About the size of the `nips` network (which has 0.68M parameters for 4 actions).
const NUMEL: usize = 680_000;

/// CRC-32 of all elements but the last, which holds it (as f32 bits).
fn crc_of(v: &[f32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for x in &v[..v.len() - 1] {
        h.update(&x.to_bits().to_le_bytes());
    }
    h.finalize()
}

fn soak_secs() -> f64 {
    std::env::var("ASYNC_RL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0)
}

/// Reader body; a no-op unless the parent test set the environment. Prints how many snapshots
/// it copied and checked.
#[test]
fn reader_child() {
    let Ok(name) = std::env::var(ENV_NAME) else {
        return;
    };
    let secs: f64 = std::env::var(ENV_SECS).unwrap().parse().unwrap();
    let r = WeightSnapshot::open(&name).unwrap();
    let mut out = vec![0f32; r.numel()];
    let (mut reads, mut versions, mut last) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let v = r.read_into(&mut out).unwrap();
        if v == 0 {
            continue;
        }
        assert!(v >= last, "versions went backwards: {last} then {v}");
        let stored = out[NUMEL - 1].to_bits();
        let actual = crc_of(&out);
        assert_eq!(stored, actual, "torn snapshot at version {v}");
        reads += 1;
        if v != last {
            versions += 1;
            last = v;
        }
    }
    println!("READ {reads} {versions}");
}

#[test]
fn readers_in_other_processes_never_accept_a_torn_snapshot() {
    const READERS: usize = 3;
    let secs = soak_secs();
    let name = shm::segment_name("itest-torn");
    let mut w = WeightSnapshot::create(&name, NUMEL).unwrap();
    // A few distinct payloads, published in turn: a copy mixing two of them fails its CRC.
    let mut rng = StdRng::seed_from_u64(7);
    let payloads: Vec<Vec<f32>> = (0..8)
        .map(|_| {
            let mut v: Vec<f32> = (0..NUMEL).map(|_| rng.gen_range(-1.0..1.0)).collect();
            v[NUMEL - 1] = f32::from_bits(crc_of(&v));
            v
        })
        .collect();
    let exe = std::env::current_exe().unwrap();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "snapshot::reader_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV_NAME, &name)
                .env(ENV_SECS, secs.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let mut published = 0u64;
    let until = Duration::from_secs_f64(secs + 0.5);
    while t0.elapsed() < until {
        w.publish(&payloads[published as usize % payloads.len()])
            .unwrap();
        published += 1;
    }
    let (mut reads, mut versions) = (0u64, 0u64);
    for r in readers {
        let out = r.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "a reader failed:\n{stdout}");
        let line = stdout
            .lines()
            .find_map(|l| l.split("READ ").nth(1))
            .expect("reader report");
        let mut it = line.split(' ').map(|x| x.parse::<u64>().unwrap());
        let (r, v) = (it.next().unwrap(), it.next().unwrap());
        assert!(
            r > 0 && v > 1,
            "a reader saw too little: {r} reads, {v} versions"
        );
        reads += r;
        versions += v;
    }
    println!(
        "{published} snapshots of {NUMEL} f32 published in {secs} s; {READERS} reader processes \
         checked {reads} copies ({versions} distinct versions): none torn"
    );
}
