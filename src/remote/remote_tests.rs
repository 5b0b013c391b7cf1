//! Unit tests of the remote transport's pure parts: the flags, the token and hello checks,
//! snapshot compression, and the decoding of experience messages, fuzzed with random and
//! mutated bytes (it must refuse garbage with an error, never panic or over-allocate).

use prost::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::wire::{self, up, Up};
use super::*;
use crate::shm::SlotLayout;

fn cfg(args: &[&str]) -> Config {
    let mut all = vec!["learner"];
    all.extend_from_slice(args);
    <Config as clap::Parser>::parse_from(all)
}

fn problems(args: &[&str]) -> String {
    check_flags(&cfg(args)).join("\n")
}

#[test]
fn flags_are_checked_naming_what_is_wrong() {
    assert_eq!(problems(&["--listen", "127.0.0.1:0"]), "");
    assert!(problems(&["--listen", "0.0.0.0:7070"]).contains("--auth-token-file"));
    // Off loopback: a token, and TLS or an explicit --insecure-plaintext.
    let plain = problems(&["--listen", "0.0.0.0:7070", "--auth-token-file", "t"]);
    assert!(
        plain.contains("--listen 0.0.0.0:7070: without TLS")
            && plain.contains("--tls-cert and --tls-key")
            && plain.contains("--insecure-plaintext"),
        "{plain}"
    );
    assert!(problems(&["--listen", "[::]:7070", "--auth-token-file", "t"]).contains("without TLS"));
    assert_eq!(
        problems(&[
            "--listen",
            "0.0.0.0:7070",
            "--auth-token-file",
            "t",
            "--insecure-plaintext"
        ]),
        ""
    );
    assert_eq!(
        problems(&[
            "--listen",
            "0.0.0.0:7070",
            "--auth-token-file",
            "t",
            "--tls-cert",
            "c",
            "--tls-key",
            "k"
        ]),
        ""
    );
    assert!(problems(&[
        "--listen",
        "0.0.0.0:7070",
        "--auth-token-file",
        "t",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
        "--insecure-plaintext"
    ])
    .contains("leave --insecure-plaintext out"));
    // Loopback needs neither.
    assert_eq!(problems(&["--listen", "127.0.0.1:7070"]), "");
    // The listener's flags without --listen are refused, not ignored.
    for flag in [
        vec!["--insecure-plaintext"],
        vec!["--max-connections", "9"],
        vec!["--max-connections-per-peer", "3"],
        vec!["--handshake-timeout", "2"],
        vec!["--remote-lanes", "4"],
    ] {
        let p = problems(&flag);
        assert!(
            p.contains(&format!("{}: only with --listen", flag[0])),
            "{flag:?}: {p}"
        );
    }
    assert!(problems(&["--listen", "localhost:7070"]).contains("not an IP address"));
    assert!(problems(&["--listen", "127.0.0.1:1", "--connect", "a:1"]).contains("not both"));
    assert!(problems(&["--connect", "learner"]).contains("not HOST:PORT"));
    assert!(problems(&["--connect", "learner:0"]).contains("not HOST:PORT"));
    assert_eq!(problems(&["--connect", "learner-0.example.org:7070"]), "");
    assert!(problems(&["--auth-token-file", "t"]).contains("only with --listen"));
    assert!(problems(&["--connect", "a:1", "--tls-key", "k"]).contains("give both"));
    assert!(problems(&["--listen", "127.0.0.1:1", "--tls-ca", "ca"]).contains("mutual TLS"));
    assert!(
        problems(&["--connect", "a:1", "--tls-cert", "c", "--tls-key", "k"]).contains("--tls-ca")
    );
    assert!(problems(&["--connect", "a:1", "--reconnect-for", "0"]).contains("--reconnect-for"));
    assert!(problems(&["--listen", "127.0.0.1:1", "--tls-domain", "x"]).contains("--tls-domain"));
}

/// The listener's values are checked (with --listen), each naming its flag.
#[test]
fn the_listener_limits_are_checked() {
    let bad = |args: &[&str]| {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut e = Vec::new();
        cfg(&all).listen.validate(&mut e);
        e.join("\n")
    };
    assert_eq!(bad(&[]), "");
    assert!(bad(&["--max-connections", "0"]).contains("--max-connections 0: must be"));
    assert!(
        bad(&["--max-connections", "4", "--max-connections-per-peer", "5"])
            .contains("--max-connections-per-peer 5: must be between 1 and --max-connections (4)")
    );
    assert!(bad(&["--max-connections-per-peer", "0"]).contains("--max-connections-per-peer 0"));
    for t in ["0", "-1", "NaN", "inf", "4000"] {
        assert!(
            bad(&["--handshake-timeout", t]).contains(&format!("--handshake-timeout {t}")),
            "{t}"
        );
    }
    assert_eq!(bad(&["--handshake-timeout", "0.5"]), "");
    // Through Config::validate too.
    let mut c = cfg(&["--listen", "127.0.0.1:0", "--max-connections", "0"]);
    c.listen.handshake_timeout = 0.0;
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("--max-connections 0") && err.contains("--handshake-timeout 0"),
        "{err}"
    );
}

/// Writes `text` to `path` with permissions `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_token_file_others_can_read_or_write_is_refused_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    for mode in [0o640, 0o604, 0o644, 0o620, 0o602, 0o660] {
        write_mode(&p, "s3cret", mode);
        let err = read_token(&p).unwrap_err();
        assert!(
            matches!(err, TokenFileError::Open(_, m) if m == mode),
            "{mode:o}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("--auth-token-file {}", p.display()))
                && msg.contains(&format!("mode {mode:o}"))
                && msg.contains(&format!("`chmod 600 {}`", p.display())),
            "{msg}"
        );
    }
    for mode in [0o600, 0o400] {
        write_mode(&p, "s3cret", mode);
        assert_eq!(read_token(&p).unwrap(), "s3cret", "{mode:o}");
    }
}

#[test]
fn the_token_is_read_trimmed_and_refused_when_empty_or_unprintable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    write_mode(&p, "  s3cret\n", 0o600);
    assert_eq!(read_token(&p).unwrap(), "s3cret");
    std::fs::write(&p, "\n").unwrap();
    assert!(read_token(&p).unwrap_err().to_string().contains("empty"));
    std::fs::write(&p, "a\u{1}b").unwrap();
    assert!(read_token(&p)
        .unwrap_err()
        .to_string()
        .contains("printable"));
    let missing = dir.path().join("none");
    assert!(read_token(&missing)
        .unwrap_err()
        .to_string()
        .contains("--auth-token-file"));
}

#[test]
fn the_learner_checks_the_token_and_the_hello() {
    use tonic::metadata::MetadataMap;
    let mut md = MetadataMap::new();
    assert!(server::check_token(None, &md).is_ok());
    let missing = server::check_token(Some("abc"), &md).unwrap_err();
    assert!(missing.message().contains("requires a token"));
    md.insert("authorization", "Bearer abd".parse().unwrap());
    let wrong = server::check_token(Some("abc"), &md).unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("wrong token"));
    md.insert("authorization", "abc".parse().unwrap());
    assert!(
        server::check_token(Some("abc"), &md).is_err(),
        "no Bearer prefix"
    );
    md.insert("authorization", "Bearer abc".parse().unwrap());
    assert!(server::check_token(Some("abc"), &md).is_ok());

    let hello = wire::Hello {
        protocol: PROTOCOL_VERSION,
        build: BUILD.into(),
        host_id: 1,
        name: "h".into(),
        processes: 2,
        run_id: 0,
    };
    assert!(server::check_hello(&hello).is_ok());
    let other = |f: &dyn Fn(&mut wire::Hello)| {
        let mut h = hello.clone();
        f(&mut h);
        server::check_hello(&h).unwrap_err().message().to_string()
    };
    assert!(other(&|h| h.protocol += 1).contains("protocol version"));
    assert!(other(&|h| h.build = "0.0.1".into()).contains("same build"));
    assert!(other(&|h| h.processes = 0).contains("1 to 1024"));
    assert!(other(&|h| h.name = "x".repeat(300)).contains("256"));
}

#[test]
fn snapshots_round_trip_and_a_wrong_size_is_refused() {
    let w: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
    let c = compress_weights(&w);
    let mut out = vec![0f32; 1000];
    decompress_weights(&c, &mut out).unwrap();
    assert_eq!(out, w);
    let mut short = vec![0f32; 999];
    assert!(decompress_weights(&c, &mut short).is_err());
    let mut long = vec![0f32; 1001];
    assert!(decompress_weights(&c, &mut long).is_err());
    assert!(decompress_weights(&c[..c.len() / 2], &mut out).is_err());
}

const LAYOUT: SlotLayout = SlotLayout::transitions(8, false);

/// The bounds of a run of the default settings with slots of [`LAYOUT`].
fn bounds() -> bounds::HostBounds {
    bounds::HostBounds::of(&cfg(&[]), &LAYOUT)
}

/// A valid experience message of `n` slots (actions below 3).
fn experience(n: usize) -> wire::Experience {
    let bytes = LAYOUT.slot_bytes().unwrap();
    let mut raw = vec![0u8; n * bytes];
    for (k, slot) in raw.chunks_exact_mut(bytes).enumerate() {
        slot[0] = (k % 3) as u8;
        slot[4..8].copy_from_slice(&(k as f32).to_le_bytes());
        slot[8..12].copy_from_slice(&0.99f32.to_le_bytes());
        slot[16..24].fill(k as u8);
    }
    wire::Experience {
        seq: 3,
        frames: 4 * n as u64,
        slots: n as u32,
        payload: lz4_flex::block::compress(&raw),
        episodes: vec![wire::Episode {
            score: 21.0,
            frames: 800,
        }],
        failures: vec![],
        snapshot_version: 2,
        restarts: 0,
    }
}

#[test]
fn experience_decodes_to_its_slots_and_refuses_what_is_wrong() {
    let e = experience(5);
    let (raw, steps) = decode_experience(&e, &LAYOUT, 3, 64, &bounds()).unwrap();
    assert_eq!(raw.len(), 5 * LAYOUT.slot_bytes().unwrap());
    assert_eq!(steps, 5);
    let refused = |f: &dyn Fn(&mut wire::Experience)| {
        let mut m = e.clone();
        f(&mut m);
        decode_experience(&m, &LAYOUT, 3, 64, &bounds())
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&|m| m.slots = 65).contains("at most 64"));
    assert!(refused(&|m| m.slots = 4).contains("decompress"));
    assert!(refused(&|m| m.slots = 6).contains("for 6 slots"));
    assert!(refused(&|m| m.payload.truncate(10)).contains("decompress"));
    assert!(refused(&|m| m.seq = 0).contains("number 0"));
    // A finite but absurd return: beyond the reward bound times the horizon (100; these
    // slots' discount is 0.99: the learner bootstraps, the return is a reward sum).
    let absurd = |ret: f32| {
        let mut m = e.clone();
        let bytes = LAYOUT.slot_bytes().unwrap();
        let mut raw = lz4_flex::block::decompress(&m.payload, 5 * bytes).unwrap();
        raw[bytes + 4..bytes + 8].copy_from_slice(&ret.to_le_bytes());
        m.payload = lz4_flex::block::compress(&raw);
        decode_experience(&m, &LAYOUT, 3, 64, &bounds())
    };
    let err = absurd(3e38).unwrap_err();
    assert!(
        matches!(
            err,
            BadExperience::Bound(bounds::BoundError::Return { slot: 1, .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("slot 1: return of magnitude 300000000"),
        "{err}"
    );
    assert!(absurd(-100.5).is_err());
    assert!(absurd(-99.0).is_ok());
    assert!(refused(&|m| m.frames = u64::MAX).contains("frames"));
    assert!(refused(&|m| m.episodes[0].score = f32::NAN).contains("score"));
    assert!(refused(&|m| m.episodes = vec![Default::default(); 5000]).contains("at most"));
    assert!(refused(&|m| {
        m.slots = 0;
    })
    .contains("payload without slots"));
    // A game with only 2 actions: slot 2 holds action 2.
    let wrong_game = decode_experience(&e, &LAYOUT, 2, 64, &bounds()).unwrap_err();
    assert!(
        matches!(
            wrong_game,
            BadExperience::BadSlot {
                index: 2,
                reason: crate::shm::BadSlot::Action { action: 2, .. }
            }
        ),
        "{wrong_game:?}"
    );
    assert!(wrong_game.to_string().contains("slot 2: action 2"));
    // Frames and games only, no slots.
    let mut empty = e.clone();
    empty.slots = 0;
    empty.payload.clear();
    assert_eq!(
        decode_experience(&empty, &LAYOUT, 3, 64, &bounds()).unwrap(),
        (Vec::<u8>::new(), 0)
    );
}

/// Decodes `bytes` as an `Up` message and, if it is experience, its slots: errors are fine,
/// panics are not, and nothing larger than the limit comes out.
fn decode_any(bytes: &[u8]) {
    if let Ok(Up {
        kind: Some(up::Kind::Experience(e)),
    }) = Up::decode(bytes)
    {
        if let Ok((raw, _)) = decode_experience(&e, &LAYOUT, 3, 64, &bounds()) {
            assert!(raw.len() <= 64 * LAYOUT.slot_bytes().unwrap());
        }
    }
}

#[test]
fn fuzzed_messages_are_refused_or_decoded_never_a_panic() {
    let mut rng = StdRng::seed_from_u64(7);
    let valid = Up {
        kind: Some(up::Kind::Experience(experience(20))),
    }
    .encode_to_vec();
    // Every truncation of a valid message.
    for cut in 0..valid.len() {
        decode_any(&valid[..cut]);
    }
    let mut decoded_ok = 0;
    for _ in 0..20_000 {
        // Mutations of a valid message: a few bytes flipped, inserted or removed.
        let mut m = valid.clone();
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..m.len());
            match rng.gen_range(0..3) {
                0 => m[at] ^= 1 << rng.gen_range(0..8),
                1 => m.insert(at, rng.gen()),
                _ => {
                    m.remove(at);
                }
            }
        }
        if let Ok(Up {
            kind: Some(up::Kind::Experience(e)),
        }) = Up::decode(m.as_slice())
        {
            decoded_ok += usize::from(decode_experience(&e, &LAYOUT, 3, 64, &bounds()).is_ok());
        }
        decode_any(&m);
        // Pure noise.
        let noise: Vec<u8> = (0..rng.gen_range(0..512)).map(|_| rng.gen()).collect();
        decode_any(&noise);
    }
    // Some mutations hit only the slot bytes' padding or observations and are still valid
    // experience: the fuzzer reached the slot checks, not just prost's.
    assert!(decoded_ok > 0);
}

#[test]
fn a_message_claiming_huge_sizes_allocates_nothing_big() {
    // 2^32 - 1 slots, or a payload that claims to expand enormously: refused before any
    // allocation of that size (LZ4 is given the exact expected size).
    let mut e = experience(1);
    e.slots = u32::MAX;
    assert!(decode_experience(&e, &LAYOUT, 3, 64, &bounds()).is_err());
    let mut bomb = experience(1);
    bomb.payload = lz4_flex::block::compress(&vec![0u8; 1 << 24]);
    assert!(decode_experience(&bomb, &LAYOUT, 3, 64, &bounds()).is_err());
}

#[test]
fn message_limits_fit_the_layouts() {
    let atari = SlotLayout::ATARI.slot_bytes().unwrap();
    assert_eq!(max_slots(atari), 64);
    let segments = SlotLayout::segments(4 * 84 * 84, 20, 84 * 84)
        .slot_bytes()
        .unwrap();
    assert_eq!(max_slots(segments), (4 << 20) / segments);
    assert_eq!(max_slots(usize::MAX), 1);
    assert!(max_message_bytes(atari, 1_700_000) > 1_700_000 * 4);
}

#[test]
fn the_bounds_flags_are_checked() {
    assert!(problems(&["--max-lanes-per-host", "3"]).contains("only with --listen"));
    assert!(problems(&["--remote-reward-bound", "2"]).contains("only with --listen"));
    let refused = |args: &[&str]| cfg(args).validate().unwrap_err().to_string();
    let listen = ["--listen", "127.0.0.1:0", "--remote-lanes", "8"];
    fn with<'a>(listen: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [listen, extra].concat()
    }
    assert!(
        refused(&with(&listen, &["--max-lanes-per-host", "9"])).contains("--max-lanes-per-host 9")
    );
    assert!(refused(&with(&listen, &["--max-lanes-per-host", "0"])).contains("between 1 and"));
    assert!(
        refused(&with(&listen, &["--remote-reward-bound", "0"])).contains("--remote-reward-bound")
    );
    assert!(refused(&with(&listen, &["--remote-reward-bound", "inf"]))
        .contains("--remote-reward-bound"));
    // The fair share: half the remote lanes, rounded up.
    assert_eq!(cfg(&listen).listen.lanes_per_host(), 4);
    assert_eq!(cfg(&["--remote-lanes", "1"]).listen.lanes_per_host(), 1);
    assert_eq!(
        cfg(&with(&listen, &["--max-lanes-per-host", "8"]))
            .listen
            .lanes_per_host(),
        8
    );
}

#[test]
fn a_host_refuses_a_welcome_that_does_not_fit_its_network() {
    use host::{check_welcome, BadWelcome};
    let slot_bytes = SlotLayout::ATARI.slot_bytes().unwrap();
    let w = wire::Welcome {
        numel: 1000,
        max_slots: 64,
        final_epsilons: vec![0.1, 0.01],
        ..Default::default()
    };
    assert_eq!(check_welcome(&w, slot_bytes, 1000, 2), Ok(()));
    let other = |f: &dyn Fn(&mut wire::Welcome)| {
        let mut m = w.clone();
        f(&mut m);
        check_welcome(&m, slot_bytes, 1000, 2).unwrap_err()
    };
    assert_eq!(
        other(&|m| m.numel = 1001),
        BadWelcome::Params {
            learner: 1001,
            here: 1000
        }
    );
    assert_eq!(
        other(&|m| m.numel = u64::MAX),
        BadWelcome::TooManyParams(u64::MAX)
    );
    assert!(matches!(
        other(&|m| m.max_slots = u32::MAX),
        BadWelcome::MaxSlots { max: 64, .. }
    ));
    assert!(matches!(
        other(&|m| m.max_slots = 0),
        BadWelcome::MaxSlots { .. }
    ));
    assert!(matches!(
        other(&|m| m.final_epsilons = vec![0.1; 3]),
        BadWelcome::Epsilons { processes: 2, .. }
    ));
    assert!(matches!(
        other(&|m| m.final_epsilons = vec![0.1, f64::NAN]),
        BadWelcome::Epsilons { .. }
    ));
    let err = other(&|m| m.numel = 7).to_string();
    assert!(
        err.contains("7 parameters") && err.contains("1000 here"),
        "{err}"
    );
}
