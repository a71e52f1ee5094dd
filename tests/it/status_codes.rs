//! `peerstash status` exit statuses a monitoring check can use, with real daemons on loopback:
//! 6 right after start with files queued and nothing backed up yet, 0 once every file and a
//! catalog snapshot are at their RD, 3 below RD (with why, when too few peers hold ours), 5 with
//! a watched folder unavailable (first of 5, 3, 7, 6), 7 with no catalog snapshot at its RD;
//! and `peers` right after a restart: "unknown yet", "not heard since start", then the protocol
//! the peer speaks once heard.

use crate::common;

use std::time::Duration;

use common::*;
use peerstash::control::{PeerInfo, PeersReport, StatusReport};

/// `status --json` on peer i: its exit status and its report.
fn status(c: &Cluster, i: usize) -> (Option<i32>, StatusReport) {
    let out = c.cli(i, &["status", "--json"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}\n{}", output_text(&out), c.log(i)));
    (out.status.code(), v)
}

fn problems(v: &StatusReport) -> Vec<String> {
    v.problems.clone()
}

/// Waits up to `secs` for peer i's `status` to exit `code`; its report then.
fn wait_status(c: &Cluster, i: usize, code: i32, secs: u64) -> StatusReport {
    let mut last = None;
    let reached = wait_until(Duration::from_secs(secs), || {
        let (got, v) = status(c, i);
        last = Some((got, v));
        got == Some(code)
    });
    assert!(
        reached,
        "status never exited {code}: {last:?}\n{}",
        c.dump()
    );
    last.expect("status ran at least once").1
}

fn watch(root: &std::path::Path, quiet: &str) -> String {
    format!(
        "[[watch]]\npath = \"{}\"\nreplication = 2\nquiet = \"{quiet}\"\nmax_delay = \"{quiet}\"\n",
        root.display()
    )
}

#[test]
fn status_exits_6_while_queued_0_when_all_is_safe_3_below_rd_and_5_with_a_folder_unavailable() {
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path().canonicalize().unwrap().join("home");
    std::fs::create_dir(&root).unwrap();
    for i in 0..5 {
        std::fs::write(root.join(format!("f{i}.txt")), random_bytes(10_000)).unwrap();
    }
    // Files that wait an hour to be backed up: queued, nothing backed up yet.
    let spec = |quota: &str, extra: String| PeerSpec {
        extra,
        peer_extra: "holder_timeout = \"3s\"\n".into(),
        ..PeerSpec::new(quota).protocol("2.0")
    };
    let mut c = Cluster::start_specs(vec![
        spec("0", watch(&root, "1h")),
        spec("100MB", String::new()),
        spec("100MB", String::new()),
    ]);
    let v = wait_status(&c, 0, 6, 15);
    assert_eq!(problems(&v), ["queue_not_drained"], "{v:?}");
    assert_eq!(v.files, 0, "{v:?}");
    let text = c.cli_ok(0, &["status"], 6);
    assert!(text.starts_with("nothing backed up yet\n"), "{text}");
    assert!(
        text.contains("not healthy: changes queued, not yet backed up"),
        "{text}"
    );

    // Quiet after 200 ms: every file and then a catalog snapshot reach RD 2: healthy.
    c.rewrite_config(0, "0", &watch(&root, "200ms"));
    c.restart(0);
    let v = wait_status(&c, 0, 0, 60);
    assert_eq!(problems(&v), Vec::<String>::new(), "{v:?}");
    assert_eq!((v.files, v.healthy), (5, 5), "{v:?}");
    assert_eq!(
        v.catalog_snapshot.as_ref().map(|s| s.at_rd),
        Some(true),
        "{v:?}"
    );
    let text = c.cli_ok(0, &["status"], 0);
    assert!(text.starts_with("all 5 files at their RD\n"), "{text}");
    assert!(!text.contains("not healthy"), "{text}");

    // A holder dies for good: every file is below RD 2 once it is counted lost.
    c.kill(2);
    let v = wait_status(&c, 0, 3, 30);
    assert_eq!(problems(&v)[0], "below_rd", "{v:?}");
    // The catalog snapshot that reached RD 2 lost that holder too: not counted at its RD.
    assert!(
        problems(&v).contains(&"no_snapshot_at_rd".to_string()),
        "{v:?}"
    );
    assert_eq!(
        v.catalog_snapshot.as_ref().map(|s| s.at_rd),
        Some(false),
        "{v:?}"
    );
    let text = c.cli_ok(0, &["status"], 3);
    assert!(text.contains("not healthy: files below their RD"), "{text}");
    // One other peer (peer 2) holds ours; RD 2 needs two.
    assert!(
        text.contains(
            "why: 5 files below RD for want of peers: only 1 other peer holds chunks of ours and RD 2 needs 2"
        ),
        "{text}"
    );

    // The watched folder goes missing: 5 wins over 3, and both are listed.
    let away = folder.path().join("away");
    std::fs::rename(&root, &away).unwrap();
    let v = wait_status(&c, 0, 5, 30);
    let p = problems(&v);
    assert_eq!(p[..2], ["folder_unavailable", "below_rd"], "{v:?}");
    let text = c.cli_ok(0, &["status"], 5);
    assert!(text.contains("UNAVAILABLE"), "{text}");
    assert!(
        text.contains("not healthy: a watched folder is unavailable; files below their RD"),
        "{text}"
    );
    // Back, and peer 3 back: healthy again.
    std::fs::rename(&away, &root).unwrap();
    c.spawn(2);
    c.wait_ready(2);
    wait_status(&c, 0, 0, 90);
}

#[test]
fn status_exits_7_while_no_catalog_snapshot_is_at_its_rd() {
    // One peer to host: a file at RD 1 is at its RD, but the catalog snapshots go at RD 2
    // (no watched folder says otherwise) and never reach it.
    let c = Cluster::start(&["0", "100MB"]);
    let file = c.dir.path().canonicalize().unwrap().join("one.bin");
    std::fs::write(&file, random_bytes(70_000)).unwrap();
    c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "1"], 0);
    // Before the first snapshot is taken (within a minute of a backup by hand), and after,
    // below its RD: 7 both times.
    let (code, v) = status(&c, 0);
    assert_eq!(code, Some(7), "{v:?}");
    assert_eq!(problems(&v), ["no_snapshot_at_rd"], "{v:?}");
    assert_eq!(v.catalog_snapshot, None, "{v:?}");
    let out = c.cli(0, &["snapshot"]);
    assert!(
        output_text(&out).contains("below their RD"),
        "{}",
        output_text(&out)
    );
    let (code, v) = status(&c, 0);
    assert_eq!(code, Some(7), "{v:?}");
    assert_eq!(problems(&v), ["no_snapshot_at_rd"], "{v:?}");
    assert_eq!(
        v.catalog_snapshot.as_ref().map(|s| s.at_rd),
        Some(false),
        "{v:?}"
    );
    let text = c.cli_ok(0, &["status"], 7);
    assert!(text.starts_with("all 1 file at their RD\n"), "{text}");
    assert!(text.contains("below its RD"), "{text}");
    assert!(
        text.contains("not healthy: no catalog snapshot at its RD"),
        "{text}"
    );
    // A peer with nothing backed up and nothing queued is healthy: nothing to recover.
    c.cli_ok(1, &["status"], 0);
}

#[test]
fn status_says_why_files_stay_below_rd_when_a_peer_reclaimed_all_its_space() {
    // Three machines at RD 2; one of them sets its quota to 0.
    let c = Cluster::start_specs(vec![PeerSpec::new("100MB").protocol("2.0"); 3]);
    let file = c.dir.path().canonicalize().unwrap().join("doc.bin");
    std::fs::write(&file, random_bytes(100_000)).unwrap();
    c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "2"], 0);
    // Its REMOVEDs: peer 2 alone holds our chunks, and no one else takes them.
    c.cli_ok(2, &["reclaim", "0"], 0);
    let why = "1 file below RD for want of peers: only 1 other peer holds chunks of ours and RD 2 needs 2; 1 other peer heard holds none (a quota of 0, or no room left)";
    // (Who was heard reaches the catalog once a second.)
    let mut last = None;
    let said = wait_until(Duration::from_secs(30), || {
        let (code, v) = status(&c, 0);
        let seen = code == Some(3) && v.below_rd_why.as_deref() == Some(why);
        last = Some((code, v));
        seen
    });
    assert!(said, "{last:?}\n{}", c.dump());
    let text = c.cli_ok(0, &["status"], 3);
    assert!(text.contains(&format!("  why: {why}\n")), "{text}");
    // The peer that reclaimed: its own file would be fine; it has none.
    c.cli_ok(2, &["status"], 0);
}

#[test]
fn peers_right_after_a_restart_says_unknown_yet_until_a_peer_is_heard() {
    let mut c = Cluster::start_specs(vec![PeerSpec::new("100MB").protocol("2.0"); 2]);
    let base = c.dir.path().canonicalize().unwrap();
    let backup = |c: &Cluster, name: &str| {
        let f = base.join(name);
        std::fs::write(&f, random_bytes(10_000)).unwrap();
        c.cli_ok(0, &["backup", f.to_str().unwrap(), "-r", "1"], 0);
    };
    // Read as JSON, field by field: what a script reads.
    let two = |c: &Cluster, i: usize, id: u32| -> PeerInfo {
        let out = c.cli_ok(i, &["peers", "--json"], 0);
        let v: PeersReport = parse_json(&out);
        (v.peers.into_iter())
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("peer {id} not listed: {out}"))
    };
    // Peer 2's STORED (tagged 1.0, with its INC line) says it speaks 2.0.
    backup(&c, "a.bin");
    let heard = wait_until(Duration::from_secs(3), || {
        let p = two(&c, 0, 2);
        p.protocol.as_deref() == Some("2.0") && p.last_heard_ms.is_some()
    });
    assert!(heard, "{:?}", c.peer(0).peers());

    // Restarted, peer 1 has not heard peer 2 (it says HELLO once a minute): nothing from
    // before the restart is shown as if heard now.
    c.restart(0);
    let p = two(&c, 0, 2);
    // (On the code before: "2.0" and a time from before the restart.)
    assert_eq!((&p.protocol, &p.last_heard_ms), (&None, &None), "{p:?}");
    assert!(!p.heard_since_start, "{p:?}");
    assert!(p.last_heard_before_start_ms.is_some(), "{p:?}");
    let text = c.cli_ok(0, &["peers"], 0);
    let line = (text.lines())
        .find(|l| l.split_whitespace().next() == Some("2"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("unknown yet"), "{text}");
    assert!(line.contains("not heard since start"), "{text}");

    // Heard again: the protocol it speaks, never the 1.0 of its STOREDs' first line.
    backup(&c, "b.bin");
    let heard = wait_until(Duration::from_secs(3), || {
        let p = two(&c, 0, 2);
        p.heard_since_start && p.protocol.as_deref() == Some("2.0") && p.last_heard_ms.is_some()
    });
    assert!(heard, "{:?}", c.peer(0).peers());

    // Peer 2 restarted hears only peer 1's PUTCHUNKs (tagged 1.0, no sign of 2.0): heard, its
    // protocol unknown yet, not "1.0".
    c.restart(1);
    backup(&c, "c.bin");
    let heard = wait_until(Duration::from_secs(3), || two(&c, 1, 1).heard_since_start);
    assert!(heard, "{:?}", c.peer(1).peers());
    let p = two(&c, 1, 1);
    assert_ne!(p.protocol.as_deref(), Some("1.0"), "{p:?}");
    assert!(p.last_heard_ms.is_some(), "{p:?}");
}
