//! Starting, watching and stopping actor processes.
//!
//! Actors are the learner binary re-executed with a hidden first argument ([`ACTOR_ARG`]), in
//! their own process group (so a terminal's Ctrl-C reaches only the learner, which then stops
//! them in order). Each asks the kernel for SIGKILL when the learner dies (PR_SET_PDEATHSIG)
//! and then checks that the learner is still its parent, which closes the race where the
//! learner died before the prctl.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use crate::protocol::ActorInit;

/// First argument that turns the learner binary into an actor.
pub const ACTOR_ARG: &str = "__actor";

/// A running actor process.
pub struct ActorProcess {
    pub actor: usize,
    pub child: Child,
}

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
    std::thread::spawn(move || {
        let _ = tx.send(server.accept().map(|(_, sender)| sender));
    });
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
                    bail!("actor {actor} exited during start-up ({status})");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
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
