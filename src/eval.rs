//! Evaluation: plays whole games with a trained network and reports their scores as papers
//! report them.
//!
//! The standard protocol (Mnih et al. 2015, and the asynchronous methods paper after it):
//! [`EPISODES`] (30) games, each started with up to [`NOOP_MAX`] (30) no-op frames, played with
//! epsilon [`EPSILON`] (0.05) until game over (a lost life is not terminal) or the episode's
//! frame limit, scored by the unclipped game score. With sticky actions, the stochasticity of
//! Machado et al. (2018, "Revisiting the Arcade Learning Environment"): the emulator repeats the
//! previous action with probability [`STICKY_PROBABILITY`] (0.25) at every frame.
//!
//! [`evaluate`] plays; [`Protocol::env_settings`] derives the environment of a protocol from
//! the one a checkpoint was trained with; [`Stats`] summarises scores, the one summary that
//! `play`'s report, the periodic evaluator's message ([`crate::ipc::EvalScores`]) and
//! `model-best.eval.json` carry; [`Report`] is what `play --eval` writes next to the model.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, WriteError};

use crate::env::{EnvError, EnvSettings, Environment, Step};
use crate::model::{obs_tensor, AgentNetwork};
use crate::policy::ActionPolicy;

/// Games per evaluation.
pub const EPISODES: usize = 30;
/// Probability of a random action.
pub const EPSILON: f64 = 0.05;
/// Up to this many no-op frames start each game.
pub const NOOP_MAX: u32 = 30;
/// Machado et al. (2018)'s sticky-action probability, per emulator frame.
pub const STICKY_PROBABILITY: f32 = 0.25;

/// The settings of an evaluation protocol.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Protocol {
    /// Probability of a random action at each step.
    pub epsilon: f64,
    /// Up to this many no-op frames after each reset (Atari).
    pub noop_max: u32,
    /// The emulator's probability of repeating the previous action, per frame (Atari).
    pub repeat_action_probability: f32,
}

impl Protocol {
    /// The standard protocol: epsilon 0.05, up to 30 no-op frames, no sticky actions.
    pub fn standard() -> Self {
        Protocol {
            epsilon: EPSILON,
            noop_max: NOOP_MAX,
            repeat_action_probability: 0.0,
        }
    }

    /// The standard protocol with Machado et al. (2018)'s sticky actions (0.25) on top. (They
    /// need no no-op starts; keeping them changes little and keeps the two comparable.)
    pub fn sticky() -> Self {
        Protocol {
            repeat_action_probability: STICKY_PROBABILITY,
            ..Protocol::standard()
        }
    }

    /// [`Protocol::sticky`] if `sticky`, else [`Protocol::standard`].
    pub fn new(sticky: bool) -> Self {
        if sticky {
            Protocol::sticky()
        } else {
            Protocol::standard()
        }
    }

    /// The environment of this protocol for a checkpoint trained with `trained`: whole games
    /// (a lost life is not terminal), this protocol's no-op starts and sticky actions (whatever
    /// the training used, a Gym id's included); frame skip, episode frame limit, ROM and seed
    /// as given.
    pub fn env_settings(&self, trained: &EnvSettings) -> EnvSettings {
        EnvSettings {
            noop_max: self.noop_max,
            repeat_action_probability: Some(self.repeat_action_probability),
            terminal_on_life_loss: false,
            fire_on_life_loss: false,
            ..trained.clone()
        }
    }
}

/// The environment for watching a checkpoint play (`play` without `--eval`): as trained, but
/// whole games (a lost life is not terminal), and sticky actions (0.25) if `sticky`.
pub fn play_settings(trained: &EnvSettings, sticky: bool) -> EnvSettings {
    EnvSettings {
        terminal_on_life_loss: false,
        fire_on_life_loss: false,
        repeat_action_probability: if sticky {
            Some(STICKY_PROBABILITY)
        } else {
            trained.repeat_action_probability
        },
        ..trained.clone()
    }
}

/// Summary of scores. Its fields keep their names in JSON (`mean`, `median`, `std`, `min`,
/// `max`), flattened into the reports that embed it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    /// The middle score, or the mean of the two middle ones for an even count.
    pub median: f64,
    /// Population standard deviation (divided by n, not n - 1).
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `scores`; `None` when there are none.
    pub fn of(scores: &[f64]) -> Option<Stats> {
        if scores.is_empty() {
            return None;
        }
        let n = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut sorted = scores.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Stats {
            mean,
            median,
            std,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// One finished game.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Episode {
    /// Unclipped game score.
    pub score: f64,
    /// Frames played (Atari: emulator frames, no-op starts included; else steps).
    pub frames: u64,
    /// Ended by the episode's frame limit rather than by the game.
    pub truncated: bool,
}

/// The games of an evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// Finished games, in order.
    pub episodes: Vec<Episode>,
    /// The observer stopped the evaluation before all games were played.
    pub stopped: bool,
}

impl EvalResult {
    /// Scores of the finished games.
    pub fn scores(&self) -> Vec<f64> {
        self.episodes.iter().map(|e| e.score).collect()
    }

    /// Statistics of the scores; `None` when no game finished.
    pub fn stats(&self) -> Option<Stats> {
        Stats::of(&self.scores())
    }

    /// The games as a [`Report`] gives them; `None` when no game finished.
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            episodes: self.episodes.len(),
            frames: self.frames(),
            truncated: self.episodes.iter().filter(|e| e.truncated).count(),
            stats: self.stats()?,
            scores: self.scores(),
            episode_frames: self.episodes.iter().map(|e| e.frames).collect(),
        })
    }

    /// Frames over all finished games.
    pub fn frames(&self) -> u64 {
        self.episodes.iter().map(|e| e.frames).sum()
    }
}

/// What [`evaluate_with`] tells its observer; `episode` counts from 1.
#[derive(Debug)]
pub enum Event<'a> {
    /// A game has started (the environment was reset).
    Reset { episode: usize },
    /// An agent step was played.
    Step { episode: usize, step: &'a Step },
    /// A game has finished.
    Finished { episode: usize, result: &'a Episode },
}

/// Plays `episodes` whole games in `env` with `model`, choosing actions by `policy` (an
/// epsilon for epsilon-greedy on Q-values, or [`ActionPolicy::Sample`] for a policy network's
/// logits), and returns their scores. `env` should be built with the protocol's settings
/// ([`Protocol::env_settings`]): this function only plays until game over or truncation.
///
/// Errors: the environment's (an observation the model does not take panics in libtorch, so
/// check `obs_spec` and `num_actions` against the model first).
pub fn evaluate(
    model: &AgentNetwork,
    env: &mut dyn Environment,
    episodes: usize,
    policy: impl Into<ActionPolicy>,
    rng: &mut impl Rng,
) -> Result<EvalResult, EnvError> {
    evaluate_with(model, env, episodes, policy, rng, |_, _| {
        ControlFlow::Continue(())
    })
}

/// [`evaluate`], calling `observe` with the environment after every reset, step and finished
/// game (to show or record the screen); `ControlFlow::Break` stops after the current event,
/// with the games finished so far and `stopped` set.
pub fn evaluate_with(
    model: &AgentNetwork,
    env: &mut dyn Environment,
    episodes: usize,
    policy: impl Into<ActionPolicy>,
    rng: &mut impl Rng,
    mut observe: impl FnMut(&mut dyn Environment, Event) -> ControlFlow<()>,
) -> Result<EvalResult, EnvError> {
    let policy = policy.into();
    let _no_grad = tch::no_grad_guard();
    let obs_spec = env.obs_spec();
    let num_actions = env.num_actions();
    let mut q = vec![0f32; num_actions];
    // A Gaussian policy (continuous actions) acts with its mean when greedy, else a sample.
    let gaussian = model.spec().head == crate::model::HeadKind::Gaussian;
    let mut policy_row = vec![0f32; model.act_width()];
    let mut action = vec![0f32; if gaussian { num_actions } else { 0 }];
    let mut result = EvalResult::default();
    let stop = |result: &mut EvalResult| {
        result.stopped = true;
        Ok(std::mem::take(result))
    };
    for episode in 1..=episodes {
        env.reset()?;
        if observe(env, Event::Reset { episode }).is_break() {
            return stop(&mut result);
        }
        let truncated = loop {
            let x = obs_tensor(obs_spec, env.obs(), 1).to_device(model.device());
            let step = if gaussian {
                let width = policy_row.len();
                model
                    .act_outputs(&x)
                    .to_device(tch::Device::Cpu)
                    .copy_data(&mut policy_row, width);
                match policy {
                    ActionPolicy::Sample => crate::policy::sample_gaussian(
                        &policy_row[..2 * num_actions],
                        &mut action,
                        rng,
                    ),
                    ActionPolicy::EpsilonGreedy(_) => {
                        action.copy_from_slice(&policy_row[..num_actions])
                    }
                }
                env.step_continuous(&action)?
            } else {
                model
                    .forward(&x)
                    .to_device(tch::Device::Cpu)
                    .copy_data(&mut q, num_actions);
                env.step(policy.act(&q, rng))?
            };
            if observe(
                env,
                Event::Step {
                    episode,
                    step: &step,
                },
            )
            .is_break()
            {
                return stop(&mut result);
            }
            if step.game_over || step.truncated {
                break step.truncated && !step.game_over;
            }
        };
        let finished = Episode {
            score: env.episode_return() as f64,
            frames: env.episode_frames(),
            truncated,
        };
        result.episodes.push(finished);
        if observe(
            env,
            Event::Finished {
                episode,
                result: &finished,
            },
        )
        .is_break()
        {
            return stop(&mut result);
        }
    }
    Ok(result)
}

/// What `play --eval` writes as JSON next to the model: one flat object, `model`, `game`,
/// `frames_trained`, `protocol`, `policy`, `epsilon`, `noop_max`,
/// `repeat_action_probability`, `max_episode_frames`, `frame_skip`, `seed`, then the
/// [`Summary`]'s keys, in this order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The checkpoint evaluated, as given.
    pub model: String,
    /// Display name of the game.
    pub game: String,
    /// Frames the checkpoint was trained for.
    pub frames_trained: u64,
    /// `standard` or `sticky`.
    pub protocol: String,
    /// How actions were chosen: `epsilon-greedy` (Q-networks, with `epsilon`), or `sample` or
    /// `greedy` (policy networks; `epsilon` is then 0).
    pub policy: String,
    /// The protocol's settings: `epsilon`, `noop_max`, `repeat_action_probability`.
    #[serde(flatten)]
    pub settings: Protocol,
    /// Frames after which a game is cut short (0: never).
    pub max_episode_frames: u64,
    pub frame_skip: u32,
    pub seed: u64,
    /// The games and their scores.
    #[serde(flatten)]
    pub games: Summary,
}

/// The finished games of an evaluation, as a [`Report`] gives them ([`EvalResult::summary`]):
/// `episodes`, `frames`, `truncated`, the [`Stats`]' keys, `scores`, `episode_frames`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Games played.
    pub episodes: usize,
    /// Frames over all games.
    pub frames: u64,
    /// Games cut short by the frame limit.
    pub truncated: usize,
    /// Statistics of the scores.
    #[serde(flatten)]
    pub stats: Stats,
    /// Every game's score, in order.
    pub scores: Vec<f64>,
    /// Every game's frames, in order.
    pub episode_frames: Vec<u64>,
}

/// Where `play --eval` writes the report for `model`: `<dir>/<stem>.eval.json`
/// (`<stem>.eval-sticky.json` with sticky actions), next to the model. For the learner's
/// `model-best.safetensors` it is `model-best.play-eval.json` (`.play-eval-sticky.json`):
/// `model-best.eval.json` holds the learner's own scores of that model, which a resumed run
/// reads to decide what a better evaluation is ([`crate::checkpoint::best_scores_path`]).
pub fn report_path(model: &Path, sticky: bool) -> PathBuf {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let kind = if stem == "model-best" {
        "play-eval"
    } else {
        "eval"
    };
    let suffix = if sticky { "-sticky" } else { "" };
    model.with_file_name(format!("{stem}.{kind}{suffix}.json"))
}

/// Writes `report` as pretty JSON (and a final newline) to `path` atomically
/// ([`atomic_file`]). Errors name the path.
pub fn write_report(path: &Path, report: &Report) -> Result<(), WriteError> {
    atomic_file::write(path, |f| {
        let mut json = serde_json::to_string_pretty(report)?;
        json.push('\n');
        f.write_all(json.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Network};
    use crate::env::ObsSpec;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn median_of_odd_and_even_counts_and_population_std() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.mean, s.median, s.min, s.max), (2.0, 2.0, 1.0, 3.0));
        assert!((s.std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let s = Stats::of(&[4.0, -1.0, 10.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, -1.0, 10.0));
        // Population std of 2, 4, 4, 4, 5, 5, 7, 9 is exactly 2.
        let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((s.mean, s.std, s.median), (5.0, 2.0, 4.5));
        let s = Stats::of(&[-21.0]).unwrap();
        assert_eq!((s.mean, s.median, s.std), (-21.0, -21.0, 0.0));
        assert_eq!(Stats::of(&[]), None);
    }

    fn trained() -> EnvSettings {
        // As a config could have it: another noop_max, life loss terminal, a Gym id's stickiness.
        EnvSettings {
            noop_max: 7,
            terminal_on_life_loss: true,
            repeat_action_probability: Some(0.25),
            ..Config::default().env_settings(5)
        }
    }

    #[test]
    fn protocols_fix_noops_life_loss_stickiness_and_epsilon() {
        let t = trained();
        let standard = Protocol::standard();
        assert_eq!(standard.epsilon, 0.05);
        let s = standard.env_settings(&t);
        assert_eq!(s.noop_max, 30);
        assert!(!s.terminal_on_life_loss);
        assert_eq!(s.repeat_action_probability, Some(0.0));
        assert_eq!((s.seed, s.frame_skip), (5, t.frame_skip));
        assert_eq!(s.max_episode_frames, t.max_episode_frames);

        let sticky = Protocol::new(true);
        assert_eq!(sticky, Protocol::sticky());
        assert_eq!(sticky.epsilon, 0.05);
        let s = sticky.env_settings(&t);
        assert_eq!(s.repeat_action_probability, Some(0.25));
        assert_eq!((s.noop_max, s.terminal_on_life_loss), (30, false));
        assert_eq!(Protocol::new(false), standard);
    }

    #[test]
    fn play_keeps_the_trained_settings_but_whole_games() {
        let t = EnvSettings {
            repeat_action_probability: None,
            ..trained()
        };
        let s = play_settings(&t, false);
        assert_eq!((s.noop_max, s.terminal_on_life_loss), (7, false));
        assert_eq!(s.repeat_action_probability, None);
        assert_eq!(
            play_settings(&t, true).repeat_action_probability,
            Some(0.25)
        );
    }

    #[test]
    fn report_path_is_next_to_the_model() {
        let m = Path::new("runs/Pong/model-5773760.pt");
        assert_eq!(
            report_path(m, false),
            Path::new("runs/Pong/model-5773760.eval.json")
        );
        assert_eq!(
            report_path(m, true),
            Path::new("runs/Pong/model-5773760.eval-sticky.json")
        );
        assert_eq!(
            report_path(Path::new("m.pt"), false),
            Path::new("m.eval.json")
        );
        // Not over the learner's scores of its best model (model-best.eval.json).
        let best = Path::new("runs/Pong/model-best.safetensors");
        assert_eq!(
            report_path(best, false),
            Path::new("runs/Pong/model-best.play-eval.json")
        );
        assert_eq!(
            report_path(best, true),
            Path::new("runs/Pong/model-best.play-eval-sticky.json")
        );
        assert_ne!(
            report_path(best, false),
            crate::checkpoint::best_scores_path(Path::new("runs/Pong"))
        );
    }

    #[test]
    fn evaluate_plays_whole_cartpole_games_and_can_be_stopped() {
        let model = AgentNetwork::new(Network::Mlp, ObsSpec::Vector(4), 2, tch::Device::Cpu);
        let mut env = crate::env::CartPole::new(1, 50);
        let mut rng = StdRng::seed_from_u64(1);
        let r = evaluate(&model, &mut env, 3, 0.05, &mut rng).unwrap();
        assert_eq!(r.episodes.len(), 3);
        assert!(!r.stopped);
        for e in &r.episodes {
            assert!(e.score >= 1.0 && e.score <= 50.0, "{e:?}");
            assert!(!e.truncated || e.score == 50.0, "{e:?}");
        }
        assert_eq!(r.frames(), r.episodes.iter().map(|e| e.frames).sum::<u64>());

        let mut steps = 0;
        let r = evaluate_with(&model, &mut env, 3, 0.05, &mut rng, |_, ev| {
            if let Event::Step { .. } = ev {
                steps += 1;
            }
            if steps == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(r.stopped && r.episodes.is_empty());
        assert_eq!(steps, 2);
    }

    #[test]
    fn reports_are_written_whole_or_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-1.eval.json");
        let result = EvalResult {
            episodes: vec![
                Episode {
                    score: 10.0,
                    frames: 10,
                    truncated: false,
                },
                Episode {
                    score: 20.0,
                    frames: 20,
                    truncated: true,
                },
            ],
            stopped: false,
        };
        assert_eq!(EvalResult::default().summary(), None);
        let report = Report {
            model: "model-1.pt".into(),
            game: "CartPole".into(),
            frames_trained: 1,
            protocol: "standard".into(),
            policy: "epsilon-greedy".into(),
            settings: Protocol::standard(),
            max_episode_frames: 108_000,
            frame_skip: 4,
            seed: 0,
            games: result.summary().unwrap(),
        };
        write_report(&path, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // One flat object, its keys in the order scripts and people have always seen.
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split_once("\":").map(|(k, _)| k))
            .collect();
        assert_eq!(
            keys,
            [
                "model",
                "game",
                "frames_trained",
                "protocol",
                "policy",
                "epsilon",
                "noop_max",
                "repeat_action_probability",
                "max_episode_frames",
                "frame_skip",
                "seed",
                "episodes",
                "frames",
                "truncated",
                "mean",
                "median",
                "std",
                "min",
                "max",
                "scores",
                "episode_frames"
            ],
            "{text}"
        );
        assert!(text.ends_with("]\n}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["median"], 15.0);
        assert_eq!(v["std"], 5.0);
        assert_eq!(v["episodes"], 2);
        assert_eq!(v["frames"], 30);
        assert_eq!(v["truncated"], 1);
        assert_eq!(v["epsilon"], 0.05);
        assert_eq!(v["repeat_action_probability"], 0.0);
        assert_eq!(v["scores"][1], 20.0);
        assert_eq!(v["episode_frames"][1], 20);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
        let bad = dir.path().join("missing/x.eval.json");
        let err = write_report(&bad, &report).unwrap_err();
        assert!(err.to_string().contains("missing/x.eval.json"), "{err}");
    }
}
