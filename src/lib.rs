//! async-rl: asynchronous n-step Q-learning (Mnih et al. 2016) on Atari, with many actor
//! processes feeding one learner through shared memory.
//!
//! Layout, by concept: [`env`] and [`preprocess`] (the Atari emulator and DeepMind's
//! preprocessing), [`game`] (game names and ROMs), [`model`] (the Q-networks), [`returns`] and
//! [`schedule`] (the RL math), [`rules`] (the learning rules' actor and learner halves),
//! [`replay`] (the replay memory), [`optim`] (RMSProp and Adam), [`shm`] (the experience queue and weight
//! snapshot in shared memory), [`actor`] and [`learner`] (the two loops), [`local_actors`] (a
//! machine's actor processes with their queue and snapshot), [`policy`] (epsilon-greedy or
//! sampled actions), [`inference`] (where actors' network outputs come from: their snapshot
//! copy or the learner's batched inference server), [`supervisor`], [`signals`] and [`os`]
//! (process management), [`ipc`] (the messages between the learner and its actor processes),
//! [`cli`] (the learner's command line), [`checkpoint`], [`atomic_file`] (how files are written), [`metrics`],
//! [`tensorboard`] (event files), [`config`] and [`device`]; for watching and measuring a result,
//! [`eval`] (the evaluation protocols), [`evaluator`] (the run's periodic evaluation), [`render`]
//! (the screen on a terminal) and [`recording`] (GIFs).

pub mod actor;
pub mod atomic_file;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod device;
pub mod env;
pub mod eval;
pub mod evaluator;
pub mod game;
pub mod inference;
pub mod ipc;
pub mod learner;
pub mod local_actors;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod os;
pub mod policy;
pub mod preprocess;
pub mod recording;
pub mod remote;
pub mod render;
pub mod replay;
pub mod returns;
pub mod rules;
pub mod schedule;
pub mod shm;
pub mod signals;
pub mod supervisor;
pub mod tensorboard;

/// The README's Rust examples, compiled by `cargo test` so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod fuzz_tests;
