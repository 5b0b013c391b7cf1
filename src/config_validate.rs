//! Validation of a [`Config`]: every value checked, every problem reported at once, each
//! naming its flag and what would be valid (split from `config.rs` to keep each file about
//! one thing).

use super::{Algorithm, Config, ConfigError};

impl Config {
    /// Checks every value; the error lists all problems, each naming its flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                e.push(msg);
            }
        };
        let least = usize::from(self.listen.is_none());
        check(
            (least..=1024).contains(&self.processes),
            if self.listen.is_some() {
                format!("--processes {}: must be between 0 and 1024", self.processes)
            } else {
                format!(
                    "--processes {}: must be between 1 and 1024 (0 only with --listen, where every actor is remote)",
                    self.processes
                )
            },
        );
        if self.listen.is_some() {
            check(
                (1..=4096).contains(&self.remote_lanes),
                format!(
                    "--remote-lanes {}: must be between 1 and 4096",
                    self.remote_lanes
                ),
            );
            check(
                self.queue_size >= self.processes + self.remote_lanes,
                format!(
                    "--queue-size {}: must be at least --processes {} + --remote-lanes {} (each lane owns a share of the slots)",
                    self.queue_size, self.processes, self.remote_lanes
                ),
            );
        }
        for problem in crate::remote::check_flags(self) {
            check(false, problem);
        }
        check(
            (1..=1000).contains(&self.n_step),
            format!("--n-step {}: must be between 1 and 1000", self.n_step),
        );
        check(
            (0.0..=1.0).contains(&self.gamma),
            format!("--gamma {}: must be in [0, 1]", self.gamma),
        );
        check(
            self.batch_size >= 1,
            format!("--batch-size {}: must be at least 1", self.batch_size),
        );
        check(
            self.batch_size <= self.queue_size,
            format!(
                "--batch-size {}: must not exceed --queue-size {}",
                self.batch_size, self.queue_size
            ),
        );
        check(self.queue_size >= self.processes, format!(
            "--queue-size {}: must be at least --processes {} (each actor owns a share of the slots)",
            self.queue_size, self.processes));
        check(
            self.queue_size <= 1 << 20,
            format!("--queue-size {}: at most 1048576", self.queue_size),
        );
        check(
            self.lr.is_finite() && self.lr > 0.0,
            format!("--lr {}: must be a positive number", self.lr),
        );
        check(
            (0.0..1.0).contains(&self.rms_decay),
            format!("--rms-decay {}: must be in [0, 1)", self.rms_decay),
        );
        check(
            self.rms_eps.is_finite() && self.rms_eps > 0.0,
            format!("--rms-eps {}: must be positive", self.rms_eps),
        );
        check(
            self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0,
            format!("--max-grad-norm {}: must be positive", self.max_grad_norm),
        );
        check(
            !self.final_epsilons.is_empty()
                && self.final_epsilons.iter().all(|x| (0.0..=1.0).contains(x)),
            format!(
                "--final-epsilons {:?}: need one or more values in [0, 1]",
                self.final_epsilons
            ),
        );
        let psum: f64 = self.final_epsilon_probs.iter().sum();
        check(self.final_epsilon_probs.len() == self.final_epsilons.len()
                && self.final_epsilon_probs.iter().all(|p| *p >= 0.0)
                && (psum - 1.0).abs() < 1e-6,
            format!("--final-epsilon-probs {:?}: need one non-negative probability per final epsilon ({}), summing to 1",
                self.final_epsilon_probs, self.final_epsilons.len()));
        if let Some(t) = self.target_return {
            check(
                t.is_finite(),
                format!("--target-return {t}: must be a finite number"),
            );
        }
        check(
            (1..=256).contains(&self.envs_per_actor),
            format!(
                "--envs-per-actor {}: must be between 1 and 256",
                self.envs_per_actor
            ),
        );
        check(
            (1..=1024).contains(&self.learner_threads),
            format!(
                "--learner-threads {}: must be between 1 and 1024",
                self.learner_threads
            ),
        );
        check(
            self.actor_nice <= 19,
            format!(
                "--actor-nice {}: must be between 0 and 19 (Linux's niceness range)",
                self.actor_nice
            ),
        );
        check(
            self.sync_frames >= 1,
            "--sync-frames 0: must be at least 1".into(),
        );
        check(
            self.save_freq >= 1,
            "--save-freq 0: must be at least 1".into(),
        );
        check(
            self.max_frames >= 1,
            "--max-frames 0: must be at least 1".into(),
        );
        check(
            (1..=10_000).contains(&self.eval_episodes),
            format!(
                "--eval-episodes {}: must be between 1 and 10000",
                self.eval_episodes
            ),
        );
        check(
            (1..=64).contains(&self.frame_skip),
            format!("--frame-skip {}: must be between 1 and 64", self.frame_skip),
        );
        check(
            self.noop_max <= 1000,
            format!("--noop-max {}: at most 1000", self.noop_max),
        );
        if let Some(p) = self.repeat_action_probability {
            check(
                (0.0..1.0).contains(&p),
                format!("--repeat-action-probability {p}: must be in [0, 1)"),
            );
        }
        check(
            self.max_episode_frames >= self.frame_skip as u64,
            format!(
                "--max-episode-frames {}: must be at least --frame-skip {}",
                self.max_episode_frames, self.frame_skip
            ),
        );
        check(
            self.log_interval.is_finite() && self.log_interval > 0.0,
            format!(
                "--log-interval {}: must be a positive number of seconds",
                self.log_interval
            ),
        );
        self.validate_inference(&mut e);
        self.validate_replay(&mut e);
        self.validate_actor_critic(&mut e);
        if let Err(msg) = self.env_id() {
            e.push(msg);
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(e))
        }
    }

    /// The batched-inference settings; errors appended to `e`.
    fn validate_inference(&self, e: &mut Vec<String>) {
        use crate::config::InferenceChoice;
        if !(1..=1_000_000).contains(&self.inference_wait_us) {
            e.push(format!(
                "--inference-wait-us {}: must be between 1 and 1000000 microseconds (1 s)",
                self.inference_wait_us
            ));
        }
        if self.inference == InferenceChoice::Learner && self.listen.is_some() {
            e.push("--inference learner with --listen: the inference server serves this machine's actors only, and remote hosts act with their own snapshot copies; use --inference actor (or auto) with --listen".into());
        }
        if self.inference == InferenceChoice::Actor {
            if let Some(d) = self.inference_device {
                e.push(format!("--inference-device {d}: only with --inference learner (or auto), where the learner runs the actors' forward passes"));
            }
        }
    }

    /// The replay settings (`dqn`'s); errors appended to `e`.
    fn validate_replay(&self, e: &mut Vec<String>) {
        let dqn = self.algorithm == Algorithm::Dqn;
        if dqn && self.replay_size < self.batch_size {
            e.push(format!(
                "--replay-size {}: smaller than a batch (--batch-size {}); give at least {}",
                self.replay_size, self.batch_size, self.batch_size
            ));
        }
        if self.replay_size > 1 << 32 {
            e.push(format!(
                "--replay-size {}: at most 4294967296 transitions",
                self.replay_size
            ));
        }
        if !(self.replay_ratio.is_finite() && self.replay_ratio > 0.0) {
            e.push(format!(
                "--replay-ratio {}: must be a positive number of transitions trained on per transition inserted (e.g. 8)",
                self.replay_ratio
            ));
        }
        if self.target_update == 0 {
            e.push("--target-update 0: must be at least 1 update".into());
        }
        if !(0.0..=1.0).contains(&self.priority_alpha) {
            e.push(format!(
                "--priority-alpha {}: must be in [0, 1]",
                self.priority_alpha
            ));
        }
        if !(0.0..=1.0).contains(&self.priority_beta) {
            e.push(format!(
                "--priority-beta {}: must be in [0, 1]",
                self.priority_beta
            ));
        }
        if self.prioritized && !dqn {
            e.push(format!(
                "--prioritized: needs a replay memory, i.e. --algorithm dqn (this run is --algorithm {})",
                self.algorithm_name()
            ));
        }
        if self.save_replay && !dqn {
            e.push(format!(
                "--save-replay: needs a replay memory, i.e. --algorithm dqn (this run is --algorithm {})",
                self.algorithm_name()
            ));
        }
    }

    /// The actor-critic settings; errors appended to `e`.
    fn validate_actor_critic(&self, e: &mut Vec<String>) {
        for (flag, v) in [
            ("--value-coef", self.value_coef),
            ("--entropy-coef", self.entropy_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                e.push(format!("{flag} {v}: must be a finite number >= 0"));
            }
        }
        if self.unroll == 0 || self.unroll > 1000 {
            e.push(format!(
                "--unroll {}: must be 1 to 1000 agent steps per segment (IMPALA uses 20)",
                self.unroll
            ));
        }
        for (flag, v) in [
            ("--vtrace-rho", self.vtrace_rho),
            ("--vtrace-c", self.vtrace_c),
        ] {
            // NaN fails this too; inf (no clipping) passes.
            if v.is_nan() || v <= 0.0 {
                e.push(format!("{flag} {v}: must be > 0 (inf for no clipping)"));
            }
        }
        if self.dueling && self.algorithm.is_actor_critic() {
            e.push(format!(
                "--dueling: a Q-value head; --algorithm {} learns a policy and a value (leave --dueling out)",
                self.algorithm_name()
            ));
        }
    }

    /// `--algorithm`'s value as written on the command line.
    pub fn algorithm_name(&self) -> String {
        format!("{:?}", self.algorithm).to_lowercase()
    }
}
