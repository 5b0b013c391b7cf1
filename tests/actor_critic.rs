//! `--algorithm a3c` and `--algorithm impala` end to end: IMPALA's segments of real Breakout
//! frames through the queue, checkpoints, resume, metrics and `play --policy`; A3C with the
//! periodic evaluator; and their bad input.

use std::path::Path;
use std::time::Duration;

use crate::util::*;

#[test]
fn impala_on_breakout_trains_on_segments_resumes_and_plays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let common = Run::breakout(tmp.path())
        .rule("impala")
        .processes(2)
        .flag("--unroll", 10)
        .flag("--batch-size", 2)
        .flag("--queue-size", 4)
        .flag("--sync-frames", 800)
        .logdir(&dir)
        .flag("--log-interval", 1)
        .seed(3);
    let out = common
        .clone()
        .frames(6000)
        .succeeds("impala learner", Duration::from_secs(300));
    assert!(
        text(&out.stdout).contains("--algorithm impala with segments of 10 steps"),
        "{}",
        text(&out.stdout)
    );
    let last = *async_rl::checkpoint::list(&dir).last().unwrap();
    let ckpt = async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&dir, last)).unwrap();
    assert!(ckpt.params.contains_key("policy.weight") && ckpt.params.contains_key("value.weight"));
    assert!(ckpt.state.updates > 0, "it trained");
    let before = metrics_rows(&dir);
    let trained: Vec<_> = before.iter().filter(|r| !r["loss"].is_empty()).collect();
    assert!(!trained.is_empty(), "rows with updates");
    for r in &trained {
        let rho: f64 = r["rho_mean"].parse().unwrap();
        assert!(rho > 0.0 && rho <= 1.0 + 1e-9, "clipped at 1: {r:?}");
        let entropy: f64 = r["entropy"].parse().unwrap();
        // Breakout has 4 actions: 0 < H <= ln 4.
        assert!(entropy > 0.0 && entropy <= 4f64.ln() + 1e-6, "{r:?}");
        for k in ["policy_loss", "value_loss", "value_mean"] {
            assert!(r[k].parse::<f64>().unwrap().is_finite(), "{k}: {r:?}");
        }
        assert_eq!(r["epsilon"].parse::<f64>().unwrap(), 0.0, "no epsilon");
        assert!(r["replay_size"].is_empty());
    }
    // Snapshot ages are measured, and bounded by what the run could have produced.
    let ages: Vec<f64> = before
        .iter()
        .filter_map(|r| r["snapshot_age"].parse().ok())
        .collect();
    assert!(!ages.is_empty(), "snapshot ages");
    assert!(ages.iter().all(|a| (0.0..=6000.0).contains(a)), "{ages:?}");
    // The same numbers in TensorBoard.
    let events: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect();
    let events = async_rl::tensorboard::read_events(&events[0]).unwrap();
    for (tag, column) in [
        ("losses/policy_loss", "policy_loss"),
        ("losses/value_loss", "value_loss"),
        ("losses/entropy", "entropy"),
        ("charts/value_mean", "value_mean"),
        ("losses/rho_mean", "rho_mean"),
        ("charts/snapshot_age", "snapshot_age"),
        ("losses/loss", "loss"),
    ] {
        let logged = async_rl::tensorboard::scalars(&events, tag);
        let csv: Vec<f64> = before
            .iter()
            .filter_map(|r| r[column].parse().ok())
            .collect();
        assert_eq!(logged.len(), csv.len(), "{tag}");
        assert!(!logged.is_empty(), "{tag}");
    }
    assert!(async_rl::tensorboard::scalars(&events, "losses/td_loss").is_empty());

    // Resume: the weights and the optimizer state come back, the updates go on.
    common
        .checkpoint(last)
        .frames(last + 3000)
        .succeeds("resumed impala learner", Duration::from_secs(300));
    let newest = *async_rl::checkpoint::list(&dir).last().unwrap();
    let resumed =
        async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&dir, newest)).unwrap();
    assert!(resumed.state.updates > ckpt.state.updates);

    // play samples from the policy by default (greedy play, which may idle in Breakout until
    // the time limit, is tested on CartPole below); --epsilon is refused for a policy.
    let model = async_rl::checkpoint::path_for(&dir, newest);
    let model = model.to_str().unwrap();
    let (_, out) = run(
        PLAY,
        &["--model", model, "--episodes", "1", "--render", "none"],
        tmp.path(),
        Duration::from_secs(300),
    );
    assert_ok("play of an impala checkpoint", &out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("actions sampled from the policy"),
        "{stdout}"
    );
    assert!(stdout.contains("1 episodes: mean"), "{stdout}");
    let (_, out) = run(
        PLAY,
        &["--model", model, "--epsilon", "0.05", "--episodes", "1"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--epsilon 0.05: this checkpoint is --algorithm impala")
            && err.contains("--policy greedy"),
        "{err}"
    );
}

/// appo with Adam on Breakout's segments: the checkpoint holds Adam's moments and step count
/// (and no RMSProp state), and a resumed run continues them rather than starting Adam over.
#[test]
fn appo_with_adam_on_breakout_resumes_its_optimizer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let common = Run::breakout(tmp.path())
        .rule("appo")
        .processes(2)
        .flag("--unroll", 10)
        .flag("--batch-size", 2)
        .flag("--queue-size", 4)
        .flag("--ppo-epochs", 2)
        .flag("--minibatches", 2)
        .flag("--optimizer", "adam")
        .flag("--adam-eps", "1e-5")
        .logdir(&dir)
        .seed(5);
    common
        .clone()
        .frames(4000)
        .succeeds("appo learner with adam", Duration::from_secs(300));
    let load =
        |frames| async_rl::checkpoint::load(&async_rl::checkpoint::path_for(&dir, frames)).unwrap();
    let first = *async_rl::checkpoint::list(&dir).last().unwrap();
    let ckpt = load(first);
    assert!(
        ckpt.optimizer.keys().all(|n| n.starts_with("adam/")),
        "only Adam's state with --optimizer adam"
    );
    let step = |c: &async_rl::checkpoint::Checkpoint| c.optimizer["adam/step"].int64_value(&[]);
    // Two epochs of two minibatches: four optimizer steps per update.
    assert_eq!(
        step(&ckpt) as u64,
        4 * ckpt.state.updates,
        "{}",
        ckpt.state.updates
    );
    assert!(ckpt.state.updates > 0);
    for name in ckpt.params.keys() {
        for moment in ["m", "v"] {
            let t = &ckpt.optimizer[&format!("adam/{moment}/{name}")];
            assert_eq!(t.size(), ckpt.params[name].size(), "adam/{moment}/{name}");
        }
    }
    assert!(
        ckpt.optimizer["adam/v/value.weight"]
            .abs()
            .sum(tch::Kind::Float)
            .double_value(&[])
            > 0.0,
        "the second moment has seen gradients"
    );
    common
        .checkpoint(first)
        .frames(first + 3000)
        .succeeds("resumed appo learner", Duration::from_secs(300));
    let resumed = load(*async_rl::checkpoint::list(&dir).last().unwrap());
    assert!(resumed.state.updates > ckpt.state.updates);
    assert_eq!(
        step(&resumed) as u64,
        4 * resumed.state.updates,
        "the step count went on from the checkpoint's"
    );
}

#[test]
fn a3c_on_cartpole_evaluates_periodically_by_sampling_and_play_refuses_policy_for_q() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = Run::cartpole(tmp.path())
        .rule("a3c")
        .flag("--config", "none")
        .processes(2)
        .flag("--envs-per-actor", 4)
        .frames(30_000)
        .flag("--eval-every", 10_000)
        .flag("--eval-episodes", 3)
        .flag("--log-interval", 1)
        .logdir(&dir)
        .succeeds("a3c learner", Duration::from_secs(300));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("evaluation at"), "{stdout}");
    let best = async_rl::checkpoint::best_path(&dir);
    assert!(best.is_file());
    // model-best holds only weights: resuming it is refused by name, not started afresh.
    let (_, out) = Run::cartpole(tmp.path())
        .rule("a3c")
        .flag("--config", "none")
        .processes(2)
        .frames(40_000)
        .logdir(tmp.path().join("resumed"))
        .checkpoint(best.display())
        .output(Duration::from_secs(120));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no optimizer state (model-best.safetensors is for play"),
        "{err}"
    );
    let r = metrics_rows(&dir);
    assert!(r.iter().any(|r| !r["policy_loss"].is_empty()));
    assert!(
        r.iter().all(|r| r["rho_mean"].is_empty()),
        "rho is impala's"
    );

    // --policy is for policy networks only.
    let q = untrained_checkpoint(tmp.path(), "CartPole");
    let (_, out) = run(
        PLAY,
        &["--model", q.to_str().unwrap(), "--policy", "greedy"],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--policy greedy: only for actor-critic checkpoints"),
        "{err}"
    );
}

/// Runs the learner with `args` (CartPole, in `dir`) and returns its stderr, asserting that
/// it refused to start (exit 2) without a panic.
fn refused(dir: &Path, args: &[&str]) -> String {
    // (The device left to its default.)
    let (pid, out) = Run::cartpole(dir)
        .without("--device")
        .flags(args)
        .output(Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_clean(pid);
    err
}

#[test]
fn settings_an_actor_critic_rule_would_ignore_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let cases: [(&[&str], &str); 10] = [
        (
            &["--algorithm", "a3c", "--eps-decay", "1000"],
            "--eps-decay: only --algorithm q, sarsa, dqn read it; this run is --algorithm a3c",
        ),
        (
            &["--algorithm", "a3c", "--unroll", "10"],
            "--unroll: only --algorithm impala, ppo, appo read it; this run is --algorithm a3c",
        ),
        (
            &["--algorithm", "impala", "--n-step", "3"],
            "--n-step: only --algorithm q, sarsa, dqn, a3c read it",
        ),
        (
            &["--algorithm", "q", "--entropy-coef", "0.1"],
            "--entropy-coef: only --algorithm a3c, impala, ppo, appo read it",
        ),
        (
            &["--algorithm", "a3c", "--dueling"],
            "--dueling: only --algorithm q, sarsa, dqn read it; this run is --algorithm a3c",
        ),
        (
            &["--algorithm", "impala", "--vtrace-rho", "0"],
            "--vtrace-rho 0: must be > 0 (inf for no clipping)",
        ),
        (
            &["--algorithm", "impala", "--unroll", "0"],
            "--unroll 0: must be 1 to 1000 agent steps",
        ),
        (
            &["--algorithm", "ppo", "--vtrace-rho", "2"],
            "--vtrace-rho: only --algorithm impala, appo read it; this run is --algorithm ppo",
        ),
        (
            &["--algorithm", "appo", "--gae-lambda", "0.9"],
            "--gae-lambda: only --algorithm ppo reads it; this run is --algorithm appo",
        ),
        (
            &["--algorithm", "impala", "--ppo-epochs", "3"],
            "--ppo-epochs: only --algorithm ppo, appo read it; this run is --algorithm impala",
        ),
    ];
    for (args, want) in cases {
        let err = refused(d, args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(
        !d.join("run").exists(),
        "nothing may start on invalid input"
    );
    // A checkpoint of a Q rule is not resumed as an actor-critic.
    std::fs::create_dir(d.join("run")).unwrap();
    untrained_checkpoint(&d.join("run"), "CartPole");
    let err = refused(d, &["--checkpoint", "1000", "--algorithm", "impala"]);
    assert!(
        err.contains("trained with --algorithm q; this run asks for --algorithm impala"),
        "{err}"
    );
}
