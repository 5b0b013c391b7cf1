//! Gymnasium (1.x) environments, each in a Python worker process that its actor owns
//! (`--game gymnasium:<id>`, docs/ARCHITECTURE.md "Gymnasium environments").
//!
//! A worker, not an embedded interpreter: the binaries need no libpython at load or run time
//! (a run on Atari or CartPole needs no Python at all), each environment's interpreter, memory
//! and threads are its own, and a crash in Python cannot take its actor down. The worker is
//! `python/async_rl_worker.py`, embedded in the binary and run as `python -u -c <code>`; it
//! talks to [`GymEnv`] over its stdin and stdout with small length-prefixed frames (the
//! protocol is written out at the top of that file).
//!
//! Process hygiene: the worker starts with SIGINT ignored (the actor decides when it stops, so
//! a Ctrl-C to the process group stops Python environments as it stops Atari ones) and with
//! PR_SET_PDEATHSIG = SIGKILL (it dies with the thread that started it); it exits at EOF on its
//! stdin, and [`GymEnv`]'s `Drop` kills and reaps it, so no process or zombie is left. Numeric
//! libraries in the worker get one thread each (`OMP_NUM_THREADS=1` and the like, unless set):
//! each actor is already one process of many.
//!
//! Spaces: a `Box` observation is a vector of f32 (`ObsSpec::Vector`, flattened, any numeric
//! dtype) or, when it is a uint8 image `(H, W)` or `(H, W, C)`, u8 frames
//! (`ObsSpec::Frames([C, H, W])`, transposed in the worker, the same path as Atari frames); a
//! `Discrete(n)` observation is one-hot (`Vector(n)`). Actions: `Discrete(n)` (its `start`
//! added in the worker) or a 1-dimensional float `Box`, whose actions the worker clips to the
//! bounds as Gymnasium's `ClipAction` wrapper does (CleanRL's continuous-action PPO applies
//! it). Anything else is refused by name. Rewards are not clipped (`clipped_reward ==
//! reward`); `terminated` is a terminal step and `truncated` (not terminated) a truncation, as
//! Gymnasium reports them. The first `reset` seeds the environment (`reset(seed=...)`), later
//! ones do not, so a run is as reproducible as the environment is.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use super::{ActionSpec, EnvError, Environment, ObsSpec, Step};

/// The worker's source, run as `python -u -c WORKER`.
pub const WORKER: &str = include_str!("../../python/async_rl_worker.py");

/// The prefix of `--game` that names a Gymnasium id: `gymnasium:CartPole-v1`,
/// `gymnasium:mypackage.envs:MyEnv-v0`.
pub const PREFIX: &str = "gymnasium:";

/// Why a Gymnasium environment failed. Each names the environment (its Gymnasium id).
#[derive(Debug, thiserror::Error)]
pub enum GymError {
    /// The interpreter could not be started.
    #[error(
        "gymnasium:{id}: cannot start the Python interpreter {} ({source}); install Gymnasium \
         with scripts/setup (it creates {}) or pass an interpreter that has it with --python PATH",
        python.display(), default_venv_python().display()
    )]
    NoPython {
        /// The environment's id.
        id: String,
        /// The interpreter tried.
        python: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The interpreter has no `gymnasium` (or `numpy`) module.
    #[error(
        "gymnasium:{id}: the Python interpreter {} cannot import gymnasium ({message}); run \
         scripts/setup (it installs gymnasium into {}), `{} -m pip install \
         'gymnasium[classic-control]'`, or pass another interpreter with --python PATH",
        python.display(), default_venv_python().display(), python.display()
    )]
    NoGymnasium {
        /// The environment's id.
        id: String,
        /// The interpreter used.
        python: PathBuf,
        /// Python's message.
        message: String,
    },
    /// The environment (or the worker's checks of what it returned) failed; `message` is the
    /// worker's text, a Python traceback when the environment raised.
    #[error("gymnasium:{id}: {during}: {message}")]
    Python {
        /// The environment's id.
        id: String,
        /// What was being done: `make`, `reset`, `step 17 of the episode`, `render`.
        during: String,
        /// What went wrong and what was expected, or Python's traceback.
        message: String,
    },
    /// The worker took longer than its timeout (`--python-timeout`) to answer; it was killed.
    #[error(
        "gymnasium:{id}: {during}: the Python worker (pid {pid}) did not answer within {seconds} s \
         (--python-timeout); it was killed"
    )]
    Timeout {
        /// The environment's id.
        id: String,
        /// What was being done.
        during: String,
        /// The worker's process id.
        pid: u32,
        /// The timeout, in seconds.
        seconds: f64,
    },
    /// The worker died or broke the protocol.
    #[error("gymnasium:{id}: {during}: the Python worker (pid {pid}) {what}")]
    Worker {
        /// The environment's id.
        id: String,
        /// What was being done.
        during: String,
        /// The worker's process id.
        pid: u32,
        /// What happened: exited with a status, or sent a malformed reply.
        what: String,
    },
}

/// The interpreter of the project's Gymnasium venv: `$ASYNC_RL_CACHE/gym-venv/bin/python`
/// (the cache defaults to `~/.cache/async-rl`), which `scripts/setup` creates.
pub fn default_venv_python() -> PathBuf {
    let cache = match std::env::var_os("ASYNC_RL_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/async-rl"),
    };
    cache.join("gym-venv/bin/python")
}

/// The interpreter that runs Gymnasium environments: `--python` when given, else
/// `$VIRTUAL_ENV/bin/python` in an active virtualenv, else the project's venv
/// ([`default_venv_python`]) when it exists, else `python3` (from `PATH`).
pub fn python(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        return PathBuf::from(venv).join("bin/python");
    }
    let cached = default_venv_python();
    if cached.exists() {
        return cached;
    }
    PathBuf::from("python3")
}

/// The spaces the worker reports for its environment.
#[derive(Deserialize)]
struct Spec {
    obs: ObsReply,
    action: ActionReply,
    obs_space: String,
    action_space: String,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ObsReply {
    Vector { n: usize },
    Frames { shape: [usize; 3] },
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ActionReply {
    Discrete {
        n: usize,
    },
    /// Bounds; `None` is infinite.
    Box {
        low: Vec<Option<f32>>,
        high: Vec<Option<f32>>,
    },
}

/// Status bytes of the worker's replies.
const OK: u8 = 0;
const ERROR: u8 = 1;
const NO_GYMNASIUM: u8 = 2;
/// Longest reply accepted (a 4K RGB frame is 25 MB).
const MAX_REPLY: usize = 1 << 30;

/// A Gymnasium environment stepped in its own Python worker process (see the module docs).
pub struct GymEnv {
    id: String,
    python: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    obs_spec: ObsSpec,
    action_spec: ActionSpec,
    obs_space: String,
    action_space: String,
    obs: Vec<u8>,
    /// The seed of the first reset, taken by it.
    seed: Option<u64>,
    screen: Option<(usize, usize)>,
    episode_return: f32,
    steps: u64,
    over: bool,
    started: bool,
    /// Request and reply buffer.
    buf: Vec<u8>,
    /// The longest wait for a reply.
    timeout: Duration,
}

impl GymEnv {
    /// Starts a worker with `python` and makes Gymnasium environment `id` in it (with
    /// `render_mode="rgb_array"` when `render`, for [`Environment::screen_rgb`]); its first
    /// reset is seeded with `seed`; the worker may take up to `timeout` to answer each request.
    ///
    /// # Errors
    ///
    /// [`GymError`]: the interpreter cannot start or has no gymnasium; `gymnasium.make`
    /// raised (an unknown id, an import error in the user's module: Python's traceback);
    /// an unsupported observation or action space (named).
    pub fn new(
        id: &str,
        python: &Path,
        seed: u64,
        render: bool,
        timeout: Duration,
    ) -> Result<GymEnv, GymError> {
        GymEnv::spawn(id, python, seed, render, timeout, None)
    }

    /// [`GymEnv::new`], with `PYTHONPATH` set to `pythonpath` in the worker when given (the
    /// tests' fixtures).
    fn spawn(
        id: &str,
        python: &Path,
        seed: u64,
        render: bool,
        timeout: Duration,
        pythonpath: Option<&Path>,
    ) -> Result<GymEnv, GymError> {
        let mut cmd = Command::new(python);
        if let Some(p) = pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        cmd.arg("-u")
            .arg("-c")
            .arg(WORKER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, "1");
            }
        }
        // SAFETY: between fork and exec only async-signal-safe calls: prctl(2) and
        // sigaction(2), through nix's thin wrappers, which neither allocate nor lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGINT,
                    nix::sys::signal::SigHandler::SigIgn,
                )?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| GymError::NoPython {
            id: id.to_string(),
            python: python.to_path_buf(),
            source,
        })?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let mut env = GymEnv {
            id: id.to_string(),
            python: python.to_path_buf(),
            child,
            stdin,
            stdout: stdout.expect("stdout is piped"),
            obs_spec: ObsSpec::Vector(0),
            action_spec: ActionSpec::Discrete(0),
            obs_space: String::new(),
            action_space: String::new(),
            obs: Vec::new(),
            seed: Some(seed),
            screen: None,
            episode_return: 0.0,
            steps: 0,
            over: true,
            started: false,
            buf: Vec::new(),
            timeout,
        };
        let request = serde_json::json!({ "id": id, "render": render }).to_string();
        env.call(b'M', request.as_bytes(), "make")?;
        let spec: Spec =
            serde_json::from_slice(env.reply()).map_err(|e| env.malformed("make", e))?;
        env.obs_spec = match spec.obs {
            ObsReply::Vector { n } => ObsSpec::Vector(n),
            ObsReply::Frames { shape } => ObsSpec::Frames(shape),
        };
        env.action_spec = match spec.action {
            ActionReply::Discrete { n } => ActionSpec::Discrete(n),
            ActionReply::Box { low, high } => ActionSpec::Box {
                low: low.iter().map(|l| l.unwrap_or(f32::NEG_INFINITY)).collect(),
                high: high.iter().map(|h| h.unwrap_or(f32::INFINITY)).collect(),
            },
        };
        env.obs_space = spec.obs_space;
        env.action_space = spec.action_space;
        env.obs = vec![0; env.obs_spec.bytes()];
        if render {
            // The screen's size, from a first (seeded) reset; the caller's first reset is
            // seeded again with the same seed, so it starts the same episode.
            env.reset_worker(Some(seed))?;
            env.call(b'G', &[], "render")?;
            let (h, w) = (u32_at(env.reply(), 0), u32_at(env.reply(), 4));
            env.screen = Some((w as usize, h as usize));
        }
        Ok(env)
    }

    /// The Gymnasium id, e.g. `CartPole-v1`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gymnasium's description of the observation and action spaces, e.g.
    /// `("Box([-4.8 ...], [4.8 ...], (4,), float32)", "Discrete(2)")`.
    pub fn spaces(&self) -> (&str, &str) {
        (&self.obs_space, &self.action_space)
    }

    /// The worker's process id.
    pub fn worker_pid(&self) -> u32 {
        self.child.id()
    }

    /// The body of the last reply (after its status byte).
    fn reply(&self) -> &[u8] {
        &self.buf[1..]
    }

    /// Sends request `op` with `body` and reads the reply into the buffer ([`GymEnv::reply`]).
    fn call(&mut self, op: u8, body: &[u8], during: &str) -> Result<(), GymError> {
        self.buf.clear();
        self.buf
            .extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
        self.buf.push(op);
        self.buf.extend_from_slice(body);
        let stdin = self.stdin.as_mut().expect("stdin is open until drop");
        if let Err(e) = stdin.write_all(&self.buf).and_then(|_| stdin.flush()) {
            return Err(self.dead(during, &e));
        }
        if !self.answers_in_time() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(GymError::Timeout {
                id: self.id.clone(),
                during: during.to_string(),
                pid: self.child.id(),
                seconds: self.timeout.as_secs_f64(),
            });
        }
        let mut len = [0u8; 4];
        if let Err(e) = self.stdout.read_exact(&mut len) {
            return Err(self.dead(during, &e));
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(1..=MAX_REPLY).contains(&len) {
            return Err(self.malformed(during, format!("a reply of {len} bytes")));
        }
        self.buf.resize(len, 0);
        if let Err(e) = self.stdout.read_exact(&mut self.buf) {
            return Err(self.dead(during, &e));
        }
        match self.buf[0] {
            OK => Ok(()),
            ERROR => Err(GymError::Python {
                id: self.id.clone(),
                during: during.to_string(),
                message: String::from_utf8_lossy(&self.buf[1..])
                    .trim_end()
                    .to_string(),
            }),
            NO_GYMNASIUM => Err(GymError::NoGymnasium {
                id: self.id.clone(),
                python: self.python.clone(),
                message: String::from_utf8_lossy(&self.buf[1..]).to_string(),
            }),
            s => Err(self.malformed(during, format!("status byte {s}"))),
        }
    }

    /// Whether the worker's reply starts (or its pipe closes) within the timeout.
    fn answers_in_time(&self) -> bool {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut fd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one pollfd that lives on this stack frame for the call.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            match n {
                1.. => return true, // readable, or hung up: read_exact says which
                0 => return false,  // timed out
                // Interrupted by a signal: wait again; another error: read_exact finds out.
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => return true,
            }
        }
    }

    /// The worker is gone (or its pipe broke): says how it ended, waiting for it briefly.
    fn dead(&mut self, during: &str, e: &std::io::Error) -> GymError {
        let mut status = None;
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let what = match status {
            Some(s) => format!("exited ({s}); its stderr, above in this log, says why"),
            None => format!("stopped answering ({e})"),
        };
        GymError::Worker {
            id: self.id.clone(),
            during: during.to_string(),
            pid: self.child.id(),
            what,
        }
    }

    fn malformed(&self, during: &str, what: impl std::fmt::Display) -> GymError {
        GymError::Worker {
            id: self.id.clone(),
            during: during.to_string(),
            pid: self.child.id(),
            what: format!("broke the protocol: {what}"),
        }
    }

    fn reset_worker(&mut self, seed: Option<u64>) -> Result<(), GymError> {
        let mut body = [0u8; 9];
        body[0] = seed.is_some() as u8;
        body[1..].copy_from_slice(&seed.unwrap_or(0).to_le_bytes());
        let expected = self.obs.len();
        self.call(b'R', &body, "reset")?;
        if self.reply().len() != expected {
            let n = self.reply().len();
            return Err(self.malformed(
                "reset",
                format!("{n} observation bytes, expected {expected}"),
            ));
        }
        let mut obs = std::mem::take(&mut self.obs);
        obs.copy_from_slice(&self.buf[1..]);
        self.obs = obs;
        Ok(())
    }

    /// Sends a step request (`op` `S` or `C`) and reads the outcome.
    fn step_worker(&mut self, op: u8, body: &[u8]) -> Result<Step, GymError> {
        let during = format!("step {} of the episode", self.steps + 1);
        let expected = 10 + self.obs.len();
        self.call(op, body, &during)?;
        let reply = &self.buf[1..];
        if reply.len() != expected {
            let n = reply.len();
            return Err(self.malformed(
                &during,
                format!("a step reply of {n} bytes, expected {expected}"),
            ));
        }
        let reward = f64::from_le_bytes(reply[0..8].try_into().expect("8 bytes")) as f32;
        let (terminated, truncated) = (reply[8] != 0, reply[9] != 0);
        let mut obs = std::mem::take(&mut self.obs);
        obs.copy_from_slice(&self.buf[11..]);
        self.obs = obs;
        self.steps += 1;
        self.episode_return += reward;
        let truncated = truncated && !terminated;
        self.over = terminated || truncated;
        Ok(Step {
            reward,
            clipped_reward: reward,
            terminal: terminated,
            game_over: terminated,
            truncated,
            frames: 1,
        })
    }

    fn check_running(&self) -> Result<(), EnvError> {
        if self.over {
            return Err(if self.started {
                EnvError::EpisodeOver
            } else {
                EnvError::Custom(format!(
                    "gymnasium:{}: step before the first reset",
                    self.id
                ))
            });
        }
        Ok(())
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Environment for GymEnv {
    fn obs_spec(&self) -> ObsSpec {
        self.obs_spec
    }

    fn num_actions(&self) -> usize {
        self.action_spec.width()
    }

    fn action_spec(&self) -> ActionSpec {
        self.action_spec.clone()
    }

    fn reset(&mut self) -> Result<(), EnvError> {
        let seed = self.seed.take();
        self.reset_worker(seed)?;
        self.started = true;
        self.over = false;
        self.steps = 0;
        self.episode_return = 0.0;
        Ok(())
    }

    fn obs(&self) -> &[u8] {
        &self.obs
    }

    fn step(&mut self, action: usize) -> Result<Step, EnvError> {
        let ActionSpec::Discrete(n) = self.action_spec else {
            return Err(EnvError::ActionKind {
                expected: self.action_spec.to_string(),
                given: format!("the discrete action {action}"),
            });
        };
        if action >= n {
            return Err(EnvError::InvalidAction {
                action,
                num_actions: n,
            });
        }
        self.check_running()?;
        Ok(self.step_worker(b'S', &(action as i64).to_le_bytes())?)
    }

    fn step_continuous(&mut self, action: &[f32]) -> Result<Step, EnvError> {
        let ActionSpec::Box { low, .. } = &self.action_spec else {
            return Err(EnvError::ActionKind {
                expected: self.action_spec.to_string(),
                given: format!("a continuous action of {} dimensions", action.len()),
            });
        };
        if action.len() != low.len() {
            return Err(EnvError::ActionKind {
                expected: self.action_spec.to_string(),
                given: format!("a continuous action of {} dimensions", action.len()),
            });
        }
        self.check_running()?;
        let body: Vec<u8> = action.iter().flat_map(|a| a.to_le_bytes()).collect();
        Ok(self.step_worker(b'C', &body)?)
    }

    fn episode_return(&self) -> f32 {
        self.episode_return
    }

    fn episode_frames(&self) -> u64 {
        self.steps
    }

    fn screen_size(&self) -> Option<(usize, usize)> {
        self.screen
    }

    fn screen_rgb(&mut self, out: &mut [u8]) -> Result<(), EnvError> {
        let Some((w, h)) = self.screen else {
            return Err(EnvError::NoScreen);
        };
        self.call(b'G', &[], "render")?;
        let reply = self.reply();
        let (rh, rw) = (u32_at(reply, 0) as usize, u32_at(reply, 4) as usize);
        if (rw, rh) != (w, h) || reply.len() != 8 + w * h * 3 {
            return Err(EnvError::Custom(format!(
                "gymnasium:{}: render() changed size from {w}x{h} to {rw}x{rh}",
                self.id
            )));
        }
        if out.len() != w * h * 3 {
            return Err(EnvError::Custom(format!(
                "screen_rgb: a buffer of {} bytes, expected {} ({w}x{h} RGB)",
                out.len(),
                w * h * 3
            )));
        }
        out.copy_from_slice(&self.buf[9..]);
        Ok(())
    }
}

impl Drop for GymEnv {
    fn drop(&mut self) {
        // EOF would end the worker too, but an environment stuck in a step would not see it.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[path = "gymnasium_tests.rs"]
mod tests;
