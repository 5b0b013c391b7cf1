//! `scripts/results --report`: from fixture seed directories (metrics.csv, the learner's output
//! with its periodic evaluations, an evaluated last checkpoint), the time to score per seed, the
//! results.csv row, the generated section of RESULTS.md (the rest kept) and the curves; bad
//! arguments are named (the fixtures stand for two finished CartPole seeds); a seed whose learner
//! is stopped from outside stays resumable (real training, a debug learner on CartPole).

use std::path::Path;
use std::process::Command;

const HEADER: &str = async_rl::metrics::CSV_HEADER;

/// A finished seed: metrics rows every 10 s, 10,000 frames and 50 games whose mean return
/// climbs by `step` from 20, evaluations every 20,000 frames scoring `eval_step` more each time, the
/// last checkpoint at 100,000 frames evaluated at `final_eval`.
fn fake_seed(dir: &Path, step: f64, eval_step: f64, final_eval: f64, resumed: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let commas = HEADER.split(',').count() - 7;
    let mut csv = format!("{HEADER}\n");
    for i in 1..=10u64 {
        let ret = 20.0 + step * i as f64;
        csv += &format!(
            "{}.0,{},0,0,{},1000.0,{ret:.3}{}\n",
            10 * i,
            10_000 * i,
            50 * i,
            ",".repeat(commas)
        );
    }
    std::fs::write(dir.join("metrics.csv"), csv).unwrap();
    let mut log = String::from("frames 10000 | fps 1000\n");
    if resumed {
        // A first session lost past its checkpoint of 50,000 frames: its evaluation at 90,000
        // frames does not count (else seed 1 would reach 475 there).
        log = String::from("[results] t0 from 0 frames: learner ...\n");
        log += "evaluation at 90000 frames: mean 900.00, median 1, std 0, min 1, max 1 over 10 games\n";
        log += "[results] t1 from 50000 frames: learner ... --checkpoint latest\n";
    }
    for k in 1..=5u64 {
        log += &format!(
            "evaluation at {} frames: mean {:.2}, median 1, std 0, min 1, max 1 over 10 games\n",
            20_000 * k,
            eval_step * k as f64
        );
    }
    std::fs::write(dir.join("learner.log"), log).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "game = \"CartPole\"\nalgorithm = \"dqn\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("model-50000.safetensors"), "").unwrap();
    std::fs::write(dir.join("model-100000.safetensors"), "").unwrap();
    std::fs::write(
        dir.join("model-100000.eval.json"),
        format!("{{\"mean\": {final_eval}, \"episodes\": 30}}"),
    )
    .unwrap();
    if resumed {
        std::fs::write(dir.join("resumed"), "").unwrap();
    }
}

fn results(args: &[&str], cwd: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/results.py");
    Command::new("python3")
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running scripts/results.py")
}

/// `scripts/results --report CALL --docs DOCS`, which must succeed; its standard error.
fn report(call: &Path, docs: &Path) -> String {
    let out = results(
        &[
            "--report",
            call.to_str().unwrap(),
            "--docs",
            docs.to_str().unwrap(),
        ],
        call.parent().unwrap(),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn results_report_measures_time_to_score_and_keeps_results_md() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("CartPole-20261203T120000Z");
    // Seed 0: training mean 30, 40, ... 120 (reaches 100 at the 8th row: 80,000 frames, 80 s);
    // evaluations 60, 120, 180, 240 ... (100 at 40,000 frames, 40 s; 195 at 80,000, 80 s).
    // Its first row's mean of 480 is over 50 games: not a score reached (the learner's window
    // holds 100), so training never reaches 475.
    // Seed 1 (resumed from 50,000 frames): training 35, 50, ... 110; 110 at the 6th row is over
    // the 50 games of its second session, so 100 counts at the 7th (125: 70,000 frames, 70 s);
    // evaluations 100, 200, ... 500 (100, 195 and 475 at 20,000, 40,000 and 100,000 frames).
    fake_seed(&base.join("seed-0"), 10.0, 60.0, 110.0, false);
    let metrics = base.join("seed-0/metrics.csv");
    let csv = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, csv.replacen(",30.000,", ",480.000,", 1)).unwrap();
    fake_seed(&base.join("seed-1"), 15.0, 100.0, 190.0, true);
    // Seed 0's best periodic evaluation kept its weights (model-best.safetensors), which play
    // evaluated anew at 130 (model-best.play-eval.json); the learner's own scores of it
    // (model-best.eval.json) are not that evaluation.
    std::fs::write(base.join("seed-0/model-best.safetensors"), "").unwrap();
    std::fs::write(
        base.join("seed-0/model-best.eval.json"),
        "{\"frames\": 80000, \"mean\": 240.0, \"episodes\": 10}",
    )
    .unwrap();
    std::fs::write(
        base.join("seed-0/model-best.play-eval.json"),
        "{\"frames_trained\": 80000, \"mean\": 130.0, \"episodes\": 30}",
    )
    .unwrap();
    std::fs::write(
        base.join("results.json"),
        r#"{"game": "CartPole", "minutes": 2, "seeds": 2, "parallel": false,
            "thresholds": [100, 195, 475], "flags": ["--eval-every", "20000"],
            "stamp": "20261203T120000Z", "machine": "2 cores Test CPU", "commit": "abc1234",
            "command": "scripts/results CartPole 2 --seeds 2"}"#,
    )
    .unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("RESULTS.md"),
        "# Results\n\nHand-written, kept.\n",
    )
    .unwrap();

    let err = report(&base, &docs);
    assert!(
        err.contains("seed 0: 100000 frames, 1.67 min, final eval mean 110.00, best checkpoint (80000 frames) 130.00; training reaches 100: 1.33 min 80000 frames; 195: never; 475: never; evaluation reaches 100: 0.67 min 40000 frames; 195: 1.33 min 80000 frames; 475: never"),
        "{err}"
    );
    assert!(err.contains("final eval mean 190.00 (resumed)"), "{err}");

    let md = std::fs::read_to_string(docs.join("RESULTS.md")).unwrap();
    assert!(md.starts_with("# Results\n\nHand-written, kept.\n"), "{md}");
    let row = md
        .lines()
        .find(|l| l.starts_with("| dqn |"))
        .unwrap_or_else(|| panic!("no dqn row in\n{md}"));
    for cell in [
        "| dqn | 0, 1* | 100000, 100000 | 1.67, 1.67 | 150.00 ± 40.00 (30 games each) \
         | 130.00 ± 0.00 (1/2 seeds; saved at 80k frames) |",
        // Training: 100 at 80 s and 70 s; 195 and 475 never.
        "≥100: 1.25 [1.17, 1.33] min, 75k [70k, 80k] frames (2/2)<br>≥195: never (0/2)<br>≥475: never (0/2) |",
        // Evaluations; 475 only by seed 1 (the median of a reached and a never is never).
        "| ≥100: 0.50 [0.33, 0.67] min, 30k [20k, 40k] frames (2/2)<br>≥195: 1.00 [0.67, 1.33] min, 60k [40k, 80k] frames (2/2)<br>≥475: never [1.67, never] min, never [100k, never] frames (1/2) |",
        "[png](results/CartPole-dqn-20261203T120000Z/curves.png) | 2 cores Test CPU | abc1234 |",
    ] {
        assert!(row.contains(cell), "{cell}\nnot in\n{row}");
    }
    let png = docs.join("results/CartPole-dqn-20261203T120000Z/curves.png");
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let csv = std::fs::read_to_string(docs.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");

    // Again: the section and the CSV row are replaced, not added to.
    report(&base, &docs);
    let md2 = std::fs::read_to_string(docs.join("RESULTS.md")).unwrap();
    assert_eq!(md2, md);
    let csv2 = std::fs::read_to_string(docs.join("results.csv")).unwrap();
    assert_eq!(csv2.lines().count(), 2, "{csv2}");

    // A later call of seed 1 alone (--seeds 1 --first-seed 1) reports seed 1, not seed 0, and
    // joins the first call's row (the same setting): seed 0 from the first call, seed 1 from
    // the later one (its newest run, evaluated at 150 and not resumed).
    let later = tmp.path().join("CartPole-20261204T120000Z");
    fake_seed(&later.join("seed-1"), 15.0, 100.0, 150.0, false);
    std::fs::write(
        later.join("results.json"),
        r#"{"game": "CartPole", "minutes": 2, "seeds": 1, "first_seed": 1, "parallel": false,
            "thresholds": [100, 195, 475], "flags": ["--eval-every", "20000"],
            "stamp": "20261204T120000Z", "machine": "2 cores Test CPU", "commit": "def5678",
            "command": "scripts/results CartPole 2 --seeds 1 --first-seed 1"}"#,
    )
    .unwrap();
    let err = report(&later, &docs);
    assert!(err.contains("seed 1: 100000 frames"), "{err}");
    assert!(!err.contains("seed 0"), "{err}");
    let md3 = std::fs::read_to_string(docs.join("RESULTS.md")).unwrap();
    let rows: Vec<&str> = md3.lines().filter(|l| l.starts_with("| dqn |")).collect();
    assert_eq!(rows.len(), 1, "{md3}");
    for cell in [
        "| dqn | 0, 1 | 100000, 100000 | 1.67, 1.67 | 130.00 ± 20.00 (30 games each) \
         | 130.00 ± 0.00 (1/2 seeds; saved at 80k frames) |",
        "[png 1](results/CartPole-dqn-20261203T120000Z/curves.png), \
         [png 2](results/CartPole-dqn-20261204T120000Z/curves.png)",
        "| abc1234; def5678 |",
        "`scripts/results CartPole 2 --seeds 2`<br>`scripts/results CartPole 2 --seeds 1 --first-seed 1` |",
    ] {
        assert!(rows[0].contains(cell), "{cell}\nnot in\n{}", rows[0]);
    }
    let csv3 = std::fs::read_to_string(docs.join("results.csv")).unwrap();
    assert_eq!(csv3.lines().count(), 3, "{csv3}");
    assert!(csv3.lines().nth(2).unwrap().contains(",1,\"[{"), "{csv3}");

    // A call with another setting (a learner flag more) has a row of its own.
    let other = tmp.path().join("CartPole-20261205T120000Z");
    fake_seed(&other.join("seed-0"), 10.0, 60.0, 70.0, false);
    std::fs::write(
        other.join("results.json"),
        r#"{"game": "CartPole", "minutes": 2, "seeds": 1, "parallel": false,
            "thresholds": [100, 195, 475], "flags": ["--eval-every", "20000", "--lr", "0.001"],
            "stamp": "20261205T120000Z", "machine": "2 cores Test CPU", "commit": "0a0b0c0",
            "command": "scripts/results CartPole 2 --seeds 1 --lr 0.001"}"#,
    )
    .unwrap();
    report(&other, &docs);
    let md4 = std::fs::read_to_string(docs.join("RESULTS.md")).unwrap();
    let rows: Vec<&str> = md4.lines().filter(|l| l.starts_with("| dqn |")).collect();
    assert_eq!(rows.len(), 2, "{md4}");
    assert!(
        rows.iter().any(|r| r
            .starts_with("| dqn | 0 | 100000 | 1.67 | 70.00 ± 0.00 (30 games each) | - |")
            && r.contains("--lr 0.001")),
        "{md4}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("| dqn | 0, 1 |")),
        "{md4}"
    );

    // A seed without an evaluated last checkpoint has not finished.
    std::fs::remove_file(base.join("seed-1/model-100000.eval.json")).unwrap();
    let out = results(&["--report", base.to_str().unwrap()], tmp.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seed 1 has not finished"), "{err}");
    assert!(err.contains("scripts/results --resume"), "{err}");
}

#[test]
fn results_names_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (&["CartPole"][..], "usage: scripts/results GAME MINUTES"),
        (
            &["CartPole", "soon"],
            "MINUTES must be a number, got 'soon'",
        ),
        (&["CartPole", "0"], "MINUTES must be positive"),
        (
            &["CartPole", "1", "--seeds", "0"],
            "--seeds 0: needs a whole number",
        ),
        (
            &["CartPole", "1", "--first-seed", "-1"],
            "--first-seed -1: needs a whole number of 0 or more",
        ),
        (
            &["CartPole", "1", "--first-seed=2"],
            "--first-seed=2: write --first-seed VALUE (with a space)",
        ),
        (
            &["CartPole", "1", "--seed", "4"],
            "--seed: not allowed here",
        ),
        (
            &["CartPole", "1", "--logdir=x"],
            "--logdir=x: not allowed here",
        ),
        (
            &["CartPole", "1", "--thresholds", "100,lots"],
            "--thresholds 100,lots: 'lots' is not a number",
        ),
        (
            &["CartPole", "1", "--eval-every", "0"],
            "--eval-every 0: scripts/results needs periodic evaluations",
        ),
        (
            &["Seaquest", "1"],
            "no default score thresholds for game 'Seaquest'",
        ),
        (
            &["--resume", "nowhere"],
            "--resume nowhere: no results.json there",
        ),
        (
            &["--resume", "a", "b"],
            "--resume takes one results directory and nothing else",
        ),
    ] {
        let out = results(args, tmp.path());
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The pid of `parent`'s first child process (Linux: /proc/PID/task/PID/children).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A learner stopped by a signal that scripts/results did not send (the session ending,
/// someone's `kill`) exits 0 after its final checkpoint, as at --max-frames. Its seed must stay
/// unfinished and the call stop, resumable; `--resume` then trains what is left of the minutes
/// from the checkpoint, evaluates and marks the seed resumed. Real (debug) learner on CartPole.
#[test]
fn results_keeps_a_seed_stopped_from_outside_resumable() {
    use crate::util::{LEARNER, PLAY};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let docs = tmp.path().join("docs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/results.py");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    // `--runs` is for new calls only (a `--resume` names its results directory).
    let results_cmd = |args: &[&str], with_runs: bool| {
        let mut c = Command::new("python3");
        c.arg(&script).args(args);
        if with_runs {
            c.args(["--runs", runs.to_str().unwrap()]);
        }
        c.args(["--docs", docs.to_str().unwrap()])
            .env("ASYNC_RL_LEARNER", LEARNER)
            .env("ASYNC_RL_PLAY", PLAY)
            .env("ASYNC_RL_CONFIG_DIR", &configs)
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let mut call = results_cmd(
        &[
            "CartPole",
            "0.5",
            "--seeds",
            "1",
            "--config",
            configs.join("cartpole.toml").to_str().unwrap(),
            "--save-freq",
            "2000",
            "--eval-every",
            "5000",
        ],
        true,
    )
    .spawn()
    .unwrap();

    // Once seed 0 has a checkpoint, stop its learner from outside.
    let deadline = Instant::now() + Duration::from_secs(120);
    let base = loop {
        let base = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path());
        let checkpointed = base.as_ref().is_some_and(|b| {
            std::fs::read_dir(b.join("seed-0")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("model-"))
            })
        });
        if checkpointed {
            break base.unwrap();
        }
        assert!(
            Instant::now() < deadline && call.try_wait().unwrap().is_none(),
            "seed 0 made no checkpoint within 120 s (or scripts/results ended)"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let learner = child_of(call.id()).expect("scripts/results runs a learner");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(learner as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = call.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a seed stopped from outside was taken as finished:\n{err}"
    );
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("scripts/results --resume"), "{err}");
    assert!(!base.join("seed-0/result.json").exists());

    // --resume finishes it: from the checkpoint, for what is left of the 0.5 minutes.
    // (--runs with --resume is refused, named.)
    let resume = ["--resume", base.to_str().unwrap()];
    let out = results_cmd(&resume, true).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--runs: only for a new call"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = results_cmd(&resume, false).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(base.join("seed-0/result.json").exists(), "{err}");
    assert!(base.join("seed-0/resumed").exists(), "{err}");
    let log = std::fs::read_to_string(base.join("seed-0/learner.log")).unwrap();
    assert!(log.contains("--checkpoint latest"), "{log}");
    assert!(err.contains("(resumed)"), "{err}");
}

/// `--config FILE` without `--eval-every`: scripts/results asks the learner
/// (`--print-config`) what the flags merge to, so the file's `eval-every`, or its base's
/// through `extends`, stands, and only a chain without one gets the default; flags the learner
/// refuses stop the call before any seed, with the learner's message.
#[test]
fn results_asks_the_learner_for_eval_every_and_refuses_what_it_refuses() {
    use crate::util::LEARNER;
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(tmp.path().join(name), text).unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    write("sub/base.toml", "eval-every = 30_000\n");
    write("top.toml", "extends = \"sub/base.toml\"\nlr = 1e-3\n");
    write(
        "own.toml",
        "extends = \"sub/base.toml\"\neval-every = 5000\n",
    );
    write("none.toml", "lr = 1e-3\n");
    write("bad.toml", "gamma = 1.5\n");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys; sys.path.insert(0, sys.argv[1]); import results\n\
             for p in sys.argv[2:]:\n\
             \x20   try: print(results.parse(['CartPole', '1', '--config', p])['flags'])\n\
             \x20   except results.ResultsError as e: print('refused:', e)",
        )
        .arg(&scripts)
        .args(["top.toml", "own.toml", "none.toml", "bad.toml"])
        .env("ASYNC_RL_LEARNER", LEARNER)
        .env_remove("ASYNC_RL_CONFIG_DIR")
        .current_dir(tmp.path())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "['--config', 'top.toml']",
            "['--config', 'own.toml']",
            "['--config', 'none.toml', '--eval-every', '10000']",
        ],
        "{stdout}"
    );
    let refused = lines[3..].join("\n");
    assert!(
        refused.starts_with("refused: the learner refuses these flags")
            && refused.contains("--gamma 1.5: must be in [0, 1]"),
        "{stdout}"
    );
}
