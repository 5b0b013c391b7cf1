//! Where an actor's network outputs come from: the policy source seam of docs/ARCHITECTURE.md.
//!
//! - [`SnapshotPolicy`] (`--inference actor`): the actor's own CPU copy of the newest weight
//!   snapshot, refreshed when the learner publishes one (Mnih et al. 2016: each actor thread
//!   keeps its own copy).
//! - [`ServedPolicy`] (`--inference learner`): the actor posts its observations to its
//!   request slot in shared memory ([`crate::shm::InferenceSlots`]) and waits for the
//!   [`InferenceServer`] in the learner process, which answers every pending request in one
//!   batched forward pass of the learner's newest weights, on the learner's GPU when there is
//!   one (SEED RL, Espeholt et al. 2020; Sample Factory's policy workers). Acting then costs the
//!   actor no forward pass, and the weights that act are at most one update old.
//!
//! The server computes a batch when every actor is accounted for (it waits for an answer, or
//! said with [`PolicySource::skip`] that it needs none this step because all its environments
//! explore), or when the oldest request has waited `--inference-wait-us`; so an actor that
//! died delays the others by at most that wait and never wedges them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::env::ObsSpec;
use crate::model::{AgentNetwork, NetSpec};
use crate::shm::inference::{batch_due, InferenceSlots, Pending};
use crate::shm::WeightSnapshot;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

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

/// Where an actor gets the network outputs it acts on.
///
/// The actor writes the observations of one forward pass into [`PolicySource::staging`], row
/// after row, and asks [`PolicySource::compute`] for the outputs of the first `rows`: the
/// observations are copied once, from the emulator's frame stack to where the pass reads them.
pub trait PolicySource {
    /// Takes newer weights if there are any (a no-op for a served policy, whose weights are
    /// always the newest).
    fn refresh(&mut self) -> Result<()>;

    /// Room for the observations of one pass: `rows * obs_bytes` bytes, where `rows` is the
    /// number of environments of the actor.
    fn staging(&mut self) -> &mut [u8];

    /// The outputs `[rows, width]` of the first `rows` staged observations into `out` (at least
    /// `rows * width` long): a row of [`AgentNetwork::act_outputs`] each.
    fn compute(&mut self, rows: usize, out: &mut [f32]) -> Result<()>;

    /// The outputs of `rows` observations `obs` (back to back): [`PolicySource::staging`] and
    /// [`PolicySource::compute`] in one.
    fn outputs(&mut self, obs: &[u8], rows: usize, out: &mut [f32]) -> Result<()> {
        self.staging()[..obs.len()].copy_from_slice(obs);
        self.compute(rows, out)
    }

    /// The version of the weights that computed the last outputs (the snapshot version, or the
    /// server's), stamped on the experience for the learner's snapshot age; 0 before any.
    fn version(&self) -> u32;

    /// This step needs no outputs (every environment explores): a served policy tells the
    /// server not to wait for it.
    fn skip(&mut self) {}
}

/// `--inference actor`: a CPU copy of the newest weight snapshot.
pub struct SnapshotPolicy {
    model: AgentNetwork,
    snapshot: WeightSnapshot,
    flat: Vec<f32>,
    version: u64,
    obs: ObsSpec,
    /// The staged observations, as the bytes of a CPU tensor that the forward pass reads in
    /// place.
    staged: Tensor,
    rows: usize,
}

impl SnapshotPolicy {
    /// Wraps `model` (already loaded with snapshot `version` from `flat`), for passes of up to
    /// `rows` observations.
    pub fn new(
        model: AgentNetwork,
        snapshot: WeightSnapshot,
        flat: Vec<f32>,
        version: u64,
        obs: ObsSpec,
        rows: usize,
    ) -> Self {
        let staged = Tensor::zeros([(rows * obs.bytes()) as i64], (Kind::Uint8, Device::Cpu));
        SnapshotPolicy {
            model,
            snapshot,
            flat,
            version,
            obs,
            staged,
            rows,
        }
    }
}

/// The weight snapshot named `snapshot`, opened, with a CPU network `network` for observations
/// `obs` (`whose`, for the error when the two differ in size) and a buffer for its flat
/// weights; the network keeps libtorch's initial weights until the caller loads some.
pub fn snapshot_copy(
    snapshot: &str,
    network: NetSpec,
    obs: ObsSpec,
    num_actions: usize,
    whose: &str,
) -> Result<(WeightSnapshot, AgentNetwork, Vec<f32>)> {
    let snapshot = WeightSnapshot::open(snapshot).context("opening the weight snapshot")?;
    let model = AgentNetwork::new(network, obs, num_actions, Device::Cpu);
    let flat = vec![0f32; snapshot.numel()];
    anyhow::ensure!(
        flat.len() == model.numel(),
        "snapshot has {} parameters, {whose} {}",
        flat.len(),
        model.numel()
    );
    Ok((snapshot, model, flat))
}

impl PolicySource for SnapshotPolicy {
    fn refresh(&mut self) -> Result<()> {
        if self.snapshot.version() != self.version {
            self.version = self.snapshot.read_into(&mut self.flat)?;
            self.model.load_flat(&self.flat);
        }
        Ok(())
    }

    fn staging(&mut self) -> &mut [u8] {
        // SAFETY: `staged` is a contiguous CPU u8 tensor of `rows * obs_bytes` bytes owned by
        // this struct; the borrow of `self` keeps it alive and unshared while the slice lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.staged.data_ptr().cast::<u8>(),
                self.rows * self.obs.bytes(),
            )
        }
    }

    fn compute(&mut self, rows: usize, out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            (1..=self.rows).contains(&rows),
            "a pass of {rows} observations; this actor stages 1 to {}",
            self.rows
        );
        let x = staged_view(&self.staged, self.obs, rows);
        let q = self.model.act_outputs(&x);
        let n = rows * self.model.act_width();
        q.copy_data(&mut out[..n], n);
        Ok(())
    }

    fn version(&self) -> u32 {
        self.version as u32
    }
}

/// The first `rows` observations of a flat u8 tensor of staged observation bytes, shaped as
/// [`obs_tensor`] shapes them (`[rows, c, h, w]` u8 frames, or `[rows, n]` f32 vectors), without
/// a copy.
fn staged_view(staged: &Tensor, obs: ObsSpec, rows: usize) -> Tensor {
    let bytes = staged.narrow(0, 0, (rows * obs.bytes()) as i64);
    match obs {
        ObsSpec::Frames([c, h, w]) => bytes.view([rows as i64, c as i64, h as i64, w as i64]),
        ObsSpec::Vector(n) => bytes.view_dtype(Kind::Float).view([rows as i64, n as i64]),
    }
}

/// `--inference learner`: requests to the learner's [`InferenceServer`] through request slot
/// `slot` (the actor's index).
pub struct ServedPolicy {
    slots: InferenceSlots,
    slot: usize,
    version: u32,
    staged: Vec<u8>,
}

impl ServedPolicy {
    /// Opens the run's request slots `name` for actor `slot`.
    pub fn open(name: &str, slot: usize) -> Result<Self> {
        let slots = InferenceSlots::open(name).context("opening the inference request slots")?;
        anyhow::ensure!(
            slot < slots.slots(),
            "actor {slot}: the inference segment has {} slots",
            slots.slots()
        );
        let staged = vec![0u8; slots.rows() * slots.obs_bytes()];
        Ok(ServedPolicy {
            slots,
            slot,
            version: 0,
            staged,
        })
    }

    /// Whether the server has stopped (the learner is shutting down).
    pub fn is_closed(&self) -> bool {
        self.slots.is_closed()
    }
}

impl PolicySource for ServedPolicy {
    fn refresh(&mut self) -> Result<()> {
        Ok(())
    }

    fn staging(&mut self) -> &mut [u8] {
        &mut self.staged
    }

    fn compute(&mut self, rows: usize, out: &mut [f32]) -> Result<()> {
        let obs = &self.staged[..rows * self.slots.obs_bytes()];
        self.version = self.slots.request(self.slot, obs, rows, out)?;
        Ok(())
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn skip(&mut self) {
        self.slots.skip(self.slot);
    }
}

/// Counters of an [`InferenceServer`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerStats {
    /// Forward passes made.
    pub passes: u64,
    /// Rows (observations) answered.
    pub rows: u64,
    /// Requests answered.
    pub requests: u64,
    /// Passes started because every actor was accounted for (the rest waited out the
    /// timeout).
    pub full_passes: u64,
}

/// The inference model and the version of its weights.
struct Served {
    model: AgentNetwork,
    version: u32,
}

/// What the server thread shares with the learner.
struct Shared {
    served: Mutex<Served>,
    stop: AtomicBool,
    passes: AtomicU64,
    rows: AtomicU64,
    requests: AtomicU64,
    full_passes: AtomicU64,
    /// The version the next refresh gets.
    next_version: AtomicU32,
}

/// How the server batches: the rows of a full batch and the longest a request waits.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub full: usize,
    pub wait: Duration,
}

/// The learner's batched inference service for its local actors (`--inference learner`): a
/// thread that answers the requests of [`InferenceSlots`] with one forward pass per batch of a
/// copy of the learner's network, kept on `device` (`--inference-device`, by default the
/// learner's) and refreshed by [`InferenceServer::refresh`] after every update.
pub struct InferenceServer {
    shared: Arc<Shared>,
    slots: Arc<InferenceSlots>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl InferenceServer {
    /// Starts serving the request slots `slots` with `model` (on its device), batching as
    /// `batching` says. The first refresh's version is 1.
    pub fn start(
        slots: InferenceSlots,
        model: AgentNetwork,
        obs: ObsSpec,
        batching: Batching,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            served: Mutex::new(Served { model, version: 0 }),
            stop: AtomicBool::new(false),
            passes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            full_passes: AtomicU64::new(0),
            next_version: AtomicU32::new(1),
        });
        let slots = Arc::new(slots);
        let thread = {
            let (shared, slots) = (shared.clone(), slots.clone());
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || serve(&shared, &slots, obs, batching))
                .context("starting the inference server thread")?
        };
        Ok(InferenceServer {
            shared,
            slots,
            thread: Some(thread),
        })
    }

    /// Copies the weights of `model` (the learner's, same network) into the served copy unless
    /// a forward pass holds it right now, in which case the next call will. Returns the new
    /// version, or None when it skipped.
    pub fn refresh(&self, model: &AgentNetwork) -> Option<u32> {
        let mut served = self.shared.served.try_lock().ok()?;
        served.model.copy_from(model);
        served.version = self.shared.next_version.fetch_add(1, Ordering::Relaxed);
        Some(served.version)
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            passes: s.passes.load(Ordering::Relaxed),
            rows: s.rows.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            full_passes: s.full_passes.load(Ordering::Relaxed),
        }
    }

    /// Whether the server thread is still serving (false after it failed).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and closes the slots (actors waiting get `Closed`); returns the
    /// thread's error, if it failed.
    pub fn stop(&mut self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.slots.close();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the inference server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for InferenceServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The server thread: waits for requests, computes each due batch in one forward pass, answers.
fn serve(shared: &Shared, slots: &InferenceSlots, obs: ObsSpec, batching: Batching) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    let device = shared.served.lock().unwrap().model.device();
    let max_rows = slots.slots() * slots.rows();
    let full_rows = batching.full.min(max_rows);
    let (obs_bytes, width) = (slots.obs_bytes(), slots.width());
    // The gathered observations: pinned host memory on a GPU, so the copy to the device can be
    // asynchronous (and the next gather never overwrites what a copy still reads: the pass
    // waits for its outputs before the next gather).
    let host = Tensor::zeros([(max_rows * obs_bytes) as i64], (Kind::Uint8, Device::Cpu));
    let host = if device.is_cuda() {
        host.pin_memory(device)
    } else {
        host
    };
    let mut outputs = vec![0f32; max_rows * width];
    let mut pending: Vec<Pending> = Vec::with_capacity(slots.slots());
    let mut since: Option<Instant> = None;
    // Each slot's skip count at the last pass: a slot that skipped since is accounted for.
    let mut skips_seen: Vec<u32> = (0..slots.slots()).map(|s| slots.skips(s)).collect();
    while !shared.stop.load(Ordering::SeqCst) {
        let epoch = slots.epoch();
        slots.pending(&mut pending);
        let rows: usize = pending.iter().map(|p| p.rows).sum();
        if rows == 0 {
            since = None;
            slots.wait_for_post(epoch, Duration::from_millis(50));
            continue;
        }
        let now = Instant::now();
        let first = *since.get_or_insert(now);
        let full = rows >= full_rows;
        let mut asking = pending.iter().map(|p| p.slot).peekable();
        let accounted = (0..slots.slots()).all(|s| {
            let asks = asking.next_if_eq(&s).is_some();
            asks || slots.skips(s) != skips_seen[s]
        });
        if !batch_due(rows, full_rows, accounted, first, now, batching.wait) {
            slots.wait_for_post(epoch, batching.wait.saturating_sub(now - first));
            continue;
        }
        since = None;
        for (s, seen) in skips_seen.iter_mut().enumerate() {
            *seen = slots.skips(s);
        }
        // Gather: the rows of every pending request, back to back.
        // SAFETY: `host` is a contiguous u8 tensor of `max_rows * obs_bytes` bytes that only
        // this thread touches; `rows <= max_rows`.
        let gathered = unsafe {
            std::slice::from_raw_parts_mut(host.data_ptr().cast::<u8>(), rows * obs_bytes)
        };
        let mut at = 0;
        for p in &pending {
            slots.read_obs(p, &mut gathered[at..at + p.rows * obs_bytes]);
            at += p.rows * obs_bytes;
        }
        let batch = staged_view(&host, obs, rows);
        let version = {
            let served = shared.served.lock().unwrap();
            let x = if device.is_cuda() {
                batch.to_device_(device, batch.kind(), true, false)
            } else {
                batch
            };
            let out = served.model.act_outputs(&x).to_device(Device::Cpu);
            out.copy_data(&mut outputs[..rows * width], rows * width);
            served.version
        };
        // Counted before the answers, so that an actor woken by one sees its pass counted.
        shared.passes.fetch_add(1, Ordering::Relaxed);
        shared.rows.fetch_add(rows as u64, Ordering::Relaxed);
        shared
            .requests
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        if full || accounted {
            shared.full_passes.fetch_add(1, Ordering::Relaxed);
        }
        let mut at = 0;
        for p in &pending {
            slots.answer(p, &outputs[at..at + p.rows * width], version);
            at += p.rows * width;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "inference_tests.rs"]
mod tests;
