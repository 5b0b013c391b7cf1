//! Unit tests for `config`: parsing, merging, validation of every flag, and the shipped
//! config files.

use super::*;

fn parse(args: &[&str]) -> (Config, BTreeSet<String>) {
    let mut argv = vec!["learner"];
    argv.extend_from_slice(args);
    let m = Config::command().try_get_matches_from(argv).unwrap();
    (Config::from_arg_matches(&m).unwrap(), explicit_flags(&m))
}

#[test]
fn defaults_are_the_reference_values() {
    let c = Config::default();
    assert_eq!(
        (
            c.procs.processes,
            c.rule.n_step.n_step,
            c.learner.batch_size,
            c.actors.queue_size
        ),
        (16, 5, 64, 256)
    );
    assert_eq!(c.actors.sync_frames, 10_000);
    assert_eq!(c.run.save_freq, 250_000);
    assert_eq!(c.rule.exploration.final_epsilons, vec![0.1, 0.01, 0.5]);
    assert!(c.validate().is_ok(), "{:?}", c.validate());
}

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let (cli, explicit) = parse(&["--n-step", "3", "--config", "x.toml"]);
    let file: toml::Table = "n-step = 7\nbatch-size = 32\n".parse().unwrap();
    let c = merge(
        &Config::default(),
        Some((Path::new("x.toml"), &file)),
        &cli,
        &explicit,
    )
    .unwrap();
    assert_eq!(c.rule.n_step.n_step, 3);
    assert_eq!(c.learner.batch_size, 32);
    assert_eq!(c.procs.processes, 16);
    assert_eq!(c.invocation.config.as_deref(), Some(Path::new("x.toml")));
}

#[test]
fn unknown_and_mistyped_file_keys_are_refused() {
    let (cli, explicit) = parse(&[]);
    let file: toml::Table = "n_stepp = 7\n".parse().unwrap();
    let err = merge(
        &Config::default(),
        Some((Path::new("f.toml"), &file)),
        &cli,
        &explicit,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown key `n_stepp`"), "{err}");
    let file: toml::Table = "n-step = \"five\"\n".parse().unwrap();
    let err = merge(
        &Config::default(),
        Some((Path::new("f.toml"), &file)),
        &cli,
        &explicit,
    )
    .unwrap_err();
    assert!(err.to_string().contains("f.toml"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (c, _) = parse(&[
        "--processes",
        "0",
        "--n-step",
        "0",
        "--batch-size",
        "300",
        "--game",
        "NoSuchGame",
    ]);
    let err = c.validate().unwrap_err();
    let text = err.to_string();
    for flag in ["--processes 0", "--n-step 0", "--batch-size 300", "--game"] {
        assert!(text.contains(flag), "missing {flag} in {text}");
    }
    assert_eq!(err.0.len(), 4, "{text}");
}

#[test]
fn config_round_trips_through_toml() {
    let (c, _) = parse(&["--game", "Pong", "--n-step", "1", "--network", "nature"]);
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}

/// One bad value per flag; the error must name the flag, and every key must be covered.
#[test]
fn every_flag_has_a_bad_value_that_is_refused_by_name() {
    let bad: &[(&str, &str)] = &[
        ("game", "SpaceInvader"),
        ("rom", "/no/such/rom.bin"),
        ("processes", "0"),
        ("algorithm", "trpo"),
        ("envs-per-actor", "0"),
        ("n-step", "0"),
        ("gamma", "1.5"),
        ("batch-size", "0"),
        ("queue-size", "0"),
        ("lr", "-1"),
        ("lr-decay", "-5"),
        ("rms-decay", "1"),
        ("rms-eps", "0"),
        ("rmsprop-form", "adam"),
        ("rms-initial-square-avg", "-1"),
        ("optimizer", "sgd"),
        ("adam-beta1", "1"),
        ("adam-beta2", "-0.1"),
        ("adam-eps", "0"),
        ("max-grad-norm", "nan"),
        ("loss", "l1"),
        ("eps-decay", "x"),
        ("final-epsilons", "2"),
        ("final-epsilon-probs", "0.5,0.5"),
        ("sync-frames", "0"),
        ("save-freq", "0"),
        ("max-frames", "0"),
        ("target-return", "inf"),
        ("network", "resnet"),
        ("dueling", "maybe"),
        ("replay-size", "-1"),
        ("replay-compression", "zip"),
        ("learning-starts", "soon"),
        ("replay-ratio", "0"),
        ("target-update", "0"),
        ("target-update-frames", "soon"),
        ("double-q", "maybe"),
        ("prioritized", "maybe"),
        ("priority-alpha", "2"),
        ("priority-beta", "-0.5"),
        ("save-replay", "maybe"),
        ("value-coef", "-1"),
        ("entropy-coef", "nan"),
        ("unroll", "0"),
        ("vtrace-rho", "0"),
        ("vtrace-c", "-1"),
        ("ppo-clip", "1"),
        ("ppo-epochs", "0"),
        ("minibatches", "0"),
        ("value-clip", "maybe"),
        ("normalize-advantages", "maybe"),
        ("gae-lambda", "1.5"),
        ("max-policy-lag", "5"),
        ("device", "tpu"),
        ("inference", "gpu"),
        ("inference-wait-us", "0"),
        ("inference-device", "tpu"),
        ("learner-threads", "0"),
        ("actor-nice", "20"),
        ("seed", "-1"),
        ("frame-skip", "0"),
        ("noop-max", "-3"),
        ("repeat-action-probability", "1"),
        ("max-episode-frames", "0"),
        ("terminal-on-life-loss", "maybe"),
        ("fire-on-life-loss", "maybe"),
        ("reward-scale", "0"),
        ("python", "/usr/bin/python3"),
        ("python-timeout", "0"),
        ("logdir", ""),
        ("log-interval", "0"),
        ("keep-checkpoints", "-1"),
        ("max-actor-restarts", "many"),
        ("eval-every", "-1"),
        ("eval-episodes", "0"),
    ];
    let covered: BTreeSet<&str> = bad.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        covered,
        table_keys().iter().map(String::as_str).collect(),
        "every flag needs a bad value here"
    );
    // A flag of a family of rule settings is given with a rule that reads it.
    let reader = |flag: &str| {
        crate::rules::Family::ALL
            .into_iter()
            .find(|f| {
                flags_in(&[f.group_id()])
                    .iter()
                    .any(|(_, long)| long == flag)
            })
            .map(|f| format!("--algorithm={}", Algorithm::readers_of(f)[0].name))
    };
    for (flag, value) in bad {
        let arg = format!("--{flag}={value}");
        let mut argv = vec!["learner".to_string(), arg.clone()];
        argv.extend(reader(flag));
        let message = match Config::command().try_get_matches_from(argv) {
            Err(e) => explain(&e),
            Ok(m) => match Config::from_arg_matches(&m).unwrap().validate() {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{arg} was accepted"),
            },
        };
        assert!(message.contains(&format!("--{flag}")), "{arg}: {message}");
        // ...and says what would be valid.
        let hints = [
            "must",
            "expected",
            "possible values",
            "at least",
            "at most",
            "did you mean",
            "need",
            "required",
            "is not in",
            "does not exist",
        ];
        assert!(
            hints.iter().any(|h| message.contains(h)),
            "{arg}: says nothing of what is valid: {message}"
        );
    }
}

#[test]
fn stored_config_missing_newer_keys_takes_defaults() {
    let (c, _) = parse(&["--game", "Pong", "--max-actor-restarts", "3"]);
    let old: String = c
        .to_toml()
        .lines()
        .filter(|l| !l.starts_with("max-actor-restarts"))
        .map(|l| format!("{l}\n"))
        .collect();
    let back = Config::from_toml(&old).unwrap();
    assert_eq!(back.run.game, "Pong");
    assert_eq!(
        back.procs.max_actor_restarts,
        Config::default().procs.max_actor_restarts
    );
    let err = Config::from_toml("no-such-flag = 1").unwrap_err();
    assert!(
        matches!(&err, StoredConfigError::UnknownKey(k) if k == "no-such-flag"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no-such-flag"), "{err}");
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let (cli, explicit) = parse(&[]);
        let file = read_file(&path).unwrap();
        let c = merge(&Config::default(), Some((&path, &file)), &cli, &explicit)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        c.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 5, "configs/ has {n} files");
}

/// `extends`: a file starts from another's keys (through a chain of files, paths relative to
/// each file's directory) and its own override them; a base that is not a string, cannot be
/// read, loops back, or makes the chain longer than 8 files is refused, naming the chain.
#[test]
fn a_config_file_extends_another_and_overrides_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write("base.toml", "game = \"Pong\"\nprocesses = 4\nlr = 1e-3\n");
    write("sub/mid.toml", "extends = \"../base.toml\"\nlr = 2e-4\n");
    write("top.toml", "extends = \"sub/mid.toml\"\nprocesses = 3\n");
    let path = dir.path().join("top.toml");
    let top = read_file(&path).unwrap();
    assert_eq!(top.get("game").and_then(|v| v.as_str()), Some("Pong"));
    assert_eq!(top.get("processes").and_then(|v| v.as_integer()), Some(3));
    assert_eq!(top.get("lr").and_then(|v| v.as_float()), Some(2e-4));
    assert!(!top.contains_key("extends"), "{top:?}");
    let (cli, explicit) = parse(&["--processes", "2"]);
    let c = merge(&Config::default(), Some((&path, &top)), &cli, &explicit).unwrap();
    assert_eq!((c.run.game.as_str(), c.optim.lr), ("Pong", 2e-4));
    assert_eq!(c.procs.processes, 2, "a flag still overrides the files");

    let err = |name: &str| read_file(&dir.path().join(name)).unwrap_err().to_string();
    write("number.toml", "extends = 3\n");
    let e = err("number.toml");
    assert!(
        e.contains("number.toml: `extends = 3`: needs the path of the config file"),
        "{e}"
    );
    write("gone.toml", "extends = \"nowhere.toml\"\n");
    let e = err("gone.toml");
    assert!(
        e.contains("gone.toml, which extends ") && e.contains("nowhere.toml: cannot read it"),
        "{e}"
    );
    write("broken.toml", "extends = \"bad.toml\"\n");
    write("bad.toml", "lr = \n");
    let e = err("broken.toml");
    assert!(
        e.contains("broken.toml, which extends ") && e.contains("bad.toml: not valid TOML"),
        "{e}"
    );
    write("self.toml", "extends = \"self.toml\"\n");
    assert!(err("self.toml").contains("a loop"), "{}", err("self.toml"));
    write("a.toml", "extends = \"b.toml\"\n");
    write("b.toml", "extends = \"a.toml\"\n");
    let e = err("a.toml");
    assert!(
        e.contains("a.toml, which extends ") && e.contains("a loop"),
        "{e}"
    );
    // A chain of 8 files is read; one of 9 is refused.
    for i in 0..9 {
        write(
            &format!("c{i}.toml"),
            &format!("extends = \"c{}.toml\"\n", i + 1),
        );
    }
    write("c9.toml", "processes = 5\n");
    let e = err("c1.toml");
    assert!(e.contains("longer than 8"), "{e}");
    let c2 = read_file(&dir.path().join("c2.toml")).unwrap();
    assert_eq!(c2.get("processes").and_then(|v| v.as_integer()), Some(5));
}

#[test]
fn tuned_config_takes_the_games_file_without_a_rule_and_a_fitting_file_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("pong.toml", "algorithm = \"dqn\"\n");
    write("pong-q.toml", "n-step = 5\n");
    write("pong-a3c.toml", "algorithm = \"a3c\"\n");
    write("breakout.toml", "n-step = 5\n");
    let find = |game: &str, rule: Option<Algorithm>| {
        tuned_config_in(dir.path(), game, rule)
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    };
    let name = |s: &str| Some(s.to_string());
    let [q, sarsa, dqn, a3c, impala] =
        ["q", "sarsa", "dqn", "a3c", "impala"].map(|n| Algorithm::named(n).unwrap());
    // No --algorithm: the game's own file, whatever rule it sets.
    assert_eq!(find("Pong", None), name("pong.toml"));
    assert_eq!(find("Breakout", None), name("breakout.toml"));
    assert_eq!(find("SpaceInvaders", None), None);
    // A rule's own file first (SARSA also takes Q's), then the game's file if its rule fits.
    assert_eq!(find("Pong", Some(q)), name("pong-q.toml"));
    assert_eq!(find("Pong", Some(sarsa)), name("pong-q.toml"));
    assert_eq!(find("Pong", Some(dqn)), name("pong.toml"));
    assert_eq!(find("Pong", Some(a3c)), name("pong-a3c.toml"));
    assert_eq!(
        find("Pong", Some(impala)),
        None,
        "dqn's file does not fit impala"
    );
    assert_eq!(find("Breakout", Some(q)), name("breakout.toml"));
    assert_eq!(find("Breakout", Some(sarsa)), name("breakout.toml"));
    assert_eq!(
        find("Breakout", Some(dqn)),
        None,
        "n-step Q's file does not fit dqn"
    );
    // A game file that cannot be parsed is handed over, so that reading it names the error.
    write("pong.toml", "algorithm = \n");
    assert_eq!(find("Pong", Some(impala)), name("pong.toml"));
}

#[test]
fn the_shipped_tuned_configs_set_the_rule_they_are_found_for() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    // The config `learner --config <path> <args>` runs with.
    let merged = |path: &Path, args: &[&str]| {
        let (cli, explicit) = parse(args);
        let file = read_file(path).unwrap();
        merge(&Config::default(), Some((path, &file)), &cli, &explicit).unwrap()
    };
    let rule_of = |path: &Path| merged(path, &[]).learner.algorithm;
    // Pong trains appo unless told otherwise: the rule measured to reach its scores soonest.
    let pong = tuned_config_in(&dir, "Pong", None).expect("configs/pong.toml");
    assert_eq!(rule_of(&pong).name, "appo");
    for game in ["Pong", "Breakout", "CartPole", "SpaceInvaders"] {
        for rule in crate::rules::RULES {
            if let Some(path) = tuned_config_in(&dir, game, Some(rule)) {
                let sets = rule_of(&path);
                // A file of a rule reading the same settings fits (SARSA takes n-step Q's).
                let fits = sets == rule || rule.shares_settings_with(&sets);
                assert!(
                    fits,
                    "{game} with {rule:?} gets {} ({sets:?})",
                    path.display()
                );
                // `learner --game G --algorithm R` with the file it finds must start: a q
                // file's target network, say, would be refused for sarsa.
                merged(&path, &["--algorithm", rule.name])
                    .validate()
                    .unwrap_or_else(|e| {
                        panic!("{game} --algorithm {}: {}: {e}", rule.name, path.display())
                    });
            }
        }
    }
    assert!(tuned_config_in(&dir, "Pong", Algorithm::named("q").ok())
        .is_some_and(|p| p.ends_with("pong-q.toml")));
    for (rule, file) in [("dqn", "pong-dqn.toml"), ("appo", "pong.toml")] {
        assert!(
            tuned_config_in(&dir, "Pong", Algorithm::named(rule).ok())
                .is_some_and(|p| p.ends_with(file)),
            "Pong with --algorithm {rule}: {file}"
        );
    }
}

#[test]
fn configs_defaults_toml_is_the_built_in_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/defaults.toml");
    let (cli, explicit) = parse(&[]);
    let file = read_file(&path).unwrap();
    let c = merge(&Config::default(), Some((&path, &file)), &cli, &explicit).unwrap();
    assert_eq!(c, Config::default());
    // Every key is written out (commented-out keys are those without a default value).
    let text = std::fs::read_to_string(&path).unwrap();
    for key in table_keys() {
        assert!(
            text.contains(&format!("\n{key} =")) || text.contains(&format!("# {key} =")),
            "configs/defaults.toml does not document `{key}`"
        );
    }
}

#[test]
fn every_flag_but_the_run_only_ones_is_a_file_key() {
    let run_only = [
        "config",
        "checkpoint",
        "list_games",
        "print_config",
        "bench_phase",
        "listen",
        "remote_lanes",
        "max_connections",
        "max_connections_per_peer",
        "handshake_timeout",
        "insecure_plaintext",
        "max_lanes_per_host",
        "remote_reward_bound",
        "connect",
        "auth_token_file",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "tls_domain",
        "reconnect_for",
        "help",
        "version",
    ];
    let keys = table_keys();
    for arg in Config::command().get_arguments() {
        let id = arg.get_id().as_str();
        if !run_only.contains(&id) {
            assert!(
                keys.contains(id.replace('_', "-").as_str()),
                "flag --{id} cannot be set in a config file"
            );
        }
    }
}

#[test]
fn config_toml_writes_f32_settings_as_given() {
    let (c, _) = parse(&["--gamma", "0.99", "--repeat-action-probability", "0.25"]);
    let text = c.to_toml();
    assert!(text.contains("gamma = 0.99\n"), "{text}");
    assert!(
        text.contains("repeat-action-probability = 0.25\n"),
        "{text}"
    );
    assert_eq!(Config::from_toml(&text).unwrap(), c);
}

/// The settings of the optimizer `--optimizer` did not choose are refused by name, both ways;
/// the chosen one's pass; bad betas and epsilons are named.
#[test]
fn the_other_optimizers_settings_are_refused_by_name() {
    let (c, _) = parse(&["--optimizer", "adam"]);
    let err = c
        .check_rule_settings(|k| {
            k == "rms-eps" || k == "rmsprop-form" || k == "rms-initial-square-avg"
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--rms-eps, --rmsprop-form, --rms-initial-square-avg: only --optimizer rmsprop reads them; this run is --optimizer adam"),
        "{err}"
    );
    assert!(c
        .check_rule_settings(|k| k == "adam-eps" || k == "lr")
        .is_ok());
    let (c, _) = parse(&[]);
    assert_eq!(c.optim.optimizer, crate::optim::OptimizerKind::Rmsprop);
    let err = c
        .check_rule_settings(|k| k == "adam-beta2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--adam-beta2: only --optimizer adam reads them"),
        "{err}"
    );
    assert!(c.check_rule_settings(|k| k == "rms-decay").is_ok());
    let (c, _) = parse(&[
        "--optimizer",
        "adam",
        "--adam-beta1",
        "1",
        "--adam-eps",
        "0",
    ]);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("--adam-beta1 1: must be in [0, 1)"), "{err}");
    assert!(err.contains("--adam-eps 0: must be positive"), "{err}");
}

#[test]
fn a_negative_number_is_a_value_refused_by_validation_not_an_unknown_flag() {
    let (c, _) = parse(&["--lr", "-1", "--max-grad-norm", "-2"]);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("--lr -1: must be a positive number"), "{err}");
    assert!(
        err.contains("--max-grad-norm -2: must be positive"),
        "{err}"
    );
}

/// Every flag of a family of rule settings, given with a rule that does not read it, is
/// refused by name, with the rules that read it; given with one that does, it passes.
#[test]
fn a_family_flag_is_refused_by_name_for_a_rule_that_does_not_read_it() {
    use crate::rules::{Family, RULES};
    for family in Family::ALL {
        let readers = Algorithm::readers_of(family);
        assert!(!readers.is_empty(), "no rule reads {family:?}");
        for (_, long) in flags_in(&[family.group_id()]) {
            for rule in RULES {
                let (c, _) = parse(&["--algorithm", rule.name]);
                let verdict = c.check_rule_settings(|k| k == long);
                if rule.reads.contains(&family) {
                    assert!(verdict.is_ok(), "--{long} with {rule}: {verdict:?}");
                } else {
                    let err = verdict.unwrap_err().to_string();
                    let names: Vec<&str> = readers.iter().map(|r| r.name).collect();
                    assert!(
                        err.contains(&format!("--{long}: only --algorithm {}", names.join(", "))),
                        "--{long} with {rule}: {err}"
                    );
                }
            }
        }
    }
}

/// The groups that are not saved hold exactly the flags of one invocation, and every other
/// flag is a config-file key (nested groups do not leak their flags into others).
#[test]
fn the_unsaved_groups_hold_the_invocation_flags() {
    let unsaved: BTreeSet<String> = flags_in(&unsaved_groups())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let expected: BTreeSet<String> = [
        "config",
        "checkpoint",
        "list_games",
        "print_config",
        "bench_phase",
        "listen",
        "remote_lanes",
        "max_connections",
        "max_connections_per_peer",
        "handshake_timeout",
        "insecure_plaintext",
        "max_lanes_per_host",
        "remote_reward_bound",
        "connect",
        "auth_token_file",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "tls_domain",
        "reconnect_for",
    ]
    .map(String::from)
    .into();
    assert_eq!(unsaved, expected);
    assert!(table_keys().contains("lr") && table_keys().contains("replay-size"));
    assert!(!table_keys().contains("listen"));
}

#[test]
fn python_is_for_gymnasium_games_only_and_round_trips() {
    let (c, _) = parse(&["--game", "Breakout", "--python", "/opt/py/bin/python"]);
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("--python /opt/py/bin/python: only Gymnasium environments run Python"),
        "{err}"
    );
    let (c, _) = parse(&["--game", "Breakout", "--python-timeout", "30"]);
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("--python-timeout 30: only Gymnasium environments run Python"),
        "{err}"
    );
    let (c, _) = parse(&[
        "--game",
        "gymnasium:Acrobot-v1",
        "--python",
        "/opt/py/bin/python",
        "--python-timeout",
        "30",
    ]);
    c.validate().unwrap();
    assert_eq!(
        c.env_settings(1).python_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(
        c.env_settings(1).python.as_deref(),
        Some(std::path::Path::new("/opt/py/bin/python"))
    );
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
}
