//! The learner's side services: the batched inference server (`--inference learner`) and the
//! remote-host server (`--listen`). Each is started before the training loop, hears of every
//! update and publication, adds its numbers to each metrics row, and is stopped in order at the
//! end; the loop knows them only through [`Service`].

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use crate::inference::{InferenceServer, ServerStats};
use crate::metrics::{HostRow, InferenceTotals, RemoteTotals, Row};
use crate::model::AgentNetwork;
use crate::remote::server::{HostStats, RemoteServer};

/// How a run ended, for the services that tell their peers.
pub(super) struct Ending {
    /// The run reached its end (`--max-frames`, `--target-return`): remote hosts exit. Else it
    /// was stopped or failed, and they wait for the learner to come back.
    pub finished: bool,
    /// Why, in words.
    pub reason: String,
}

/// A side service of the learner's run.
pub(super) trait Service {
    /// After each update, with the online network: the version of the weights that act from
    /// now on, when this service's weights are the ones that act.
    fn updated(&mut self, _model: &AgentNetwork) -> Option<u64> {
        None
    }

    /// Whether actors act with this service's weights (refreshed at every update) rather than
    /// with the published snapshot.
    fn serves_actors(&self) -> bool {
        false
    }

    /// Snapshot `version` was published.
    fn published(&mut self, _version: u64) {}

    /// Whether the service still works; an error stops the run. Asked about ten times a second.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Its numbers for the metrics `row` of an interval `dt` seconds long (`snapshot`: the
    /// newest published version); per-host rows go to `hosts`.
    fn report(&mut self, _dt: f64, _snapshot: u64, _row: &mut Row, _hosts: &mut Vec<HostRow>) {}

    /// The run ends: tell peers, before the queue closes.
    fn stopping(&mut self, _ending: &Ending) {}

    /// After the queue closed, before the actors are reaped: release what it holds.
    fn stop(&mut self) {}
}

/// The batched inference server ([`crate::inference`]): its weights act, refreshed at every
/// update.
pub(super) struct Inference {
    pub server: InferenceServer,
    /// Its counters at the last metrics row.
    before: ServerStats,
}

impl Inference {
    pub fn new(server: InferenceServer) -> Self {
        let before = server.stats();
        Inference { server, before }
    }
}

impl Service for Inference {
    fn updated(&mut self, model: &AgentNetwork) -> Option<u64> {
        self.server.refresh(model).map(u64::from)
    }

    fn serves_actors(&self) -> bool {
        true
    }

    fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.server.is_running(),
            "the inference server stopped serving the actors"
        );
        Ok(())
    }

    fn report(&mut self, dt: f64, _snapshot: u64, row: &mut Row, _hosts: &mut Vec<HostRow>) {
        let stats = self.server.stats();
        let passes = stats.passes - self.before.passes;
        row.inference = Some(InferenceTotals {
            batch: (passes > 0).then(|| (stats.rows - self.before.rows) as f64 / passes as f64),
            passes_per_s: passes as f64 / dt.max(1e-9),
        });
        self.before = stats;
    }

    fn stop(&mut self) {
        if let Err(e) = self.server.stop() {
            crate::say_err!("the inference server failed: {e:#}");
        }
    }
}

/// The server of remote actor hosts ([`crate::remote::server`]).
pub(super) struct Remote {
    pub server: RemoteServer,
    /// Each host's counters at the last metrics row.
    before: HashMap<u32, HostStats>,
}

impl Remote {
    pub fn new(server: RemoteServer) -> Self {
        Remote {
            server,
            before: HashMap::new(),
        }
    }
}

impl Service for Remote {
    fn published(&mut self, version: u64) {
        self.server.published(version);
    }

    fn report(&mut self, dt: f64, snapshot: u64, row: &mut Row, hosts: &mut Vec<HostRow>) {
        let stats = self.server.stats();
        // A host that left gets one more row (the interval it left in), not one per interval
        // until the server forgets it: hosts.csv grows with the hosts' connected time only.
        let rows: Vec<(bool, HostRow)> = stats
            .iter()
            .map(|h| {
                let before = self.before.get(&h.host);
                let changed = h.connected || before != Some(h);
                (changed, HostRow::between(before, h, dt, snapshot))
            })
            .collect();
        let all: Vec<HostRow> = rows.iter().map(|(_, r)| r.clone()).collect();
        row.remote = Some(RemoteTotals::of(&all));
        hosts.extend(rows.into_iter().filter(|(c, _)| *c).map(|(_, r)| r));
        self.before = stats.into_iter().map(|h| (h.host, h)).collect();
    }

    fn stopping(&mut self, ending: &Ending) {
        self.server
            .stop(&ending.reason, ending.finished, Duration::from_secs(2));
    }
}
