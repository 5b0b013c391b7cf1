//! Starting, watching and stopping actor processes.
//!
//! Actors are the learner binary re-executed with a hidden first argument ([`ACTOR_ARG`]), in
//! their own process group (so a terminal's Ctrl-C reaches only the learner, which then stops
//! them in order). Each asks the kernel for SIGKILL when the learner dies (PR_SET_PDEATHSIG)
//! and then checks that the learner is still its parent, which closes the race where the
//! learner died before the prctl.
//!
//! [`ActorPool`] keeps the run's actors going: an actor that dies (SIGKILL, a panic, the
//! emulator's own `exit`) is replaced by a new process with a fresh seed on the same queue lane,
//! up to `--max-actor-restarts` times over the run.

use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use crate::config::Config;
use crate::ipc::{actor_seed, ActorInit, ActorMsg, Role};

/// First argument that turns the learner binary into an actor.
pub const ACTOR_ARG: &str = "__actor";

/// A running actor process.
pub struct ActorProcess {
    pub actor: usize,
    pub child: Child,
}

/// Name of the thread that waits for an actor's handshake (at most 15 bytes: Linux's limit).
const HANDSHAKE_THREAD: &str = "actor-handshake";

/// Spawns actor `init.actor` and hands it `init` over ipc-channel. Fails if the process cannot
/// start, or does not connect within `timeout` (it is killed then).
pub fn spawn_actor(init: ActorInit, timeout: Duration) -> Result<ActorProcess> {
    let (server, name) = IpcOneShotServer::<IpcSender<ActorInit>>::new()
        .context("creating the actor handshake channel")?;
    let exe = std::env::current_exe().context("locating the learner executable to start actors")?;
    let mut cmd = Command::new(exe);
    cmd.arg(ACTOR_ARG)
        .arg(&name)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting an actor process")?;
    let actor = init.actor;
    // IpcOneShotServer::accept has no timeout: wait for it on a helper thread.
    let (tx, rx) = mpsc::channel();
    let acceptor = std::thread::Builder::new()
        .name(HANDSHAKE_THREAD.into())
        .spawn(move || {
            let _ = tx.send(server.accept().map(|(_, sender)| sender));
        })
        .context("starting the actor handshake thread")?;
    // An actor that never connects leaves the helper in accept(): connect to the server
    // ourselves so that it returns, and join it.
    let release = |acceptor: std::thread::JoinHandle<()>| {
        if !acceptor.is_finished() {
            if let Ok(to_server) = IpcSender::<IpcSender<ActorInit>>::connect(name.clone()) {
                if let Ok((unused, _)) = ipc_channel::ipc::channel::<ActorInit>() {
                    let _ = to_server.send(unused);
                }
            }
        }
        let _ = acceptor.join();
    };
    let deadline = Instant::now() + timeout;
    let sender = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(sender)) => break sender,
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("actor {actor}: handshake failed: {e:?}");
            }
            Err(_) => {
                if let Some(status) = child.try_wait()? {
                    release(acceptor);
                    bail!("actor {actor} exited during start-up ({status})");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    release(acceptor);
                    bail!("actor {actor} did not connect within {timeout:?}");
                }
            }
        }
    };
    sender
        .send(init)
        .map_err(|e| anyhow!("actor {actor}: sending its settings: {e:?}"))?;
    Ok(ActorProcess { actor, child })
}

/// Actor side of the handshake: makes sure this process dies with the learner, connects to the
/// learner's one-shot server `server` and receives its [`ActorInit`].
pub fn actor_handshake(server: &str, learner_pid: u32) -> Result<ActorInit> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid().as_raw() as u32 != learner_pid {
        bail!("the learner (pid {learner_pid}) is gone");
    }
    let (tx, rx) =
        ipc_channel::ipc::channel::<ActorInit>().context("creating the actor's channel")?;
    let to_learner = IpcSender::<IpcSender<ActorInit>>::connect(server.to_string())
        .map_err(|e| anyhow!("connecting to the learner: {e:?}"))?;
    to_learner
        .send(tx)
        .map_err(|e| anyhow!("handshake: {e:?}"))?;
    rx.recv()
        .map_err(|e| anyhow!("receiving settings from the learner: {e:?}"))
}

/// Waits up to `grace` for all actors to exit, then SIGKILLs and reaps the rest. Returns the
/// actors that had to be killed.
pub fn stop_all(actors: &mut Vec<ActorProcess>, grace: Duration) -> Vec<usize> {
    let deadline = Instant::now() + grace;
    let mut killed = Vec::new();
    while !actors.is_empty() {
        actors.retain_mut(|a| !matches!(a.child.try_wait(), Ok(Some(_)) | Err(_)));
        if actors.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for a in actors.iter_mut() {
                let _ = a.child.kill();
                let _ = a.child.wait();
                killed.push(a.actor);
            }
            actors.clear();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// Actors that have exited since the last call: (actor, how it ended). Reaps them.
pub fn reap_exited(actors: &mut Vec<ActorProcess>) -> Vec<(usize, String)> {
    let mut exited = Vec::new();
    actors.retain_mut(|a| match a.child.try_wait() {
        Ok(Some(status)) => {
            exited.push((a.actor, status.to_string()));
            false
        }
        Ok(None) => true,
        Err(e) => {
            exited.push((a.actor, e.to_string()));
            false
        }
    });
    exited
}

/// What every actor of a run shares; [`ActorPool::start`] fills in the rest.
pub struct PoolSettings {
    pub config: Config,
    /// Final epsilon of each actor slot (its length is the number of actors).
    pub final_epsilons: Vec<f64>,
    /// Shared-memory segment names.
    pub queue: String,
    pub snapshot: String,
    /// The inference request slots (`--inference learner`), for the acting actors.
    pub inference: Option<String>,
    pub reports: IpcSender<ActorMsg>,
    /// Distinguishes the seeds of a run from those of its resumptions (e.g. the update count).
    pub generation: u64,
    /// How long a new actor may take to connect.
    pub start_timeout: Duration,
    /// Also run an evaluator (`--eval-every`): one more process, after the actors.
    pub evaluator: bool,
}

/// An actor that died and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    pub actor: usize,
    /// How the dead process ended, e.g. `signal: 9 (SIGKILL)`.
    pub status: String,
    /// The replacement's seed.
    pub seed: u64,
    /// Restarts so far over the run, this one included.
    pub restarts: u32,
}

/// The run's actor processes, one per queue lane, with their replacement budget.
pub struct ActorPool {
    settings: PoolSettings,
    running: Vec<ActorProcess>,
    /// Live pids, shared with the signal handler (a second signal kills them).
    pids: Arc<Mutex<Vec<u32>>>,
    restarts: u32,
}

impl ActorPool {
    pub fn new(settings: PoolSettings, pids: Arc<Mutex<Vec<u32>>>) -> Self {
        ActorPool {
            settings,
            running: Vec::new(),
            pids,
            restarts: 0,
        }
    }

    /// Number of acting actors (the evaluator not counted).
    /// Each actor's final epsilon, in actor order.
    pub fn final_epsilons(&self) -> &[f64] {
        &self.settings.final_epsilons
    }

    pub fn size(&self) -> usize {
        self.settings.final_epsilons.len()
    }

    /// Processes in the pool: the actors and the evaluator if there is one.
    fn slots(&self) -> usize {
        self.size() + usize::from(self.settings.evaluator)
    }

    /// Actors running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Restarts made so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Starts actor `actor` on lane `actor` with `seed` (the slot after the actors is the
    /// evaluator, which has no lane).
    fn start(&mut self, actor: usize, seed: u64) -> Result<()> {
        let s = &self.settings;
        let evaluator = actor >= s.final_epsilons.len();
        let init = ActorInit {
            actor,
            lane: actor,
            seed,
            config: s.config.clone(),
            phase: s.config.invocation.bench_phase,
            // The evaluator plays by the evaluation protocol, which sets its own epsilon.
            role: if evaluator {
                Role::Evaluate
            } else {
                Role::Act {
                    final_epsilon: s.final_epsilons[actor],
                }
            },
            queue: s.queue.clone(),
            snapshot: s.snapshot.clone(),
            // The evaluator plays with its own snapshot copy.
            inference: if evaluator { None } else { s.inference.clone() },
            reports: s.reports.clone(),
        };
        let a = spawn_actor(init, s.start_timeout)?;
        self.pids.lock().unwrap().push(a.child.id());
        self.running.push(a);
        Ok(())
    }

    /// Starts every actor, stopping early (without error) when `stop` is set.
    pub fn start_all(&mut self, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
        for i in 0..self.slots() {
            let seed = actor_seed(self.settings.config.run.seed, i, self.settings.generation);
            self.start(i, seed)?;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    }

    /// Reaps actors that have exited and starts a replacement for each, with a fresh seed on
    /// the same lane (the queue discards a dead producer's unfinished slot, so nothing torn is
    /// consumed). Fails, naming the actor and how it ended, once more than
    /// `--max-actor-restarts` replacements would be needed.
    pub fn replace_exited(&mut self) -> Result<Vec<Replacement>> {
        let exited = reap_exited(&mut self.running);
        let mut done = Vec::new();
        for (actor, status) in exited {
            self.forget_dead_pids();
            let max = self.settings.config.procs.max_actor_restarts;
            if self.restarts >= max {
                bail!(
                    "actor {actor} exited unexpectedly ({status}) after {} restart(s); --max-actor-restarts {max} reached",
                    self.restarts
                );
            }
            self.restarts += 1;
            // Fresh seeds: restart r of a run uses generation + r * 2^32.
            let generation = self
                .settings
                .generation
                .wrapping_add(u64::from(self.restarts) << 32);
            let seed = actor_seed(self.settings.config.run.seed, actor, generation);
            self.start(actor, seed)
                .with_context(|| format!("restarting actor {actor}"))?;
            done.push(Replacement {
                actor,
                status,
                seed,
                restarts: self.restarts,
            });
        }
        Ok(done)
    }

    fn forget_dead_pids(&self) {
        let live: Vec<u32> = self.running.iter().map(|a| a.child.id()).collect();
        self.pids.lock().unwrap().retain(|p| live.contains(p));
    }

    /// Waits up to `grace` for all actors to exit (after the queue was closed), then SIGKILLs
    /// the rest; returns the actors that had to be killed.
    pub fn stop_all(&mut self, grace: Duration) -> Vec<usize> {
        let killed = stop_all(&mut self.running, grace);
        self.forget_dead_pids();
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads of this process named `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
            .count()
    }

    #[test]
    fn an_actor_that_dies_before_its_handshake_leaves_no_thread_in_accept() {
        let (reports, _rx) = ipc_channel::ipc::channel().unwrap();
        let init = ActorInit {
            actor: 0,
            lane: 0,
            seed: 0,
            config: crate::config::Config::default(),
            phase: crate::config::BenchPhase::Training,
            role: crate::ipc::Role::Act { final_epsilon: 0.1 },
            queue: String::new(),
            snapshot: String::new(),
            inference: None,
            reports,
        };
        // This test binary plays the actor: given `__actor <server> <pid>` it runs no test
        // and exits, without connecting.
        let Err(err) = spawn_actor(init, Duration::from_secs(20)) else {
            panic!("the test binary connected as an actor");
        };
        assert!(err.to_string().contains("exited during start-up"), "{err}");
        assert_eq!(
            threads_named(HANDSHAKE_THREAD),
            0,
            "a handshake thread is left"
        );
    }
}
