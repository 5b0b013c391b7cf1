//! Tests of `AtariEnv` on the real emulator (bundled Breakout and Pong).

use super::*;
use crate::game::resolve_game;

fn config(game: &str, seed: u64) -> AtariConfig {
    let mut cfg = AtariConfig::new(resolve_game(game).unwrap());
    cfg.seed = seed;
    cfg
}

fn env(game: &str, seed: u64) -> AtariEnv {
    AtariEnv::new(&config(game, seed)).unwrap()
}

#[test]
fn breakout_reset_gives_stacked_nonconstant_obs() {
    let mut e = env("Breakout", 1);
    assert_eq!(e.num_actions(), 4);
    assert_eq!(e.action_names(), ["NOOP", "FIRE", "RIGHT", "LEFT"]);
    assert!(e.fire_on_reset());
    assert_eq!(e.obs_shape(), [4, 84, 84]);
    let obs = e.reset().to_vec();
    assert_eq!(obs.len(), 4 * 84 * 84);
    let first = &obs[..FRAME_LEN];
    assert!(first.iter().any(|&p| p != first[0]), "frame is constant");
    for slot in obs.chunks_exact(FRAME_LEN) {
        assert_eq!(slot, first, "reset fills every slot with one frame");
    }
    assert_eq!(e.episode_return(), 0.0);
}

#[test]
fn pong_has_six_actions() {
    let e = env("PongNoFrameskip-v4", 3);
    assert_eq!(e.num_actions(), 6);
    assert!(e.fire_on_reset());
}

#[test]
fn invalid_action_is_an_error() {
    let mut e = env("breakout", 1);
    match e.step(4) {
        Err(EnvError::InvalidAction {
            action: 4,
            num_actions: 4,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.step(usize::MAX).is_err());
    assert!(e.step(3).is_ok());
}

#[test]
fn bad_configs_are_errors() {
    let mut cfg = config("Breakout", 0);
    cfg.frame_skip = 0;
    assert!(matches!(AtariEnv::new(&cfg), Err(EnvError::Config(_))));
    let mut cfg = config("Breakout", 0);
    cfg.repeat_action_probability = 1.5;
    assert!(AtariEnv::new(&cfg).is_err());
    let cfg = config("Tetris", 0);
    let err = AtariEnv::new(&cfg).err().unwrap();
    assert!(matches!(err, EnvError::NoBundledRom { .. }), "{err}");
    let mut cfg = config("Breakout", 0);
    cfg.rom_path = Some("/nonexistent/breakout.bin".into());
    assert!(matches!(AtariEnv::new(&cfg), Err(EnvError::Game(_))));
}

#[test]
fn rom_path_loads_and_must_match_game() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Breakout.bin");
    std::fs::write(&path, game::bundled_rom("breakout").unwrap()).unwrap();
    let mut cfg = config("Breakout", 0);
    cfg.rom_path = Some(path.clone());
    let e = AtariEnv::new(&cfg).unwrap();
    assert_eq!(e.num_actions(), 4);
    let mut cfg = config("Pong", 0);
    cfg.rom_path = Some(path);
    assert!(matches!(
        AtariEnv::new(&cfg),
        Err(EnvError::RomMismatch { .. })
    ));
}

#[test]
fn random_breakout_game_runs_to_game_over() {
    let mut e = env("Breakout", 7);
    let mut cfg_rng = StdRng::seed_from_u64(99);
    e.reset();
    let start_frames = e.episode_frames();
    assert!(
        start_frames <= 30 + 8,
        "no-ops + FIRE frames: {start_frames}"
    );
    let (mut sum, mut frames, mut steps) = (0.0f32, 0u64, 0u32);
    let last = loop {
        let s = e.step(cfg_rng.gen_range(0..e.num_actions())).unwrap();
        assert!((1..=4).contains(&s.frames), "{s:?}");
        assert!(s.frames == 4 || s.game_over, "short step without game over");
        assert_eq!(s.clipped_reward, clip_reward(s.reward));
        sum += s.reward;
        frames += u64::from(s.frames);
        steps += 1;
        if s.game_over || s.truncated {
            break s;
        }
        assert!(steps < 50_000, "game never ended");
    };
    assert!(last.game_over && last.terminal && !last.truncated);
    assert_eq!(e.episode_return(), sum);
    assert_eq!(e.episode_frames(), start_frames + frames);
    assert!(matches!(e.step(0), Err(EnvError::EpisodeOver)));
    e.reset();
    assert_eq!(e.episode_return(), 0.0);
    assert!(e.step(0).is_ok());
}

#[test]
fn truncation_at_max_episode_frames() {
    let mut cfg = config("Breakout", 5);
    cfg.max_episode_frames = 200;
    cfg.noop_max = 0;
    let mut e = AtariEnv::new(&cfg).unwrap();
    let mut steps = 0;
    loop {
        let s = e.step(0).unwrap();
        steps += 1;
        if s.truncated {
            assert!(!s.game_over && !s.terminal);
            break;
        }
        assert!(steps < 100);
    }
    assert!(e.episode_frames() >= 200 && e.episode_frames() < 204);
    assert!(matches!(e.step(0), Err(EnvError::EpisodeOver)));
}

/// Observations of `episodes` resets, each followed by `steps` steps with a
/// fixed action sequence.
fn trajectory(seed: u64, episodes: usize, steps: usize) -> Vec<Vec<u8>> {
    let mut e = env("Breakout", seed);
    let mut actions = StdRng::seed_from_u64(1234);
    let mut out = Vec::new();
    for _ in 0..episodes {
        out.push(e.reset().to_vec());
        for _ in 0..steps {
            let s = e.step(actions.gen_range(0..4)).unwrap();
            out.push(e.obs().to_vec());
            if s.game_over || s.truncated {
                break;
            }
        }
    }
    out
}

#[test]
fn same_seed_same_observations_different_seed_differs() {
    let a = trajectory(11, 3, 150);
    let b = trajectory(11, 3, 150);
    assert_eq!(a, b, "same seed must replay identically");
    let c = trajectory(12, 3, 150);
    assert_ne!(a, c, "different seeds should give different no-op starts");
}

#[test]
fn life_loss_is_terminal_but_game_goes_on() {
    let mut e = env("Breakout", 21);
    let lives0 = e.lives();
    assert_eq!(lives0, 5);
    let mut actions = StdRng::seed_from_u64(5);
    let mut steps = 0;
    loop {
        let s = e.step(actions.gen_range(0..4)).unwrap();
        steps += 1;
        if s.terminal {
            assert!(!s.game_over, "first terminal should be a life loss");
            assert_eq!(e.lives(), lives0 - 1);
            break;
        }
        assert!(steps < 20_000);
    }
    // No reset needed: the same game continues.
    let before = e.episode_frames();
    let s = e.step(1).unwrap();
    assert!(!s.game_over);
    assert_eq!(e.episode_frames(), before + 4);

    // Evaluation mode: life loss is not terminal.
    let mut cfg = config("Breakout", 21);
    cfg.terminal_on_life_loss = false;
    let mut e = AtariEnv::new(&cfg).unwrap();
    let mut actions = StdRng::seed_from_u64(5);
    loop {
        let s = e.step(actions.gen_range(0..4)).unwrap();
        if e.lives() < lives0 {
            assert!(!s.terminal);
            break;
        }
    }
}

#[test]
fn rgb_screen_shape_checked() {
    let mut e = env("Breakout", 0);
    let mut rgb = vec![0u8; 210 * 160 * 3];
    e.rgb_screen(&mut rgb).unwrap();
    assert!(rgb.iter().any(|&p| p != 0));
    assert!(e.rgb_screen(&mut [0u8; 10]).is_err());
}

#[test]
fn screens_through_the_trait_use_the_ntsc_palette_only() {
    let palette: std::collections::HashSet<u32> =
        crate::env::ale::NTSC_PALETTE.iter().copied().collect();
    for game in ["Breakout", "Pong"] {
        let mut e: Box<dyn Environment> = Box::new(env(game, 2));
        assert_eq!(e.screen_size(), Some((160, 210)));
        let mut rng = StdRng::seed_from_u64(2);
        let mut rgb = vec![0u8; 210 * 160 * 3];
        let mut colours = std::collections::HashSet::new();
        for _ in 0..200 {
            let action = rng.gen_range(0..e.num_actions());
            let step = e.step(action).unwrap();
            e.screen_rgb(&mut rgb).unwrap();
            colours.extend(
                rgb.chunks_exact(3)
                    .map(|p| u32::from_be_bytes([0, p[0], p[1], p[2]])),
            );
            if step.game_over {
                e.reset().unwrap();
            }
        }
        assert!(colours.len() > 2, "{game}: {} colours", colours.len());
        let foreign: Vec<_> = colours.difference(&palette).collect();
        assert!(
            foreign.is_empty(),
            "{game}: colours outside the palette {foreign:x?}"
        );
    }
}

#[test]
fn environments_without_a_screen_say_so() {
    let mut cp = crate::env::CartPole::new(0, 10);
    assert_eq!(cp.screen_size(), None);
    assert!(matches!(cp.screen_rgb(&mut []), Err(EnvError::NoScreen)));
}

#[test]
fn throughput_random_actions() {
    let steps: u32 = if cfg!(debug_assertions) {
        2_000
    } else {
        50_000
    };
    let mut e = env("Breakout", 42);
    let mut actions = StdRng::seed_from_u64(42);
    let mut frames = 0u64;
    let start = std::time::Instant::now();
    for _ in 0..steps {
        let s = e.step(actions.gen_range(0..4)).unwrap();
        frames += u64::from(s.frames);
        if s.game_over || s.truncated {
            e.reset();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "AtariEnv::step throughput (Breakout, random actions, one core): {:.0} frames/s, {:.0} steps/s ({steps} steps in {secs:.2}s)",
        frames as f64 / secs,
        f64::from(steps) / secs
    );
}

#[test]
fn throughput_raw_emulator_baseline() {
    let frames: u32 = if cfg!(debug_assertions) {
        8_000
    } else {
        200_000
    };
    let mut e = env("Breakout", 42);
    let mut actions = StdRng::seed_from_u64(42);
    let start = std::time::Instant::now();
    for _ in 0..frames {
        e.ale.act(actions.gen_range(0..4)).unwrap();
        if e.ale.game_over() {
            e.ale.reset_game();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raw Ale::act baseline (Breakout, random actions, one core): {:.0} frames/s",
        f64::from(frames) / secs
    );
}

/// NOOP-only Breakout: the ball is launched by the FIRE of the reset, so the first life is
/// lost either way. Without `fire_on_life_loss` nothing launches the next ball and no second
/// life is lost before the episode limit; with it, every life is lost, the game ends, and the
/// stack after each loss holds one frame four times (baselines' FrameStack after a reset).
#[test]
fn fire_on_life_loss_launches_the_next_ball() {
    let lives_lost = |fire: bool| {
        let mut cfg = config("Breakout", 3);
        cfg.fire_on_life_loss = fire;
        cfg.max_episode_frames = 20_000;
        let mut e = AtariEnv::new(&cfg).unwrap();
        let (mut terminals, mut frames) = (0, 0u64);
        loop {
            let s = e.step(0).unwrap();
            frames += u64::from(s.frames);
            if s.terminal && !s.game_over {
                terminals += 1;
                if fire {
                    // A no-op, FIRE and action 2 were played after the step's own frames.
                    assert_eq!(s.frames, 16);
                    let obs = e.obs();
                    let first = &obs[..FRAME_LEN];
                    assert!(obs.chunks_exact(FRAME_LEN).all(|f| f == first));
                }
            }
            if s.game_over || s.truncated {
                // Every frame played is in a step's count (the reset's are counted apart).
                assert!(frames <= e.episode_frames() && e.episode_frames() <= frames + 38);
                return (terminals, s.game_over);
            }
        }
    };
    let (without, over) = lives_lost(false);
    assert_eq!(
        (without, over),
        (1, false),
        "one ball, then nothing launches another"
    );
    let (with, over) = lives_lost(true);
    assert!(over, "every ball is launched and lost: game over");
    assert_eq!(
        with, 4,
        "5 lives: 4 losses before the game ends on the fifth"
    );
}
