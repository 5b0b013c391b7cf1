//! Helpers shared by the integration tests: running the binaries with a time limit, building
//! a learner's command line ([`Run`]), and checking that a run left no actor process and no
//! shared-memory segment behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LEARNER: &str = env!("CARGO_BIN_EXE_learner");
pub const PLAY: &str = env!("CARGO_BIN_EXE_play");

/// Runs `bin args` to completion within `limit` (killed and failed past it); returns its pid
/// and output.
pub fn run(bin: &str, args: &[&str], cwd: &Path, limit: Duration) -> (u32, Output) {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd);
    run_command(cmd, &format!("{bin} {args:?}"), limit)
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) to completion within `limit`
/// (killed and failed past it, naming it `what`); returns its pid and output.
fn run_command(mut cmd: Command, what: &str, limit: Duration) -> (u32, Output) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = waiter.join().unwrap().unwrap();
            panic!(
                "{what} ran past {limit:?}\nstdout:\n{}\nstderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (pid, waiter.join().unwrap().unwrap())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the run succeeded, printing its output otherwise.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Pids of live actor processes started by learner `pid` (their command line names it).
pub fn actors_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(text).collect();
        if args.get(1).map(String::as_str) == Some("__actor")
            && args.get(3) == Some(&pid.to_string())
        {
            found.push(p);
        }
    }
    found
}

/// Shared-memory segments of learner `pid` still in /dev/shm.
pub fn segments_of(pid: u32) -> Vec<String> {
    let prefix = format!("async-rl-{pid}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that learner `pid` left nothing behind (children get a moment to die).
pub fn assert_clean(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !actors_of(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        actors_of(pid),
        Vec::<u32>::new(),
        "actor processes of learner {pid} survive it"
    );
    assert_eq!(
        segments_of(pid),
        Vec::<String>::new(),
        "segments of learner {pid} left in /dev/shm"
    );
}

/// Writes a checkpoint of an untrained network for `game` (`Breakout` or `CartPole`) as
/// `dir/model-1000.safetensors`, in no time: for tests of `play` that need a model, not a good one.
pub fn untrained_checkpoint(dir: &Path, game: &str) -> std::path::PathBuf {
    use async_rl::checkpoint::{self, TrainingState, FORMAT_VERSION};
    use async_rl::config::{Config, Network};
    use async_rl::env::ObsSpec;
    use async_rl::model::AgentNetwork;
    let (network, obs, num_actions) = match game {
        "CartPole" => (Network::Mlp, ObsSpec::Vector(4), 2),
        "Breakout" => (Network::Nips, ObsSpec::Frames([4, 84, 84]), 4),
        other => panic!("no untrained checkpoint for {other}"),
    };
    let model = AgentNetwork::new(network, obs, num_actions, tch::Device::Cpu);
    let state = TrainingState {
        format_version: FORMAT_VERSION,
        game: game.to_string(),
        network,
        num_actions,
        obs,
        frames: 1000,
        steps: 250,
        updates: 0,
        episodes: 0,
        wall_s: 0.0,
        config: Config::from_flags(["--game", game]).unwrap(),
    };
    let rmsprop: Vec<(String, tch::Tensor)> = model
        .params()
        .iter()
        .map(|(n, p)| (format!("rmsprop/{n}"), p.zeros_like()))
        .collect();
    let path = checkpoint::path_for(dir, 1000);
    checkpoint::save(&path, &state, model.params(), &rmsprop, &[]).unwrap();
    path
}

/// The metrics.csv rows of run directory `dir` as maps from column name to field.
pub fn metrics_rows(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    assert!(
        dir.join("metrics.csv").is_file(),
        "no metrics.csv in {}",
        dir.display()
    );
    csv_rows(&dir.join("metrics.csv"))
}

/// The rows of the CSV file `path` (a header line, then values) as maps from column name to
/// field; none when the file is missing or has only its header.
pub fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let header: Vec<String> = header.split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

/// A learner running in the background ([`Run::start`]) in its own process group, its stdout
/// and stderr going to files (so that a test reads them while it runs, and a killed process
/// loses nothing).
pub struct Proc {
    pub child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
    pub what: String,
}

impl Proc {
    /// Starts `cmd` in its own process group, its outputs going to `what.stdout` and
    /// `what.stderr` in `dir`; `what` names it in failures too.
    fn spawn(mut cmd: Command, dir: &Path, what: &str) -> Proc {
        let out = dir.join(format!("{what}.stdout"));
        let err = dir.join(format!("{what}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Proc {
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {what}: {e}")),
            out,
            err,
            what: what.to_string(),
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both outputs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.what,
            self.stdout(),
            self.what,
            self.stderr()
        )
    }

    /// Waits until stdout or stderr holds `n` lines containing `needle`; returns the first
    /// such line (of the combined output). Fails past `limit` or when the process exits first.
    pub fn wait_for(&mut self, needle: &str, n: usize, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let all = format!("{}\n{}", self.stdout(), self.stderr());
            let hits: Vec<&str> = all.lines().filter(|l| l.contains(needle)).collect();
            if hits.len() >= n {
                return hits[n - 1].to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {n} x `{needle}`\n{}",
                    self.what,
                    self.logs()
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {n} x `{needle}` from {} within {limit:?}\n{}",
                self.what,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit within `limit` (SIGKILLed and failed past it).
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t0.elapsed() > limit {
                self.kill_group();
                panic!(
                    "{} did not exit within {limit:?}\n{}",
                    self.what,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the process and its group (its actors) and reaps it.
    pub fn kill_group(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// A learner's command line, built flag by flag, and the ways to run it (in its directory,
/// where a relative `--logdir` lands). A flag set again replaces its value where it stands,
/// so that variants of one run read as the flags that differ and the learner never sees a
/// flag twice. `args()` is the argv, in the order the flags were first set.
///
/// ```ignore
/// Run::cartpole(dir).rule("dqn").processes(2).frames(50_000).seed(3).succeeds("dqn", limit);
/// ```
#[derive(Clone, Debug)]
pub struct Run {
    dir: PathBuf,
    /// `(--flag, value)`, a switch without a value.
    flags: Vec<(String, Option<String>)>,
    env: Vec<(String, String)>,
}

impl Run {
    /// The learner in `dir` with no flags: its own defaults.
    pub fn learner(dir: &Path) -> Run {
        Run {
            dir: dir.to_path_buf(),
            flags: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A CartPole run on the CPU into `dir/run`: `--game CartPole --device cpu --logdir run`.
    pub fn cartpole(dir: &Path) -> Run {
        Run::game(dir, "CartPole")
    }

    /// A Breakout run on the CPU into `dir/run`: `--game Breakout --device cpu --logdir run`.
    pub fn breakout(dir: &Path) -> Run {
        Run::game(dir, "Breakout")
    }

    /// `--game game --device cpu --logdir run` in `dir`.
    pub fn game(dir: &Path, game: &str) -> Run {
        Run::learner(dir)
            .flag("--game", game)
            .flag("--device", "cpu")
            .logdir("run")
    }

    /// `--processes n`: local actor processes.
    pub fn processes(self, n: u32) -> Run {
        self.flag("--processes", n)
    }

    /// `--max-frames n`: emulator frames to train for.
    pub fn frames(self, n: u64) -> Run {
        self.flag("--max-frames", n)
    }

    /// `--algorithm name`: the learning rule.
    pub fn rule(self, name: &str) -> Run {
        self.flag("--algorithm", name)
    }

    /// `--seed n`.
    pub fn seed(self, n: u64) -> Run {
        self.flag("--seed", n)
    }

    /// `--logdir path` (relative to the run's directory, or absolute).
    pub fn logdir(self, path: impl AsRef<Path>) -> Run {
        let path = path.as_ref().to_str().expect("a UTF-8 path").to_string();
        self.flag("--logdir", path)
    }

    /// `--checkpoint which`: `latest`, a frame count or a file.
    pub fn checkpoint(self, which: impl std::fmt::Display) -> Run {
        self.flag("--checkpoint", which)
    }

    /// `name value`, replacing the value of `name` if it is set.
    pub fn flag(mut self, name: &str, value: impl std::fmt::Display) -> Run {
        self.set(name, Some(value.to_string()));
        self
    }

    /// `name` alone, a boolean flag such as `--dueling`.
    pub fn switch(mut self, name: &str) -> Run {
        self.set(name, None);
        self
    }

    /// Flags as a test writes them on a command line (`["--lr", "1e30", "--dueling"]`): each
    /// `--name` takes the next word as its value unless that is a flag too.
    pub fn flags(mut self, args: &[&str]) -> Run {
        let mut words = args.iter().peekable();
        while let Some(name) = words.next() {
            assert!(name.starts_with("--"), "`{name}` in {args:?} is no flag");
            let value = words.next_if(|w| !w.starts_with("--"));
            self.set(name, value.map(|v| v.to_string()));
        }
        self
    }

    /// The learner without flag `name` (one that a constructor set).
    pub fn without(mut self, name: &str) -> Run {
        self.flags.retain(|(n, _)| n != name);
        self
    }

    /// Environment variable `key=value` for the learner (and so its actors).
    pub fn env(mut self, key: &str, value: &str) -> Run {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn set(&mut self, name: &str, value: Option<String>) {
        match self.flags.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.flags.push((name.to_string(), value)),
        }
    }

    /// The learner's arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        self.flags
            .iter()
            .flat_map(|(n, v)| std::iter::once(n.clone()).chain(v.clone()))
            .collect()
    }

    /// The learner's command in the run's directory, with its arguments and environment;
    /// its standard streams are left to the caller.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(LEARNER);
        cmd.args(self.args())
            .current_dir(&self.dir)
            .envs(self.env.clone());
        cmd
    }

    /// Runs the learner to completion within `limit` (killed and failed past it); returns
    /// its pid and output.
    pub fn output(&self, limit: Duration) -> (u32, Output) {
        let what = format!("{LEARNER} {:?}", self.args());
        run_command(self.command(), &what, limit)
    }

    /// Runs the learner to completion within `limit` and asserts that it succeeded and left
    /// nothing behind ([`assert_ok`] naming it `what`, [`assert_clean`]); returns its output.
    pub fn succeeds(&self, what: &str, limit: Duration) -> Output {
        let (pid, out) = self.output(limit);
        assert_ok(what, &out);
        assert_clean(pid);
        out
    }

    /// Starts the learner in the background as a [`Proc`] named `what`.
    pub fn start(&self, what: &str) -> Proc {
        Proc::spawn(self.command(), &self.dir, what)
    }

    /// Starts the learner listening for actor hosts on a free loopback port (`--listen
    /// 127.0.0.1:0`); returns it and the address it printed.
    pub fn listen(&self, what: &str) -> (Proc, String) {
        let mut learner = self.clone().flag("--listen", "127.0.0.1:0").start(what);
        let line = learner.wait_for("listening for actor hosts on ", 1, Duration::from_secs(60));
        let addr = line
            .split("listening for actor hosts on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        (learner, addr)
    }
}

/// The numbers an actor host prints when it exits: frames played here, games played here,
/// and the frames the learner acknowledged.
pub fn host_summary(host: &Proc) -> (u64, u64, u64) {
    let all = format!("{}\n{}", host.stdout(), host.stderr());
    let line = all
        .lines()
        .find(|l| l.starts_with("host summary:"))
        .unwrap_or_else(|| panic!("no summary\n{}", host.logs()));
    let num = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim().split([' ', ',']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in `{line}`"))
    };
    (num("played frames"), num("games"), num("acked frames"))
}

/// The Python interpreter with gymnasium that a run of `--game gymnasium:<id>` would use
/// (`$VIRTUAL_ENV`'s, scripts/setup's venv, else python3), or `None` with a message when it
/// cannot import gymnasium; with ASYNC_RL_REQUIRE_PYTHON set (scripts/test sets it), that is
/// a failure instead.
pub fn gym_python(test: &str) -> Option<PathBuf> {
    let python = async_rl::env::gymnasium::python(None);
    let usable = Command::new(&python)
        .args(["-c", "import gymnasium"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(python);
    }
    assert!(
        std::env::var_os("ASYNC_RL_REQUIRE_PYTHON").is_none(),
        "{test}: ASYNC_RL_REQUIRE_PYTHON is set but {} cannot import gymnasium: run scripts/setup",
        python.display()
    );
    eprintln!(
        "{test}: skipped: {} cannot import gymnasium (run scripts/setup)",
        python.display()
    );
    None
}

/// The test Gymnasium environments' directory (tests/fixtures/gym), for PYTHONPATH.
pub fn gym_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gym")
}

/// Live processes whose environment holds `key=value` (a tag a test gave its learner, which
/// its actors and their Python workers inherit).
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let tag = format!("{key}={value}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{p}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == tag.as_bytes()) {
            found.push(p);
        }
    }
    found
}
