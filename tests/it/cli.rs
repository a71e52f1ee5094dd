//! The command lines' own errors: bad config, unreachable daemon, bad arguments.

use crate::common;

use std::process::Command;

use common::{PEERSTASH, PEERSTASHD};

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[peer]\nid = 3\n[network]\nmc = \"127.1.2.3:4701\"\n").unwrap();
    let (code, err) = run(PEERSTASHD, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("network.mc"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (code, err) = run(
        PEERSTASHD,
        &["--check-config", "--config", "/nonexistent/p.toml"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/p.toml"), "{err}");
}

#[test]
fn check_config_accepts_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[peer]\nid = 3\n[storage]\nquota = \"1 GiB\"\n").unwrap();
    let (code, err) = run(
        PEERSTASHD,
        &["--check-config", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn unreachable_daemon_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let (code, err) = run(PEERSTASH, &["--socket", sock.to_str().unwrap(), "state"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("none.sock"), "{err}");
}

#[test]
fn bad_arguments_exit_2() {
    let (code, _) = run(
        PEERSTASH,
        &["--socket", "/x", "backup", "/tmp", "--replication", "0"],
    );
    assert_eq!(code, 2);
    let (code, err) = run(PEERSTASH, &["--socket", "/x", "reclaim", "lots"]);
    assert_eq!(code, 2, "{err}");
}
