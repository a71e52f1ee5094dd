//! HELLO, peers back, our own id.

use super::*;

#[test]
fn own_id_putchunks_are_looked_into_once_a_second_unless_explained() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    let put = |no| MessageKind::PutChunk {
        chunk: chunk(no),
        rd: rd(1),
        body: vec![],
    };
    for ms in 0..2000u64 {
        p.handle(msg(1, put(ms as u32)), t0 + Duration::from_millis(ms));
    }
    assert_eq!(actions(&mut p).len(), 2);
    // Our own backup echoing back is no evidence.
    p.start_job(JobId(1), JobKind::Backup);
    p.backup_chunk(JobId(1), chunk(5000), rd(1), vec![], vec![], t0);
    actions(&mut p);
    p.handle(msg(1, put(5000)), t0 + Duration::from_secs(10));
    assert!(actions(&mut p).is_empty());
}

#[test]
fn v2_a_peer_is_back_at_its_hello_its_first_word_or_after_a_silence() {
    let t0 = Instant::now();
    let mut p = enhanced(6, t0);
    let backs = |p: &mut Peer| {
        actions(p)
            .into_iter()
            .filter(|a| matches!(a, Action::PeerBack { peer: PeerId(2) }))
            .count()
    };
    p.handle(stored(2, 0), t0);
    assert_eq!(backs(&mut p), 1, "first heard since we started");
    p.handle(stored(2, 1), t0 + BACK_EVERY / 4);
    assert_eq!(backs(&mut p), 0);
    let hello = msg(2, MessageKind::Hello);
    p.handle(hello.clone(), t0 + BACK_EVERY / 2);
    assert_eq!(backs(&mut p), 0, "at most once per BACK_EVERY");
    p.handle(hello, t0 + BACK_EVERY);
    assert_eq!(backs(&mut p), 1);
    let later = t0 + BACK_EVERY + AWAY_AFTER;
    p.handle(stored(2, 2), later);
    assert_eq!(backs(&mut p), 1, "after a silence");
    // HELLO goes out periodically.
    let hellos = run(&mut p, t0, HELLO_EVERY * 3)
        .into_iter()
        .filter(|(_, m)| m.kind == MessageKind::Hello)
        .count();
    assert_eq!(hellos, 3);
    // A DELETED is an acknowledgement for the catalog; the DELETEs it missed go again.
    let file_id = chunk(0).file_id;
    let deleted = MessageKind::Deleted {
        file_id: file_id.clone(),
    };
    p.handle(msg(2, deleted), later);
    assert!(actions(&mut p).contains(&Action::DeleteAcked {
        file_id: file_id.clone(),
        peer: PeerId(2)
    }));
    p.redelete(vec![file_id], later);
    let sent = run(&mut p, later, Duration::from_secs(1));
    let deletes = sent
        .iter()
        .filter(|(_, m)| matches!(m.kind, MessageKind::Delete { .. }))
        .count();
    assert_eq!(deletes, 1 + REDELETE_GAPS.len());
}

#[test]
fn v2_a_new_peers_hello_is_answered_with_ours_once_a_second_at_most() {
    let t0 = Instant::now();
    let mut p = enhanced(8, t0);
    let hellos = |p: &mut Peer, now| {
        run(p, now, Duration::ZERO)
            .into_iter()
            .filter(|(_, m)| m.kind == MessageKind::Hello)
            .count()
    };
    p.handle(msg(2, MessageKind::Hello), t0);
    assert_eq!(hellos(&mut p, t0), 1);
    p.handle(msg(3, MessageKind::Hello), t0);
    p.handle(msg(2, MessageKind::Hello), t0 + BACK_EVERY);
    assert_eq!(hellos(&mut p, t0), 0, "a flood of new ids: one a second");
    p.handle(msg(4, MessageKind::Hello), t0 + BACK_EVERY);
    assert_eq!(hellos(&mut p, t0 + BACK_EVERY), 1);
    // A 1.0 peer says nothing.
    let mut p = Peer::new(ME, 8);
    p.handle(msg(2, MessageKind::Hello), t0);
    assert_eq!(hellos(&mut p, t0), 0);
}
