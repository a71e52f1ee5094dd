//! `peerstash suggest-id`: the id a new admin puts in peer.id, made from this machine's address
//! (third byte × 256 + fourth), with no daemon running; which address it used, and why.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{done, needs_root, output_text, parse_json, run_within, PEERSTASH};
use peerstash::control::{Reply, SuggestedId};

fn suggest(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PEERSTASH)
        .arg("suggest-id")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_address_given_makes_the_id_and_the_output_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("peerstash.toml");
    // The shipped config: id 0, which the daemon refuses; suggest-id needs nothing from it.
    std::fs::write(&cfg, "[peer]\nid = 0\n").unwrap();
    let cfg = cfg.to_str().unwrap();

    let (code, out, err) = suggest(&["--config", cfg, "--address", "192.168.4.5"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("suggested peer.id: 1029\n"), "{out}");
    assert!(out.contains("4 × 256 + 5"), "{out}");
    assert!(out.contains("192.168.4.5 (given with --address)"), "{out}");
    assert!(out.contains(cfg), "says where to set it: {out}");

    let (code, out, _) = suggest(&["--address", "10.1.0.0"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("suggested peer.id: 65536\n"),
        "never 0: {out}"
    );

    let (code, out, err) = suggest(&["--address", "0.0.0.0"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not the address of a machine"), "{err}");

    let out = Command::new(PEERSTASH)
        .args(["--json", "suggest-id", "--address", "10.0.1.2"])
        .output()
        .unwrap();
    let v: Reply<SuggestedId> = parse_json(&out.stdout);
    let (_, _, data) = done(v);
    let data = data.expect("a suggestion");
    assert_eq!(data.id, 258);
    assert_eq!(data.address, "10.0.1.2");
}

#[test]
fn the_configured_interface_is_used_unless_it_is_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("peerstash.toml");
    std::fs::write(
        &cfg,
        "[peer]\nid = 0\n[network]\ninterface = \"10.9.8.7\"\nttl = 1\n",
    )
    .unwrap();
    let (code, out, err) = suggest(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("suggested peer.id: 2055\n"), "{out}");
    assert!(out.contains("network.interface in"), "{out}");
    assert!(
        out.contains("which no interface of this machine holds now"),
        "{out}"
    );
}

/// In network namespaces of its own (root): with only loopback it says what to do; with one
/// interface up (a veth end, no traffic: its peer is down) it uses that interface's address,
/// also when the config names loopback.
#[test]
fn this_machines_first_address_but_loopback_is_used() {
    if needs_root("a network namespace of its own") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("peerstash.toml");
    std::fs::write(&cfg, "[network]\ninterface = \"127.0.0.1\"\nttl = 0\n").unwrap();
    let cfg = cfg.to_str().unwrap();

    let script = r#"ip link set lo up && exec "$0" suggest-id --config "$1""#;
    let mut only_lo = Command::new("unshare");
    only_lo.args(["-n", "sh", "-c", script, PEERSTASH, cfg]);
    let out = run_within(only_lo, Duration::from_secs(20)).expect("suggest-id hung");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no IPv4 address but loopback"), "{text}");
    assert!(text.contains("--address"), "{text}");

    let script = r#"ip link set lo up && ip link add ps0 type veth peer name ps1 \
        && ip addr add 10.20.3.4/24 dev ps1 && ip link set ps1 up \
        && exec "$0" suggest-id --config "$1""#;
    let mut one_if = Command::new("unshare");
    one_if.args(["-n", "sh", "-c", script, PEERSTASH, cfg]);
    let out = run_within(one_if, Duration::from_secs(20)).expect("suggest-id hung");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("suggested peer.id: 772\n"), "{text}");
    assert!(text.contains("10.20.3.4"), "{text}");
    assert!(text.contains("on ps1"), "{text}");
}
