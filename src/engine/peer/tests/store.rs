//! The holder side of PUTCHUNK and STORED (1.0).

use super::*;

#[test]
fn stored_goes_out_at_the_random_instant_once_the_chunk_is_written() {
    let t0 = Instant::now();
    let mut waits = Vec::new();
    for seed in 0..50 {
        let mut p = Peer::new(ME, seed);
        let put = MessageKind::PutChunk {
            chunk: chunk(0),
            rd: rd(2),
            body: vec![1; 10],
        };
        p.handle(msg(2, put.clone()), t0);
        p.handle(msg(2, put), t0); // a duplicate while it is written: one store
        let a = actions(&mut p);
        assert_eq!(a.len(), 1);
        assert!(matches!(a[0], Action::Store { .. }));
        assert!(
            p.poll_transmit().is_none(),
            "no STORED before the chunk is on disk"
        );
        p.stored(&chunk(0), Put::Written, t0);
        let sent = run(&mut p, t0, Duration::from_secs(1));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.kind, MessageKind::Stored { chunk: chunk(0) });
        waits.push(sent[0].0);
    }
    // Each peer's own random instant, so the holders' STOREDs do not leave together.
    assert_random_waits(&waits);
}

#[test]
fn a_slow_write_sends_stored_as_soon_as_it_is_done() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 3);
    let body = vec![1; 10];
    let put = MessageKind::PutChunk {
        chunk: chunk(0),
        rd: rd(2),
        body,
    };
    p.handle(msg(2, put), t0);
    p.stored(&chunk(0), Put::Held, t0 + Duration::from_secs(2));
    assert!(matches!(
        p.poll_transmit().map(|m| m.kind),
        Some(MessageKind::Stored { .. })
    ));
}

#[test]
fn a_delete_while_writing_drops_the_chunk_and_its_stored() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.handle(put(2, 0, 1), t0);
    p.handle(delete(2, 0), t0);
    p.stored(&chunk(0), Put::Written, t0);
    let a = actions(&mut p);
    assert!(a.contains(&Action::DropHosted { chunk: chunk(0) }), "{a:?}");
    assert!(run(&mut p, t0, Duration::from_secs(1)).is_empty());
    // Stored earlier, DELETE during the random wait: no STORED either.
    let mut p = Peer::new(ME, 1);
    p.handle(put(2, 1, 1), t0);
    p.stored(&chunk(1), Put::Written, t0);
    p.handle(delete(3, 1), t0);
    assert!(run(&mut p, t0, Duration::from_secs(1)).is_empty());
}

#[test]
fn a_putchunk_is_not_stored_while_its_files_deletion_runs() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.handle(delete(2, 0), t0);
    p.handle(delete(2, 0), t0);
    actions(&mut p);
    p.handle(put(2, 0, 1), t0);
    assert!(actions(&mut p).is_empty(), "not while deleting");
    p.file_deleted(&chunk(0).file_id, true, t0);
    p.handle(put(2, 0, 1), t0);
    assert!(actions(&mut p).is_empty(), "the second DELETE still runs");
    p.file_deleted(&chunk(0).file_id, false, t0);
    p.handle(put(2, 0, 1), t0);
    assert!(
        actions(&mut p).is_empty(),
        "the DELETE may have overtaken it"
    );
    p.handle(put(2, 0, 1), t0 + DELETE_GRACE);
    assert!(matches!(actions(&mut p)[..], [Action::Store { .. }]));
}

#[test]
fn storeds_heard_while_writing_are_recorded_once_written() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.handle(put(2, 0, 1), t0);
    for from in [3, 3, 4] {
        p.handle(msg(from, MessageKind::Stored { chunk: chunk(0) }), t0);
    }
    actions(&mut p);
    p.stored(&chunk(0), Put::Written, t0);
    assert_eq!(
        actions(&mut p),
        vec![Action::RecordHolders {
            chunk: chunk(0),
            peers: vec![PeerId(3), PeerId(4)]
        }]
    );
}

#[test]
fn storeds_heard_while_checking_a_held_chunk_are_recorded_too() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.handle(put(2, 0, 1), t0);
    p.handle(msg(3, MessageKind::Stored { chunk: chunk(0) }), t0);
    actions(&mut p);
    p.stored(&chunk(0), Put::Held, t0);
    assert_eq!(
        actions(&mut p),
        vec![Action::RecordHolders {
            chunk: chunk(0),
            peers: vec![PeerId(3)]
        }]
    );
}

#[test]
fn a_flood_of_putchunks_is_bounded() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    let sent = MAX_CONCURRENT_STORES as u32 + 1000;
    for no in 0..sent {
        let put = MessageKind::PutChunk {
            chunk: chunk(no),
            rd: rd(1),
            body: vec![],
        };
        p.handle(msg(2, put), t0);
    }
    assert_eq!(actions(&mut p).len(), MAX_CONCURRENT_STORES);
    assert_eq!(p.counters().busy_drops, 1000);
}

#[test]
fn a_flood_of_whole_chunks_is_bounded_by_their_bytes() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    let body = vec![1u8; crate::protocol::CHUNK_SIZE];
    for no in 0..1000 {
        let put = MessageKind::PutChunk {
            chunk: chunk(no),
            rd: rd(1),
            body: body.clone(),
        };
        p.handle(msg(2, put), t0);
    }
    let held = MAX_STORING_BYTES / body.len();
    assert_eq!(actions(&mut p).len(), held);
    assert_eq!(p.counters().busy_drops, 1000 - held as u64);
    // Written: their room is given back.
    p.stored(&chunk(0), Put::Written, t0);
    let put = MessageKind::PutChunk {
        chunk: chunk(5000),
        rd: rd(1),
        body,
    };
    p.handle(msg(2, put), t0);
    assert!(actions(&mut p)
        .iter()
        .any(|a| matches!(a, Action::Store { .. })));
}

#[test]
fn a_chunk_dropped_before_its_stored_went_out_gets_no_stored() {
    let t0 = Instant::now();
    for seed in 0..20 {
        let mut p = Peer::new(ME, seed);
        let put = MessageKind::PutChunk {
            chunk: chunk(0),
            rd: rd(1),
            body: vec![],
        };
        p.handle(msg(2, put), t0);
        p.stored(&chunk(0), Put::Written, t0);
        p.send_removed(chunk(0), t0);
        let kinds: Vec<&'static str> = run(&mut p, t0, Duration::from_secs(2))
            .iter()
            .map(|(_, m)| m.type_name())
            .collect();
        assert!(kinds.iter().all(|k| *k == "REMOVED"), "{kinds:?}");
    }
}

#[test]
fn announcements_are_paced() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.announce((0..250).map(chunk).collect(), t0);
    let sent = run(&mut p, t0, Duration::from_secs(5));
    let per_tick: Vec<usize> = [0, 100, 200]
        .iter()
        .map(|ms| sent.iter().filter(|(d, _)| d.as_millis() == *ms).count())
        .collect();
    assert_eq!(per_tick, vec![100, 100, 50]);
    assert_eq!(actions(&mut p), vec![Action::Announced]);
}
