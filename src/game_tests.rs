//! Unit tests for `game`: name resolution and ROM-file validation.

use super::*;

fn spec(input: &str) -> GameSpec {
    match resolve_game(input) {
        Ok(s) => s,
        Err(e) => panic!("{input:?} should resolve: {e}"),
    }
}

#[test]
fn resolves_stems_and_camel_case_names() {
    for input in [
        "space_invaders",
        "SpaceInvaders",
        "spaceinvaders",
        "SPACE_INVADERS",
        " SpaceInvaders ",
    ] {
        let s = spec(input);
        assert_eq!(s.rom, "space_invaders", "{input}");
        assert_eq!(s.name, "SpaceInvaders");
        assert_eq!(s.repeat_action_probability, None);
    }
}

#[test]
fn resolves_gym_ids_with_stickiness() {
    let cases = [
        ("Breakout-v0", Some(0.25)),
        ("Breakout-v4", Some(0.0)),
        ("BreakoutNoFrameskip-v4", Some(0.0)),
        ("BreakoutDeterministic-v4", Some(0.0)),
        ("ALE/Breakout-v5", Some(0.25)),
        ("ale/breakout-v5", Some(0.25)),
        ("breakoutnoframeskip-v4", Some(0.0)),
        ("Breakout", None),
    ];
    for (input, sticky) in cases {
        let s = spec(input);
        assert_eq!(s.rom, "breakout", "{input}");
        assert_eq!(s.name, "Breakout");
        assert_eq!(s.repeat_action_probability, sticky, "{input}");
    }
    assert_eq!(spec("SpaceInvadersNoFrameskip-v4").rom, "space_invaders");
    assert_eq!(spec("MsPacmanDeterministic-v4").rom, "ms_pacman");
    assert_eq!(
        spec("MontezumaRevengeNoFrameskip-v4").rom,
        "montezuma_revenge"
    );
}

#[test]
fn every_supported_rom_resolves_from_its_display_name() {
    for rom in SUPPORTED_ROMS {
        let name = display_name(rom);
        assert_eq!(spec(&name).rom, *rom);
        assert_eq!(spec(rom).rom, *rom);
        assert_eq!(spec(&format!("{name}NoFrameskip-v4")).rom, *rom);
    }
    assert_eq!(display_name("jamesbond"), "Jamesbond");
    assert_eq!(display_name("up_n_down"), "UpNDown");
}

#[test]
fn unknown_names_get_suggestions_and_list_hint() {
    let err = resolve_game("SpaceInvader").unwrap_err();
    match &err {
        GameError::Unknown { input, suggestions } => {
            assert_eq!(input, "SpaceInvader");
            assert_eq!(
                suggestions.first().map(String::as_str),
                Some("SpaceInvaders")
            );
            assert!(suggestions.len() <= 3);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("--list-games"), "{text}");
    assert!(text.contains("SpaceInvaders"), "{text}");

    let err = resolve_game("Breakot-v4").unwrap_err();
    match &err {
        GameError::Unknown { suggestions, .. } => assert_eq!(suggestions[0], "Breakout"),
        other => panic!("unexpected error {other:?}"),
    }
    let err = resolve_game("zzzzzzzzzzzzzzzzzzzzzz").unwrap_err();
    assert!(err.to_string().contains("--list-games"));
    assert!(resolve_game("").is_err());
    assert!(matches!(
        resolve_game("Breakout-v3"),
        Err(GameError::UnsupportedVersion { .. })
    ));
}

#[test]
fn levenshtein_known_values() {
    assert_eq!(levenshtein("", ""), 0);
    assert_eq!(levenshtein("abc", ""), 3);
    assert_eq!(levenshtein("kitten", "sitting"), 3);
    assert_eq!(levenshtein("flaw", "lawn"), 2);
}

#[test]
fn bundled_roms_map_to_matching_file_names() {
    let mut count = 0;
    for rom in SUPPORTED_ROMS {
        if let Some(b) = bundled(rom) {
            assert_eq!(b.filename(), format!("{rom}.bin"));
            assert!(bundled_rom(rom).is_some_and(|d| d.len() >= 2048));
            count += 1;
        }
    }
    assert_eq!(count, 62, "the ale crate has 62 BundledRom variants");
    assert!(bundled_rom("tetris").is_none());
    assert!(bundled_rom("nonsense").is_none());
}

#[test]
fn validate_rom_file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let shown = |p: &Path| p.display().to_string();

    let missing = dir.path().join("breakout.bin");
    let err = validate_rom_file(&missing).unwrap_err();
    assert!(matches!(err, GameError::RomMissing { .. }));
    assert!(err.to_string().contains(&shown(&missing)));

    let sub = dir.path().join("pong.bin");
    std::fs::create_dir(&sub).unwrap();
    let err = validate_rom_file(&sub).unwrap_err();
    assert!(matches!(err, GameError::RomNotFile { .. }));
    assert!(err.to_string().contains(&shown(&sub)));

    let small = dir.path().join("boxing.bin");
    std::fs::write(&small, [0u8; 100]).unwrap();
    let err = validate_rom_file(&small).unwrap_err();
    assert!(matches!(err, GameError::RomSize { size: 100, .. }));
    assert!(err.to_string().contains(&shown(&small)));

    let wrong = dir.path().join("Breakout (1978).a26");
    std::fs::write(&wrong, [0u8; 4096]).unwrap();
    let err = validate_rom_file(&wrong).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GameError::RomName { .. }));
    assert!(text.contains(&shown(&wrong)), "{text}");
    assert!(text.contains("breakout.bin"), "{text}");

    let good = dir.path().join("Space_Invaders.BIN");
    std::fs::write(&good, [0u8; 4096]).unwrap();
    assert_eq!(validate_rom_file(&good).unwrap(), "space_invaders");
}
