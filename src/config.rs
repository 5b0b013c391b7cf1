//! Every hyperparameter of a run, as one documented struct that is at once the command line
//! (clap), the TOML config file format (serde) and the record saved in each checkpoint.
//!
//! Precedence, lowest first: built-in defaults, the config stored in a checkpoint being resumed,
//! the `--config` TOML file, flags given on the command line. Validation reports every invalid
//! value at once, each naming its flag and what would be valid, before anything starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::env::{self, EnvId, EnvSettings};
pub use crate::returns::Algorithm;

/// The Q-network architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// `nips` for frame observations, `mlp` for vector observations.
    Auto,
    /// Mnih et al. 2013 (NIPS workshop) and the A3C paper: conv 16x8x8/4, conv 32x4x4/2, fc 256.
    Nips,
    /// Mnih et al. 2015 (Nature): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, fc 512.
    Nature,
    /// For vector observations (CartPole): fc 64, fc 64.
    Mlp,
}

/// How the replay memory stores its (deduplicated) observation pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayCompression {
    /// LZ4 blocks (lz4_flex): an Atari frame of 7,056 bytes takes a few hundred.
    Lz4,
    /// Raw bytes: more memory, no decompression when sampling.
    None,
}

/// Where the learner's network lives (`auto`, `cpu`, `cuda` or `cuda:N`). Actors always run
/// on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch_cuda loads and a GPU is usable, else the CPU.
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is device 0) or an error: never falls back silently.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!(
                        "`{s}`: expected auto, cpu, cuda or cuda:N (N = 0, 1, ...: a GPU's index)"
                    )
                }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// What a run exercises: the phases of `scripts/bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchPhase {
    /// Actors step their emulators with random actions and full preprocessing: no network, no
    /// queue. The ceiling of the machine.
    Limit,
    /// Actors act with their networks and fill the queue; the learner drains it, no training.
    Acting,
    /// The full system.
    #[default]
    Training,
}

/// Where actors' forward passes run (`--inference`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceChoice {
    /// `learner` when the learner (or --inference-device) is a GPU and no actor host connects
    /// (--listen), else `actor`.
    Auto,
    /// Each actor process runs its own forward passes on a CPU copy of the newest weight
    /// snapshot (Mnih et al. 2016).
    Actor,
    /// Actors send their observations to the learner process, which answers every pending
    /// request in one batched forward pass of its newest weights (SEED RL).
    Learner,
}

/// Where RMSProp's epsilon goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RmspropForm {
    /// `g / (sqrt(v) + eps)`: torch.optim.RMSprop and OpenAI baselines (eps 1e-5).
    EpsOutside,
    /// `g / sqrt(v + eps)`: the A3C paper's RMSProp (Mnih et al. 2016, section 4 and S2) and
    /// TensorFlow's, as its reproductions use it (eps 0.1).
    EpsInside,
}

/// How `play` and the evaluator pick an actor-critic network's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyChoice {
    /// Sample from the policy's softmax (how the A3C paper evaluates).
    Sample,
    /// The most probable action.
    Greedy,
}

/// The regression loss between Q(s, a) and the n-step return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Smooth L1 with delta 1 (the DQN error clipping).
    Huber,
    Mse,
}

/// Train an agent on an Atari game (or CartPole) with asynchronous n-step Q-learning or SARSA
/// (Mnih et al. 2016), DQN from a replay memory, A3C, or IMPALA (V-trace).
///
/// Frames are emulator frames (agent steps x frame skip), summed over all actors.
#[derive(Parser, Clone, Debug, PartialEq, Serialize, Deserialize)]
// Negative numbers are values (`--lr -1` is refused by validation as a learning rate, not
// taken for an unknown flag `-1`).
#[command(name = "learner", version, about, long_about = None, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Game: an ALE name (Breakout, space_invaders, SpaceInvaders) or a Gym id
    /// (Breakout-v0, BreakoutNoFrameskip-v4, ALE/Breakout-v5), case-insensitive
    #[arg(long, default_value = "Breakout")]
    pub game: String,
    /// Play this ROM file instead of the bundled one; its name must be ALE's (e.g. breakout.bin)
    #[arg(long)]
    pub rom: Option<PathBuf>,
    /// Number of actor processes
    #[arg(long, default_value_t = 16)]
    pub processes: usize,
    /// Environments per actor process, stepped in lockstep with one batched forward pass
    #[arg(long, default_value_t = 1)]
    pub envs_per_actor: usize,
    /// Learning rule: n-step Q-learning, n-step SARSA (bootstraps with the action taken next),
    /// DQN from a replay memory with a target network, the advantage actor-critic (A3C), or
    /// IMPALA's V-trace actor-critic
    #[arg(long, value_enum, default_value_t = Algorithm::Q)]
    pub algorithm: Algorithm,
    /// n of the n-step return (1 = 1-step Q-learning)
    #[arg(long, default_value_t = 5)]
    pub n_step: usize,
    /// Discount factor gamma
    #[arg(long, default_value_t = 0.99)]
    pub gamma: f32,
    /// Transitions per learner update (impala: segments of --unroll steps)
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Slots in the shared-memory experience queue, split evenly across actors (impala: segments)
    #[arg(long, default_value_t = 256)]
    pub queue_size: usize,
    /// Initial learning rate, annealed linearly to 0 over --lr-decay frames
    #[arg(long, default_value_t = 7e-4)]
    pub lr: f64,
    /// Frames over which the learning rate anneals to 0
    #[arg(long, default_value_t = 80_000_000)]
    pub lr_decay: u64,
    /// RMSProp decay (squared-gradient moving average)
    #[arg(long, default_value_t = 0.99)]
    pub rms_decay: f64,
    /// RMSProp epsilon (added to the root mean square, or inside it: --rmsprop-form)
    #[arg(long, default_value_t = 1e-5)]
    pub rms_eps: f64,
    /// RMSProp's form: g / (sqrt(v) + eps) (torch, OpenAI baselines) or g / sqrt(v + eps)
    /// (the A3C paper)
    #[arg(long, value_enum, default_value_t = RmspropForm::EpsOutside)]
    pub rmsprop_form: RmspropForm,
    /// Clip the global gradient norm to this value
    #[arg(long, default_value_t = 40.0)]
    pub max_grad_norm: f64,
    /// Regression loss
    #[arg(long, value_enum, default_value_t = Loss::Huber)]
    pub loss: Loss,
    /// Frames over which epsilon anneals from 1 to each actor's final epsilon
    #[arg(long, default_value_t = 4_000_000)]
    pub eps_decay: u64,
    /// Final epsilons that actors draw from (comma-separated)
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.1, 0.01, 0.5])]
    pub final_epsilons: Vec<f64>,
    /// Probabilities of the final epsilons (comma-separated, summing to 1)
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.4, 0.3, 0.3])]
    pub final_epsilon_probs: Vec<f64>,
    /// Publish a weight snapshot to the actors every this many frames (emulator frames summed
    /// over actors, as every schedule here; the Keras/Theano variant's 10,000 transitions
    /// consumed are 40,000 frames at frame skip 4)
    #[arg(long, default_value_t = 10_000)]
    pub sync_frames: u64,
    /// Save a checkpoint every this many frames (and at the end)
    #[arg(long, default_value_t = 250_000)]
    pub save_freq: u64,
    /// Stop after this many frames, with a final checkpoint
    #[arg(long, default_value_t = 80_000_000)]
    pub max_frames: u64,
    /// Stop (with a final checkpoint) once the mean return of the last 100 episodes reaches this
    #[arg(long)]
    pub target_return: Option<f64>,
    /// Q-network architecture
    #[arg(long, value_enum, default_value_t = Network::Auto)]
    pub network: Network,
    /// Dueling head: V(s) and A(s, a) streams, Q = V + A - mean A (Wang et al. 2016); any
    /// network and rule
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dueling: bool,
    /// dqn: transitions the replay memory holds (a FIFO ring; Atari about 7.4 KB each)
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_size: usize,
    /// dqn: how the replay memory stores observation frames (each distinct frame once either
    /// way)
    #[arg(long, value_enum, default_value_t = ReplayCompression::Lz4)]
    pub replay_compression: ReplayCompression,
    /// dqn: frames (from this start) before the first update, while the memory fills
    #[arg(long, default_value_t = 200_000)]
    pub learning_starts: u64,
    /// dqn: transitions trained on per transition inserted, enforced both ways (8: the Nature
    /// DQN's batch of 32 every 4 agent steps)
    #[arg(long, default_value_t = 8.0)]
    pub replay_ratio: f64,
    /// dqn: copy the online network to the target network every this many updates
    #[arg(long, default_value_t = 2000)]
    pub target_update: u64,
    /// dqn: double Q-learning (the online network picks the next action, the target network
    /// values it; van Hasselt et al. 2016)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub double_q: bool,
    /// dqn: proportional prioritized replay (Schaul et al. 2016)
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub prioritized: bool,
    /// dqn --prioritized: priority exponent alpha, p = (|TD error| + 1e-6)^alpha
    #[arg(long, default_value_t = 0.6)]
    pub priority_alpha: f64,
    /// dqn --prioritized: importance-sampling exponent beta at the start, annealed linearly to
    /// 1 over --max-frames
    #[arg(long, default_value_t = 0.4)]
    pub priority_beta: f64,
    /// a3c, impala: weight of the value loss (R - V(s))^2 against the policy loss
    #[arg(long, default_value_t = 0.5)]
    pub value_coef: f64,
    /// a3c, impala: weight of the entropy bonus H(pi(.|s)) (subtracted from the loss)
    #[arg(long, default_value_t = 0.01)]
    pub entropy_coef: f64,
    /// impala: agent steps per segment an actor pushes (the unroll length)
    #[arg(long, default_value_t = 20)]
    pub unroll: usize,
    /// impala: V-trace's rho-bar, the clip of the importance weights of the value targets and
    /// the policy gradient (inf: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub vtrace_rho: f64,
    /// impala: V-trace's c-bar, the clip of the trace-cutting weights (inf: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub vtrace_c: f64,
    /// dqn: also write the replay memory beside each checkpoint (model-N.replay), restored by
    /// --checkpoint; without it a resumed run starts with an empty memory
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub save_replay: bool,
    /// Device of the learner's network: auto, cpu, cuda or cuda:N (the GPU of index N)
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Where actors' forward passes run: `actor` (each actor's CPU copy of the newest
    /// snapshot), `learner` (batched on the learner's device with its newest weights), or
    /// `auto` (learner on a GPU, else actor)
    #[arg(long, value_enum, default_value_t = InferenceChoice::Auto)]
    pub inference: InferenceChoice,
    /// --inference learner: the longest a request waits for a fuller batch, in microseconds
    /// (a batch is computed at once when every actor's environments are waiting)
    #[arg(long, default_value_t = 2000)]
    pub inference_wait_us: u64,
    /// --inference learner: the device of the inference server: cpu, cuda or cuda:N [default:
    /// the learner's --device], e.g. one GPU serves the actors while another trains
    #[arg(long)]
    pub inference_device: Option<DeviceChoice>,
    /// CPU threads of the learner's libtorch (more threads fight the actors for the cores)
    #[arg(long, default_value_t = 1)]
    pub learner_threads: usize,
    /// Niceness that actor processes add to the learner's (0-19): when the cores are
    /// oversubscribed, the learner, which every actor waits on, gets its share first
    #[arg(long, default_value_t = 10)]
    pub actor_nice: u32,
    /// Base random seed; actor i's emulator and exploration derive theirs from it
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Emulator frames per agent step (the observation is the max over the last two)
    #[arg(long, default_value_t = 4)]
    pub frame_skip: u32,
    /// Up to this many no-op actions at the start of each game
    #[arg(long, default_value_t = 30)]
    pub noop_max: u32,
    /// Sticky actions (Machado et al. 2018 use 0.25); a Gym id's own setting applies unless given
    #[arg(long)]
    pub repeat_action_probability: Option<f32>,
    /// Truncate games after this many frames (108,000 = 30 minutes of play)
    #[arg(long, default_value_t = 108_000)]
    pub max_episode_frames: u64,
    /// Treat the loss of a life as terminal for training (the game goes on)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub terminal_on_life_loss: bool,
    /// With --terminal-on-life-loss: restart play after a lost life as at a game's start (a
    /// no-op step, FIRE and action 2 on games that need FIRE, the frame stack refilled), as
    /// OpenAI baselines' EpisodicLifeEnv + FireResetEnv do; false: the agent presses FIRE
    /// itself
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub fire_on_life_loss: bool,
    /// Run directory for the config, checkpoints and metrics.csv [default: runs/<Game>]
    #[arg(long)]
    pub logdir: Option<PathBuf>,
    /// Seconds between metrics rows and progress log lines
    #[arg(long, default_value_t = 10.0)]
    pub log_interval: f64,
    /// Evaluate the current weights every this many frames on a separate actor process (0: never):
    /// the standard protocol (epsilon 0.05, up to 30 no-op starts, whole games, unclipped
    /// score), logged as eval/mean_return
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Games per periodic evaluation (--eval-every)
    #[arg(long, default_value_t = 10)]
    pub eval_episodes: usize,
    /// Keep only the newest this many checkpoints (0 keeps all); model-best.pt (the best
    /// --eval-every evaluation) is kept apart
    #[arg(long, default_value_t = 5)]
    pub keep_checkpoints: usize,
    /// Replace an actor that dies up to this many times over the run; one more death stops the
    /// run with a checkpoint and an error
    #[arg(long, default_value_t = 10)]
    pub max_actor_restarts: u32,
    /// Read settings from this TOML file (keys are the flag names); flags override it.
    /// Without it, a new run of a game uses configs/<game>.toml (the game's recommended rule and
    /// settings) or, with --algorithm, configs/<game>-<algorithm>.toml when there is one (see
    /// tuned_config); `none` uses only the built-in defaults
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Resume from a checkpoint: a frame count (model-<N>.pt in the run directory),
    /// `latest`, or a path
    #[arg(long)]
    #[serde(skip)]
    pub checkpoint: Option<String>,
    /// List the games that can be played and exit
    #[arg(long)]
    #[serde(skip)]
    pub list_games: bool,
    /// Also accept remote actor hosts (`learner --connect`) on this address, e.g.
    /// 0.0.0.0:7070 (port 0: a free port, printed); a non-loopback address needs
    /// --auth-token-file. With it, --processes may be 0 (every actor remote)
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(skip)]
    pub listen: Option<String>,
    /// With --listen: queue lanes kept for remote actor processes (each process of each host
    /// takes one; a host that asks for more than are free is refused)
    #[arg(long, default_value_t = default_remote_lanes())]
    #[serde(skip, default = "default_remote_lanes")]
    pub remote_lanes: usize,
    /// Be an actor host: run --processes actor processes here for the learner listening at
    /// HOST:PORT, which sends the game, network and settings (nothing else is configured
    /// here); train nothing. Reconnects when the learner restarts; exits when its run ends
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip)]
    pub connect: Option<String>,
    /// A file holding the run's shared secret: the learner (--listen) admits only hosts
    /// (--connect) that present the same one (compared in constant time)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub auth_token_file: Option<PathBuf>,
    /// TLS certificate (PEM) of this side: the learner's, with --listen; the host's client
    /// certificate for mutual TLS, with --connect. Needs --tls-key
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM). With --connect: TLS, trusting learners signed by it. With
    /// --listen: mutual TLS, admitting only hosts whose client certificate it signed
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_ca: Option<PathBuf>,
    /// With --connect and --tls-ca: the name the learner's certificate must carry [default:
    /// the host part of --connect]
    #[arg(long, value_name = "NAME")]
    #[serde(skip)]
    pub tls_domain: Option<String>,
    /// With --connect: give up (exit 1) after this many seconds without reaching the learner
    #[arg(long, default_value_t = default_reconnect_for())]
    #[serde(skip, default = "default_reconnect_for")]
    pub reconnect_for: f64,
    /// Benchmark phase, used by scripts/bench: limit, acting or training (the default)
    #[arg(long, value_enum, default_value_t = BenchPhase::Training, hide = true)]
    #[serde(skip)]
    pub bench_phase: BenchPhase,
}

/// `--remote-lanes`' default, also for configs read back from TOML or a checkpoint.
fn default_remote_lanes() -> usize {
    32
}

/// `--reconnect-for`'s default, also for configs read back from TOML or a checkpoint.
fn default_reconnect_for() -> f64 {
    600.0
}

/// Everything wrong with a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["learner"])
    }
}

/// Flag names (snake_case clap ids) that were given on the command line.
pub fn explicit_flags(matches: &ArgMatches) -> BTreeSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_string())
        .collect()
}

/// Parses the command line. Exits as clap does on --help and --version (status 0), and on a
/// usage error with clap's message made specific by [`explain`] (status 2).
pub fn parse_args() -> (Config, BTreeSet<String>) {
    let fail = |e: clap::Error| -> ! {
        if !e.use_stderr() {
            e.exit(); // --help, --version
        }
        crate::say_err!("{}", explain(&e).trim_end());
        std::process::exit(2)
    };
    let matches = Config::command()
        .try_get_matches()
        .unwrap_or_else(|e| fail(e));
    let cli = Config::from_arg_matches(&matches).unwrap_or_else(|e| fail(e));
    (cli, explicit_flags(&matches))
}

/// clap's message for a usage error, saying what a valid value looks like where Rust's number
/// parsers do not ("invalid digit found in string").
pub fn explain(e: &clap::Error) -> String {
    e.to_string()
        .replace(
            "invalid digit found in string",
            "expected a whole number of 0 or more (digits only, e.g. 16)",
        )
        .replace(
            "invalid float literal",
            "expected a number (e.g. 0.99 or 7e-4)",
        )
        .replace(
            "number too large to fit in target type",
            "too large for a 64-bit whole number",
        )
}

/// The config as a TOML table. Its f32 settings are written as the f64 of their shortest
/// decimal form, so `0.99` reads `0.99` in config.toml, not `0.9900000095367432` (the f32's
/// exact value widened). (Only here: bincode, which carries the config to the actors, keeps
/// f32s as they are.)
fn to_table(cfg: &Config) -> toml::Table {
    let mut table = toml::Table::try_from(cfg).expect("Config serializes to a TOML table");
    for key in ["gamma", "repeat-action-probability"] {
        if let Some(toml::Value::Float(x)) = table.get_mut(key) {
            *x = (*x as f32).to_string().parse().unwrap_or(*x);
        }
    }
    table
}

/// Reads a TOML config file into a table, with errors that name the file.
pub fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(vec![format!(
            "--config {}: cannot read it: {e}",
            path.display()
        )])
    })?;
    text.parse::<toml::Table>().map_err(|e| {
        ConfigError(vec![format!(
            "--config {}: not valid TOML: {e}",
            path.display()
        )])
    })
}

/// Merges, lowest precedence first: `base` (defaults or a checkpoint's config), the config
/// `file` (with its path, for errors), and the flags of `cli` listed in `explicit`. The run-only
/// fields (`config`, `checkpoint`, `list_games`, and the remote-host flags `listen`, `connect`,
/// `auth-token-file`, `tls-*`, `remote-lanes`, `reconnect-for`) come from `cli`.
pub fn merge(
    base: &Config,
    file: Option<(&Path, &toml::Table)>,
    cli: &Config,
    explicit: &BTreeSet<String>,
) -> Result<Config, ConfigError> {
    let mut table = to_table(base);
    let mut errors = Vec::new();
    if let Some((path, file)) = file {
        for (key, value) in file {
            if table_keys().contains(key.as_str()) {
                table.insert(key.clone(), value.clone());
            } else {
                errors.push(format!(
                    "--config {}: unknown key `{key}`; valid keys: {}",
                    path.display(),
                    table_keys().into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    let cli_table = to_table(cli);
    for id in explicit {
        let key = id.replace('_', "-");
        if let Some(v) = cli_table.get(&key) {
            table.insert(key, v.clone());
        } else {
            // An Option flag given on the command line always serializes; a missing key means
            // a run-only flag, handled below.
            table.remove(&key);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    let mut merged: Config = table.try_into().map_err(|e: toml::de::Error| {
        ConfigError(vec![format!(
            "--config {}: {}",
            file.map(|(p, _)| p.display().to_string())
                .unwrap_or_default(),
            e.message()
        )])
    })?;
    merged.config = cli.config.clone();
    merged.checkpoint = cli.checkpoint.clone();
    merged.list_games = cli.list_games;
    merged.bench_phase = cli.bench_phase;
    merged.listen = cli.listen.clone();
    merged.remote_lanes = cli.remote_lanes;
    merged.connect = cli.connect.clone();
    merged.auth_token_file = cli.auth_token_file.clone();
    merged.tls_cert = cli.tls_cert.clone();
    merged.tls_key = cli.tls_key.clone();
    merged.tls_ca = cli.tls_ca.clone();
    merged.tls_domain = cli.tls_domain.clone();
    merged.reconnect_for = cli.reconnect_for;
    Ok(merged)
}

/// Environment variable naming the directory of tuned per-game configs (`scripts/learner`
/// sets it to the repository's `configs/`); without it, `configs/` in the current directory.
pub const CONFIG_DIR_ENV: &str = "ASYNC_RL_CONFIG_DIR";

/// The tuned config of game `name` (its display name, e.g. `SpaceInvaders`) for a new run, in
/// `<dir>` = `$ASYNC_RL_CONFIG_DIR` or `configs`:
/// - without `--algorithm` (`algorithm` None): `<dir>/<game>.toml`, the settings and the rule
///   this project recommends for the game (`pong.toml` sets dqn, `breakout.toml` n-step Q);
/// - with `--algorithm R`: `<dir>/<game>-<r>.toml` (e.g. `pong-a3c.toml`) if it exists, for
///   n-step SARSA else `<dir>/<game>-q.toml`, else `<dir>/<game>.toml` if the rule it sets
///   (n-step Q when it sets none) is R, n-step Q and SARSA counting as one.
///
/// `<game>` is the name in lower case. A rule without a file that fits gets none: another
/// rule's settings (epsilons for Q, a replay memory for dqn) would not fit it. A `<game>.toml`
/// that cannot be read or parsed is returned as is, so that reading it reports the error.
pub fn tuned_config(name: &str, algorithm: Option<Algorithm>) -> Option<PathBuf> {
    let dir = std::env::var_os(CONFIG_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("configs"));
    tuned_config_in(&dir, name, algorithm)
}

/// [`tuned_config`] in the directory `dir`.
pub fn tuned_config_in(dir: &Path, name: &str, algorithm: Option<Algorithm>) -> Option<PathBuf> {
    let game = name.to_lowercase();
    let plain = dir.join(format!("{game}.toml"));
    let Some(rule) = algorithm else {
        return plain.is_file().then_some(plain);
    };
    let mut own = vec![dir.join(format!(
        "{game}-{}.toml",
        format!("{rule:?}").to_lowercase()
    ))];
    if rule == Algorithm::Sarsa {
        own.push(dir.join(format!("{game}-q.toml")));
    }
    if let Some(path) = own.into_iter().find(|p| p.is_file()) {
        return Some(path);
    }
    if !plain.is_file() {
        return None;
    }
    let fits = match read_file(&plain) {
        Ok(table) => match table.get("algorithm") {
            None => rule.shares_settings_with(Algorithm::Q),
            Some(toml::Value::String(s)) => {
                Algorithm::from_str(s, true).is_ok_and(|sets| rule.shares_settings_with(sets))
            }
            Some(_) => return Some(plain),
        },
        Err(_) => return Some(plain),
    };
    fits.then_some(plain)
}

/// The keys a config file may set: every flag but the run-only ones.
pub fn table_keys() -> BTreeSet<&'static str> {
    const KEYS: &[&str] = &[
        "game",
        "rom",
        "processes",
        "algorithm",
        "envs-per-actor",
        "n-step",
        "gamma",
        "batch-size",
        "queue-size",
        "lr",
        "lr-decay",
        "rms-decay",
        "rms-eps",
        "rmsprop-form",
        "max-grad-norm",
        "loss",
        "eps-decay",
        "final-epsilons",
        "final-epsilon-probs",
        "sync-frames",
        "save-freq",
        "max-frames",
        "target-return",
        "network",
        "dueling",
        "replay-size",
        "replay-compression",
        "learning-starts",
        "replay-ratio",
        "target-update",
        "double-q",
        "prioritized",
        "priority-alpha",
        "priority-beta",
        "save-replay",
        "value-coef",
        "entropy-coef",
        "unroll",
        "vtrace-rho",
        "vtrace-c",
        "device",
        "inference",
        "inference-wait-us",
        "inference-device",
        "learner-threads",
        "actor-nice",
        "seed",
        "frame-skip",
        "noop-max",
        "repeat-action-probability",
        "max-episode-frames",
        "terminal-on-life-loss",
        "fire-on-life-loss",
        "logdir",
        "log-interval",
        "keep-checkpoints",
        "max-actor-restarts",
        "eval-every",
        "eval-episodes",
    ];
    KEYS.iter().copied().collect()
}

impl Config {
    /// The environment this config plays, resolved from `--game` (and `--rom`).
    pub fn env_id(&self) -> Result<EnvId, String> {
        env::resolve(&self.game, self.rom.as_deref())
    }

    /// The network to build for observations `obs`: `--network` resolved (see
    /// [`crate::model::resolve_network`]), with a policy and value head for the actor-critic
    /// rules and a dueling head with `--dueling`.
    pub fn net_spec(&self, obs: crate::env::ObsSpec) -> Result<crate::model::NetSpec, String> {
        use crate::model::HeadKind;
        Ok(crate::model::NetSpec {
            arch: crate::model::resolve_network(self.network, obs)?,
            head: if self.algorithm.is_actor_critic() {
                HeadKind::ActorCritic
            } else if self.dueling {
                HeadKind::Dueling
            } else {
                HeadKind::Q
            },
        })
    }

    /// Environment settings for an instance seeded with `seed`.
    pub fn env_settings(&self, seed: u64) -> EnvSettings {
        EnvSettings {
            seed,
            frame_skip: self.frame_skip,
            noop_max: self.noop_max,
            repeat_action_probability: self.repeat_action_probability,
            terminal_on_life_loss: self.terminal_on_life_loss,
            fire_on_life_loss: self.fire_on_life_loss,
            max_episode_frames: self.max_episode_frames,
            rom: self.rom.clone(),
        }
    }

    /// The run directory: `--logdir`, or `runs/<Game>`.
    pub fn run_dir(&self) -> PathBuf {
        match (&self.logdir, self.env_id()) {
            (Some(dir), _) => dir.clone(),
            (None, Ok(id)) => PathBuf::from("runs").join(id.name()),
            (None, Err(_)) => PathBuf::from("runs").join(&self.game),
        }
    }

    /// The config as a TOML document (written to the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&to_table(self)).expect("Config serializes to TOML")
    }

    /// Every setting as (flag name, TOML value), sorted by name (for TensorBoard's
    /// hyperparameter table).
    pub fn key_values(&self) -> Vec<(String, String)> {
        to_table(self)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    }

    /// Reads a config written by [`Config::to_toml`] (e.g. by an older version, in a
    /// checkpoint): keys it lacks take today's defaults, so adding a flag keeps old checkpoints
    /// usable. Errors name the first bad key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let stored: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut table = to_table(&Config::default());
        for (key, value) in stored {
            if !table_keys().contains(key.as_str()) {
                return Err(format!("unknown setting `{key}`"));
            }
            table.insert(key, value);
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }
}

/// Serde adapter that stores a [`Config`] as its TOML text (see [`Config::from_toml`]), so a
/// binary record of it survives flags being added.
pub mod as_toml {
    use super::Config;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cfg: &Config, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&cfg.to_toml())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Config, D::Error> {
        let text = String::deserialize(d)?;
        Config::from_toml(&text).map_err(serde::de::Error::custom)
    }
}

#[path = "config_validate.rs"]
mod validate;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
