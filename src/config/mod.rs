//! Every hyperparameter of a run, as one documented struct that is at once the command line
//! (clap), the TOML config file format (serde) and the record saved in each checkpoint.
//!
//! Precedence, lowest first: built-in defaults, the config stored in a checkpoint being resumed,
//! the `--config` TOML file, flags given on the command line. Validation reports every invalid
//! value at once, each naming its flag and what would be valid, before anything starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

pub mod settings;

pub use self::settings::{
    ActorSettings, EnvironmentSettings, HostSettings, Invocation, LearnerSettings, ListenSettings,
    NetworkSettings, OptimizerSettings, ProcessSettings, RemoteSettings, RunSettings,
};
pub use crate::device::DeviceChoice;
use crate::env::{self, EnvId, EnvSettings, ResolveError};
pub use crate::inference::InferenceChoice;
pub use crate::model::Network;
pub use crate::optim::RmspropForm;
pub use crate::replay::ReplayCompression;
pub use crate::rules::{Algorithm, RuleSettings};

/// What a run exercises: the phases of `scripts/bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchPhase {
    /// Actors step their emulators with random actions and full preprocessing: no network, no
    /// queue. The ceiling of the machine.
    Limit,
    /// Actors act with their networks and fill the queue; the learner drains it, no training.
    Acting,
    /// The full system.
    #[default]
    Training,
}

/// Train an agent on an Atari game (or CartPole) with asynchronous n-step Q-learning or SARSA
/// (Mnih et al. 2016), DQN from a replay memory, A3C, or IMPALA (V-trace).
///
/// Frames are emulator frames (agent steps x frame skip), summed over all actors.
///
/// The settings come in groups, one heading of `--help` each, every flag defined once in its
/// group ([`settings`], and [`RuleSettings`] for the settings only some rules read). The
/// config file and the record in a checkpoint are flat TOML tables whose keys are the flag
/// names; the remote-host groups and [`Invocation`] belong to one invocation and are not saved
/// ([`unsaved_groups`]).
#[derive(Parser, Clone, Debug, PartialEq, Serialize, Deserialize)]
// Negative numbers are values (`--lr -1` is refused by validation as a learning rate, not
// taken for an unknown flag `-1`).
#[command(name = "learner", version, about, long_about = None, allow_negative_numbers = true)]
pub struct Config {
    #[command(flatten)]
    pub run: RunSettings,
    #[command(flatten)]
    pub env: EnvironmentSettings,
    #[command(flatten)]
    pub procs: ProcessSettings,
    #[command(flatten)]
    pub actors: ActorSettings,
    #[command(flatten)]
    pub learner: LearnerSettings,
    #[command(flatten)]
    pub net: NetworkSettings,
    #[command(flatten)]
    pub optim: OptimizerSettings,
    #[command(flatten)]
    pub rule: RuleSettings,
    #[command(flatten)]
    #[serde(skip)]
    pub remote: RemoteSettings,
    #[command(flatten)]
    #[serde(skip)]
    pub listen: ListenSettings,
    #[command(flatten)]
    #[serde(skip)]
    pub host: HostSettings,
    #[command(flatten)]
    #[serde(skip)]
    pub invocation: Invocation,
}

/// Why a stored config (see [`Config::from_toml`]) cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredConfigError {
    /// The text is not TOML.
    #[error("{0}")]
    Syntax(toml::de::Error),
    /// A key that names no setting of this version.
    #[error("unknown setting `{0}`")]
    UnknownKey(String),
    /// A setting's value does not fit it (the message names the key).
    #[error("{0}")]
    BadValue(String),
    /// The built-in defaults do not fit a TOML table (a bug).
    #[error(transparent)]
    Defaults(#[from] ConfigError),
}

/// Everything wrong with a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["learner"])
    }
}

/// Flag names (snake_case clap ids) that were given on the command line.
pub fn explicit_flags(matches: &ArgMatches) -> BTreeSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_string())
        .collect()
}

/// Parses the command line. Exits as clap does on --help and --version (status 0), and on a
/// usage error with clap's message made specific by [`explain`] (status 2).
pub fn parse_args() -> (Config, BTreeSet<String>) {
    let fail = |e: clap::Error| -> ! {
        if !e.use_stderr() {
            e.exit(); // --help, --version
        }
        crate::say_err!("{}", explain(&e).trim_end());
        std::process::exit(2)
    };
    let matches = Config::command()
        .try_get_matches()
        .unwrap_or_else(|e| fail(e));
    let cli = Config::from_arg_matches(&matches).unwrap_or_else(|e| fail(e));
    (cli, explicit_flags(&matches))
}

/// clap's message for a usage error, saying what a valid value looks like where Rust's number
/// parsers do not ("invalid digit found in string").
pub fn explain(e: &clap::Error) -> String {
    e.to_string()
        .replace(
            "invalid digit found in string",
            "expected a whole number of 0 or more (digits only, e.g. 16)",
        )
        .replace(
            "invalid float literal",
            "expected a number (e.g. 0.99 or 7e-4)",
        )
        .replace(
            "number too large to fit in target type",
            "too large for a 64-bit whole number",
        )
}

/// The config as a flat TOML table keyed by the flag names: the groups' tables (as serde
/// nests them, which bincode carries as they are) merged into one. Its f32 settings are written
/// as the f64 of their shortest decimal form, so `0.99` reads `0.99` in config.toml, not
/// `0.9900000095367432` (the f32's exact value widened). Errors name a whole-number setting
/// too large for TOML (64-bit signed integers).
fn to_table(cfg: &Config) -> Result<toml::Table, ConfigError> {
    let nested = toml::Table::try_from(cfg).map_err(|e| {
        let mut too_large = Vec::new();
        if let Ok(v) = serde_json::to_value(cfg) {
            find_too_large(&v, &mut too_large);
        }
        if too_large.is_empty() {
            too_large.push(format!("the settings do not fit a TOML table: {e}"));
        }
        ConfigError(too_large)
    })?;
    let mut table = toml::Table::new();
    flatten_into(nested, &mut table);
    for key in ["gamma", "repeat-action-probability"] {
        if let Some(toml::Value::Float(x)) = table.get_mut(key) {
            *x = (*x as f32).to_string().parse().unwrap_or(*x);
        }
    }
    Ok(table)
}

/// Moves every setting of `nested` (groups are tables; no setting's value is one) into `flat`.
fn flatten_into(nested: toml::Table, flat: &mut toml::Table) {
    for (key, value) in nested {
        match value {
            toml::Value::Table(group) => flatten_into(group, flat),
            v => {
                flat.insert(key, v);
            }
        }
    }
}

/// The settings of `v` (the config as JSON, keyed by flag names) whose whole numbers exceed
/// TOML's, one line each.
fn find_too_large(v: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = v {
        for (key, value) in map {
            match value.as_u64() {
                Some(n) if n > i64::MAX as u64 => out.push(format!(
                    "--{key} {n}: at most {} (a whole number of 63 bits)",
                    i64::MAX
                )),
                _ => find_too_large(value, out),
            }
        }
    }
}

/// The config of a flat table of every setting (as [`to_table`] writes it): each group takes
/// its own keys.
fn from_table(table: toml::Table) -> Result<Config, toml::de::Error> {
    fn group<T: serde::de::DeserializeOwned>(t: &toml::Table) -> Result<T, toml::de::Error> {
        toml::Value::Table(t.clone()).try_into()
    }
    Ok(Config {
        run: group(&table)?,
        env: group(&table)?,
        procs: group(&table)?,
        actors: group(&table)?,
        learner: group(&table)?,
        net: group(&table)?,
        optim: group(&table)?,
        rule: RuleSettings::from_table(&table)?,
        remote: Default::default(),
        listen: Default::default(),
        host: Default::default(),
        invocation: Default::default(),
    })
}

/// The config-file key that makes a file start from another's settings (see [`read_file`]).
pub const EXTENDS: &str = "extends";

/// How many files one chain of [`EXTENDS`] may hold, the first included.
const MAX_EXTENDS_CHAIN: usize = 8;

/// Reads a TOML config file into a table, with errors that name the file.
///
/// A file may start from another one's settings: `extends = "pong-q.toml"` (a path relative
/// to the directory of the file that says it) takes that file's keys, which may themselves
/// extend a third file, and the file's own keys override them, as `extends` does in
/// TypeScript's tsconfig.json. The table returned is the flattened result, without the
/// `extends` key.
///
/// # Errors
///
/// One line, naming the file and the chain of files that led to it, when a file cannot be
/// read or is not TOML, when `extends` is not a string, or when the chain loops or holds more
/// than 8 files.
pub fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    read_extending(path, path.display().to_string(), &mut Vec::new())
}

/// [`read_file`] for one file of a chain: `label` names it with the files that extend it,
/// `chain` holds those files' canonical paths.
fn read_extending(
    path: &Path,
    label: String,
    chain: &mut Vec<PathBuf>,
) -> Result<toml::Table, ConfigError> {
    let fail = |what: String| ConfigError(vec![format!("--config {label}: {what}")]);
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let mut table = text
        .parse::<toml::Table>()
        .map_err(|e| fail(format!("not valid TOML: {e}")))?;
    let Some(base) = table.remove(EXTENDS) else {
        return Ok(table);
    };
    let toml::Value::String(base) = base else {
        return Err(fail(format!(
            "`{EXTENDS} = {base}`: needs the path of the config file to start from, e.g. \
             {EXTENDS} = \"pong-q.toml\" (relative to this file's directory)"
        )));
    };
    chain.push(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
    let base_path = path.parent().unwrap_or(Path::new("")).join(&base);
    if std::fs::canonicalize(&base_path).is_ok_and(|b| chain.contains(&b)) {
        return Err(fail(format!(
            "`{EXTENDS} = \"{base}\"`: a loop ({} is already in the chain); a file may not \
             extend itself, directly or through others",
            base_path.display()
        )));
    }
    if chain.len() >= MAX_EXTENDS_CHAIN {
        return Err(fail(format!(
            "`{EXTENDS} = \"{base}\"`: the chain of files would be longer than \
             {MAX_EXTENDS_CHAIN}; extend a file that holds the settings itself"
        )));
    }
    let label = format!("{label}, which extends {}", base_path.display());
    let mut merged = read_extending(&base_path, label, chain)?;
    for (key, value) in table {
        merged.insert(key, value);
    }
    Ok(merged)
}

/// Merges, lowest precedence first: `base` (defaults or a checkpoint's config), the config
/// `file` (with its path, for errors), and the flags of `cli` listed in `explicit`. The groups
/// that are not saved ([`RemoteSettings`], [`Invocation`]) come from `cli`.
pub fn merge(
    base: &Config,
    file: Option<(&Path, &toml::Table)>,
    cli: &Config,
    explicit: &BTreeSet<String>,
) -> Result<Config, ConfigError> {
    let mut table = to_table(base)?;
    let mut errors = Vec::new();
    if let Some((path, file)) = file {
        let keys = table_keys();
        for (key, value) in file {
            if keys.contains(key.as_str()) {
                table.insert(key.clone(), value.clone());
            } else {
                errors.push(format!(
                    "--config {}: unknown key `{key}`; valid keys: {}",
                    path.display(),
                    keys.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    let cli_table = to_table(cli)?;
    for id in explicit {
        let key = id.replace('_', "-");
        if let Some(v) = cli_table.get(&key) {
            table.insert(key, v.clone());
        } else {
            // An Option flag given on the command line always serializes; a missing key means
            // a run-only flag, handled below.
            table.remove(&key);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    let mut merged: Config = from_table(table).map_err(|e: toml::de::Error| {
        ConfigError(vec![format!(
            "--config {}: {}",
            file.map(|(p, _)| p.display().to_string())
                .unwrap_or_default(),
            e.message()
        )])
    })?;
    // What belongs to this invocation alone is the command line's.
    merged.remote = cli.remote.clone();
    merged.listen = cli.listen.clone();
    merged.host = cli.host.clone();
    merged.invocation = cli.invocation.clone();
    Ok(merged)
}

/// Environment variable naming the directory of tuned per-game configs (`scripts/learner`
/// sets it to the repository's `configs/`); without it, `configs/` in the current directory.
pub const CONFIG_DIR_ENV: &str = "ASYNC_RL_CONFIG_DIR";

/// The tuned config of game `name` (its display name, e.g. `SpaceInvaders`) for a new run, in
/// `<dir>` = `$ASYNC_RL_CONFIG_DIR` or `configs`:
/// - without `--algorithm` (`algorithm` None): `<dir>/<game>.toml`, the settings and the rule
///   this project recommends for the game (`pong.toml` sets appo, `breakout.toml` n-step Q);
/// - with `--algorithm R`: `<dir>/<game>-<r>.toml` (e.g. `pong-a3c.toml`) if it exists, else
///   the file of a rule that reads the same settings ([`crate::rules::RuleSpec::reads`]:
///   n-step SARSA takes `<dir>/<game>-q.toml`), else `<dir>/<game>.toml` if the rule it sets
///   (the default rule when it sets none) reads the same settings as R.
///
/// `<game>` is the name in lower case. A rule without a file that fits gets none: another
/// rule's settings (epsilons for Q, a replay memory for dqn) would not fit it. A `<game>.toml`
/// that cannot be read or parsed is returned as is, so that reading it reports the error.
pub fn tuned_config(name: &str, algorithm: Option<Algorithm>) -> Option<PathBuf> {
    let dir = std::env::var_os(CONFIG_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("configs"));
    tuned_config_in(&dir, name, algorithm)
}

/// [`tuned_config`] in the directory `dir`.
pub fn tuned_config_in(dir: &Path, name: &str, algorithm: Option<Algorithm>) -> Option<PathBuf> {
    let game = name.to_lowercase();
    let plain = dir.join(format!("{game}.toml"));
    let Some(rule) = algorithm else {
        return plain.is_file().then_some(plain);
    };
    // The rule's own file, then those of the rules that read the same settings.
    let own = std::iter::once(rule).chain(
        crate::rules::RULES
            .iter()
            .copied()
            .filter(|r| *r != rule && rule.shares_settings_with(r)),
    );
    if let Some(path) = own
        .map(|r| dir.join(format!("{game}-{}.toml", r.name)))
        .find(|p| p.is_file())
    {
        return Some(path);
    }
    if !plain.is_file() {
        return None;
    }
    let fits = match read_file(&plain) {
        Ok(table) => match table.get("algorithm") {
            None => rule.shares_settings_with(&Algorithm::default()),
            Some(toml::Value::String(s)) => {
                Algorithm::named(s).is_ok_and(|sets| rule.shares_settings_with(&sets))
            }
            Some(_) => return Some(plain),
        },
        Err(_) => return Some(plain),
    };
    fits.then_some(plain)
}

/// The clap ids of the groups whose flags belong to one invocation: not config-file keys, not
/// saved with the run (their fields in [`Config`] are `#[serde(skip)]`).
fn unsaved_groups() -> [clap::Id; 4] {
    use clap::Args;
    [
        RemoteSettings::group_id(),
        ListenSettings::group_id(),
        HostSettings::group_id(),
        Invocation::group_id(),
    ]
    .map(|id| id.expect("a derived group has an id"))
}

/// The clap ids of every group of flags.
pub fn all_groups() -> Vec<clap::Id> {
    Config::command()
        .get_groups()
        .map(|g| g.get_id().clone())
        .collect()
}

/// The flags defined in the groups `groups`, as (clap id, long name).
pub fn flags_in(groups: &[clap::Id]) -> Vec<(String, String)> {
    let cmd = Config::command();
    cmd.get_groups()
        .filter(|g| groups.contains(g.get_id()))
        .flat_map(|g| g.get_args())
        .filter_map(|id| cmd.get_arguments().find(|a| a.get_id() == id))
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .collect()
}

/// The keys a config file may set, derived from the flags: every flag (its long name) but
/// those of the groups that are not saved.
pub fn table_keys() -> BTreeSet<String> {
    let unsaved = unsaved_groups();
    let saved: Vec<clap::Id> = all_groups()
        .into_iter()
        .filter(|g| !unsaved.contains(g))
        .collect();
    flags_in(&saved).into_iter().map(|(_, long)| long).collect()
}

impl Config {
    /// The config of the command line `learner FLAGS...` (built-in defaults for what `flags`
    /// do not set), or clap's error naming the bad flag: a run's settings built in code.
    pub fn from_flags<I, T>(flags: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("learner"))
            .chain(flags.into_iter().map(Into::into));
        Config::try_parse_from(argv)
    }

    /// The environment this config plays, resolved from `--game` (and `--rom`).
    ///
    /// # Errors
    ///
    /// [`ResolveError`]: see [`env::resolve`].
    pub fn env_id(&self) -> Result<EnvId, ResolveError> {
        env::resolve(&self.run.game, self.run.rom.as_deref())
    }

    /// Environment settings for an instance seeded with `seed`.
    pub fn env_settings(&self, seed: u64) -> EnvSettings {
        EnvSettings {
            seed,
            frame_skip: self.env.frame_skip,
            noop_max: self.env.noop_max,
            repeat_action_probability: self.env.repeat_action_probability,
            terminal_on_life_loss: self.env.terminal_on_life_loss,
            fire_on_life_loss: self.env.fire_on_life_loss,
            max_episode_frames: self.env.max_episode_frames,
            rom: self.run.rom.clone(),
            python: self.env.python.clone(),
            python_timeout: std::time::Duration::from_secs_f64(self.env.python_timeout),
            render: false,
        }
    }

    /// The run directory: `--logdir`, or `runs/<Game>`.
    pub fn run_dir(&self) -> PathBuf {
        match (&self.run.logdir, self.env_id()) {
            (Some(dir), _) => dir.clone(),
            (None, Ok(id)) => PathBuf::from("runs").join(id.name()),
            (None, Err(_)) => PathBuf::from("runs").join(&self.run.game),
        }
    }

    /// The config as a TOML document (written to the run directory).
    pub fn to_toml(&self) -> String {
        // Validation refuses what a TOML table cannot hold.
        toml::to_string_pretty(&to_table(self).expect("a validated config fits TOML"))
            .expect("Config serializes to TOML")
    }

    /// [`Config::to_toml`] without the settings that this run's rule and optimizer do not read
    /// ([`Config::unread_flags`]): what `learner --print-config` prints, a file that `--config`
    /// takes back (a file that sets another rule's settings is refused, as they would be
    /// ignored).
    pub fn to_toml_read(&self) -> String {
        let unread = self.unread_flags();
        let table: toml::Table = to_table(self)
            .expect("a validated config fits TOML")
            .into_iter()
            .filter(|(k, _)| !unread.contains(k))
            .collect();
        toml::to_string_pretty(&table).expect("Config serializes to TOML")
    }

    /// Every setting as (flag name, TOML value), sorted by name (for TensorBoard's
    /// hyperparameter table).
    pub fn key_values(&self) -> Vec<(String, String)> {
        to_table(self)
            .expect("a validated config fits TOML")
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    }

    /// Reads a config written by [`Config::to_toml`] (e.g. by an older version, in a
    /// checkpoint): keys it lacks take today's defaults, so adding a flag keeps old checkpoints
    /// usable.
    ///
    /// # Errors
    ///
    /// [`StoredConfigError`], naming the first bad key.
    pub fn from_toml(text: &str) -> Result<Config, StoredConfigError> {
        let stored: toml::Table = text.parse().map_err(StoredConfigError::Syntax)?;
        let mut table = to_table(&Config::default())?;
        let keys = table_keys();
        for (key, value) in stored {
            if !keys.contains(key.as_str()) {
                return Err(StoredConfigError::UnknownKey(key));
            }
            table.insert(key, value);
        }
        from_table(table).map_err(|e| StoredConfigError::BadValue(e.message().to_string()))
    }
}

/// Serde adapter that stores a [`Config`] as its TOML text (see [`Config::from_toml`]), so a
/// binary record of it survives flags being added.
pub mod as_toml {
    use super::Config;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cfg: &Config, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&cfg.to_toml())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Config, D::Error> {
        let text = String::deserialize(d)?;
        Config::from_toml(&text).map_err(serde::de::Error::custom)
    }
}

mod validate;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
