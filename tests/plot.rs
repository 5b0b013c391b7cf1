//! `scripts/plot`: runs' metrics.csv files become one PNG of returns against frames and wall
//! time; bad input is named. The first run installs matplotlib into the cache (PyPI).

use std::path::Path;
use std::process::Command;

const HEADER: &str = async_rl::metrics::CSV_HEADER;

/// A run directory with a metrics.csv of `rows` rows whose mean return climbs from `from`.
fn fake_run(dir: &Path, from: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = format!("{HEADER}\n");
    // The first row has no finished game yet: an empty mean_return, which is skipped.
    text += "5.000,20000,5000,70,0,4000.0,,0.99000,,,7.000e-4,14.00,0.5000,0.9000\n";
    for i in 1..=30u64 {
        let ret = from + i as f64 * 0.5;
        text += &format!(
            "{}.000,{},{},{},{},4000.0,{ret:.6},0.95000,0.010000,1.000000,7.000e-4,14.00,0.5000,0.9000\n",
            5 * (i + 1),
            20_000 * (i + 1),
            5_000 * (i + 1),
            70 * (i + 1),
            3 * i
        );
    }
    std::fs::write(dir.join("metrics.csv"), text).unwrap();
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

fn plot(args: &[&str], cwd: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/plot");
    Command::new(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running scripts/plot")
}

#[test]
fn plot_draws_one_or_several_runs_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(&tmp.path().join("a"), -20.0);
    fake_run(&tmp.path().join("b"), -15.0);

    let out = plot(&["a"], tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("a: 30 points; last mean return -5.00 at 620000 frames (2.6 min)"),
        "{stdout}"
    );
    // Two panels (frames, wall time) at 11 x 4 inches, 100 dpi.
    assert_eq!(png_size(&tmp.path().join("a/returns.png")), (1100, 400));

    let out = plot(&["a", "b", "-o", "both.png", "--smooth", "0.8"], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(png_size(&tmp.path().join("both.png")), (1100, 400));

    for (args, needle) in [
        (&["nowhere"][..], "error: nowhere: no metrics.csv"),
        (
            &["a", "--smooth", "1"][..],
            "error: --smooth 1.0: must be in [0, 1)",
        ),
    ] {
        let out = plot(args, tmp.path());
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
