//! Integration tests, one module per area (as ripgrep does).

mod actor_critic;
mod bench;
mod cli;
mod dead_units;
mod e2e;
mod faults;
mod play;
mod plot;
mod queue;
mod remote;
mod remote_bounds;
mod replay;
mod results;
mod signals;
mod snapshot;
mod tensorboard;
mod util;
