//! `peerstash scrub` with real daemons on loopback: a holder's damaged copies are found, dropped
//! and announced (REMOVED), and the chunks are back at their RD on the peers left.

use crate::common;

use std::time::Duration;

use common::*;

#[test]
fn scrub_drops_damaged_copies_and_the_chunks_are_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(&["0", "10 MiB", "10 MiB", "10 MiB"]);
    let file = dir.path().join("data.bin");
    let bytes = random_bytes(300_000);
    std::fs::write(&file, &bytes).unwrap();
    c.cli_ok(0, &["backup", file.to_str().unwrap(), "-r", "2"], 0);
    // Settled: 2.0 holders that wrote a copy too many drop it just after the backup ends.
    let copies = || -> usize { (1..4).map(|i| chunk_files_on_disk(c.peer(i))).sum() };
    let settled = || {
        copies() == 2 * 5 && {
            std::thread::sleep(Duration::from_millis(1_500));
            copies() == 2 * 5
        }
    };
    assert!(
        wait_until(Duration::from_secs(30), settled),
        "{} copies of 5 chunks at RD 2:\n{}",
        copies(),
        c.dump()
    );

    // Nothing damaged yet: every holder says so.
    for i in 1..4 {
        let out = c.cli_ok(i, &["scrub"], 0);
        assert!(out.contains(": 0 damaged"), "peer {}: {out}", i + 1);
    }
    let holder = (1..4)
        .find(|i| chunk_files_on_disk(c.peer(*i)) > 0)
        .expect("a holder");
    let held = chunk_files_on_disk(c.peer(holder));
    damage_every_chunk(c.peer(holder));
    let out = c.cli_ok(holder, &["scrub"], 0);
    let expected = format!("checked {held} hosted chunks: {held} damaged");
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("do not match its SHA-256"), "{out}");
    // Every damaged copy is gone (a copy the others send it again meanwhile is a good one).
    let out = c.cli_ok(holder, &["scrub"], 0);
    assert!(out.contains(": 0 damaged"), "dropped: {out}");

    // REMOVED reached the others: each chunk is made again on the peer that had no copy.
    let at_rd = || {
        c.peer(0)
            .try_state()
            .ok()
            .is_some_and(|s| s.versions_of(&file).iter().any(|f| f.min_rd() >= 2))
    };
    assert!(
        wait_until(Duration::from_secs(30), || at_rd() && copies() >= 2 * 5),
        "not back at RD 2:\n{}",
        c.dump()
    );
    let out_file = dir.path().join("back.bin");
    assert!(restore_to(&c, 0, &file, &out_file) == bytes);
}
