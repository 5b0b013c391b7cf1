//! `play`: loads a checkpoint and plays whole games with it; see `play --help`.
//!
//! Everything it needs (game, preprocessing, network) comes from the checkpoint. Games are
//! played as evaluation plays them: the loss of a life is not terminal, the score is the
//! unclipped game score, and a game ends at game over or the episode frame cap.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use async_rl::actor::epsilon_greedy;
use async_rl::config::DeviceChoice;
use async_rl::env::atari::{AtariConfig, AtariEnv};
use async_rl::{checkpoint, device, game, model::QNetwork};
use clap::Parser;
use rand::{rngs::StdRng, SeedableRng};
use tch::Tensor;

/// Play Atari games with a trained checkpoint and report the scores.
#[derive(Parser, Debug)]
#[command(name = "play", version, about)]
struct Args {
    /// Checkpoint file written by `learner` (e.g. runs/Breakout/model-1250000.pt)
    #[arg(long)]
    model: PathBuf,
    /// Number of whole games to play
    #[arg(long, default_value_t = 5)]
    episodes: usize,
    /// Probability of a random action (0.05 is the usual evaluation setting)
    #[arg(long, default_value_t = 0.05)]
    epsilon: f64,
    /// Random seed for the emulator and the random actions
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device for the network
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match play(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn play(args: &Args) -> Result<()> {
    if args.episodes == 0 {
        bail!("--episodes 0: must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.epsilon) {
        bail!("--epsilon {}: must be in [0, 1]", args.epsilon);
    }
    let (device, _) = device::select(args.device)?;
    let ckpt = checkpoint::load(&args.model)?;
    let st = &ckpt.state;
    let cfg = &st.config;
    let spec = match &cfg.rom {
        Some(_) => cfg.game_spec().map_err(anyhow::Error::msg)?,
        None => game::resolve_game(&st.rom)
            .with_context(|| format!("checkpoint {}: game `{}`", args.model.display(), st.rom))?,
    };
    let mut env = AtariEnv::new(&AtariConfig {
        repeat_action_probability: cfg.sticky(&spec),
        game: spec,
        rom_path: cfg.rom.clone(),
        seed: args.seed,
        frame_skip: cfg.frame_skip,
        noop_max: cfg.noop_max,
        terminal_on_life_loss: false,
        max_episode_frames: cfg.max_episode_frames,
    })?;
    if env.num_actions() != st.num_actions || env.obs_shape() != st.obs_shape {
        bail!(
            "checkpoint {}: trained with {} actions and observations {:?}, the game has {} and {:?}",
            args.model.display(), st.num_actions, st.obs_shape, env.num_actions(), env.obs_shape()
        );
    }
    let mut model = QNetwork::new(st.network, st.obs_shape, st.num_actions, device);
    model
        .load_named(&ckpt.params)
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", args.model.display()))?;
    println!(
        "{}: {} ({:?} network) after {} frames; epsilon {}",
        args.model.display(),
        st.game,
        st.network,
        st.frames,
        args.epsilon
    );

    let _no_grad = tch::no_grad_guard();
    let shape = st.obs_shape.map(|d| d as i64);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut q = vec![0f32; st.num_actions];
    let mut scores = Vec::with_capacity(args.episodes);
    for episode in 1..=args.episodes {
        env.reset();
        loop {
            let x = Tensor::from_slice(env.obs())
                .view([1, shape[0], shape[1], shape[2]])
                .to_device(device);
            model
                .forward(&x)
                .to_device(tch::Device::Cpu)
                .copy_data(&mut q, st.num_actions);
            let step = env.step(epsilon_greedy(&q, args.epsilon, &mut rng))?;
            if step.game_over || step.truncated {
                break;
            }
        }
        let score = env.episode_return() as f64;
        println!(
            "episode {episode}: score {score}, frames {}",
            env.episode_frames()
        );
        scores.push(score);
    }
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{} episodes: mean {mean:.2}, std {std:.2}, min {min}, max {max}",
        scores.len()
    );
    Ok(())
}
