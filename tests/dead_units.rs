//! `scripts/dead-units`: per weight of a checkpoint, the units whose every incoming weight has
//! an optimizer second moment below the threshold, read from RMSProp's (`rmsprop/<name>`) or
//! Adam's (`adam/v/<name>`) state as tch writes it; a weights-only checkpoint and a file that
//! is not a checkpoint are refused by name, with nothing on standard output.

use std::path::Path;
use std::process::{Command, Output};

use tch::Tensor;

fn dead_units(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dead-units"))
        .args(args)
        .output()
        .expect("running scripts/dead-units")
}

/// A checkpoint of a convolution with 3 filters of 2x2x2 weights and a linear layer of 2
/// outputs over 3 inputs, with optimizer state under `prefix` (None: weights only). Second
/// moments: filter 0 all 1e-40, filter 1 all 1e-40 but one weight at 1e-20, filter 2 all 0;
/// output 0 at 1e-3, output 1 at 1e-35. Every weight is 0.1, filter 1's plus `shift`.
fn checkpoint(path: &Path, prefix: Option<&str>, shift: f32) {
    let mut weights = [0.1f32; 24];
    weights[8..16].iter_mut().for_each(|w| *w += shift);
    let mut conv = vec![1e-40f32; 24];
    conv[9] = 1e-20;
    conv[16..].fill(0.0);
    let fc = [1e-3f32, 1e-3, 1e-3, 1e-35, 1e-35, 1e-35];
    let mut tensors = vec![
        (
            "param/conv1.weight".to_string(),
            Tensor::from_slice(&weights).reshape([3, 2, 2, 2]),
        ),
        (
            "param/conv1.bias".to_string(),
            Tensor::from_slice(&[0.0f32; 3]),
        ),
        (
            "param/fc.weight".to_string(),
            Tensor::from_slice(&[0.1f32; 6]).reshape([2, 3]),
        ),
        ("state".to_string(), Tensor::from_slice(&[1u8, 2, 3])),
    ];
    if let Some(p) = prefix {
        tensors.push((
            format!("{p}conv1.weight"),
            Tensor::from_slice(&conv[..]).reshape([3, 2, 2, 2]),
        ));
        tensors.push((format!("{p}conv1.bias"), Tensor::from_slice(&[0.5f32; 3])));
        tensors.push((
            format!("{p}fc.weight"),
            Tensor::from_slice(&fc).reshape([2, 3]),
        ));
    }
    Tensor::write_safetensors(&tensors[..], path).unwrap();
}

/// The (units, frozen) of `weight` in the report on standard output.
fn counts(stdout: &str, weight: &str) -> (u32, u32) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(weight))
        .unwrap_or_else(|| panic!("no line for {weight} in:\n{stdout}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}

#[test]
fn counts_the_units_no_gradient_reached_for_rmsprop_and_adam_state() {
    let tmp = tempfile::tempdir().unwrap();
    for (prefix, optimizer) in [("rmsprop/", "rmsprop"), ("adam/v/", "adam")] {
        let path = tmp.path().join(format!("model-{optimizer}.safetensors"));
        checkpoint(&path, Some(prefix), 0.0);
        let out = dead_units(&[path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("({optimizer} state;")), "{stdout}");
        // Filter 1's one weight at 1e-20 keeps it: a unit is frozen only when all are.
        assert_eq!(counts(&stdout, "conv1.weight"), (3, 2), "{stdout}");
        assert_eq!(counts(&stdout, "fc.weight"), (2, 1), "{stdout}");
        // Biases (one dimension) are not units of their own.
        assert_eq!(stdout.matches(".bias").count(), 0, "{stdout}");
        // A lower threshold counts only the second moments below it: filter 2's zeros.
        let out = dead_units(&[path.to_str().unwrap(), "--below", "1e-45"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(counts(&stdout, "conv1.weight"), (3, 1), "{stdout}");
        assert_eq!(counts(&stdout, "fc.weight"), (2, 0), "{stdout}");
    }
}

/// `--since EARLIER`: the units whose every weight is what it was in EARLIER, bit for bit,
/// whatever the second moments say (a run whose v started at 1 has none below the threshold).
#[test]
fn counts_the_units_an_earlier_checkpoint_already_had() {
    let tmp = tempfile::tempdir().unwrap();
    let earlier = tmp.path().join("model-100.safetensors");
    checkpoint(&earlier, Some("rmsprop/"), 0.0);
    let later = tmp.path().join("model-200.safetensors");
    // Filter 1 moved by the smallest step a float32 near 0.1 can take.
    checkpoint(&later, Some("rmsprop/"), 1e-8);
    let out = dead_units(&[
        later.to_str().unwrap(),
        "--since",
        earlier.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unchanged = |stdout: &str, weight: &str| -> u32 {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(weight))
            .unwrap_or_else(|| panic!("no line for {weight} in:\n{stdout}"));
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert!(stdout.contains("unchanged: every weight as in"), "{stdout}");
    assert_eq!(counts(&stdout, "conv1.weight"), (3, 2), "{stdout}");
    assert_eq!(
        unchanged(&stdout, "conv1.weight"),
        2,
        "filters 0, 2: {stdout}"
    );
    assert_eq!(unchanged(&stdout, "fc.weight"), 2, "{stdout}");
    // Against itself, every unit is unchanged.
    let out = dead_units(&[later.to_str().unwrap(), "--since", later.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(unchanged(&stdout, "conv1.weight"), 3, "{stdout}");
}

#[test]
fn refuses_weights_only_checkpoints_other_files_and_bad_thresholds_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("model-100.safetensors");
    checkpoint(&good, Some("rmsprop/"), 0.0);
    let best = tmp.path().join("model-best.safetensors");
    checkpoint(&best, None, 0.0);
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let missing = tmp.path().join("model-7.safetensors");
    let other = tmp.path().join("other-network.safetensors");
    Tensor::write_safetensors(
        &[(
            "param/conv1.weight",
            Tensor::from_slice(&[0.1f32; 8]).reshape([1, 2, 2, 2]),
        )],
        &other,
    )
    .unwrap();
    let g = good.to_str().unwrap();
    for (args, expect) in [
        (vec![g, best.to_str().unwrap()], "holds no optimizer state"),
        (vec![g, text.to_str().unwrap()], "not a safetensors file"),
        (vec![g, missing.to_str().unwrap()], "cannot read it"),
        (
            vec![g, "--below", "-1"],
            "--below '-1': needs a positive number",
        ),
        (vec![g, "--below"], "--below '': needs a positive number"),
        (vec![g, "--every"], "--every: unknown option"),
        (vec![g, "--since"], "--since needs an earlier checkpoint"),
        (
            vec![g, "--since", other.to_str().unwrap()],
            "give an earlier checkpoint of the same run",
        ),
        (vec![], "no checkpoint given"),
    ] {
        let out = dead_units(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        // Named: the file at fault, when there is one.
        if let Some(bad) = args
            .get(1)
            .filter(|a| a.ends_with(".safetensors") || a.ends_with(".txt"))
        {
            assert!(stderr.contains(bad), "{args:?}: {stderr}");
        }
        // Nothing is printed for the good checkpoint before the bad one is found.
        assert!(
            out.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
