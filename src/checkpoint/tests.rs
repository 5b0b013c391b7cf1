use std::io::Write;

use safetensors::tensor::SafeTensors;

use super::legacy::{legacy_checksum, SharedBuf};
use super::*;

fn state() -> TrainingState {
    TrainingState {
        format_version: FORMAT_VERSION,
        game: "CartPole".into(),
        network: Network::Mlp,
        num_actions: 2,
        obs: ObsSpec::Vector(4),
        frames: 1000,
        steps: 1000,
        updates: 10,
        episodes: 3,
        wall_s: 1.5,
        config: Config::default(),
    }
}

/// Saves a small checkpoint at `frames` in `dir` and returns its path.
fn write(dir: &Path, frames: u64) -> PathBuf {
    let path = path_for(dir, frames);
    let w = Tensor::from_slice(&[1234.5f32; 64]);
    let params = vec![("w".to_string(), w.shallow_clone())];
    let mut st = state();
    st.frames = frames;
    let optimizer = [("rmsprop/w".to_string(), w.zeros_like())];
    save(&path, &st, &params, &optimizer, &[]).unwrap();
    path
}

#[test]
fn damaged_files_are_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A flipped byte inside the parameters' data.
    let path = write(dir.path(), 1000);
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = 1234.5f32.to_le_bytes();
    let at = bytes.windows(4).position(|w| w == needle).unwrap();
    bytes[at + 10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    // A damaged tensor parses as any other; the checksum catches it.
    let err = load(&path).err().expect("a flipped byte must be caught");
    assert!(matches!(err, CheckpointError::Corrupted { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));

    // Truncated, as by a crash of a tool that copied it.
    let path = write(dir.path(), 2000);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&path).err().unwrap();
    assert!(matches!(err, CheckpointError::Unreadable { .. }), "{err}");

    // A libtorch archive that is not ours.
    let path = dir.path().join("other.pt");
    Tensor::save_multi(&[("x", Tensor::from_slice(&[1f32]))], &path).unwrap();
    let err = load(&path).err().unwrap();
    assert!(
        err.to_string().contains("not an async-rl checkpoint"),
        "{err}"
    );

    // A safetensors file that is not ours.
    let path = dir.path().join("other.safetensors");
    Tensor::write_safetensors(&[("x", Tensor::from_slice(&[1f32]))], &path).unwrap();
    let err = load(&path).err().unwrap();
    assert!(matches!(err, CheckpointError::Foreign { .. }), "{err}");

    // Another format version in the header (checked before the checksum).
    let path = write(dir.path(), 3000);
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"\"format_version\":\"3\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + needle.len() - 2] = b'9';
    std::fs::write(&path, &bytes).unwrap();
    let err = load(&path).err().unwrap();
    assert!(
        err.to_string()
            .contains("format version \"9\", this build reads version 3"),
        "{err}"
    );

    // An older build's archive of another format version.
    let path = legacy_path_for(dir.path(), 4000);
    let mut old = state();
    old.format_version = 1;
    let w = Tensor::from_slice(&[1f32]);
    save_legacy(
        &path,
        &old,
        &[("w".into(), w.shallow_clone())],
        &[w.zeros_like()],
    );
    let err = load(&path).err().unwrap();
    assert!(
        err.to_string()
            .contains("format version 1, this build reads version 3"),
        "{err}"
    );

    // Bytes that are neither format.
    let path = dir.path().join("junk.safetensors");
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffjunk").unwrap();
    let err = load(&path).err().unwrap();
    assert!(matches!(err, CheckpointError::Unreadable { .. }), "{err}");
}

/// What older builds wrote: format 2, libtorch's archive with the checksum as a record.
fn save_legacy(
    path: &Path,
    state: &TrainingState,
    params: &[(String, Tensor)],
    rmsprop: &[Tensor],
) {
    let bytes = bincode::serde::encode_to_vec(state, bincode::config::standard()).unwrap();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, p) in params {
        named.push((format!("param/{name}"), p.detach()));
    }
    for ((name, _), v) in params.iter().zip(rmsprop) {
        named.push((format!("rmsprop/{name}"), v.shallow_clone()));
    }
    named.push(("state".to_string(), Tensor::from_slice(&bytes)));
    let sum = legacy_checksum(&named).unwrap();
    named.push((
        "checksum".to_string(),
        Tensor::from_slice(&sum.to_le_bytes()),
    ));
    let archive = SharedBuf::default();
    Tensor::save_multi_to_stream(&named, archive.clone()).unwrap();
    std::fs::write(path, archive.0.take()).unwrap();
}

#[test]
fn older_builds_pt_files_are_found_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::from_slice(&[3.0f32, 4.0]);
    let mut st = state();
    st.format_version = LEGACY_FORMAT_VERSION;
    save_legacy(
        &legacy_path_for(dir.path(), 1000),
        &st,
        &[("w".into(), w.shallow_clone())],
        &[w.ones_like()],
    );
    write(dir.path(), 2000);
    assert_eq!(list(dir.path()), vec![1000, 2000]);
    assert_eq!(find(dir.path(), 1000), legacy_path_for(dir.path(), 1000));
    assert_eq!(find(dir.path(), 2000), path_for(dir.path(), 2000));
    let found = open(dir.path(), "1000").unwrap();
    assert_eq!(found.path, legacy_path_for(dir.path(), 1000));
    assert_eq!(found.checkpoint.state, st);
    assert!(found.checkpoint.params["w"].equal(&w));
    assert!(found.checkpoint.optimizer["rmsprop/w"].equal(&w.ones_like()));
    // A flipped byte in an old file is still caught by its own checksum.
    let path = legacy_path_for(dir.path(), 1000);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(4)
        .position(|x| x == 3.0f32.to_le_bytes())
        .unwrap();
    bytes[at + 1] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        load(&path),
        Err(CheckpointError::Corrupted { .. })
    ));
    // Pruning removes either name; a frame count saved under both names counts once.
    save_legacy(
        &legacy_path_for(dir.path(), 2000),
        &st,
        &[("w".into(), w.shallow_clone())],
        &[w.ones_like()],
    );
    assert_eq!(list(dir.path()), vec![1000, 2000]);
    assert_eq!(
        find(dir.path(), 2000),
        path_for(dir.path(), 2000),
        "the new file first"
    );
    prune(dir.path(), 1).unwrap();
    assert!(!legacy_path_for(dir.path(), 1000).exists());
    assert_eq!(list(dir.path()), vec![2000]);
}

#[test]
fn the_file_is_plain_safetensors_with_the_checksum_in_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 1000);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    assert_eq!(names, ["param/w", "rmsprop/w", "state"]);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], FORMAT_NAME);
    assert_eq!(meta["format_version"], "3");
    assert!(meta["checksum"].starts_with("crc32:"), "{meta:?}");
    // What any safetensors reader (tch's here, PyTorch's in the README) sees.
    let read = Tensor::read_safetensors(&path).unwrap();
    let w = &read.iter().find(|(n, _)| n == "param/w").unwrap().1;
    assert!(w.equal(&Tensor::from_slice(&[1234.5f32; 64])));
}

#[test]
fn latest_falls_back_past_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    for f in [1000, 2000, 3000] {
        write(dir.path(), f);
    }
    let newest = path_for(dir.path(), 3000);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..100]).unwrap();
    let found = open(dir.path(), "latest").unwrap();
    assert_eq!(found.path, path_for(dir.path(), 2000));
    assert_eq!(found.checkpoint.state.frames, 2000);
    assert_eq!(found.skipped.len(), 1);
    assert!(found.skipped[0]
        .to_string()
        .contains("model-3000.safetensors"));
    // An explicit frame count does not fall back.
    assert!(open(dir.path(), "3000").is_err());
    // Nothing usable: every failure is listed.
    for f in [1000, 2000] {
        std::fs::write(path_for(dir.path(), f), b"junk").unwrap();
    }
    let err = open(dir.path(), "latest").err().unwrap().to_string();
    for f in [
        "model-1000.safetensors",
        "model-2000.safetensors",
        "model-3000.safetensors",
    ] {
        assert!(err.contains(f), "{err}");
    }
    // No checkpoints at all.
    let empty = tempfile::tempdir().unwrap();
    let err = open(empty.path(), "latest").err().unwrap().to_string();
    assert!(err.contains("no checkpoints"), "{err}");
}

#[test]
fn prune_keeps_the_newest_and_partial_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    for f in [1000, 2000, 3000, 4000] {
        write(dir.path(), f);
    }
    assert!(prune(dir.path(), 0).unwrap().is_empty());
    let removed = prune(dir.path(), 2).unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(list(dir.path()), vec![3000, 4000]);
    // What a save killed mid-write leaves (no destructor runs to remove it), of a
    // checkpoint, a replay memory and the best evaluation's scores; and what older builds
    // left. Other files stay.
    let mut partial = vec![];
    for name in [
        "model-5000.safetensors",
        "model-5000.pt",
        "model-5000.replay",
        "model-best.eval.json",
    ] {
        let mut f = atomic_file::AtomicFile::create(&dir.path().join(name)).unwrap();
        f.write_all(b"half").unwrap();
        partial.push(f.temporary_path().to_path_buf());
        std::mem::forget(f);
    }
    for name in ["model-4500.pt.tmp", "model-4500.replay.tmp"] {
        std::fs::write(dir.path().join(name), b"half").unwrap();
        partial.push(dir.path().join(name));
    }
    let kept = [
        "model-1000.eval.json",
        "notes.tmp",
        ".other.json.abc123.tmp",
    ];
    for name in kept {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let mut removed = remove_partial(dir.path()).unwrap();
    removed.sort();
    partial.sort();
    assert_eq!(removed, partial);
    assert_eq!(list(dir.path()), vec![3000, 4000]);
    for name in kept {
        assert!(dir.path().join(name).exists(), "{name}");
    }
}

#[test]
fn round_trip_and_refusal_of_non_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_for(dir.path(), 1000);
    let w = Tensor::from_slice(&[1.0f32, 2.0]);
    let params = vec![("w".to_string(), w.shallow_clone())];
    let optimizer = [("rmsprop/w".to_string(), w.zeros_like())];
    save(&path, &state(), &params, &optimizer, &[]).unwrap();
    let ck = load(&path).unwrap();
    assert_eq!(ck.state, state());
    assert!(ck.params["w"].equal(&w));
    assert_eq!(ck.optimizer.keys().collect::<Vec<_>>(), ["rmsprop/w"]);
    assert!(ck.optimizer["rmsprop/w"].equal(&w.zeros_like()));
    assert!(ck.extra.is_empty());
    assert_eq!(list(dir.path()), vec![1000]);
    // Weights only (model-best): no optimizer state comes back; a rule's tensors stay apart.
    let target = [("target/w".to_string(), w.ones_like())];
    let only = dir.path().join("model-best.safetensors");
    save(&only, &state(), &params, &[], &target).unwrap();
    let ck = load(&only).unwrap();
    assert!(ck.optimizer.is_empty());
    assert_eq!(ck.extra.keys().collect::<Vec<_>>(), ["target/w"]);

    let bad = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, f32::NAN]))];
    let later = path_for(dir.path(), 2000);
    let err = save(&later, &state(), &bad, &optimizer, &[]).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    assert!(!later.exists());
    assert_eq!(
        list(dir.path()),
        vec![1000],
        "the good checkpoint stays the newest"
    );
}
