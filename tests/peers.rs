//! `peerstash peers` and the health of each file in `state`, with two real daemons on loopback:
//! the home peer lists the peer holding its chunks; a deleted version is owed an acknowledgement
//! by that holder.

mod common;

use common::*;
use peerstash::store::Health;

#[test]
fn peers_lists_the_holders_of_our_chunks_and_state_their_health() {
    let c = Cluster::start(&["100MB", "100MB"]);
    let path = c.dir.path().canonicalize().unwrap().join("two-chunks.bin");
    std::fs::write(&path, random_bytes(100_000)).unwrap();
    let p = path.to_str().unwrap();
    c.cli_ok(0, &["backup", p, "--replication", "1"], 0);

    // The home peer: its one file is healthy at RD 1, held by peer 2.
    let state = c.peer(0).state();
    let f = state.file(&path);
    assert_eq!(f.health(), Health::Healthy, "{state}");
    assert_eq!(state.json["files"][0]["health"], "healthy", "{state}");
    assert_eq!(state.json["files"][0]["chunks_below_rd"], 0, "{state}");
    assert_eq!(state.unacked_deletes, 0);
    let text = c.cli_ok(0, &["state"], 0);
    assert!(text.contains("all 1 file at their RD"), "{text}");
    assert!(text.contains("healthy"), "{text}");

    let home = c.peer(0).peers();
    assert_eq!(home.peer_id, 1);
    let holder = home
        .peers
        .iter()
        .find(|p| p.id == 2)
        .unwrap_or_else(|| panic!("peer 2 not listed by its home peer: {home:?}"));
    assert_eq!(
        holder.chunks_of_ours, 2,
        "both chunks held by peer 2: {home:?}"
    );
    assert!(!holder.lost, "{home:?}");
    assert_eq!(holder.unacked_deletes, 0, "{home:?}");
    assert!(
        home.peers.iter().all(|p| p.id != 1),
        "a peer never lists itself: {home:?}"
    );
    let text = c.cli_ok(0, &["peers"], 0);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("2")),
        "{text}"
    );

    // The holder answers too (what it hosts counts for its sender once senders are recorded).
    assert_eq!(c.peer(1).peers().peer_id, 2);
    c.cli_ok(1, &["peers"], 0);

    // Deleted: peer 2 owes the acknowledgement of the DELETE (a 1.0 peer never sends one; it
    // stays owed until the deadline).
    c.cli_ok(0, &["delete", p], 0);
    assert_eq!(c.peer(0).state().unacked_deletes, 1);
    let home = c.peer(0).peers();
    let holder = home.peers.iter().find(|p| p.id == 2).unwrap();
    assert_eq!(
        (holder.chunks_of_ours, holder.unacked_deletes),
        (0, 1),
        "{home:?}"
    );
}
