//! Validation of a [`Config`], in one place: every group checks its own values, the rule's
//! families of settings are checked for the rule that reads them, then the checks across
//! groups. Every problem is reported at once, each naming its flag and what would be valid.

use super::{Config, ConfigError};
use crate::rules::{Algorithm, Family};

impl Config {
    /// Checks every value; the error lists all problems, each naming its flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Vec::new();
        let listening = self.listen.listen.is_some();
        self.run.validate(&mut e);
        self.env.validate(&mut e);
        self.procs.validate(usize::from(!listening), &mut e);
        self.actors.validate(listening, &mut e);
        self.learner.validate(&mut e);
        self.optim.validate(&mut e);
        if listening {
            self.listen.validate(&mut e);
        }
        let rule = self.learner.algorithm;
        self.rule.validate(rule.reads, &mut e);
        (rule.check)(self, &mut e);
        e.extend(crate::remote::check_flags(self));
        self.validate_across(&mut e);
        if let Ok(v) = serde_json::to_value(self) {
            super::find_too_large(&v, &mut e);
        }
        if let Err(msg) = self.env_id() {
            e.push(msg.to_string());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(e))
        }
    }

    /// The checks that relate settings of different groups; errors appended to `e`.
    fn validate_across(&self, e: &mut Vec<String>) {
        let (processes, queue_size) = (self.procs.processes, self.actors.queue_size);
        let batch_size = self.learner.batch_size;
        if self.listen.listen.is_some() {
            let lanes = self.listen.remote_lanes;
            if !(1..=4096).contains(&lanes) {
                e.push(format!(
                    "--remote-lanes {lanes}: must be between 1 and 4096"
                ));
            }
            if let Some(per_host) = self.listen.max_lanes_per_host {
                if !(1..=lanes).contains(&per_host) {
                    e.push(format!(
                        "--max-lanes-per-host {per_host}: must be between 1 and --remote-lanes {lanes}"
                    ));
                }
            }
            let r = self.listen.remote_reward_bound;
            if !(r.is_finite() && r > 0.0 && r <= 1e6) {
                e.push(format!(
                    "--remote-reward-bound {r}: must be a number above 0 and at most 1e6 (1 for clipped rewards)"
                ));
            }
            if queue_size < processes + lanes {
                e.push(format!(
                    "--queue-size {queue_size}: must be at least --processes {processes} + --remote-lanes {lanes} (each lane owns a share of the slots)"
                ));
            }
        }
        if batch_size > queue_size {
            e.push(format!(
                "--batch-size {batch_size}: must not exceed --queue-size {queue_size}"
            ));
        }
        if queue_size < processes {
            e.push(format!(
                "--queue-size {queue_size}: must be at least --processes {processes} (each actor owns a share of the slots)"
            ));
        }
        if let Some(python) = &self.env.python {
            if !self.run.game.starts_with(crate::env::gymnasium::PREFIX) {
                e.push(format!(
                    "--python {}: only Gymnasium environments run Python and --game {} is not one; --python needs --game gymnasium:<id>",
                    python.display(),
                    self.run.game
                ));
            }
        }
        let timeout = self.env.python_timeout;
        let default_timeout = crate::config::settings::DEFAULT_PYTHON_TIMEOUT;
        if timeout != default_timeout && !self.run.game.starts_with(crate::env::gymnasium::PREFIX) {
            e.push(format!(
                "--python-timeout {timeout}: only Gymnasium environments run Python and --game {} is not one; leave it at {default_timeout} or use --game gymnasium:<id>",
                self.run.game
            ));
        }
        let replay_size = self.rule.replay.replay_size;
        if self.learner.algorithm.has_replay() && replay_size < batch_size {
            e.push(format!(
                "--replay-size {replay_size}: smaller than a batch (--batch-size {batch_size}); give at least {batch_size}"
            ));
        }
    }

    /// The families of settings ([`Family`]) that this config's rule (`--algorithm`) does not
    /// read: the one selection behind [`Config::unread_flags`] and
    /// [`Config::check_rule_settings`].
    fn unread_families(&self) -> impl Iterator<Item = Family> {
        let rule = self.learner.algorithm;
        Family::ALL
            .into_iter()
            .filter(move |family| !rule.reads.contains(family))
    }

    /// The flags (by long name) that this config's rule (`--algorithm`) and optimizer
    /// (`--optimizer`) do not read: those [`Config::check_rule_settings`] refuses when given.
    pub fn unread_flags(&self) -> std::collections::BTreeSet<String> {
        let mut unread: std::collections::BTreeSet<String> = self
            .unread_families()
            .flat_map(|family| super::flags_in(&[family.group_id()]))
            .map(|(_, long)| long)
            .collect();
        unread.extend(self.optim.unread_flags().iter().map(|f| f.to_string()));
        unread
    }

    /// Refuses the settings that were `given` (a flag's long name, on the command line or in
    /// the config file) but belong to a family of settings ([`Family`]) that this run's rule
    /// does not read: they would be ignored. One line per family, naming the rules that read
    /// it; and likewise the settings of the optimizer that `--optimizer` did not choose.
    pub fn check_rule_settings(&self, given: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        let rule = self.learner.algorithm;
        let mut e = Vec::new();
        for family in self.unread_families() {
            let ignored: Vec<String> = super::flags_in(&[family.group_id()])
                .into_iter()
                .filter(|(_, long)| given(long))
                .map(|(_, long)| format!("--{long}"))
                .collect();
            if ignored.is_empty() {
                continue;
            }
            let readers: Vec<&str> = Algorithm::readers_of(family)
                .iter()
                .map(|r| r.name)
                .collect();
            let it = if ignored.len() == 1 { "it" } else { "them" };
            let read = if readers.len() == 1 { "reads" } else { "read" };
            e.push(format!(
                "{}: only --algorithm {} {read} {it}; this run is --algorithm {rule} (add --algorithm {}, or leave {it} out)",
                ignored.join(", "),
                readers.join(", "),
                readers[0],
            ));
        }
        self.optim.check_given(&given, &mut e);
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(e))
        }
    }
}
