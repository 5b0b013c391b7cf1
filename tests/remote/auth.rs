//! Who may connect: tokens on both sides, TLS and mutual TLS certificates, plaintext off
//! loopback and token files others can read refused.

use std::time::Duration;

use super::*;

#[test]
fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    token_file(dir, "token", "the-right-secret\n");
    token_file(dir, "wrong", "a-wrong-secret");
    let (mut learner, addr) = Run::cartpole(dir)
        .processes(1)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .listen("learner");
    let mut wrong = host(dir, &addr, "wrong", &["--auth-token-file", "wrong"]);
    let status = wrong.wait(LIMIT);
    assert_eq!(status.code(), Some(1), "{}", wrong.logs());
    assert!(wrong.stderr().contains("wrong token"), "{}", wrong.logs());
    let mut none = host(dir, &addr, "none", &[]);
    assert_eq!(none.wait(LIMIT).code(), Some(1), "{}", none.logs());
    assert!(
        none.stderr().contains("requires a token"),
        "{}",
        none.logs()
    );
    learner.wait_for("refused a host", 2, Duration::from_secs(10));
    // The right token joins.
    let mut right = host(dir, &addr, "right", &["--auth-token-file", "token"]);
    right.wait_for("joined the learner", 1, LIMIT);
    learner.kill_group();
    right.kill_group();
}

#[test]
fn tls_and_mutual_tls_admit_the_right_certificates_and_refuse_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certificates(dir, "server");
    certificates(dir, "client");
    certificates(dir, "other");
    // TLS: a host trusting the learner's CA trains; one trusting another CA is refused.
    let tls = Run::cartpole(dir)
        .processes(0)
        .frames(30_000)
        .flag("--tls-cert", "server-cert.pem")
        .flag("--tls-key", "server-key.pem");
    let (mut learner, addr) = tls.listen("learner");
    let mut other = host(dir, &addr, "other-ca", &["--tls-ca", "other-ca.pem"]);
    assert_eq!(other.wait(LIMIT).code(), Some(1), "{}", other.logs());
    assert!(other.stderr().contains("TLS"), "{}", other.logs());
    let mut good = host(dir, &addr, "good", &["--tls-ca", "server-ca.pem"]);
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut good);
    // Mutual TLS: a host without a client certificate, or with one of another CA, is refused;
    // one signed by the learner's --tls-ca trains.
    let (mut learner, addr) = tls
        .flag("--tls-ca", "client-ca.pem")
        .logdir("run-mtls")
        .listen("learner-mtls");
    for (what, extra) in [
        ("no-client-cert", vec!["--tls-ca", "server-ca.pem"]),
        (
            "foreign-client-cert",
            vec![
                "--tls-ca",
                "server-ca.pem",
                "--tls-cert",
                "other-cert.pem",
                "--tls-key",
                "other-key.pem",
            ],
        ),
    ] {
        let mut h = host(dir, &addr, what, &extra);
        assert_eq!(h.wait(LIMIT).code(), Some(1), "{}", h.logs());
        assert!(h.stderr().contains("TLS"), "{}", h.logs());
    }
    // The learner says why too.
    learner.wait_for("refused a TLS connection", 1, Duration::from_secs(10));
    let mut good = host(
        dir,
        &addr,
        "client-cert",
        &[
            "--tls-ca",
            "server-ca.pem",
            "--tls-cert",
            "client-cert.pem",
            "--tls-key",
            "client-key.pem",
        ],
    );
    assert_exit_ok(&mut learner);
    assert_exit_ok(&mut good);
}

/// Off loopback, --listen without TLS is refused unless --insecure-plaintext says so, and a
/// token file that group or others can read is refused, naming the fix.
#[test]
fn plaintext_off_loopback_and_a_token_file_others_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    token_file(dir, "token", "the-right-secret");
    let run = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .flag("--listen", "0.0.0.0:0");
    let (_, out) = run.output(LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--listen 0.0.0.0:0: without TLS") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    // Said explicitly, it listens (in clear text, and says so).
    let mut learner = run
        .clone()
        .switch("--insecure-plaintext")
        .start("plaintext");
    let line = learner.wait_for("listening for actor hosts", 1, LIMIT);
    assert!(line.contains("plain text"), "{line}");
    learner.kill_group();
    // A group-readable token file: the learner does not start.
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let (_, out) = Run::cartpole(dir)
        .processes(0)
        .frames(100_000_000)
        .flag("--auth-token-file", "token")
        .flag("--listen", "127.0.0.1:0")
        .output(LIMIT);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--auth-token-file token: mode 640") && err.contains("`chmod 600 token`"),
        "{err}"
    );
}
