//! `play`: loads a checkpoint and plays whole games with it, for people: shows them on a
//! terminal, records one as a GIF, or evaluates the checkpoint by the standard protocol; see
//! `play --help`.
//!
//! Everything it needs (environment, preprocessing, network) comes from the checkpoint. Games
//! are whole games (the loss of a life is not terminal), scored by the unclipped game score,
//! and end at game over or their frame limit. The playing itself is the library's
//! [`async_rl::eval::evaluate_with`]; this file adds the screen, the GIF and the report.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_rl::config::DeviceChoice;
use async_rl::env::{EnvId, Environment};
use async_rl::eval::{self, Event, Protocol, Report};
use async_rl::model::AgentNetwork;
use async_rl::policy::ActionPolicy;
use async_rl::recording::GifRecorder;
use async_rl::render::TerminalScreen;
use async_rl::rules::{Head, RULES};
use async_rl::{checkpoint, device, env};
use clap::{Parser, ValueEnum};
use rand::{rngs::StdRng, SeedableRng};

/// Emulator frames per second of game time.
const GAME_FPS: f64 = 60.0;
/// Largest `--fps`.
const MAX_FPS: f64 = 1000.0;

/// How `play` and the evaluator pick an actor-critic network's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyChoice {
    /// Sample from the policy's softmax (how the A3C paper evaluates).
    Sample,
    /// The most probable action.
    Greedy,
}

/// Play Atari games with a trained checkpoint: watch them, record one, or evaluate.
#[derive(Parser, Debug)]
#[command(name = "play", version, allow_negative_numbers = true)]
struct Args {
    /// Checkpoint file written by `learner` (e.g. runs/Breakout/model-1250000.safetensors;
    /// an older build's .pt file is read too, with a warning)
    #[arg(long)]
    model: PathBuf,
    /// Number of whole games to play [default: 5, or 30 with --eval]
    #[arg(long)]
    episodes: Option<usize>,
    /// Q-network checkpoints: probability of a random action [default: 0.05, the usual
    /// evaluation setting]
    #[arg(long)]
    epsilon: Option<f64>,
    /// Policy-network checkpoints (the actor-critic rules; a Q-network checkpoint refuses this
    /// flag and names them): sample actions from the policy (how the A3C paper evaluates) or
    /// take the most probable one [default: sample]
    #[arg(long, value_enum)]
    policy: Option<PolicyChoice>,
    /// Random seed for the emulator and the random actions
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device for the network: cpu, auto, cuda or cuda:N
    #[arg(long, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// How to show the games: `terminal` draws the screen in colour at the game's speed,
    /// `none` prints one line per game; `auto` is `terminal` when stdout is a terminal (and the
    /// game has a screen), except with --eval
    #[arg(long, value_enum, default_value_t = Render::Auto)]
    render: Render,
    /// Frames per second of the terminal display and of the GIF, one frame per agent step
    /// [default: the game's speed, 60 / frame skip = 15]
    #[arg(long)]
    fps: Option<f64>,
    /// Record the first game as an animated GIF (original colours, 160x210) at this path
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,
    /// Record every K-th agent step of the game [default: 1]
    #[arg(long, value_name = "K")]
    record_every: Option<usize>,
    /// Stop recording after N frames [default: the whole first game]
    #[arg(long, value_name = "N")]
    record_frames: Option<usize>,
    /// Evaluate by the standard protocol: 30 games (unless --episodes), up to 30 no-op
    /// frames at the start, epsilon 0.05 (unless --epsilon), no sticky actions; prints mean,
    /// median, std, min and max and writes them as JSON next to the model
    #[arg(long)]
    eval: bool,
    /// Sticky actions (repeat_action_probability 0.25, Machado et al. 2018): with --eval, its
    /// protocol (written to <model>.eval-sticky.json); without, for watching
    #[arg(long)]
    sticky: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Render {
    Auto,
    Terminal,
    None,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let problems = check_flags(&args);
    if !problems.is_empty() {
        for p in problems {
            async_rl::say_err!("error: {p}");
        }
        return ExitCode::from(2);
    }
    match play(&args) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            async_rl::say_err!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every flag with a bad value, each naming the flag and what is valid.
fn check_flags(args: &Args) -> Vec<String> {
    let mut e = Vec::new();
    if args.episodes == Some(0) {
        e.push("--episodes 0: must be at least 1".to_string());
    }
    if let Some(eps) = args.epsilon.filter(|e| !(0.0..=1.0).contains(e)) {
        e.push(format!("--epsilon {eps}: must be in [0, 1]"));
    }
    if let Some(fps) = args.fps {
        if !(fps > 0.0 && fps <= MAX_FPS) {
            e.push(format!("--fps {fps}: must be a number in (0, {MAX_FPS}]"));
        }
    }
    for (flag, value) in [
        ("--record-every", args.record_every),
        ("--record-frames", args.record_frames),
    ] {
        match value {
            Some(0) => e.push(format!("{flag} 0: must be at least 1")),
            Some(_) if args.record.is_none() => {
                e.push(format!("{flag}: only applies with --record PATH"))
            }
            _ => {}
        }
    }
    e
}

enum Outcome {
    Done,
    Interrupted,
}

/// What the observer of the games shows and records.
struct Watch {
    game: String,
    episodes: usize,
    /// Seconds one agent step is shown for (display and GIF).
    step_s: f64,
    screen: Option<(usize, usize, Vec<u8>)>,
    terminal: Option<TerminalScreen>,
    recorder: Option<GifRecorder>,
    record_every: usize,
    record_frames: usize,
    record_path: PathBuf,
    /// Steps of the first game so far (the reset counts as step 0).
    recorded_steps: usize,
    /// Lines for stdout: printed at once without a terminal display, after it otherwise.
    lines: Vec<String>,
    next_draw: Instant,
    stop: Arc<AtomicBool>,
    error: Option<anyhow::Error>,
}

impl Watch {
    fn say(&mut self, line: String) {
        if self.terminal.is_some() {
            self.lines.push(line);
        } else {
            async_rl::say!("{line}");
        }
    }

    fn observe(&mut self, env: &mut dyn Environment, event: Event) -> ControlFlow<()> {
        match self.try_observe(env, event) {
            Ok(()) if !self.stop.load(Ordering::SeqCst) => ControlFlow::Continue(()),
            Ok(()) => ControlFlow::Break(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    fn try_observe(&mut self, env: &mut dyn Environment, event: Event) -> Result<()> {
        let episode = match event {
            Event::Reset { episode } | Event::Step { episode, .. } => episode,
            Event::Finished { episode, result } => {
                let cut = if result.truncated { " (truncated)" } else { "" };
                self.say(format!(
                    "episode {episode}: score {}, frames {}{cut}",
                    result.score, result.frames
                ));
                if episode == 1 {
                    self.finish_recording()?;
                }
                return Ok(());
            }
        };
        if self.terminal.is_none() && self.recorder.is_none() {
            return Ok(());
        }
        let Some((w, h, rgb)) = &mut self.screen else {
            return Ok(());
        };
        let (w, h) = (*w, *h);
        env.screen_rgb(rgb)?;
        if let Some(rec) = &mut self.recorder {
            if self.recorded_steps.is_multiple_of(self.record_every) {
                rec.push(rgb, self.step_s * self.record_every as f64)?;
            }
            self.recorded_steps += 1;
            if rec.frames() >= self.record_frames {
                self.finish_recording()?;
            }
        }
        if let Some(term) = &mut self.terminal {
            let status = format!(
                "{}  game {episode}/{}  score {}  frame {}  {} fps  Ctrl-C stops",
                self.game,
                self.episodes,
                env.episode_return(),
                env.episode_frames(),
                (1000.0 / self.step_s).round() / 1000.0
            );
            let rgb = self.screen.as_ref().map_or(&[][..], |s| &s.2[..]);
            term.draw(rgb, w, h, &status)
                .context("drawing on the terminal")?;
            self.pace();
        }
        Ok(())
    }

    /// Waits until the next frame is due (game speed or --fps), in slices short enough for
    /// Ctrl-C to stop it promptly; a display that falls behind starts over rather than rushing.
    fn pace(&mut self) {
        self.next_draw += Duration::from_secs_f64(self.step_s);
        let now = Instant::now();
        if self.next_draw < now {
            self.next_draw = now;
        }
        while !self.stop.load(Ordering::SeqCst) {
            let left = self.next_draw.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    fn finish_recording(&mut self) -> Result<()> {
        if let Some(rec) = self.recorder.take() {
            let frames = rec.frames();
            let bytes = rec
                .finish()
                .with_context(|| format!("--record {}", self.record_path.display()))?;
            self.say(format!(
                "recorded {frames} frames of game 1 to {} ({} KB)",
                self.record_path.display(),
                bytes.div_ceil(1024)
            ));
        }
        Ok(())
    }
}

fn play(args: &Args) -> Result<Outcome> {
    let (device, _) = device::select(args.device)?;
    let ckpt = checkpoint::load(&args.model)?;
    let st = &ckpt.state;
    let cfg = &st.config;
    let id = cfg
        .env_id()
        .map_err(|e| anyhow!("checkpoint {}: {e}", args.model.display()))?;
    let game = id.name().to_string();
    if args.sticky && !matches!(id, EnvId::Atari(_)) {
        bail!("--sticky: {game} has no sticky actions (they are an Atari emulator setting)");
    }
    let actor_critic = cfg.learner.algorithm.head == Head::ActorCritic;
    let policy = action_policy(args, actor_critic, cfg.learner.algorithm.name)?;
    let epsilon = match policy {
        ActionPolicy::EpsilonGreedy(e) => e,
        ActionPolicy::Sample => 0.0,
    };
    let policy_name = match (actor_critic, policy) {
        (false, _) => "epsilon-greedy",
        (true, ActionPolicy::Sample) => "sample",
        (true, ActionPolicy::EpsilonGreedy(_)) => "greedy",
    };
    let protocol = args.eval.then(|| Protocol {
        epsilon,
        ..Protocol::new(args.sticky)
    });
    let trained = cfg.env_settings(args.seed);
    let mut settings = match &protocol {
        Some(p) => p.env_settings(&trained),
        None => eval::play_settings(&trained, args.sticky),
    };
    // A Gymnasium environment renders (render_mode="rgb_array") only when its screen is shown
    // or recorded: rendering costs a frame per step.
    settings.render = args.record.is_some()
        || args.render == Render::Terminal
        || (args.render == Render::Auto && !args.eval && std::io::stdout().is_terminal());
    let mut env = env::make(&id, &settings)?;
    if env.num_actions() != st.num_actions || env.obs_spec() != st.obs {
        bail!(
            "checkpoint {}: trained with {} actions and observations {:?}, {} has {} and {:?}",
            args.model.display(),
            st.num_actions,
            st.obs,
            game,
            env.num_actions(),
            env.obs_spec()
        );
    }
    let screen = env.screen_size();
    if screen.is_none() {
        if args.render == Render::Terminal {
            bail!("--render terminal: {game} has no screen to show (use --render none)");
        }
        if let Some(path) = &args.record {
            bail!(
                "--record {}: {game} has no screen to record",
                path.display()
            );
        }
    }
    let terminal = match args.render {
        Render::Terminal => true,
        Render::None => false,
        Render::Auto => screen.is_some() && !args.eval && std::io::stdout().is_terminal(),
    };
    let recorder = match (&args.record, screen) {
        (Some(path), Some((w, h))) => Some(
            GifRecorder::create(path, w, h)
                .with_context(|| format!("--record {}", path.display()))?,
        ),
        _ => None,
    };
    let spec = async_rl::model::NetSpec {
        arch: st.network,
        ..async_rl::rules::net_spec(cfg, st.obs, &env.action_spec())
            .map_err(|e| anyhow!("checkpoint {}: {e}", args.model.display()))?
    };
    let mut model = AgentNetwork::new(spec, st.obs, st.num_actions, device);
    model
        .load_named(&ckpt.params)
        .map_err(|e| anyhow!("checkpoint {}: {e}", args.model.display()))?;
    let episodes = args
        .episodes
        .unwrap_or(if args.eval { eval::EPISODES } else { 5 });
    let acting = match (actor_critic, policy) {
        (false, ActionPolicy::EpsilonGreedy(e)) => format!("epsilon {e}"),
        (_, ActionPolicy::Sample) => "actions sampled from the policy".to_string(),
        (true, _) => "the policy's most probable actions".to_string(),
    };
    async_rl::say!(
        "{}: {} ({:?} network, --algorithm {}) after {} frames; {acting}",
        args.model.display(),
        st.game,
        st.network,
        cfg.learner.algorithm,
        st.frames,
    );
    if let Some(p) = &protocol {
        async_rl::say!(
            "evaluation, {} protocol: {episodes} games, {acting}, up to {} no-op frames, \
             sticky actions {}, a lost life not terminal, games cut at {} frames, seed {}",
            protocol_name(args.sticky),
            p.noop_max,
            p.repeat_action_probability,
            settings.max_episode_frames,
            args.seed
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let step_s = match args.fps {
        Some(fps) => 1.0 / fps,
        None => f64::from(settings.frame_skip.max(1)) / GAME_FPS,
    };
    let mut watch = Watch {
        game: game.clone(),
        episodes,
        step_s,
        screen: screen.map(|(w, h)| (w, h, vec![0u8; w * h * 3])),
        terminal: if terminal {
            Some(TerminalScreen::enter().context("preparing the terminal")?)
        } else {
            None
        },
        recorder,
        record_every: args.record_every.unwrap_or(1),
        record_frames: args.record_frames.unwrap_or(usize::MAX),
        record_path: args.record.clone().unwrap_or_default(),
        recorded_steps: 0,
        lines: Vec::new(),
        next_draw: Instant::now(),
        stop: stop.clone(),
        error: None,
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let result = eval::evaluate_with(
        &model,
        env.as_mut(),
        episodes,
        policy,
        &mut rng,
        |env, event| watch.observe(env, event),
    );
    // Give the terminal back before anything else is printed.
    watch.terminal = None;
    for line in std::mem::take(&mut watch.lines) {
        async_rl::say!("{line}");
    }
    let finished = watch.finish_recording();
    for line in std::mem::take(&mut watch.lines) {
        async_rl::say!("{line}");
    }
    let result = result?;
    if let Some(e) = watch.error.take() {
        return Err(e);
    }
    finished?;

    let interrupted = result.stopped;
    if interrupted {
        async_rl::say_err!(
            "stopped: {} of {episodes} games finished",
            result.episodes.len()
        );
    }
    let Some(games) = result.summary() else {
        return Ok(Outcome::Interrupted);
    };
    let stats = &games.stats;
    async_rl::say!(
        "{} episodes: mean {:.2}, median {}, std {:.2}, min {}, max {}",
        games.episodes,
        stats.mean,
        stats.median,
        stats.std,
        stats.min,
        stats.max
    );
    if let (Some(p), false) = (protocol, interrupted) {
        let path = eval::report_path(&args.model, args.sticky);
        let report = Report {
            model: args.model.display().to_string(),
            game,
            frames_trained: st.frames,
            protocol: protocol_name(args.sticky).to_string(),
            policy: policy_name.to_string(),
            settings: p,
            max_episode_frames: settings.max_episode_frames,
            frame_skip: settings.frame_skip,
            seed: args.seed,
            games,
        };
        eval::write_report(&path, &report).context("--eval: the scores above are not saved")?;
        async_rl::say!("wrote {}", path.display());
    }
    Ok(if interrupted {
        Outcome::Interrupted
    } else {
        Outcome::Done
    })
}

/// How `play` picks actions for a checkpoint of `algorithm`: `--epsilon` for Q-networks,
/// `--policy` for actor-critic ones; each flag is refused for the other kind.
fn action_policy(args: &Args, actor_critic: bool, algorithm: &str) -> Result<ActionPolicy> {
    if actor_critic {
        if let Some(e) = args.epsilon {
            bail!(
                "--epsilon {e}: this checkpoint is --algorithm {algorithm}, a policy network that \
                 samples its actions; choose --policy sample (the default) or --policy greedy"
            );
        }
        Ok(match args.policy.unwrap_or(PolicyChoice::Sample) {
            PolicyChoice::Sample => ActionPolicy::Sample,
            PolicyChoice::Greedy => ActionPolicy::EpsilonGreedy(0.0),
        })
    } else {
        if let Some(p) = args.policy {
            bail!(
                "--policy {}: only for actor-critic checkpoints (--algorithm {}); this one is \
                 --algorithm {algorithm}, a Q-network: set --epsilon instead (0 is greedy)",
                format!("{p:?}").to_lowercase(),
                RULES
                    .iter()
                    .filter(|r| r.head == Head::ActorCritic)
                    .map(|r| r.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(ActionPolicy::EpsilonGreedy(
            args.epsilon.unwrap_or(eval::EPSILON),
        ))
    }
}

fn protocol_name(sticky: bool) -> &'static str {
    if sticky {
        "sticky"
    } else {
        "standard"
    }
}
