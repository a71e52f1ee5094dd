//! `peerstash peers` and the health of each file in `state`, with two real daemons on loopback:
//! the home peer lists the peer holding its chunks (heard, its protocol), the holder lists the
//! bytes it hosts for the home peer; a deleted version is owed an acknowledgement by its holder
//! until a 2.0 holder sends DELETED (a 1.0 one never does).

use crate::common;

use common::*;
use peerstash::store::Health;

#[test]
fn peers_lists_the_holders_of_our_chunks_and_state_their_health() {
    for protocol in ["2.0", "1.0"] {
        peers_at(protocol);
    }
}

fn peers_at(protocol: &str) {
    let c = Cluster::start_specs(vec![PeerSpec::new("100MB").protocol(protocol); 2]);
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
    // Heard within the last seconds (noted once a second), with the version it speaks: a 2.0
    // peer is known by its HELLO or the INC line of its STOREDs; a 1.0 peer is heard through
    // its STOREDs but told from a 2.0 one only after two HELLO periods without a 2.0 message
    // (`daemon::heard`): "unknown yet" until then, never a guess.
    let speaks = (protocol == "2.0").then_some(protocol);
    let heard = wait_until(std::time::Duration::from_secs(3), || {
        let home = c.peer(0).peers();
        let p = home.peers.iter().find(|p| p.id == 2).cloned();
        p.is_some_and(|p| {
            p.heard_since_start && p.last_heard_ms.is_some() && p.protocol.as_deref() == speaks
        })
    });
    assert!(heard, "{:?}", c.peer(0).peers());
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
    // What it prints is what `--json` says: peer 2 heard seconds ago, speaking 2.0 (1.0:
    // "unknown yet"), holding both chunks of ours, hosting none of our bytes, owing nothing.
    let speaks_text = if protocol == "2.0" {
        "2.0"
    } else {
        "unknown yet"
    };
    assert_row(&text, 2, Some(speaks_text), [2, 0, 0]);

    // The holder lists the bytes it hosts for the home peer (whether it heard the home peer
    // yet depends on the home peer's messages since: its columns are not asked here).
    let theirs = c.peer(1).peers();
    assert_eq!(theirs.peer_id, 2);
    let home_peer = theirs.peers.iter().find(|p| p.id == 1);
    assert_eq!(
        home_peer.map(|p| p.hosted_bytes),
        Some(100_000),
        "{theirs:?}"
    );
    let text = c.cli_ok(1, &["peers"], 0);
    assert_row(&text, 1, None, [0, 100_000, 0]);

    // Deleted: peer 2 owes the acknowledgement of the DELETE until it sends DELETED (2.0); a
    // 1.0 peer never sends one: it stays owed until the deadline. Peer 2 is paused meanwhile:
    // the DELETE waits in its socket, and the debt is seen before it can be paid.
    c.pause(1);
    c.cli_ok(0, &["delete", p], 0);
    let owed = |n: u64| {
        wait_until(std::time::Duration::from_secs(3), || {
            let home = c.peer(0).peers();
            let holder = home.peers.iter().find(|p| p.id == 2).cloned();
            let holder = holder.map(|h| (h.chunks_of_ours, h.unacked_deletes));
            c.peer(0).state().unacked_deletes == n && holder == Some((0, n))
        })
    };
    assert!(
        owed(1),
        "{protocol}: the DELETE is owed while peer 2 cannot answer: {:?}",
        c.peer(0).peers()
    );
    let text = c.cli_ok(0, &["peers"], 0);
    assert_row(&text, 2, Some(speaks_text), [0, 0, 1]);
    c.resume(1);
    let expected = if protocol == "2.0" { 0 } else { 1 };
    assert!(owed(expected), "{protocol}: {:?}", c.peer(0).peers());
}

/// `peers` (text) has a header and a row for peer `id` that ends with `counts`: chunks of ours,
/// hosted bytes, unacked deletes. With `protocol`, the row reads in between: that protocol, and
/// heard seconds ago ("N s ago").
fn assert_row(text: &str, id: u32, protocol: Option<&str>, counts: [u64; 3]) {
    let header = text.lines().next().unwrap_or_default();
    let columns = [
        "peer",
        "protocol",
        "last heard",
        "chunks of ours",
        "hosted bytes",
        "unacked deletes",
    ];
    assert!(columns.iter().all(|c| header.contains(c)), "{text}");
    let row = (text.lines().skip(1))
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for peer {id}: {text}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    let shown: Vec<u64> = fields[fields.len().saturating_sub(3)..]
        .iter()
        .map(|f| f.parse().unwrap_or_else(|_| panic!("{f:?} in {row:?}")))
        .collect();
    assert_eq!(shown, counts, "peer {id}'s row: {text}");
    if let Some(protocol) = protocol {
        let middle = fields[1..fields.len() - 3].join(" ");
        let heard = middle.strip_prefix(protocol).map(str::split_whitespace);
        let heard: Option<Vec<&str>> = heard.map(Iterator::collect);
        assert!(
            heard.is_some_and(|h| h.len() == 3
                && h[0].parse::<u64>().is_ok()
                && h[1..] == ["s", "ago"]),
            "peer {id} speaks {protocol}, heard seconds ago: {text}"
        );
    }
}
