//! The groups of settings every run reads, each flag defined once: its name (the flag and the
//! config-file key), its default, its help, and the checks of its values. [`super::Config`]
//! puts them together with the rule families' groups ([`crate::rules::RuleSettings`]); each
//! group is one heading of `learner --help`.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{BenchPhase, DeviceChoice, InferenceChoice, Network, RmspropForm};
use crate::optim::OptimizerKind;

/// What is trained on and how long: the game, the seed, when to stop and what to save.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Run")]
#[serde(rename_all = "kebab-case")]
pub struct RunSettings {
    /// Game: an ALE name (Breakout, space_invaders, SpaceInvaders) or a Gym id
    /// (Breakout-v0, BreakoutNoFrameskip-v4, ALE/Breakout-v5), case-insensitive
    #[arg(long, default_value = "Breakout")]
    pub game: String,
    /// Play this ROM file instead of the bundled one; its name must be ALE's (e.g. breakout.bin)
    #[arg(long)]
    pub rom: Option<PathBuf>,
    /// Base random seed; actor i's emulator and exploration derive theirs from it
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many frames, with a final checkpoint
    #[arg(long, default_value_t = 80_000_000)]
    pub max_frames: u64,
    /// Stop (with a final checkpoint) once the mean return of the last 100 episodes reaches this
    #[arg(long)]
    pub target_return: Option<f64>,
    /// Save a checkpoint every this many frames (and at the end)
    #[arg(long, default_value_t = 250_000)]
    pub save_freq: u64,
    /// Keep only the newest this many checkpoints (0 keeps all); model-best.safetensors (the best
    /// --eval-every evaluation) is kept apart
    #[arg(long, default_value_t = 5)]
    pub keep_checkpoints: usize,
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
}

impl RunSettings {
    /// Problems with the values, one line each, appended to `e`.
    pub fn validate(&self, e: &mut Vec<String>) {
        if let Some(t) = self.target_return {
            if !t.is_finite() {
                e.push(format!("--target-return {t}: must be a finite number"));
            }
        }
        if self.save_freq < 1 {
            e.push("--save-freq 0: must be at least 1".into());
        }
        if self.max_frames < 1 {
            e.push("--max-frames 0: must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.eval_episodes) {
            e.push(format!(
                "--eval-episodes {}: must be between 1 and 10000",
                self.eval_episodes
            ));
        }
        if !(self.log_interval.is_finite() && self.log_interval > 0.0) {
            e.push(format!(
                "--log-interval {}: must be a positive number of seconds",
                self.log_interval
            ));
        }
    }
}

/// How the environment is played: DeepMind's Atari preprocessing and the episode's limits.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Environment")]
#[serde(rename_all = "kebab-case")]
pub struct EnvironmentSettings {
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
    /// Multiply the rewards the agent trains on by this (after Atari's sign clipping; the
    /// reported returns stay unscaled): for environments whose rewards are large, e.g. 0.1 for
    /// Pendulum-v1's [-16.3, 0] per step, so that the values stay near 1
    #[arg(long, default_value_t = 1.0)]
    pub reward_scale: f32,
    /// Python interpreter for --game gymnasium:<id> (with gymnasium and your environment's
    /// packages); default: $VIRTUAL_ENV/bin/python, else $ASYNC_RL_CACHE/gym-venv/bin/python
    /// (scripts/setup), else python3
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Seconds a Gymnasium environment's Python worker may take to answer one request (make,
    /// reset, step, render) before it is killed and its actor fails, so a hung environment
    /// cannot hang the run
    #[arg(long, default_value_t = DEFAULT_PYTHON_TIMEOUT, value_name = "SECONDS")]
    pub python_timeout: f64,
}

/// `--python-timeout`'s default, in seconds.
pub const DEFAULT_PYTHON_TIMEOUT: f64 = 300.0;

impl EnvironmentSettings {
    /// Problems with the values, one line each, appended to `e`.
    pub fn validate(&self, e: &mut Vec<String>) {
        if !(1..=64).contains(&self.frame_skip) {
            e.push(format!(
                "--frame-skip {}: must be between 1 and 64",
                self.frame_skip
            ));
        }
        if self.noop_max > 1000 {
            e.push(format!("--noop-max {}: at most 1000", self.noop_max));
        }
        if let Some(p) = self.repeat_action_probability {
            if !(0.0..1.0).contains(&p) {
                e.push(format!(
                    "--repeat-action-probability {p}: must be in [0, 1)"
                ));
            }
        }
        if !(self.reward_scale.is_finite() && self.reward_scale > 0.0) {
            e.push(format!(
                "--reward-scale {}: must be a positive number",
                self.reward_scale
            ));
        }
        if !(self.python_timeout > 0.0 && self.python_timeout <= 86_400.0) {
            e.push(format!(
                "--python-timeout {}: must be more than 0 and at most 86400 seconds (a day)",
                self.python_timeout
            ));
        }
        if self.max_episode_frames < self.frame_skip as u64 {
            e.push(format!(
                "--max-episode-frames {}: must be at least --frame-skip {}",
                self.max_episode_frames, self.frame_skip
            ));
        }
    }
}

/// The actor processes of a machine: the learner's, or an actor host's (`--connect`), which
/// reads these and the remote settings only.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Actor processes")]
#[serde(rename_all = "kebab-case")]
pub struct ProcessSettings {
    /// Number of actor processes
    #[arg(long, default_value_t = 16)]
    pub processes: usize,
    /// Niceness that actor processes add to the learner's (0-19): when the cores are
    /// oversubscribed, the learner, which every actor waits on, gets its share first
    #[arg(long, default_value_t = 10)]
    pub actor_nice: u32,
    /// Replace an actor that dies up to this many times over the run; one more death stops the
    /// run with a checkpoint and an error
    #[arg(long, default_value_t = 10)]
    pub max_actor_restarts: u32,
}

impl ProcessSettings {
    /// Problems with the values, one line each, appended to `e`; `least` is the fewest
    /// processes allowed (0 where remote hosts may bring every actor).
    pub fn validate(&self, least: usize, e: &mut Vec<String>) {
        if !(least..=1024).contains(&self.processes) {
            e.push(if least == 0 {
                format!("--processes {}: must be between 0 and 1024", self.processes)
            } else {
                format!(
                    "--processes {}: must be between 1 and 1024 (0 only with --listen, where every actor is remote)",
                    self.processes
                )
            });
        }
        if self.actor_nice > 19 {
            e.push(format!(
                "--actor-nice {}: must be between 0 and 19 (Linux's niceness range)",
                self.actor_nice
            ));
        }
    }
}

/// How actors act and hand their experience over: environments per process, the queue, the
/// snapshot's refresh, and where their forward passes run.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Acting")]
#[serde(rename_all = "kebab-case")]
pub struct ActorSettings {
    /// Environments per actor process, stepped in lockstep with one batched forward pass
    #[arg(long, default_value_t = 1)]
    pub envs_per_actor: usize,
    /// Slots in the shared-memory experience queue, split evenly across actors (impala, ppo,
    /// appo: segments)
    #[arg(long, default_value_t = 256)]
    pub queue_size: usize,
    /// Publish a weight snapshot to the actors every this many frames (emulator frames summed
    /// over actors, as every schedule here; the Keras/Theano variant's 10,000 transitions
    /// consumed are 40,000 frames at frame skip 4). ppo and appo publish after every update
    /// instead
    #[arg(long, default_value_t = 10_000)]
    pub sync_frames: u64,
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
}

impl ActorSettings {
    /// Problems with the values, one line each, appended to `e`; `listening`: remote hosts
    /// may join (`--listen`).
    pub fn validate(&self, listening: bool, e: &mut Vec<String>) {
        if !(1..=256).contains(&self.envs_per_actor) {
            e.push(format!(
                "--envs-per-actor {}: must be between 1 and 256",
                self.envs_per_actor
            ));
        }
        if self.queue_size > 1 << 20 {
            e.push(format!("--queue-size {}: at most 1048576", self.queue_size));
        }
        if self.sync_frames < 1 {
            e.push("--sync-frames 0: must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.inference_wait_us) {
            e.push(format!(
                "--inference-wait-us {}: must be between 1 and 1000000 microseconds (1 s)",
                self.inference_wait_us
            ));
        }
        if self.inference == InferenceChoice::Learner && listening {
            e.push("--inference learner with --listen: the inference server serves this machine's actors only, and remote hosts act with their own snapshot copies; use --inference actor (or auto) with --listen".into());
        }
        if self.inference == InferenceChoice::Actor {
            if let Some(d) = self.inference_device {
                e.push(format!("--inference-device {d}: only with --inference learner (or auto), where the learner runs the actors' forward passes"));
            }
        }
    }
}

/// The learner: its rule, the discount and batch it trains with, and where it runs.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Learner")]
#[serde(rename_all = "kebab-case")]
pub struct LearnerSettings {
    /// The learning rule (each reads the settings of its own heading below; a setting given to
    /// a rule that does not read it is refused)
    #[arg(long, value_enum, default_value_t = crate::rules::Algorithm::default())]
    pub algorithm: crate::rules::Algorithm,
    /// Discount factor gamma
    #[arg(long, default_value_t = 0.99)]
    pub gamma: f32,
    /// Transitions per learner update (impala, ppo, appo: segments of --unroll steps)
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Device of the learner's network: auto, cpu, cuda or cuda:N (the GPU of index N)
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// CPU threads of the learner's libtorch (more threads fight the actors for the cores)
    #[arg(long, default_value_t = 1)]
    pub learner_threads: usize,
}

impl LearnerSettings {
    /// Problems with the values, one line each, appended to `e`.
    pub fn validate(&self, e: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.gamma) {
            e.push(format!("--gamma {}: must be in [0, 1]", self.gamma));
        }
        if self.batch_size < 1 {
            e.push(format!(
                "--batch-size {}: must be at least 1",
                self.batch_size
            ));
        }
        if !(1..=1024).contains(&self.learner_threads) {
            e.push(format!(
                "--learner-threads {}: must be between 1 and 1024",
                self.learner_threads
            ));
        }
    }
}

/// The network's torso.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Network")]
#[serde(rename_all = "kebab-case")]
pub struct NetworkSettings {
    /// Network architecture (the head is the rule's: Q-values, or a policy and a value)
    #[arg(long, value_enum, default_value_t = Network::Auto)]
    pub network: Network,
}

/// The optimizer (RMSProp or Adam), the learning-rate schedule and gradient clipping, for every
/// rule.
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Optimizer")]
#[serde(rename_all = "kebab-case")]
pub struct OptimizerSettings {
    /// Initial learning rate, annealed linearly to 0 over --lr-decay frames
    #[arg(long, default_value_t = 7e-4)]
    pub lr: f64,
    /// Frames over which the learning rate anneals to 0
    #[arg(long, default_value_t = 80_000_000)]
    pub lr_decay: u64,
    /// The optimizer: rmsprop (the A3C paper's, DQN's) or adam (PPO's); each reads only its
    /// own settings below
    #[arg(long, value_enum, default_value_t = OptimizerKind::Rmsprop)]
    pub optimizer: OptimizerKind,
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
    /// RMSProp's squared-gradient average v at the start of a run: 0 (torch.optim.RMSprop;
    /// the first steps then move every weight by about 10 lr) or 1 (TensorFlow's RMSProp, as
    /// OpenAI baselines' A2C uses it; the first steps are about lr * g). A resumed run takes
    /// v from its checkpoint
    #[arg(long, default_value_t = 0.0)]
    pub rms_initial_square_avg: f64,
    /// Adam's beta1 (first-moment decay)
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// Adam's beta2 (second-moment decay)
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// Adam's epsilon (added to the bias-corrected root mean square; CleanRL's PPO: 1e-5)
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Clip the global gradient norm to this value
    #[arg(long, default_value_t = 40.0)]
    pub max_grad_norm: f64,
}

/// The flags of each optimizer's own settings.
const RMSPROP_FLAGS: [&str; 4] = [
    "rms-decay",
    "rms-eps",
    "rmsprop-form",
    "rms-initial-square-avg",
];
const ADAM_FLAGS: [&str; 3] = ["adam-beta1", "adam-beta2", "adam-eps"];

impl OptimizerSettings {
    /// The flags of the optimizer this run does not use (by long name): the other one's.
    pub fn unread_flags(&self) -> &'static [&'static str] {
        match self.optimizer {
            OptimizerKind::Rmsprop => &ADAM_FLAGS,
            OptimizerKind::Adam => &RMSPROP_FLAGS,
        }
    }

    /// The other optimizer's settings among the flags and config keys `given` (by long name):
    /// one line naming them, appended to `e`, as they would be silently ignored.
    pub fn check_given(&self, given: impl Fn(&str) -> bool, e: &mut Vec<String>) {
        let (other, this) = match self.optimizer {
            OptimizerKind::Rmsprop => ("adam", "rmsprop"),
            OptimizerKind::Adam => ("rmsprop", "adam"),
        };
        let ignored: Vec<String> = self
            .unread_flags()
            .iter()
            .filter(|f| given(f))
            .map(|f| format!("--{f}"))
            .collect();
        if !ignored.is_empty() {
            e.push(format!(
                "{}: only --optimizer {other} reads them; this run is --optimizer {this} (add --optimizer {other}, or leave them out)",
                ignored.join(", ")
            ));
        }
    }

    /// Problems with the values, one line each, appended to `e`.
    pub fn validate(&self, e: &mut Vec<String>) {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            e.push(format!("--lr {}: must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.rms_decay) {
            e.push(format!("--rms-decay {}: must be in [0, 1)", self.rms_decay));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            e.push(format!("--rms-eps {}: must be positive", self.rms_eps));
        }
        if !(self.rms_initial_square_avg.is_finite() && self.rms_initial_square_avg >= 0.0) {
            e.push(format!(
                "--rms-initial-square-avg {}: must be 0 or more (0: torch's RMSProp, 1: TensorFlow's)",
                self.rms_initial_square_avg
            ));
        }
        for (flag, beta) in [
            ("adam-beta1", self.adam_beta1),
            ("adam-beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                e.push(format!("--{flag} {beta}: must be in [0, 1)"));
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            e.push(format!("--adam-eps {}: must be positive", self.adam_eps));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            e.push(format!(
                "--max-grad-norm {}: must be positive",
                self.max_grad_norm
            ));
        }
    }
}

/// Remote actor hosts, on both sides: the learner that accepts them (`--listen`) and a host
/// (`--connect`): the shared secret and TLS. Not saved with the run: a resumed run takes them
/// from its command line.
#[derive(Args, Clone, Debug, Default, PartialEq)]
#[command(next_help_heading = "Remote actor hosts")]
pub struct RemoteSettings {
    /// A file holding the run's shared secret: the learner (--listen) admits only hosts
    /// (--connect) that present the same one (compared in constant time)
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// TLS certificate (PEM) of this side: the learner's, with --listen; the host's client
    /// certificate for mutual TLS, with --connect. Needs --tls-key
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM). With --connect: TLS, trusting learners signed by it. With
    /// --listen: mutual TLS, admitting only hosts whose client certificate it signed
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// The learner's side of remote actor hosts. Not saved with the run.
#[derive(Args, Clone, Debug, PartialEq)]
#[command(next_help_heading = "Remote actor hosts")]
pub struct ListenSettings {
    /// Also accept remote actor hosts (`learner --connect`) on this address, e.g.
    /// 0.0.0.0:7070 (port 0: a free port, printed); a non-loopback address needs
    /// --auth-token-file and TLS (--tls-cert, --tls-key) or --insecure-plaintext. With it,
    /// --processes may be 0 (every actor remote)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// With --listen: queue lanes kept for remote actor processes (each process of each host
    /// takes one; a host that asks for more than are free is refused)
    #[arg(long, default_value_t = 32)]
    pub remote_lanes: usize,
    /// With --listen: the most connections open at once, from all peers, counting those not
    /// yet authenticated; more are closed at once (each host holds one)
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: usize,
    /// With --listen: the most connections open at once from one IP address
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_connections_per_peer: usize,
    /// With --listen: seconds a new connection has to finish its TLS handshake and send a
    /// request with the run's token; one that has not is closed
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub handshake_timeout: f64,
    /// With --listen on an address other than loopback: serve without TLS, the token, the
    /// weights and the experience in clear text (only on a network where no one else can
    /// read or write traffic); refused without it
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// With --listen: most lanes (actor processes) one host may take [default: half of
    /// --remote-lanes, rounded up, so that one host cannot take them all]; a host that asks
    /// for more is refused
    #[arg(long, value_name = "N")]
    pub max_lanes_per_host: Option<usize>,
    /// With --listen: the largest |reward| per agent step a remote host may report (actors
    /// clip rewards to [-1, 1]: 1; raise it only for an environment whose training rewards
    /// are not clipped). Returns are bounded by it times the horizon (see README, Security); a
    /// host that reports more is disconnected
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub remote_reward_bound: f32,
}

impl ListenSettings {
    /// Most lanes one host may take: `--max-lanes-per-host`, or half of `--remote-lanes`
    /// rounded up (at least 1).
    pub fn lanes_per_host(&self) -> usize {
        self.max_lanes_per_host
            .unwrap_or(self.remote_lanes.div_ceil(2))
            .max(1)
    }

    /// Problems with the values, one line each, appended to `e` (the flags without --listen
    /// are checked by `remote::check_flags`).
    pub fn validate(&self, e: &mut Vec<String>) {
        if !(1..=1 << 20).contains(&self.max_connections) {
            e.push(format!(
                "--max-connections {}: must be between 1 and 1048576",
                self.max_connections
            ));
        }
        if self.max_connections_per_peer == 0
            || self.max_connections_per_peer > self.max_connections
        {
            e.push(format!(
                "--max-connections-per-peer {}: must be between 1 and --max-connections ({})",
                self.max_connections_per_peer, self.max_connections
            ));
        }
        if !(self.handshake_timeout.is_finite()
            && self.handshake_timeout > 0.0
            && self.handshake_timeout <= 3600.0)
        {
            e.push(format!(
                "--handshake-timeout {}: must be a number of seconds above 0 and at most 3600",
                self.handshake_timeout
            ));
        }
    }
}

/// An actor host's side (`--connect`): it reads these, the [`RemoteSettings`] and the
/// [`ProcessSettings`], and takes everything else from the learner. Not saved with the run.
#[derive(Args, Clone, Debug, PartialEq)]
#[command(next_help_heading = "Remote actor hosts")]
pub struct HostSettings {
    /// Be an actor host: run --processes actor processes here for the learner listening at
    /// HOST:PORT, which sends the game, network and settings (nothing else is configured
    /// here); train nothing. Reconnects when the learner restarts; exits when its run ends
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// With --connect and --tls-ca: the name the learner's certificate must carry [default:
    /// the host part of --connect]
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// With --connect: give up (exit 1) after this many seconds without reaching the learner
    #[arg(long, default_value_t = 600.0)]
    pub reconnect_for: f64,
}

impl Default for ListenSettings {
    /// The flags' defaults: no remote hosts.
    fn default() -> Self {
        super::Config::default().listen
    }
}

impl Default for HostSettings {
    /// The flags' defaults: not a host.
    fn default() -> Self {
        super::Config::default().host
    }
}

/// What this invocation does besides training with the settings above: where the settings
/// come from, a checkpoint to resume. Not saved with the run.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct Invocation {
    /// Read settings from this TOML file (keys are the flag names); flags override it.
    /// Without it, a new run of a game uses configs/<game>.toml (the game's recommended rule and
    /// settings) or, with --algorithm, configs/<game>-<algorithm>.toml when there is one (see
    /// tuned_config); `none` uses only the built-in defaults
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Resume from a checkpoint: a frame count (model-<N>.safetensors, or an older
    /// build's model-<N>.pt, in the run directory),
    /// `latest`, or a path
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// List the games that can be played and exit
    #[arg(long)]
    pub list_games: bool,
    /// Print the settings this run would train with, as TOML (the form of --config files and
    /// of the run's config.toml), and exit without training: the defaults, the config file
    /// (and those it extends) or the game's tuned config, a resumed checkpoint's config and
    /// the flags, merged and validated. Lines the run would print first are `#` comments
    #[arg(long)]
    pub print_config: bool,
    /// Benchmark phase, used by scripts/bench: limit, acting or training (the default)
    #[arg(long, value_enum, default_value_t = BenchPhase::Training, hide = true)]
    pub bench_phase: BenchPhase,
}
