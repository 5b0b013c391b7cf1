//! Measurements of the replay memory (`--algorithm dqn`), for the README's "Replay" section:
//!
//! ```text
//! cargo run --release --example replay_bench -- storage [GAME]          # dedup vs LZ4
//! cargo run --release --example replay_bench -- rss 1000000 [lz4|none]  # RSS, full memory
//! cargo run --release --example replay_bench -- speed                   # sampling, updates/s
//! ```
//!
//! `storage` plays GAME (Pong) with random actions (ALE, DeepMind preprocessing) and compares
//! the bytes per transition of storing frames once (this crate's `FrameStore`), once and
//! LZ4-compressed, and whole stacks LZ4-compressed, and what each costs to read a batch back.
//! `rss` fills a memory of N Atari transitions with one new frame per transition, as play
//! does: Pong frames of random play, each made unique by a counter written into 8 of its
//! pixels; it reports the resident set. `speed` times sampling a batch of 64 and the dqn
//! learner's update (nips, batch 64, one thread), uniform and prioritized, LZ4 and not.

use std::time::Instant;

use async_rl::config::{Config, Network, ReplayCompression};
use async_rl::env::{self, ObsSpec};
use async_rl::replay::{Priorities, ReplayMemory, Sample};
use async_rl::rules;
use async_rl::shm::{Batch, SlotLayout, Transition};
use rand::{rngs::StdRng, Rng, SeedableRng};

const FRAME: usize = 84 * 84;

fn rss_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

/// `steps` stacked observations of `game` under random play (new games as they end).
fn stacks_of(game: &str, steps: usize) -> Vec<Vec<u8>> {
    let cfg = Config::from_flags(["--game", game]).unwrap();
    let id = cfg.env_id().unwrap();
    let mut e = env::make(&id, &cfg.env_settings(1)).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    e.reset().unwrap();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        out.push(e.obs().to_vec());
        let s = e.step(rng.gen_range(0..e.num_actions())).unwrap();
        if s.game_over || s.truncated {
            e.reset().unwrap();
        }
    }
    out
}

fn storage(game: &str) {
    let steps = 20_000;
    let t = Instant::now();
    let stacks = stacks_of(game, steps + 3);
    println!(
        "{steps} {game} steps played in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Frames stored once, raw and LZ4-compressed: 3-step transitions, as dqn actors push them.
    let mut rng = StdRng::seed_from_u64(2);
    let mut s = Sample::default();
    let reps = 200;
    for lz4 in [false, true] {
        let mut m = ReplayMemory::new(ObsSpec::Frames([4, 84, 84]), steps, None, lz4);
        let t = Instant::now();
        for t in 0..steps {
            m.insert(&stacks[t], 0, 0.0, 0.97, &stacks[t + 3]);
        }
        let insert = t.elapsed().as_secs_f64() / steps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            m.sample(64, 1.0, &mut rng, &mut s);
        }
        let batch = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "frames once{}: {:.3} frames per transition, {:.0} bytes per transition (naive: {}); insert {:.1} us, a batch of 64 read back {:.2} ms",
            if lz4 { " + LZ4" } else { "" },
            m.frames().written() as f64 / steps as f64,
            m.frames().stored_bytes() as f64 / steps as f64,
            2 * 4 * FRAME,
            insert * 1e6,
            batch * 1e3
        );
    }
    // LZ4 of whole stacks (obs and next obs each compressed) and of single frames.
    let t = Instant::now();
    let stack_z: Vec<Vec<u8>> = stacks[..steps]
        .iter()
        .map(|s| lz4_flex::compress_prepend_size(s))
        .collect();
    let c_stack = t.elapsed().as_secs_f64() / steps as f64;
    let stack_bytes: usize = stack_z.iter().map(Vec::len).sum();
    let per_stack = stack_bytes as f64 / steps as f64;
    println!(
        "LZ4 stacks: {:.0} bytes per stack, {:.0} per transition (obs + next obs), ratio {:.1}x; compress {:.1} us a stack",
        per_stack,
        2.0 * per_stack,
        (4 * FRAME) as f64 / per_stack,
        c_stack * 1e6
    );
    let frames: Vec<&[u8]> = stacks[..steps].iter().map(|s| &s[3 * FRAME..]).collect();
    let frame_z: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| lz4_flex::compress_prepend_size(f))
        .collect();
    let per_frame = frame_z.iter().map(Vec::len).sum::<usize>() as f64 / steps as f64;
    println!(
        "LZ4 of single frames (dedup + LZ4): {:.0} bytes per frame, ratio {:.1}x",
        per_frame,
        FRAME as f64 / per_frame
    );
    // Reading a batch of 64 back as 64 x 2 compressed stacks.
    let t = Instant::now();
    let mut sink = 0usize;
    for _ in 0..reps {
        for _ in 0..128 {
            let z = &stack_z[rng.gen_range(0..steps)];
            sink += lz4_flex::decompress_size_prepended(z).unwrap().len();
        }
    }
    let lz4_batch = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "a batch of 64 (obs + next obs) from LZ4 stacks: {:.2} ms ({sink} bytes)",
        lz4_batch * 1e3
    );
}

fn rss(n: usize, lz4: bool) {
    let real: Vec<Vec<u8>> = stacks_of("Pong", 20_000)
        .into_iter()
        .map(|s| s[3 * FRAME..].to_vec())
        .collect();
    let base = rss_mb("VmRSS:");
    let mut m = ReplayMemory::new(ObsSpec::Frames([4, 84, 84]), n, None, lz4);
    let mut stack = vec![0u8; 4 * FRAME];
    let mut next = vec![0u8; 4 * FRAME];
    let t = Instant::now();
    // One new frame per step, shifted into the stack as play does; each transition's next
    // observation is the stack 3 steps later.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let frame = |k: u64| -> Vec<u8> {
        let mut f = real[k as usize % real.len()].clone();
        f[42 * 84..42 * 84 + 8].copy_from_slice(&k.to_le_bytes());
        f
    };
    for k in 0..(n as u64 + 7) {
        frames.push(frame(k));
        if frames.len() > 7 {
            frames.remove(0);
        }
        if frames.len() == 7 {
            for j in 0..4 {
                stack[j * FRAME..(j + 1) * FRAME].copy_from_slice(&frames[j]);
                next[j * FRAME..(j + 1) * FRAME].copy_from_slice(&frames[j + 3]);
            }
            m.insert(&stack, 0, 0.0, 0.97, &next);
        }
    }
    println!(
        "{} Atari transitions (lz4 {lz4}) in {:.0} s: {} frames stored in {:.0} MB; RSS {:.0} MB (before: {:.0} MB; peak {:.0} MB)",
        m.len(),
        t.elapsed().as_secs_f64(),
        m.frames().written(),
        m.frames().stored_bytes() as f64 / 1e6,
        rss_mb("VmRSS:"),
        base,
        rss_mb("VmHWM:")
    );
}

fn speed() {
    tch::set_num_threads(1);
    let stacks = stacks_of("Pong", 20_003);
    for (prioritized, compression) in [
        (false, ReplayCompression::None),
        (false, ReplayCompression::Lz4),
        (true, ReplayCompression::Lz4),
    ] {
        let mut cfg = Config::from_flags([
            "--game=Pong",
            "--algorithm=dqn",
            "--network=nips",
            "--replay-size=20000",
            "--learning-starts=0",
            "--replay-ratio=1e9",
        ])
        .unwrap();
        cfg.rule.replay.prioritized = prioritized;
        cfg.rule.replay.replay_compression = compression;
        let obs = ObsSpec::Frames([4, 84, 84]);
        let mut rule = rules::learner(&cfg, Network::Nips.into(), obs, 6, tch::Device::Cpu);
        let layout = rules::slot_layout(&cfg, obs, 0);
        let mut batch = Batch::new(64, layout);
        for t in 0..20_000 {
            batch
                .push(&Transition {
                    obs: &stacks[t],
                    action: (t % 6) as u32,
                    action_values: &[],
                    ret: 0.0,
                    discount: 0.97,
                    next_obs: Some(&stacks[t + 3]),
                })
                .unwrap();
            if batch.is_full() {
                rule.insert(&mut batch, t as u64);
            }
        }
        assert!(rule.ready(20_000));
        for _ in 0..3 {
            rule.update(1e-4).unwrap();
        }
        let n = 30;
        let t = Instant::now();
        for _ in 0..n {
            rule.update(1e-4).unwrap();
        }
        let update = t.elapsed().as_secs_f64() / n as f64;
        let mut m = ReplayMemory::new(
            obs,
            20_000,
            prioritized.then_some(Priorities {
                alpha: 0.6,
                epsilon: 1e-6,
            }),
            compression == ReplayCompression::Lz4,
        );
        for t in 0..20_000 {
            m.insert(&stacks[t], 0, 0.0, 0.97, &stacks[t + 3]);
        }
        let mut rng = StdRng::seed_from_u64(3);
        let mut s = Sample::default();
        let reps = 200;
        let t = Instant::now();
        for _ in 0..reps {
            m.sample(64, 0.4, &mut rng, &mut s);
        }
        let sample = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "prioritized {prioritized}, {compression:?}: update {:.1} ms ({:.1} updates/s), sampling 64: {:.2} ms ({:.1}% of an update)",
            update * 1e3,
            1.0 / update,
            sample * 1e3,
            100.0 * sample / update
        );
    }
    // Where an update's time goes: the forward pass alone (no gradient) and forward with
    // backward, on 64 channels-last frames.
    let net = async_rl::model::AgentNetwork::new(
        Network::Nips,
        ObsSpec::Frames([4, 84, 84]),
        6,
        tch::Device::Cpu,
    );
    let bytes: Vec<u8> = stacks[..64].concat();
    let x = async_rl::model::channels_last(&async_rl::model::obs_tensor(
        ObsSpec::Frames([4, 84, 84]),
        &bytes,
        64,
    ));
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..20 {
            f();
        }
        t.elapsed().as_secs_f64() / 20.0 * 1e3
    };
    let fwd = time(&mut || {
        let _ = tch::no_grad(|| net.forward(&x));
    });
    let fwd_bwd = time(&mut || {
        net.forward(&x).sum(tch::Kind::Float).backward();
    });
    println!(
        "nips on 64 frames, one thread: forward {fwd:.1} ms, forward + backward {fwd_bwd:.1} ms"
    );
    let _ = SlotLayout::ATARI;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("storage") => storage(args.get(2).map_or("Pong", String::as_str)),
        Some("rss") => rss(
            args.get(2).map_or(1_000_000, |n| n.parse().unwrap()),
            args.get(3).map(String::as_str) != Some("none"),
        ),
        Some("speed") => speed(),
        _ => eprintln!("usage: replay_bench storage [GAME] | rss [N] [lz4|none] | speed"),
    }
}
