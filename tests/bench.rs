//! The benchmark phases do what they claim: `limit` only emulates (no transitions reach the
//! learner), `acting` fills and drains the queue without training; neither writes a checkpoint.

use std::time::Duration;

use crate::util::*;

/// Runs a phase for 12,000 frames; returns the last metrics row's (steps, updates).
fn phase(name: &str) -> (u64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    Run::learner(tmp.path())
        .flag("--bench-phase", name)
        .processes(2)
        .flag("--device", "cpu")
        .frames(12_000)
        .flag("--log-interval", 1)
        .logdir("run")
        .succeeds(name, Duration::from_secs(120));
    let run = tmp.path().join("run");
    assert!(
        async_rl::checkpoint::list(&run).is_empty(),
        "{name} wrote a checkpoint"
    );
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let last: Vec<&str> = text.lines().last().unwrap().split(',').collect();
    assert!(
        last[1].parse::<u64>().unwrap() >= 12_000,
        "{name}: frames {}",
        last[1]
    );
    (last[2].parse().unwrap(), last[3].parse().unwrap())
}

#[test]
fn limit_phase_only_emulates() {
    assert_eq!(phase("limit"), (0, 0));
}

#[test]
fn acting_phase_fills_and_drains_the_queue_without_training() {
    let (steps, updates) = phase("acting");
    assert!(steps >= 64, "the learner consumed {steps} transitions");
    assert_eq!(updates, 0);
}
