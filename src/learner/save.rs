//! The learner's checkpoints: the run's state at a frame count, and `model-best.safetensors`, the
//! weights of the best evaluation, with its scores in `model-best.eval.json`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Counters, Trainer};
use crate::atomic_file::{self, WriteError};
use crate::checkpoint;
use crate::config::Config;
use crate::eval::Stats;
use crate::ipc::EvalScores;

/// `model-best.eval.json`: an [`EvalScores`] as one flat JSON object, `frames`, `mean`,
/// `median`, `std`, `min`, `max`, `episodes` (scripts and resumed runs read these keys).
/// `EvalScores` itself nests its statistics, for bincode.
#[derive(Serialize, Deserialize)]
struct BestScoresFile {
    frames: u64,
    #[serde(flatten)]
    stats: Stats,
    episodes: usize,
}

/// Writes `scores` to `path` (`model-best.eval.json`) as pretty JSON, atomically.
pub(super) fn write_best_scores(path: &Path, scores: &EvalScores) -> Result<(), WriteError> {
    let file = BestScoresFile {
        frames: scores.frames,
        stats: scores.stats,
        episodes: scores.episodes,
    };
    atomic_file::write(path, |f| {
        use std::io::Write;
        f.write_all(&serde_json::to_vec_pretty(&file)?)
    })
}

/// The scores in `path` (`model-best.eval.json`); `None` if it is missing or unreadable.
pub(super) fn read_best_scores(path: &Path) -> Option<EvalScores> {
    let file: BestScoresFile = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(EvalScores {
        frames: file.frames,
        stats: file.stats,
        episodes: file.episodes,
    })
}

/// Writes checkpoint `model-<frames>.safetensors` of the run's current state.
pub(super) fn save(
    cfg: &Config,
    trainer: &Trainer,
    c: &Counters,
    run_dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let model = trainer.rule.model();
    let state = trainer.state(cfg, c, c.frames);
    let path = checkpoint::path_for(run_dir, c.frames);
    checkpoint::save(
        &path,
        &state,
        model.params(),
        &trainer.rule.optimizer_named_state(),
        &trainer.rule.extra_tensors(),
    )?;
    if cfg.rule.replay.save_replay {
        let replay = checkpoint::replay_path_for(run_dir, c.frames);
        trainer.rule.save_replay(&replay)?;
    }
    checkpoint::prune(run_dir, cfg.run.keep_checkpoints).with_context(|| {
        format!(
            "--keep-checkpoints {}: removing older checkpoints in {}",
            cfg.run.keep_checkpoints,
            run_dir.display()
        )
    })?;
    Ok(path)
}

/// Writes `model-best.safetensors` with the evaluated `weights` (flat, snapshot order) and the
/// counters of now (frames: the evaluated snapshot's), and its scores beside it, each
/// atomically.
pub(super) fn save_best(
    cfg: &Config,
    trainer: &Trainer,
    c: &Counters,
    run_dir: &std::path::Path,
    scores: &EvalScores,
    weights: &[f32],
) -> Result<()> {
    let model = trainer.rule.model();
    anyhow::ensure!(
        weights.len() == model.numel(),
        "the evaluator sent {} weights, the network has {}",
        weights.len(),
        model.numel()
    );
    let mut best = crate::model::AgentNetwork::new(
        model.spec(),
        trainer.obs,
        model.num_actions(),
        tch::Device::Cpu,
    );
    best.load_flat(weights);
    let state = trainer.state(cfg, c, scores.frames);
    // Weights only: resuming it is refused by name (optim::StateError::Empty).
    let path = checkpoint::best_path(run_dir);
    checkpoint::save(&path, &state, best.params(), &[], &[])?;
    write_best_scores(&checkpoint::best_scores_path(run_dir), scores)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_scores_are_flat_json_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint::best_scores_path(dir.path());
        let scores = EvalScores {
            frames: 20_000,
            stats: Stats::of(&[1.0, 2.0, 6.0]).unwrap(),
            episodes: 3,
        };
        write_best_scores(&path, &scores).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split_once("\":").map(|(k, _)| k))
            .collect();
        assert_eq!(
            keys,
            ["frames", "mean", "median", "std", "min", "max", "episodes"],
            "{text}"
        );
        assert!(
            text.starts_with("{\n  \"frames\": 20000,\n  \"mean\": 3.0,"),
            "{text}"
        );
        assert!(text.ends_with("\"episodes\": 3\n}"), "{text}");
        assert_eq!(read_best_scores(&path), Some(scores));
        // What a user or an older build wrote reads the same.
        std::fs::write(
            &path,
            r#"{"frames": 1, "mean": 1e9, "median": 1e9, "std": 0, "min": 1e9, "max": 1e9, "episodes": 3}"#,
        )
        .unwrap();
        let read = read_best_scores(&path).unwrap();
        assert_eq!((read.frames, read.stats.mean, read.episodes), (1, 1e9, 3));
        std::fs::write(&path, b"{}").unwrap();
        assert_eq!(read_best_scores(&path), None);
        assert_eq!(read_best_scores(&dir.path().join("missing.json")), None);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }
}
