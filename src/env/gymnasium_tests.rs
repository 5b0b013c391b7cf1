//! The Gymnasium worker and its protocol, against Gymnasium's CartPole and the small test
//! environments of tests/fixtures/gym/async_rl_test_envs.py (one space or one fault each).
//! They need a Python with gymnasium (scripts/setup's venv): without one they say so and
//! pass, unless ASYNC_RL_REQUIRE_PYTHON is set (scripts/test sets it), where they fail.

use std::path::{Path, PathBuf};

use super::*;

/// The interpreter the tests use, or `None` (with a message) when there is none to use.
fn python() -> Option<PathBuf> {
    let p = super::python(None);
    let usable = std::process::Command::new(&p)
        .args(["-c", "import gymnasium"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(p);
    }
    assert!(
        std::env::var_os("ASYNC_RL_REQUIRE_PYTHON").is_none(),
        "ASYNC_RL_REQUIRE_PYTHON is set but {} cannot import gymnasium: run scripts/setup",
        p.display()
    );
    eprintln!(
        "skipped: {} cannot import gymnasium (run scripts/setup; ASYNC_RL_REQUIRE_PYTHON=1 makes this a failure)",
        p.display()
    );
    None
}

/// The tests' reply timeout: generous, for a loaded machine.
const T: Duration = Duration::from_secs(120);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gym")
}

/// A test environment `async_rl_test_envs:<name>` seeded with `seed`.
fn make(python: &Path, name: &str, seed: u64) -> Result<GymEnv, GymError> {
    let id = format!("async_rl_test_envs:{name}");
    GymEnv::spawn(&id, python, seed, false, T, Some(&fixtures()))
}

fn floats(obs: &[u8]) -> Vec<f32> {
    obs.chunks(4)
        .map(|b| f32::from_ne_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn gymnasium_cartpole_runs_whole_episodes() {
    let Some(py) = python() else { return };
    let mut env = GymEnv::new("CartPole-v1", &py, 3, false, T).unwrap();
    assert_eq!(env.obs_spec(), ObsSpec::Vector(4));
    assert_eq!(env.action_spec(), ActionSpec::Discrete(2));
    assert!(env.spaces().0.starts_with("Box("), "{:?}", env.spaces());
    assert!(matches!(env.step(0), Err(EnvError::Custom(m)) if m.contains("first reset")));
    env.reset().unwrap();
    let first = floats(env.obs());
    assert!(first.iter().all(|x| x.abs() <= 0.05), "{first:?}");
    // Always pushing right fails within a few dozen steps: terminated, not truncated.
    let mut steps = 0;
    loop {
        let s = env.step(1).unwrap();
        steps += 1;
        assert_eq!((s.reward, s.clipped_reward, s.frames), (1.0, 1.0, 1));
        if s.game_over {
            assert!(s.terminal && !s.truncated);
            break;
        }
        assert!(!s.terminal && !s.truncated);
        assert!(steps < 500);
    }
    assert_eq!(env.episode_frames(), steps);
    assert_eq!(env.episode_return(), steps as f32);
    assert!(matches!(env.step(1), Err(EnvError::EpisodeOver)));
    assert!(matches!(
        env.step(2),
        Err(EnvError::InvalidAction { action: 2, .. })
    ));
    assert!(matches!(
        env.step_continuous(&[0.5]),
        Err(EnvError::ActionKind { .. })
    ));
    env.reset().unwrap();
    assert_eq!((env.episode_frames(), env.episode_return()), (0, 0.0));
}

#[test]
fn discrete_start_rewards_and_terminated_apart_from_truncated() {
    let Some(py) = python() else { return };
    let mut env = make(&py, "Counter-v0", 1).unwrap();
    // Discrete(3, start=-1): the actor's actions 0..3 are -1, 0, +1.
    assert_eq!(env.action_spec(), ActionSpec::Discrete(3));
    assert_eq!(env.obs_spec(), ObsSpec::Vector(3));
    env.reset().unwrap();
    let s = env.step(0).unwrap();
    assert_eq!(s.reward, -1.0);
    assert_eq!(
        floats(env.obs())[2],
        -1.0,
        "the action as the environment saw it"
    );
    // The time limit (4 steps) truncates: not terminal, so the learner bootstraps.
    for _ in 0..2 {
        assert!(!env.step(1).unwrap().truncated);
    }
    let s = env.step(1).unwrap();
    assert!(s.truncated && !s.terminal && !s.game_over, "{s:?}");
    assert_eq!(floats(env.obs())[0], 4.0);
    assert_eq!(env.episode_return(), -1.0);
    // Action +1 terminates.
    env.reset().unwrap();
    let s = env.step(2).unwrap();
    assert!(s.terminal && s.game_over && !s.truncated, "{s:?}");
    assert_eq!(s.reward, 1.0);
}

#[test]
fn the_first_reset_is_seeded_and_later_ones_are_not() {
    let Some(py) = python() else { return };
    let draws = |seed| {
        let mut env = make(&py, "Counter-v0", seed).unwrap();
        (0..3)
            .map(|_| {
                env.reset().unwrap();
                floats(env.obs())[1]
            })
            .collect::<Vec<f32>>()
    };
    let a = draws(7);
    assert_eq!(a, draws(7), "the same seed, the same episodes");
    assert_ne!(a, draws(8));
    assert_ne!(a[0], a[1], "a later reset is not seeded again");
}

#[test]
fn discrete_observations_are_one_hot() {
    let Some(py) = python() else { return };
    let mut env = make(&py, "OneHot-v0", 1).unwrap();
    assert_eq!(env.obs_spec(), ObsSpec::Vector(5));
    env.reset().unwrap();
    assert_eq!(floats(env.obs()), [1.0, 0.0, 0.0, 0.0, 0.0]);
    env.step(0).unwrap();
    assert_eq!(floats(env.obs()), [0.0, 1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn images_are_transposed_to_channels_first_u8() {
    let Some(py) = python() else { return };
    let mut env = make(&py, "Image-v0", 1).unwrap();
    assert_eq!(env.obs_spec(), ObsSpec::Frames([3, 6, 4]));
    assert_eq!(env.screen_size(), None, "no render_mode unless asked");
    env.reset().unwrap();
    env.step(0).unwrap();
    let obs = env.obs();
    for c in 0..3 {
        for h in 0..6 {
            for w in 0..4 {
                assert_eq!(obs[c * 24 + h * 4 + w] as usize, 40 * h + 10 * w + c + 1);
            }
        }
    }
    let s = (0..2).map(|_| env.step(1).unwrap()).last().unwrap();
    assert!(s.truncated && !s.terminal);
}

#[test]
fn render_gives_the_rgb_screen_when_asked() {
    let Some(py) = python() else { return };
    let id = "async_rl_test_envs:Image-v0";
    let mut env = GymEnv::spawn(id, &py, 1, true, T, Some(&fixtures())).unwrap();
    assert_eq!(env.screen_size(), Some((7, 5)));
    env.reset().unwrap();
    env.step(0).unwrap();
    let mut rgb = vec![0u8; 7 * 5 * 3];
    env.screen_rgb(&mut rgb).unwrap();
    assert!(rgb.iter().all(|&p| p == 1), "the screen after one step");
    assert!(env.screen_rgb(&mut [0u8; 3]).is_err());
}

#[test]
fn continuous_actions_are_clipped_to_the_bounds() {
    let Some(py) = python() else { return };
    let mut env = make(&py, "Continuous-v0", 1).unwrap();
    assert_eq!(
        env.action_spec(),
        ActionSpec::Box {
            low: vec![-1.0, 0.0],
            high: vec![2.0, 1.0]
        }
    );
    assert_eq!(env.num_actions(), 2);
    env.reset().unwrap();
    env.step_continuous(&[5.0, -3.0]).unwrap();
    assert_eq!(floats(env.obs()), [2.0, 0.0]);
    env.step_continuous(&[0.25, 0.5]).unwrap();
    assert_eq!(floats(env.obs()), [0.25, 0.5]);
    assert!(matches!(env.step(0), Err(EnvError::ActionKind { .. })));
    assert!(matches!(
        env.step_continuous(&[1.0]),
        Err(EnvError::ActionKind { .. })
    ));
    // Pendulum-v1: Box(-2, 2, (1,)).
    let pendulum = GymEnv::new("Pendulum-v1", &py, 1, false, T).unwrap();
    assert_eq!(
        pendulum.action_spec(),
        ActionSpec::Box {
            low: vec![-2.0],
            high: vec![2.0]
        }
    );
    assert_eq!(pendulum.obs_spec(), ObsSpec::Vector(3));
}

/// The message of `make`'s error.
fn make_error(py: &Path, id: &str) -> String {
    match GymEnv::spawn(id, py, 1, false, T, Some(&fixtures())) {
        Ok(_) => panic!("{id}: made"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_ids_imports_and_spaces_are_named() {
    let Some(py) = python() else { return };
    let e = make_error(&py, "CartPol-v1");
    assert!(
        e.starts_with("gymnasium:CartPol-v1: make: ") && e.contains("CartPol"),
        "{e}"
    );
    let e = make_error(&py, "async_rl_no_such_module:Foo-v0");
    assert!(
        e.contains("No module named 'async_rl_no_such_module'"),
        "{e}"
    );
    let e = make_error(&py, "async_rl_broken_env:Foo-v0");
    assert!(
        e.contains("async_rl_no_such_dependency") && e.contains("Traceback"),
        "the import error in the user's module, with its traceback: {e}"
    );
    let e = make_error(&py, "async_rl_test_envs:DictObs-v0");
    assert!(e.contains("Dict") && e.contains("not supported"), "{e}");
    let e = make_error(&py, "async_rl_test_envs:MultiDiscreteActions-v0");
    assert!(
        e.contains("MultiDiscrete") && e.contains("action space"),
        "{e}"
    );
}

#[test]
fn a_missing_interpreter_or_gymnasium_says_how_to_fix_it() {
    let e = GymEnv::new("CartPole-v1", Path::new("/nonexistent/python"), 1, false, T)
        .err()
        .unwrap();
    assert!(matches!(e, GymError::NoPython { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/python")
            && msg.contains("scripts/setup")
            && msg.contains("--python"),
        "{msg}"
    );
    let Some(py) = python() else { return };
    // The same interpreter without its site-packages (python -S): no gymnasium.
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("python");
    std::fs::write(
        &bare,
        format!("#!/bin/sh\nexec {} -S \"$@\"\n", py.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bare, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = GymEnv::new("CartPole-v1", &bare, 1, false, T)
        .err()
        .unwrap();
    assert!(matches!(e, GymError::NoGymnasium { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&bare.display().to_string()) && msg.contains("pip install"),
        "{msg}"
    );
}

/// The message of the error at the third step of `Faulty-<fault>-v0`.
fn step_error(py: &Path, fault: &str) -> String {
    let mut env = make(py, &format!("Faulty-{fault}-v0"), 1).unwrap();
    env.reset().unwrap();
    env.step(0).unwrap();
    env.step(0).unwrap();
    let e = env.step(0).err().unwrap().to_string();
    let prefix = format!("gymnasium:async_rl_test_envs:Faulty-{fault}-v0: step 3 of the episode: ");
    assert!(e.starts_with(&prefix), "{e}");
    e
}

#[test]
fn a_faulty_step_names_the_environment_the_step_and_what_was_expected() {
    let Some(py) = python() else { return };
    let e = step_error(&py, "raise");
    assert!(
        e.contains("Traceback (most recent call last)")
            && e.contains("RuntimeError: the test environment breaks at step 3"),
        "{e}"
    );
    let e = step_error(&py, "nan");
    assert!(e.contains("NaN") && e.contains("expected finite"), "{e}");
    let e = step_error(&py, "nan_reward");
    assert!(e.contains("reward is nan"), "{e}");
    let e = step_error(&py, "shape");
    assert!(e.contains("shape (2,), expected (3,)"), "{e}");
    let e = step_error(&py, "dtype");
    assert!(e.contains("dtype <U1, expected numbers"), "{e}");
}

#[test]
fn the_worker_ignores_sigint_and_is_reaped_on_drop() {
    let Some(py) = python() else { return };
    let mut env = GymEnv::new("CartPole-v1", &py, 1, false, T).unwrap();
    let pid = nix::unistd::Pid::from_raw(env.worker_pid() as i32);
    env.reset().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    env.step(0).expect("SIGINT does not stop the worker");
    drop(env);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the worker is gone and reaped (no zombie)"
    );
}

#[test]
fn a_hung_environment_times_out_and_its_worker_is_killed() {
    let Some(py) = python() else { return };
    let id = "async_rl_test_envs:Faulty-hang-v0";
    let second = Duration::from_secs(1);
    let mut env = GymEnv::spawn(
        id,
        &py,
        1,
        false,
        Duration::from_secs(60),
        Some(&fixtures()),
    )
    .unwrap();
    env.timeout = second;
    env.reset().unwrap();
    env.step(0).unwrap();
    env.step(0).unwrap();
    let pid = env.worker_pid();
    let t0 = std::time::Instant::now();
    let e = env.step(0).err().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        matches!(e, EnvError::Gymnasium(GymError::Timeout { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("step 3 of the episode") && msg.contains("did not answer within 1 s"),
        "{msg}"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );
}
