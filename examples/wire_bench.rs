//! What remote actor hosts send (`src/remote`), compressed with LZ4 (what the wire uses) and
//! zstd levels 1 and 3, for the README's "Actors on other machines":
//!
//! ```text
//! cargo run --release --example wire_bench -- [GAME] [CHECKPOINT.safetensors]
//! ```
//!
//! Experience: GAME (Breakout) played with random actions (ALE, DeepMind preprocessing) into
//! n-step Q transition slots (the queue's layout, 28,240 bytes each), in messages of 64 slots
//! as a host sends them: from one actor, and from 4 actors interleaved (as a host's pump takes
//! them round-robin). Weights: the snapshot of CHECKPOINT, or of an untrained `nips` network.
//! Reports bytes per transition or per snapshot and the time to compress and decompress one
//! message on one core.

use std::time::Instant;

use async_rl::config::Config;
use async_rl::env;
use async_rl::shm::SlotLayout;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Transition slots of `steps` steps of random play of `game`, one environment per seed.
fn slots_of(game: &str, steps: usize, seed: u64) -> Vec<Vec<u8>> {
    let cfg = Config::from_flags(["--game", game]).unwrap();
    let id = cfg.env_id().unwrap();
    let mut e = env::make(&id, &cfg.env_settings(seed)).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let layout = SlotLayout::ATARI;
    let bytes = layout.slot_bytes().unwrap();
    e.reset().unwrap();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let a = rng.gen_range(0..e.num_actions());
        let mut slot = vec![0u8; bytes];
        slot[0..4].copy_from_slice(&(a as u32).to_le_bytes());
        slot[4..8].copy_from_slice(&rng.gen::<f32>().to_le_bytes());
        slot[16..16 + layout.obs_bytes].copy_from_slice(e.obs());
        out.push(slot);
        let s = e.step(a).unwrap();
        if s.game_over || s.truncated {
            e.reset().unwrap();
        }
    }
    out
}

struct Codec {
    name: &'static str,
    compress: fn(&[u8]) -> Vec<u8>,
    decompress: fn(&[u8], usize) -> Vec<u8>,
}

const CODECS: [Codec; 3] = [
    Codec {
        name: "lz4 (lz4_flex block)",
        compress: |b| lz4_flex::block::compress(b),
        decompress: |b, n| lz4_flex::block::decompress(b, n).unwrap(),
    },
    Codec {
        name: "zstd level 1",
        compress: |b| zstd::bulk::compress(b, 1).unwrap(),
        decompress: |b, n| zstd::bulk::decompress(b, n).unwrap(),
    },
    Codec {
        name: "zstd level 3",
        compress: |b| zstd::bulk::compress(b, 3).unwrap(),
        decompress: |b, n| zstd::bulk::decompress(b, n).unwrap(),
    },
];

/// Compresses each of `messages` with every codec; prints bytes per `unit` and times.
fn measure(what: &str, messages: &[Vec<u8>], units_per_message: usize, unit: &str) {
    println!("{what}:");
    for c in &CODECS {
        let (mut bytes, mut t_c, mut t_d) = (0usize, 0f64, 0f64);
        for m in messages {
            let t = Instant::now();
            let z = (c.compress)(m);
            t_c += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let back = (c.decompress)(&z, m.len());
            t_d += t.elapsed().as_secs_f64();
            assert_eq!(&back, m);
            bytes += z.len();
        }
        let n = messages.len() as f64;
        println!(
            "  {:22} {:>10.0} bytes per {unit} (raw {}), compress {:.2} ms, decompress {:.2} ms per message",
            c.name,
            bytes as f64 / (n * units_per_message as f64),
            messages[0].len() / units_per_message,
            1e3 * t_c / n,
            1e3 * t_d / n
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let game = args.get(1).map_or("Breakout", String::as_str);
    let per = 64;
    let steps = 64 * 40;
    let one = slots_of(game, steps, 1);
    let messages: Vec<Vec<u8>> = one.chunks(per).map(|c| c.concat()).collect();
    measure(
        &format!("{game} transitions, one actor, 64 per message"),
        &messages,
        per,
        "transition",
    );
    let four: Vec<Vec<Vec<u8>>> = (1..=4).map(|s| slots_of(game, steps / 4, s)).collect();
    let interleaved: Vec<Vec<u8>> = (0..steps / 4)
        .flat_map(|i| four.iter().map(move |a| a[i].clone()))
        .collect();
    let messages: Vec<Vec<u8>> = interleaved.chunks(per).map(|c| c.concat()).collect();
    measure(
        &format!("{game} transitions, 4 actors interleaved, 64 per message"),
        &messages,
        per,
        "transition",
    );
    let weights: Vec<f32> = match args.get(2) {
        Some(path) => {
            let ckpt = async_rl::checkpoint::load(std::path::Path::new(path)).unwrap();
            let mut names: Vec<&String> = ckpt.params.keys().collect();
            names.sort();
            names
                .iter()
                .flat_map(|n| Vec::<f32>::try_from(ckpt.params[*n].flatten(0, -1)).unwrap())
                .collect()
        }
        None => {
            let net = async_rl::model::AgentNetwork::new(
                async_rl::config::Network::Nips,
                async_rl::env::ObsSpec::Frames([4, 84, 84]),
                4,
                tch::Device::Cpu,
            );
            let mut flat = vec![0f32; net.numel()];
            net.flat_params_into(&mut flat);
            flat
        }
    };
    let raw: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let what = match args.get(2) {
        Some(p) => format!("weights of {p} ({} parameters)", weights.len()),
        None => format!(
            "weights of an untrained nips network ({} parameters)",
            weights.len()
        ),
    };
    measure(&what, &[raw], 1, "snapshot");
}
