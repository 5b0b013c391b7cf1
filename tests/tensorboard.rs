//! The TensorBoard event file a run writes: framing and CRCs (checked by the reader), the
//! hyperparameters, every required tag, and values that agree with metrics.csv.

use std::time::Duration;

use async_rl::tensorboard::{read_events, scalars, texts, FILE_VERSION};

use crate::util::*;

#[test]
fn a_run_writes_every_tag_with_frames_as_steps() {
    let tmp = tempfile::tempdir().unwrap();
    Run::cartpole(tmp.path())
        .processes(1)
        .frames(20_000)
        .flag("--log-interval", "0.2")
        .succeeds("run", Duration::from_secs(60));
    let run_dir = tmp.path().join("run");
    let files: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].file_version, FILE_VERSION);

    let hparams = texts(&events, "hparams");
    assert_eq!(hparams.len(), 1);
    assert!(
        hparams[0].1.contains("| game | \"CartPole\" |"),
        "{}",
        hparams[0].1
    );
    assert!(
        hparams[0].1.contains("| max-frames | 20000 |"),
        "{}",
        hparams[0].1
    );

    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let (frames, episodes): (i64, usize) = (last[1].parse().unwrap(), last[4].parse().unwrap());
    let mean_return: f64 = last[6].parse().unwrap();
    for tag in [
        "charts/episodic_return",
        "charts/episode_length",
        "charts/epsilon",
        "charts/learning_rate",
        "charts/fps",
        "losses/td_loss",
        "losses/q_values",
        "perf/queue_fill",
        "perf/learner_busy",
    ] {
        let s = scalars(&events, tag);
        assert!(!s.is_empty(), "no {tag}");
        assert!(
            s.windows(2).all(|w| w[0].0 <= w[1].0) && s.last().unwrap().0 <= frames,
            "{tag}: steps are not frames: {s:?}"
        );
    }
    // One point per finished game; the last 100 average to the CSV's mean return.
    let returns = scalars(&events, "charts/episodic_return");
    assert_eq!(returns.len(), episodes);
    let tail = &returns[returns.len().saturating_sub(100)..];
    let mean = tail.iter().map(|(_, v)| *v as f64).sum::<f64>() / tail.len() as f64;
    assert!((mean - mean_return).abs() < 1e-2, "{mean} vs {mean_return}");
    // CartPole games last as many frames as they score.
    let lengths = scalars(&events, "charts/episode_length");
    assert!(returns.iter().zip(&lengths).all(|(r, l)| r.1 == l.1));
    // The CSV's final row is the final scalar row.
    let eps = scalars(&events, "charts/epsilon");
    assert_eq!(eps.last().unwrap().0, frames);
    // Every per-interval tag holds one point per CSV row that has the value, at that row's
    // frames, equal to it (the CSV rounds: lr to 4 significant digits, fps to 0.1).
    for (tag, column) in [
        ("charts/epsilon", 7),
        ("charts/learning_rate", 10),
        ("charts/fps", 5),
        ("charts/mean_return", 6),
        ("losses/td_loss", 8),
        ("losses/q_values", 9),
        ("perf/updates_per_s", 11),
        ("perf/queue_fill", 12),
        ("perf/learner_busy", 13),
    ] {
        let expected: Vec<(i64, f64)> = csv
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                let value = f[column].parse().ok()?;
                Some((f[1].parse().unwrap(), value))
            })
            .collect();
        let got = scalars(&events, tag);
        assert_eq!(got.len(), expected.len(), "{tag}: {got:?} vs {expected:?}");
        for ((step, v), (frames, want)) in got.iter().zip(&expected) {
            assert_eq!(step, frames, "{tag}");
            let tol = 1e-3 * want.abs().max(1.0);
            assert!(
                (*v as f64 - want).abs() <= tol,
                "{tag} at {step}: {v} vs {want}"
            );
        }
    }
}

#[test]
fn periodic_evaluation_runs_beside_training_and_logs_eval_mean_return() {
    let tmp = tempfile::tempdir().unwrap();
    let evaluated = Run::cartpole(tmp.path())
        .processes(1)
        .frames(60_000)
        .flag("--eval-every", 10_000)
        .flag("--eval-episodes", 3);
    let out = evaluated.succeeds("run", Duration::from_secs(60));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("evaluation at "))
        .collect();
    assert!(!lines.is_empty(), "{stdout}");
    assert!(
        lines.iter().all(|l| l.ends_with("over 3 games")),
        "{lines:?}"
    );
    let file = std::fs::read_dir(tmp.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("tfevents"))
        .unwrap();
    let events = read_events(&file).unwrap();
    let evals = scalars(&events, "eval/mean_return");
    assert_eq!(evals.len(), lines.len());
    // Evaluations happen at (or after) multiples of --eval-every, each at most once.
    assert!(evals.iter().all(|(f, _)| *f >= 10_000), "{evals:?}");
    assert!(
        evals.windows(2).all(|w| w[1].0 / 10_000 > w[0].0 / 10_000),
        "{evals:?}"
    );
    // CartPole scores are at least 1 and at most 500.
    assert!(
        evals.iter().all(|(_, v)| (1.0..=500.0).contains(v)),
        "{evals:?}"
    );
    // The best evaluation's weights are model-best.safetensors, its scores beside it; play reads it,
    // and it is no periodic checkpoint.
    let dir = tmp.path().join("run");
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model-best.eval.json")).unwrap()).unwrap();
    let top = evals.iter().map(|(_, v)| *v).fold(f32::MIN, f32::max);
    let mean = best["mean"].as_f64().unwrap();
    assert!((mean - f64::from(top)).abs() < 1e-3, "{best} vs {evals:?}");
    let ckpt = async_rl::checkpoint::load(&dir.join("model-best.safetensors")).unwrap();
    assert_eq!(ckpt.state.frames, best["frames"].as_u64().unwrap());
    assert!(!async_rl::checkpoint::list(&dir).is_empty());
    let (_, out) = run(
        PLAY,
        &[
            "--model",
            "run/model-best.safetensors",
            "--episodes",
            "2",
            "--epsilon",
            "0",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_ok("play model-best.safetensors", &out);
    // `play --eval` of it reports beside it, not over the learner's scores of it.
    let scores = std::fs::read(dir.join("model-best.eval.json")).unwrap();
    let (_, out) = run(
        PLAY,
        &[
            "--model",
            "run/model-best.safetensors",
            "--eval",
            "--episodes",
            "2",
        ],
        tmp.path(),
        Duration::from_secs(60),
    );
    assert_ok("play --eval model-best.safetensors", &out);
    assert_eq!(
        std::fs::read(dir.join("model-best.eval.json")).unwrap(),
        scores
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model-best.play-eval.json")).unwrap())
            .unwrap();
    assert_eq!(report["episodes"].as_u64(), Some(2), "{report}");
    assert_eq!(report["frames_trained"], best["frames"], "{report}");
    // A resumed run replaces them only with a better evaluation than the one recorded.
    let record = serde_json::json!({"frames": 1, "mean": 1e9, "median": 1e9, "std": 0.0,
        "min": 1e9, "max": 1e9, "episodes": 3});
    std::fs::write(dir.join("model-best.eval.json"), record.to_string()).unwrap();
    let before = std::fs::read(dir.join("model-best.safetensors")).unwrap();
    let out = evaluated
        .checkpoint("latest")
        .frames(90_000)
        .succeeds("resumed run", Duration::from_secs(60));
    assert!(
        text(&out.stdout).contains("evaluation at "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(dir.join("model-best.safetensors")).unwrap(),
        before
    );
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model-best.eval.json")).unwrap()).unwrap();
    assert_eq!(kept["mean"].as_f64(), Some(1e9));
}
