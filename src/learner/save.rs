//! The learner's checkpoints: the run's state at a frame count, and `model-best.pt`, the
//! weights of the best evaluation.

use anyhow::{Context, Result};

use super::{Counters, Trainer};
use crate::atomic_file;
use crate::checkpoint;
use crate::config::Config;
use crate::protocol::EvalScores;

/// Writes checkpoint `model-<frames>.pt` of the run's current state.
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
        trainer.rule.optimizer_state(),
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

/// Writes `model-best.pt` with the evaluated `weights` (flat, snapshot order) and the
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
    let mut best = crate::model::QNetwork::new(
        model.spec(),
        trainer.obs,
        model.num_actions(),
        tch::Device::Cpu,
    );
    best.load_flat(weights);
    let state = trainer.state(cfg, c, scores.frames);
    let rmsprop: Vec<tch::Tensor> = best.params().iter().map(|(_, p)| p.zeros_like()).collect();
    let path = checkpoint::best_path(run_dir);
    checkpoint::save(&path, &state, best.params(), &rmsprop, &[])?;
    let json = serde_json::to_vec_pretty(scores)?;
    atomic_file::write(&checkpoint::best_scores_path(run_dir), |f| {
        std::io::Write::write_all(f, &json)
    })?;
    Ok(())
}
