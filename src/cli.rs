//! The learner's command line as a library function, so that a binary of the user's own (one
//! that registers extra environments) runs exactly what `learner` runs.

use std::process::ExitCode;

use crate::config::{self, Config, DeviceChoice, HostSettings, ProcessSettings, RemoteSettings};
use crate::ipc::{ActorInit, ActorMsg, Role};
use crate::{actor, checkpoint, device, env, evaluator, game, learner, signals, supervisor};

/// The `learner` command line: trains (see `learner --help`), or runs as an actor when
/// re-executed by a learner. Call it from your own `main` after registering environments with
/// [`crate::env::register`]; exit codes: 0 success, 1 runtime failure, 2 invalid input.
pub fn learner_main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(supervisor::ACTOR_ARG) {
        return actor_main(&args);
    }
    let (cli, explicit) = config::parse_args();
    if cli.invocation.list_games {
        for name in env::registry::registered_names() {
            crate::say!("{name}");
        }
        for rom in game::SUPPORTED_ROMS {
            let bundled = if game::bundled_rom(rom).is_some() {
                ""
            } else {
                "  (needs --rom)"
            };
            crate::say!("{}{bundled}", game::display_name(rom));
        }
        return ExitCode::SUCCESS;
    }
    if cli.host.connect.is_some() {
        return host_main(&cli, &explicit);
    }
    // libtorch_cuda must be loaded before any tensor work, a checkpoint read included.
    if !(explicit.contains("device") && cli.learner.device == DeviceChoice::Cpu) {
        let _ = device::load_cuda();
    }
    let mut notes = Vec::new();
    let prepared = prepare(&cli, &explicit, &mut notes);
    let print_config = cli.invocation.print_config;
    for line in notes {
        match (print_config, prepared.is_ok()) {
            // TOML comments, so that the output stays a valid --config file.
            (true, true) => crate::say!("# {line}"),
            (true, false) => crate::say_err!("{line}"),
            (false, _) => crate::say!("{line}"),
        }
    }
    match prepared {
        Ok((cfg, _)) if print_config => {
            print!("{}", cfg.to_toml_read());
            ExitCode::SUCCESS
        }
        Ok((cfg, resume)) => {
            let stop = match signals::install() {
                Ok(s) => s,
                Err(e) => return fail(1, &format!("installing signal handlers: {e}")),
            };
            match learner::run(cfg, resume, stop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &format!("{e:#}")),
            }
        }
        Err(e) => fail(2, &format!("{e:#}")),
    }
}

/// Merges defaults, a resumed checkpoint's config, the config file and the flags; validates.
/// Returns the config and the checkpoint to resume; `notes` gets the lines to print before
/// training (which file the settings came from, what a resumed checkpoint's config changes),
/// also when it fails.
fn prepare(
    cli: &Config,
    explicit: &std::collections::BTreeSet<String>,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Config, Option<checkpoint::Checkpoint>)> {
    // `--config none`: the defaults only. No --config on a new run: the game's tuned config,
    // if there is one (a resumed run keeps the config it was trained with); `tuned_for` keeps
    // its game, to say so once the rule the file sets is known.
    let mut tuned_for = None;
    let file_path = match &cli.invocation.config {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None if cli.invocation.checkpoint.is_none() => {
            let plain = config::merge(&Config::default(), None, cli, explicit)?;
            let rule = explicit
                .contains("algorithm")
                .then_some(plain.learner.algorithm);
            let id = plain.env_id().ok();
            let tuned = id
                .as_ref()
                .and_then(|id| config::tuned_config(id.name(), rule));
            if tuned.is_some() {
                tuned_for = id;
            }
            tuned
        }
        None => None,
    };
    let file = file_path
        .as_ref()
        .map(|p| config::read_file(p).map(|t| (p.clone(), t)))
        .transpose()?;
    let file_ref = file.as_ref().map(|(p, t)| (p.as_path(), t));
    let fresh = config::merge(&Config::default(), file_ref, cli, explicit)?;
    if let (Some(id), Some(p)) = (tuned_for, &file_path) {
        notes.push(format!(
            "using {}, the tuned config for {} with --algorithm {} (--config none for the built-in defaults)",
            p.display(),
            id.name(),
            fresh.learner.algorithm
        ));
    }
    let game_given =
        explicit.contains("game") || file.as_ref().is_some_and(|(_, t)| t.contains_key("game"));
    let given = |key: &str| {
        explicit.contains(&key.replace('-', "_"))
            || file.as_ref().is_some_and(|(_, t)| t.contains_key(key))
    };
    let Some(spec) = &cli.invocation.checkpoint else {
        fresh.validate()?;
        check_game_matches_rom(&fresh, game_given)?;
        fresh.check_rule_settings(given)?;
        return Ok((fresh, None));
    };
    let found = checkpoint::open(&fresh.run_dir(), spec)?;
    for e in &found.skipped {
        crate::say_err!("warning: --checkpoint latest: skipping {e}");
    }
    let mut cfg = config::merge(&found.checkpoint.state.config, file_ref, cli, explicit)?;
    notes.extend(settle_resumed(
        &mut cfg,
        &found.checkpoint.state.config,
        given,
        &found.path,
    ));
    cfg.validate()?;
    check_game_matches_rom(&cfg, game_given)?;
    cfg.check_rule_settings(given)?;
    check_resumable(&cfg, &found)?;
    notes.push(format!("resuming from {}", found.path.display()));
    Ok((cfg, Some(found.checkpoint)))
}

/// What a resumed checkpoint's config means for the settings the command line and the config
/// file leave open (README, "Files a run reads"). A checkpoint may come from another machine or
/// another person, so none of its paths is taken silently, and what the checkpoint's state
/// fixes is kept:
/// - `--logdir` is never taken from a checkpoint: the run directory is the one given on the
///   command line or in `--config`, else `runs/<game>` (where `--checkpoint N` and `latest`
///   look); a line says so when the checkpoint recorded another one.
/// - `--rom` is taken from the checkpoint when neither the command line nor `--config` gives
///   one (the game needs its ROM), and a line names it.
/// - `--rms-initial-square-avg` (where RMSProp's v starts, read only by a new run) stays the
///   checkpoint's, since the run continues the checkpoint's v, so the resumed run records what
///   it was trained with; a line says so when another value is given.
///
/// (The remote settings, the auth token and TLS files among them, are the command line's
/// alone: [`config::merge`].) Returns the lines to print; `given(key)` says whether the
/// command line or the config file set flag `key`.
pub(crate) fn settle_resumed(
    cfg: &mut Config,
    was: &Config,
    given: impl Fn(&str) -> bool,
    checkpoint: &std::path::Path,
) -> Vec<String> {
    let mut lines = Vec::new();
    if !given("logdir") {
        cfg.run.logdir = None;
        if let Some(recorded) = &was.run.logdir {
            if *recorded != cfg.run_dir() {
                lines.push(format!(
                    "resuming {}: it was trained with --logdir {}; this run writes to {} (give --logdir to choose)",
                    checkpoint.display(),
                    recorded.display(),
                    cfg.run_dir().display()
                ));
            }
        }
    }
    if !given("rom") {
        if let Some(rom) = &was.run.rom {
            lines.push(format!(
                "resuming {}: --rom {} from the checkpoint's config (give --rom to use another)",
                checkpoint.display(),
                rom.display()
            ));
        }
    }
    let asked = cfg.optim.rms_initial_square_avg;
    let trained = was.optim.rms_initial_square_avg;
    cfg.optim.rms_initial_square_avg = trained;
    if given("rms-initial-square-avg") && asked != trained {
        lines.push(format!(
            "resuming {}: --rms-initial-square-avg {asked} only sets where v starts in a new run; \
             this run continues the checkpoint's v (its run started from {trained})",
            checkpoint.display()
        ));
    }
    lines
}

/// With `--rom`, the game is the ROM's; a `--game` given as well (on the command line or in
/// the config file) must name the same game rather than be ignored.
fn check_game_matches_rom(cfg: &Config, game_given: bool) -> anyhow::Result<()> {
    let (Some(rom), true) = (&cfg.run.rom, game_given) else {
        return Ok(());
    };
    let id = cfg.env_id()?;
    match game::resolve_game(&cfg.run.game) {
        Ok(spec) if spec.name == id.name() => Ok(()),
        _ => anyhow::bail!(
            "--game {} and --rom {}: the ROM plays {}; give --game {} or leave --game out",
            cfg.run.game,
            rom.display(),
            id.name(),
            id.name()
        ),
    }
}

/// Refuses to resume a checkpoint of another game or network before anything is created; the
/// error names the file, what it was trained on and what this run asks for.
fn check_resumable(cfg: &Config, found: &checkpoint::Found) -> anyhow::Result<()> {
    let st = &found.checkpoint.state;
    let id = cfg.env_id()?;
    let trained = format!("{:?}", st.network).to_lowercase();
    if st.game != id.name() {
        anyhow::bail!(
            "--checkpoint {}: trained on {} ({trained} network); this run is {} \
             (resume with --game {}, or start a new run in another --logdir)",
            found.path.display(),
            st.game,
            id.name(),
            st.game
        );
    }
    // The same game has the same observations, so `auto` resolves as it did for the checkpoint.
    let network = crate::model::resolve_network(cfg.net.network, st.obs)?;
    if st.network != network {
        anyhow::bail!(
            "--checkpoint {}: trained with the {trained} network; this run asks for {} \
             (resume with --network {trained}, or start a new run in another --logdir)",
            found.path.display(),
            format!("{network:?}").to_lowercase()
        );
    }
    let was = &st.config;
    if was.learner.algorithm != cfg.learner.algorithm {
        anyhow::bail!(
            "--checkpoint {}: trained with --algorithm {}; this run asks for --algorithm {} \
             (resume with --algorithm {}, or start a new run in another --logdir)",
            found.path.display(),
            was.learner.algorithm,
            cfg.learner.algorithm,
            was.learner.algorithm
        );
    }
    if was.optim.optimizer != cfg.optim.optimizer {
        let name = |o: crate::optim::OptimizerKind| format!("{o:?}").to_lowercase();
        anyhow::bail!(
            "--checkpoint {}: trained with --optimizer {}; this run asks for --optimizer {} \
             (its optimizer state would not fit: resume with --optimizer {}, or start a new run \
             in another --logdir)",
            found.path.display(),
            name(was.optim.optimizer),
            name(cfg.optim.optimizer),
            name(was.optim.optimizer)
        );
    }
    if was.rule.q.dueling != cfg.rule.q.dueling {
        anyhow::bail!(
            "--checkpoint {}: trained with --dueling {}; this run asks for --dueling {} \
             (resume with --dueling {}, or start a new run in another --logdir)",
            found.path.display(),
            was.rule.q.dueling,
            cfg.rule.q.dueling,
            was.rule.q.dueling
        );
    }
    Ok(())
}

/// `learner --connect HOST:PORT --processes N`: an actor host (see [`crate::remote::host`]).
/// It reads the groups [`ProcessSettings`], [`RemoteSettings`] and [`HostSettings`];
/// everything else comes from the learner.
fn host_main(cli: &Config, explicit: &std::collections::BTreeSet<String>) -> ExitCode {
    use clap::Args;
    let reads = config::flags_in(
        &[
            ProcessSettings::group_id(),
            RemoteSettings::group_id(),
            HostSettings::group_id(),
        ]
        .map(|id| id.expect("a derived group has an id")),
    );
    let foreign: Vec<String> = config::flags_in(&config::all_groups())
        .into_iter()
        .filter(|(id, _)| explicit.contains(id) && !reads.iter().any(|(r, _)| r == id))
        .map(|(_, long)| format!("--{long}"))
        .collect();
    if !foreign.is_empty() {
        return fail(
            2,
            &format!(
                "{}: an actor host (--connect) takes the game, network and settings from the learner; set {} on the learner instead (a host reads only {})",
                foreign.join(", "),
                if foreign.len() == 1 { "it" } else { "them" },
                reads
                    .iter()
                    .map(|(_, long)| format!("--{long}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let mut problems = crate::remote::check_flags(cli);
    cli.procs.validate(1, &mut problems);
    if !problems.is_empty() {
        return fail(
            2,
            &format!("invalid configuration:\n  - {}", problems.join("\n  - ")),
        );
    }
    let stop = match signals::install() {
        Ok(s) => s,
        Err(e) => return fail(1, &format!("installing signal handlers: {e}")),
    };
    match crate::remote::host::run(cli.clone(), stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("{e:#}")),
    }
}

fn actor_main(args: &[String]) -> ExitCode {
    let (Some(server), Some(pid)) = (args.get(2), args.get(3).and_then(|p| p.parse().ok())) else {
        return fail(
            2,
            "actor: usage: learner __actor <server> <learner-pid> (started by the learner only)",
        );
    };
    match supervisor::actor_handshake(server, pid).and_then(run_actor) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("actor: {e:#}")),
    }
}

/// An actor process after its handshake: plays its role ([`actor::run`] or [`evaluator::run`])
/// until the learner closes the queue. A failure is reported to the learner
/// ([`ActorMsg::Failed`]) as well as returned.
fn run_actor(init: ActorInit) -> anyhow::Result<()> {
    let reports = init.reports.clone();
    let actor = init.actor;
    let result = play_role(&init, &reports);
    if let Err(e) = &result {
        let _ = reports.send(ActorMsg::Failed {
            actor,
            message: format!("{e:#}"),
        });
    }
    result
}

/// Sets up this actor process (`--actor-nice`, one libtorch thread, its seed, no gradients)
/// and runs its role.
fn play_role(
    init: &ActorInit,
    reports: &ipc_channel::ipc::IpcSender<ActorMsg>,
) -> anyhow::Result<()> {
    crate::os::lower_priority(init.config.procs.actor_nice)?;
    tch::set_num_threads(1);
    tch::manual_seed(init.seed as i64);
    let _no_grad = tch::no_grad_guard();
    match init.role {
        Role::Act { final_epsilon } => actor::run(init, final_epsilon, reports),
        Role::Evaluate => evaluator::run(init, reports),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    crate::say_err!("error: {msg}");
    ExitCode::from(code)
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
