//! `play`: loads a checkpoint and plays whole episodes with it; see `play --help`.
//!
//! Everything it needs (environment, preprocessing, network) comes from the checkpoint.
//! Episodes are played as evaluation plays them: the loss of a life is not terminal, the score
//! is the unclipped game score, and an episode ends at game over or its time limit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use async_rl::actor::epsilon_greedy;
use async_rl::config::DeviceChoice;
use async_rl::model::{obs_tensor, QNetwork};
use async_rl::{checkpoint, device, env};
use clap::Parser;
use rand::{rngs::StdRng, SeedableRng};

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
    let id = cfg
        .env_id()
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", args.model.display()))?;
    // Evaluation: a lost life is not terminal; everything else as in training.
    let mut settings = cfg.env_settings(args.seed);
    settings.terminal_on_life_loss = false;
    let mut env = env::make(&id, &settings)?;
    if env.num_actions() != st.num_actions || env.obs_spec() != st.obs {
        bail!(
            "checkpoint {}: trained with {} actions and observations {:?}, {} has {} and {:?}",
            args.model.display(),
            st.num_actions,
            st.obs,
            id.name(),
            env.num_actions(),
            env.obs_spec()
        );
    }
    let mut model = QNetwork::new(st.network, st.obs, st.num_actions, device);
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
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut q = vec![0f32; st.num_actions];
    let mut scores = Vec::with_capacity(args.episodes);
    for episode in 1..=args.episodes {
        env.reset();
        loop {
            let x = obs_tensor(st.obs, env.obs(), 1).to_device(device);
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
