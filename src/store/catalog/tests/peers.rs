use super::*;
use crate::engine::presence::{lost_holders, HolderHeard};
use std::time::Duration;

fn heard(peer: u32, protocol: &str, at: i64) -> (PeerId, String, i64) {
    (PeerId(peer), protocol.to_owned(), at)
}

fn report_of(cat: &Catalog, peer: u32) -> Option<PeerRow> {
    cat.peers_report()
        .unwrap()
        .into_iter()
        .find(|r| r.id == PeerId(peer))
}

fn peer_rows(cat: &Catalog) -> u64 {
    cat.conn
        .query_row("SELECT COUNT(*) FROM peers", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

#[test]
fn a_peer_heard_keeps_its_latest_time_and_highest_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.heard_peers(&[heard(2, "1.0", 100), heard(3, "2.0", 50)])
        .unwrap();
    // Batches may arrive out of order; a 2.0 peer may also send 1.0 messages.
    cat.heard_peers(&[heard(2, "2.0", 90)]).unwrap();
    cat.heard_peers(&[heard(2, "1.0", 200)]).unwrap();
    let two = report_of(&cat, 2).unwrap();
    assert_eq!(
        (two.protocol.as_str(), two.last_heard_ms, two.lost_at_ms),
        ("2.0", Some(200), None)
    );
    // A peer counted lost is back as soon as it is heard.
    cat.drop_lost_holder(PeerId(3), 300).unwrap();
    assert_eq!(report_of(&cat, 3).unwrap().lost_at_ms, Some(300));
    cat.heard_peers(&[heard(3, "2.0", 400)]).unwrap();
    let three = report_of(&cat, 3).unwrap();
    assert_eq!((three.last_heard_ms, three.lost_at_ms), (Some(400), None));
    // Nothing to record, nothing done.
    cat.heard_peers(&[]).unwrap();
    assert_eq!(peer_rows(&cat), 2);
}

#[test]
fn auth_marks_are_kept_for_peers_heard_and_an_older_catalog_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mark = |p, mark, marked_at| auth::Mark {
        sender: PeerId(p),
        mark,
        marked_at,
    };
    {
        let cat = Catalog::open(&path).unwrap();
        // As the release before the replay guard left it.
        cat.conn
            .execute_batch(
                "ALTER TABLE peers DROP COLUMN auth_mark;
                 ALTER TABLE peers DROP COLUMN auth_mark_at;",
            )
            .unwrap();
        cat.heard_peers(&[heard(2, "2.0", 100)]).unwrap();
    }
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.auth_marks().unwrap(), vec![], "none yet");
    // Peer 9 was never recorded as heard: left out.
    cat.record_auth_marks(&[mark(2, 1000, 990), mark(9, 5, 5)])
        .unwrap();
    assert_eq!(cat.auth_marks().unwrap(), vec![mark(2, 1000, 990)]);
    // Written as given, even lower (a mark capped after a clock set wrong).
    cat.record_auth_marks(&[mark(2, 900, 995)]).unwrap();
    cat.heard_peers(&[heard(2, "2.0", 200)]).unwrap();
    drop(cat);
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.auth_marks().unwrap(), vec![mark(2, 900, 995)]);
}

#[test]
fn forged_sender_ids_cannot_grow_the_peers_table_without_end() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
    cat.add_holder(&fid('a'), ChunkNo(0), PeerId(8)).unwrap();
    cat.heard_peers(&[heard(2, "2.0", 10)]).unwrap();
    // A flood of datagrams from forged ids, in batches as the daemon records them.
    let forged: Vec<_> = (10_000..20_000).map(|id| heard(id, "2.0", 20)).collect();
    for batch in forged.chunks(1000) {
        cat.heard_peers(batch).unwrap();
    }
    assert_eq!(peer_rows(&cat), MAX_PEER_ROWS);
    // Full: a new peer holding nothing of ours is not recorded; one holding a chunk is, and
    // a peer already known is still kept up to date.
    cat.heard_peers(&[
        heard(7, "2.0", 30),
        heard(8, "1.0", 30),
        heard(2, "2.0", 30),
    ])
    .unwrap();
    assert_eq!(report_of(&cat, 7), None);
    assert_eq!(report_of(&cat, 8).unwrap().last_heard_ms, Some(30));
    assert_eq!(report_of(&cat, 2).unwrap().last_heard_ms, Some(30));
    assert_eq!(peer_rows(&cat), MAX_PEER_ROWS + 1);
}

/// A catalog where peers 2, 3 and 4 hold a chunk of ours and peers 1 (this one) and 5 a chunk
/// hosted here (stored from peer 6).
fn holders_2_to_5(dir: &tempfile::TempDir) -> Catalog {
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
    cat.add_holders(&fid('a'), ChunkNo(0), &[PeerId(2), PeerId(3), PeerId(4)])
        .unwrap();
    cat.insert_hosted(&hosted('b', 0, 100, 6), &[PeerId(1), PeerId(5)])
        .unwrap();
    cat
}

#[test]
fn every_holder_is_listed_with_when_it_was_heard_and_whether_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cat = holders_2_to_5(&dir);
    // Peer 6 sent us a chunk but holds nothing: not a holder.
    cat.heard_peers(&[
        heard(2, "2.0", 1_000),
        heard(3, "2.0", 9_000),
        heard(6, "2.0", 0),
    ])
    .unwrap();
    // Peer 5 announced its store before it was heard: a row, never heard.
    cat.peer_incarnation(PeerId(5), "aa").unwrap();
    let h = |peer, last_heard, lost| HolderHeard {
        peer: PeerId(peer),
        last_heard,
        lost,
    };
    assert_eq!(
        cat.holders_heard().unwrap(),
        vec![
            h(1, None, false),
            h(2, Some(1_000), false),
            h(3, Some(9_000), false),
            h(4, None, false),
            h(5, None, false),
        ]
    );
    // A holder counted lost leaves every holder set: listed no more.
    cat.drop_lost_holder(PeerId(2), 15_001).unwrap();
    let peers: Vec<PeerId> = (cat.holders_heard().unwrap().iter())
        .map(|h| h.peer)
        .collect();
    assert_eq!(peers, vec![PeerId(1), PeerId(3), PeerId(4), PeerId(5)]);
    // Holding again before it is heard (a STORED ahead of the heard batch): listed as lost.
    cat.add_holders(&fid('a'), ChunkNo(0), &[PeerId(2)])
        .unwrap();
    assert_eq!(cat.holders_heard().unwrap()[1], h(2, Some(1_000), true));
}

#[test]
fn the_round_drops_the_holders_the_engine_counts_lost_unless_heard_since() {
    let dir = tempfile::tempdir().unwrap();
    let cat = holders_2_to_5(&dir);
    cat.heard_peers(&[heard(2, "2.0", 1_000), heard(3, "2.0", 9_000)])
        .unwrap();
    let (timeout, since, me) = (Duration::from_secs(10), 5_000, PeerId(1));
    let look = |now| lost_holders(&cat.holders_heard().unwrap(), me, now, since, timeout);
    // Peer 2 was last heard before we started at 5 s, peers 4 and 5 never: all lost after 15 s.
    assert!(look(15_000).is_empty());
    let lost = look(15_001);
    // Peer 4 is heard between the look and the writes: the next look decides on it.
    cat.heard_peers(&[heard(4, "2.0", 15_001)]).unwrap();
    let (dropped, expired) = cat.drop_lost_holders(&lost, 15_001, 0).unwrap();
    assert_eq!(
        (dropped, expired),
        (vec![(PeerId(2), 1), (PeerId(5), 1)], 0)
    );
    assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 2);
    assert_eq!(report_of(&cat, 5).unwrap().lost_at_ms, Some(15_001));
    assert_eq!(report_of(&cat, 4).unwrap().lost_at_ms, None);
    // Peer 3 follows at its own time.
    let lost = look(19_001);
    assert_eq!(
        cat.drop_lost_holders(&lost, 19_001, 0).unwrap().0,
        vec![(PeerId(3), 1)]
    );
}

#[test]
fn a_new_incarnation_takes_the_peer_out_of_every_holder_set() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    for n in 0..3 {
        cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, &format!("h{n}"))
            .unwrap();
        cat.add_holders(&fid('a'), ChunkNo(n), &[PeerId(2), PeerId(3)])
            .unwrap();
    }
    cat.insert_hosted(&hosted('b', 0, 100, 3), &[PeerId(2)])
        .unwrap();
    // The first one heard is only recorded; the same again changes nothing.
    assert_eq!(cat.peer_incarnation(PeerId(2), "aa").unwrap(), None);
    assert_eq!(cat.peer_incarnation(PeerId(2), "aa").unwrap(), None);
    assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 2);
    // Another one: peer 2 holds nothing any more (ours, hosted); peer 3 is untouched.
    assert_eq!(cat.peer_incarnation(PeerId(2), "bb").unwrap(), Some(4));
    assert_eq!(cat.holders(&fid('a'), ChunkNo(1)).unwrap(), vec![PeerId(3)]);
    assert_eq!(
        cat.holders(&fid('b'), ChunkNo(0)).unwrap(),
        Vec::<PeerId>::new()
    );
    // Verification picks only holders with an incarnation, and only our own chunks.
    cat.add_holders(&fid('a'), ChunkNo(2), &[PeerId(2)])
        .unwrap();
    cat.add_holders(&fid('b'), ChunkNo(0), &[PeerId(2)])
        .unwrap();
    let picked = cat.verify_samples(3, 64).unwrap();
    assert_eq!(picked.len(), 1, "{picked:?}");
    assert_eq!((picked[0].0, picked[0].1.chunk_no), (PeerId(2), ChunkNo(2)));
    assert_eq!((picked[0].2, picked[0].3.as_str()), (10, "h2"));
    cat.peer_incarnation(PeerId(3), "cc").unwrap();
    let mut picked = cat.verify_samples(3, 64).unwrap();
    picked.retain(|p| p.0 == PeerId(3));
    let mut nos: Vec<u32> = picked.iter().map(|p| p.1.chunk_no.0).collect();
    nos.sort();
    assert!(
        !nos.is_empty() && nos.windows(2).all(|w| w[0] < w[1]),
        "{picked:?}"
    );
}

#[test]
fn a_lost_holder_leaves_every_holder_set() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    for n in 0..2 {
        cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, "h").unwrap();
        cat.add_holders(&fid('a'), ChunkNo(n), &[PeerId(2), PeerId(3)])
            .unwrap();
    }
    cat.insert_hosted(&hosted('b', 0, 100, 3), &[PeerId(1), PeerId(3)])
        .unwrap();
    cat.heard_peers(&[heard(3, "2.0", 50)]).unwrap();
    assert_eq!(cat.drop_lost_holder(PeerId(3), 1_000).unwrap(), 3);
    assert_eq!(cat.min_perceived_rd(&fid('a')).unwrap(), 1);
    assert_eq!(cat.all_hosted().unwrap()[0].1, 1);
    assert_eq!(cat.holders(&fid('b'), ChunkNo(0)).unwrap(), vec![PeerId(1)]);
    assert_eq!(cat.paths_below_rd().unwrap(), Vec::<PathBuf>::new()); // not complete yet
    cat.set_file_complete(&fid('a')).unwrap();
    assert_eq!(cat.paths_below_rd().unwrap(), vec![PathBuf::from("/f")]);
    // Lost since the first time; a peer never heard gets a row of its own.
    assert_eq!(cat.drop_lost_holder(PeerId(3), 2_000).unwrap(), 0);
    assert_eq!(cat.drop_lost_holder(PeerId(9), 2_000).unwrap(), 0);
    let three = report_of(&cat, 3).unwrap();
    assert_eq!(
        (three.last_heard_ms, three.lost_at_ms),
        (Some(50), Some(1_000))
    );
    let nine = report_of(&cat, 9).unwrap();
    assert_eq!(
        (nine.protocol.as_str(), nine.last_heard_ms, nine.lost_at_ms),
        ("", None, Some(2_000))
    );
}

#[test]
fn a_forgotten_version_is_owed_an_ack_by_each_distinct_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let backup = BackupId(1);
    cat.insert_version(&file('a', "/f"), backup).unwrap();
    cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
    cat.put_file_chunk(&fid('a'), ChunkNo(1), 10, "h1").unwrap();
    cat.add_holders(&fid('a'), ChunkNo(0), &[PeerId(2), PeerId(3)])
        .unwrap();
    cat.add_holders(&fid('a'), ChunkNo(1), &[PeerId(3), PeerId(4)])
        .unwrap();
    cat.insert_file(&file('b', "/g")).unwrap();
    cat.put_file_chunk(&fid('b'), ChunkNo(0), 10, "h0").unwrap();
    cat.add_holder(&fid('b'), ChunkNo(0), PeerId(3)).unwrap();
    // A refused forget owes nothing.
    assert!(!cat.forget(&fid('b'), Forget::History, 500).unwrap());
    assert_eq!(cat.unacked_delete_count().unwrap(), 0);
    assert!(cat.forget(&fid('a'), Forget::UserDelete, 1_000).unwrap());
    assert_eq!(cat.unacked_delete_count().unwrap(), 3);
    assert!(cat.forget(&fid('b'), Forget::UserDelete, 2_000).unwrap());
    assert_eq!(
        cat.unacked_deletes_for(PeerId(3), 10).unwrap(),
        vec![fid('a'), fid('b')],
        "oldest first"
    );
    assert_eq!(
        cat.unacked_deletes_for(PeerId(3), 1).unwrap(),
        vec![fid('a')]
    );
    assert_eq!(
        cat.unacked_deletes_for(PeerId(2), 10).unwrap(),
        vec![fid('a')]
    );
    assert!(cat.unacked_deletes_for(PeerId(5), 10).unwrap().is_empty());
    assert_eq!(report_of(&cat, 3).unwrap().unacked_deletes, 2);
    // DELETED (fileIds compare ignoring case).
    let upper = FileId::parse(&"A".repeat(64)).unwrap();
    assert!(cat.delete_acked(&upper, PeerId(3)).unwrap());
    assert!(!cat.delete_acked(&fid('a'), PeerId(3)).unwrap(), "once");
    assert_eq!(cat.unacked_delete_count().unwrap(), 3);
    // The deadline passed for the acks owed since 1 s (peers 2 and 4, for 'a').
    assert_eq!(cat.expire_delete_acks(1_500).unwrap(), 2);
    assert_eq!(cat.unacked_delete_count().unwrap(), 1);
    // The same content backed up again (the same fileId): its old DELETE is owed no more.
    cat.insert_version(&file('b', "/g"), backup).unwrap();
    assert_eq!(cat.unacked_delete_count().unwrap(), 0);
}

#[test]
fn the_peers_report_names_every_peer_and_what_it_does_for_us() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.heard_peers(&[heard(2, "2.0", 100)]).unwrap();
    cat.insert_file(&file('a', "/f")).unwrap();
    for n in 0..3 {
        cat.put_file_chunk(&fid('a'), ChunkNo(n), 10, "h").unwrap();
        cat.add_holder(&fid('a'), ChunkNo(n), PeerId(2)).unwrap();
    }
    cat.add_holder(&fid('a'), ChunkNo(0), PeerId(3)).unwrap();
    // Hosted: peer 5 sent two chunks; a chunk of unknown sender counts for nobody; the
    // holders of hosted chunks (ourselves, 4) hold nothing of ours.
    cat.insert_hosted(&hosted('b', 0, 1_000, 5), &[PeerId(1), PeerId(4)])
        .unwrap();
    cat.insert_hosted(&hosted('b', 1, 24, 5), &[PeerId(1)])
        .unwrap();
    cat.insert_hosted(&hosted('c', 0, 7, 0), &[PeerId(1)])
        .unwrap();
    // Peer 6 held a version since forgotten and has not acknowledged its DELETE.
    cat.insert_file(&file('d', "/g")).unwrap();
    cat.put_file_chunk(&fid('d'), ChunkNo(0), 10, "h").unwrap();
    cat.add_holder(&fid('d'), ChunkNo(0), PeerId(6)).unwrap();
    assert!(cat.forget(&fid('d'), Forget::UserDelete, 9).unwrap());
    let row = |id, protocol: &str, heard, ours, bytes, owed| PeerRow {
        id: PeerId(id),
        protocol: protocol.into(),
        last_heard_ms: heard,
        lost_at_ms: None,
        chunks_of_ours: ours,
        hosted_bytes: bytes,
        unacked_deletes: owed,
    };
    assert_eq!(
        cat.peers_report().unwrap(),
        vec![
            row(2, "2.0", Some(100), 3, 0, 0),
            row(3, "", None, 1, 0, 0),
            row(5, "", None, 0, 1_024, 0),
            row(6, "", None, 0, 0, 1),
        ]
    );
}

#[test]
fn an_older_catalog_gains_the_peer_tables_and_the_hosted_sender() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let cat = Catalog::open(&path).unwrap();
        cat.insert_hosted(&hosted('b', 0, 100, 0), &[PeerId(1), PeerId(2)])
            .unwrap();
        // As the release before protocol 2.0 left it.
        cat.conn
            .execute_batch(
                "DROP TABLE peers; DROP TABLE delete_acks; DROP INDEX holders_peer;
                 ALTER TABLE hosted DROP COLUMN sender;",
            )
            .unwrap();
    }
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(
        cat.hosted(&fid('b'), ChunkNo(0)).unwrap().unwrap().sender,
        PeerId(0),
        "unknown"
    );
    cat.insert_hosted(&hosted('b', 1, 50, 2), &[PeerId(1)])
        .unwrap();
    cat.heard_peers(&[heard(2, "1.0", 5)]).unwrap();
    assert_eq!(report_of(&cat, 2).unwrap().hosted_bytes, 50);
    let holders: Vec<PeerId> = (cat.holders_heard().unwrap().iter())
        .map(|h| h.peer)
        .collect();
    assert_eq!(holders, vec![PeerId(1), PeerId(2)]);
    let indexed: bool = cat
        .conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'holders_peer')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(indexed);
    drop(cat);
    // Opening again is harmless.
    Catalog::open(&path).unwrap();
}
