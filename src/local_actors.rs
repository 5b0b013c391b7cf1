//! The actor processes of one machine with what they need around them: the experience queue
//! they push into, the weight snapshot they act with, the channel of their reports and the
//! pool that starts and replaces them. The learner makes its own with [`LocalActors::create`],
//! and so does a remote actor host (whose queue and snapshot it relays to and from the
//! learner).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ipc_channel::ipc::{self, IpcReceiver, IpcSender};

use crate::config::Config;
use crate::ipc::ActorMsg;
use crate::shm::{self, ExperienceQueue, SlotLayout, WeightSnapshot};
use crate::supervisor::{ActorPool, PoolSettings};

/// What to set up around a machine's actor processes (`cfg.procs.processes` of them).
pub struct ActorSetup {
    /// The kind in the segments' names (`queue` -> `async-rl-<pid>-queue`, see
    /// [`shm::segment_name`]): `""` for the learner's, `"host-"` for a host's.
    pub prefix: &'static str,
    /// Queue lanes: one per local actor process first, then any for remote ones.
    pub lanes: usize,
    /// Queue slots, split evenly across the lanes.
    pub slots: usize,
    pub layout: SlotLayout,
    /// Parameters of the network (the snapshot's length in f32).
    pub numel: usize,
    /// The run's frame count at the start (the queue counts on from it).
    pub frames: u64,
    /// Each local actor's final epsilon (one per process).
    pub final_epsilons: Vec<f64>,
    /// The learner's inference request slots (`--inference learner`), if the actors use them.
    pub inference: Option<String>,
    /// Distinguishes the seeds of a run from those of its resumptions (the update count).
    pub generation: u64,
    /// Also run the periodic evaluator (`--eval-every`).
    pub evaluator: bool,
}

/// A machine's actor processes and their shared memory (see the module's doc).
pub struct LocalActors {
    pub queue: Arc<ExperienceQueue>,
    pub queue_name: String,
    pub snapshot: WeightSnapshot,
    pub snapshot_name: String,
    /// The actors' reports (games, evaluations, failures).
    pub reports: IpcReceiver<ActorMsg>,
    /// A sender on that channel, for those who report for other actors (the remote-host
    /// server, for its hosts' games).
    pub report_sender: IpcSender<ActorMsg>,
    /// The processes (not started yet: [`ActorPool::start_all`]).
    pub pool: ActorPool,
}

impl LocalActors {
    /// Creates the queue, the snapshot and the report channel, and the pool of `cfg`'s actor
    /// processes that use them; the processes start with [`ActorPool::start_all`]. Errors say
    /// which piece could not be created.
    pub fn create(cfg: &Config, setup: ActorSetup) -> Result<LocalActors> {
        let queue_name = shm::segment_name(&format!("{}queue", setup.prefix));
        let snapshot_name = shm::segment_name(&format!("{}snapshot", setup.prefix));
        let queue = ExperienceQueue::create(&queue_name, setup.lanes, setup.slots, setup.layout)
            .context("creating the experience queue")?;
        queue
            .frames()
            .store(setup.frames, std::sync::atomic::Ordering::SeqCst);
        let snapshot = WeightSnapshot::create(&snapshot_name, setup.numel)
            .context("creating the weight snapshot")?;
        let (report_sender, reports) =
            ipc::channel::<ActorMsg>().context("creating the report channel")?;
        let pids = Arc::new(Mutex::new(Vec::new()));
        crate::signals::set_actor_pids(pids.clone());
        let pool = ActorPool::new(
            PoolSettings {
                config: cfg.clone(),
                final_epsilons: setup.final_epsilons,
                queue: queue_name.clone(),
                snapshot: snapshot_name.clone(),
                inference: setup.inference,
                reports: report_sender.clone(),
                generation: setup.generation,
                start_timeout: Duration::from_secs(30),
                evaluator: setup.evaluator,
            },
            pids,
        );
        Ok(LocalActors {
            queue: Arc::new(queue),
            queue_name,
            snapshot,
            snapshot_name,
            reports,
            report_sender,
            pool,
        })
    }
}
