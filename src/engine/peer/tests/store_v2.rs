//! The holder side of PUTCHUNK and STORED in 2.0: the random wait, write-ahead and trim.

use super::*;

#[test]
fn v2_stores_only_if_fewer_than_rd_peers_stored_during_its_wait() {
    let t0 = Instant::now();
    let (mut ahead, mut waited) = (0, 0);
    for seed in 0..40 {
        for storeds in 0..4u32 {
            let mut p = enhanced(seed, t0);
            // 9 peers heard: those with waits below 3/10 of the range write ahead.
            for id in 30..38 {
                p.handle(msg(id, MessageKind::Hello), t0);
            }
            p.handle(put(20, 0, 2), t0);
            // A short wait writes at once (like 1.0); a long one waits first.
            let early = actions(&mut p);
            let wrote_ahead = store_write(&early).is_some();
            for from in 2..2 + storeds {
                p.handle(stored(from, 0), t0);
                p.handle(stored(from, 0), t0); // duplicates count once
            }
            run(&mut p, t0, MAX_REPLY_DELAY);
            let late: Vec<Action> = actions(&mut p)
                .into_iter()
                .filter(|a| matches!(a, Action::Store { .. }))
                .collect();
            let write = match wrote_ahead {
                true => {
                    ahead += 1;
                    assert!(late.is_empty());
                    true
                }
                false => {
                    waited += 1;
                    store_write(&late).unwrap()
                }
            };
            assert_eq!(write, wrote_ahead || storeds < 2, "{storeds} STOREDs heard");
            // Kept and announced only if fewer than RD peers said STORED; a chunk held
            // already (the initiator lost our STORED) is announced whatever they said.
            let now = t0 + MAX_REPLY_DELAY;
            let put = if write { Put::Written } else { Put::Held };
            p.stored(&chunk(0), put, now);
            let sent = run(&mut p, now, MAX_REPLY_DELAY);
            let announced = sent
                .iter()
                .any(|(_, m)| matches!(m.kind, MessageKind::Stored { .. }));
            let dropped = actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) });
            assert_eq!(announced, !write || storeds < 2, "seed {seed}, {storeds}");
            assert_eq!(dropped, write && storeds >= 2, "seed {seed}, {storeds}");
        }
    }
    assert!(
        ahead > 0 && waited > 0,
        "both ways: {ahead} ahead, {waited} waited"
    );
}

#[test]
fn v2_the_fewer_peers_heard_the_more_write_ahead_and_a_resent_putchunk_counts_known_holders() {
    let t0 = Instant::now();
    let mut p = enhanced(1, t0);
    // One peer heard: every wait writes ahead.
    p.handle(msg(30, MessageKind::Hello), t0);
    assert!(p.write_ahead_below(rd(2)) > MAX_REPLY_DELAY);
    for id in 31..40 {
        p.handle(msg(id, MessageKind::Hello), t0);
    }
    // 10 peers: the 3 shortest of 10 waits are expected below 3/11 of the range.
    assert_eq!(p.write_ahead_below(rd(2)), MAX_REPLY_DELAY * 3 / 11);
    // Peers 2 and 3 stored chunk 0 (the sender lost their STOREDs and sends it again).
    p.handle(stored(2, 0), t0);
    p.handle(stored(3, 0), t0);
    let t1 = t0 + Duration::from_secs(1);
    p.handle(put(20, 0, 2), t1);
    run(&mut p, t1, MAX_REPLY_DELAY);
    match store_write(&actions(&mut p)) {
        Some(true) => {
            // Written ahead: dropped at its instant.
            p.stored(&chunk(0), Put::Written, t1);
            run(&mut p, t1, MAX_REPLY_DELAY);
            assert!(actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
        }
        other => assert_eq!(other, Some(false), "not written"),
    }
    // A REMOVED takes the peer out of what is remembered.
    let removed = MessageKind::Removed { chunk: chunk(1) };
    p.handle(stored(2, 1), t1);
    p.handle(stored(3, 1), t1);
    p.handle(msg(3, removed), t1);
    let known = p.store.storeds_of(&chunk(1));
    assert_eq!(known, Some(vec![PeerId(2)]));

    // Nor one heard before the file's DELETE (its copy went with it): the same version
    // backed up again right after is stored anew.
    let mut q = enhanced(1, t0);
    q.handle(stored(2, 0), t0);
    q.handle(stored(3, 0), t0);
    q.handle(delete(9, 0), t0 + Duration::from_millis(10));
    q.file_deleted(&chunk(0).file_id, false, t0 + Duration::from_millis(10));
    let t2 = t0 + Duration::from_secs(2);
    q.handle(put(9, 0, 2), t2);
    run(&mut q, t2, MAX_REPLY_DELAY);
    assert_eq!(store_write(&actions(&mut q)), Some(true));
    q.stored(&chunk(0), Put::Written, t2 + MAX_REPLY_DELAY);
    run(&mut q, t2, MAX_REPLY_DELAY * 2);
    assert!(!actions(&mut q).contains(&Action::DropHosted { chunk: chunk(0) }));

    // A holder not heard for three HELLOs (a lost one) is not counted.
    let mut p = Peer::new(ME, 1);
    p.enhance(Some(7000), Duration::from_secs(1));
    p.handle(stored(2, 0), t0);
    p.handle(stored(3, 0), t0);
    let t1 = t0 + Duration::from_millis(3500);
    p.handle(msg(3, MessageKind::Hello), t1 - Duration::from_secs(1));
    p.handle(put(20, 0, 2), t1);
    run(&mut p, t1, MAX_REPLY_DELAY);
    assert_eq!(store_write(&actions(&mut p)), Some(true));
    p.stored(&chunk(0), Put::Written, t1 + MAX_REPLY_DELAY);
    run(&mut p, t1, MAX_REPLY_DELAY * 2);
    assert!(!actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
}

#[test]
fn v2_a_copy_written_ahead_is_kept_or_dropped_at_its_random_instant() {
    let t0 = Instant::now();
    let seed = (0..100)
        .find(|s| {
            let mut p = enhanced(*s, t0);
            p.handle(put(20, 0, 2), t0);
            store_write(&actions(&mut p)).is_some()
        })
        .unwrap();
    for storeds in [1, 2] {
        let mut p = enhanced(seed, t0);
        p.handle(put(20, 0, 2), t0);
        actions(&mut p);
        // Written at once, before its instant: nothing said yet.
        p.stored(&chunk(0), Put::Written, t0);
        assert!(run(&mut p, t0, Duration::ZERO).is_empty());
        for from in 2..2 + storeds {
            p.handle(stored(from, 0), t0 + Duration::from_millis(1));
        }
        let sent = run(&mut p, t0, MAX_REPLY_DELAY);
        let dropped = actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) });
        assert_eq!(
            (sent.len(), dropped),
            if storeds < 2 { (1, false) } else { (0, true) }
        );
    }
}

/// A 2.0 peer with id `id` that decided to write chunk 0 (RD 2) at `t0 + MAX_REPLY_DELAY`.
fn writing(id: u32, t0: Instant) -> Peer {
    let mut p = Peer::new(PeerId(id), 1);
    p.enhance(Some(7000), HELLO_EVERY);
    p.handle(put(20, 0, 2), t0);
    run(&mut p, t0, MAX_REPLY_DELAY);
    let a = actions(&mut p);
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Store { write: true, .. })));
    p
}

#[test]
fn v2_a_copy_written_while_rd_peers_announced_theirs_goes_without_a_word() {
    let t0 = Instant::now();
    let now = t0 + MAX_REPLY_DELAY;
    // Peers 3 and 4 announce theirs while ours is written: ours is not needed (peer 4
    // heard only peer 3: it keeps its own).
    for (me, dropped) in [(9, true), (2, true), (4, false)] {
        let mut p = writing(me, t0);
        p.handle(stored(3, 0), now);
        p.handle(stored(4, 0), now);
        p.stored(&chunk(0), Put::Written, now);
        let a = actions(&mut p);
        assert_eq!(a.contains(&Action::DropHosted { chunk: chunk(0) }), dropped);
        let sent = run(&mut p, now, Duration::from_secs(1));
        assert_eq!(sent.is_empty(), dropped, "STORED only for a kept copy");
    }
    // At 1.0 the same peer keeps it.
    let mut p = Peer::new(PeerId(9), 1);
    p.handle(put(2, 0, 2), t0);
    p.handle(stored(3, 0), t0);
    p.handle(stored(4, 0), t0);
    p.stored(&chunk(0), Put::Written, t0);
    assert!(!actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
    assert_eq!(run(&mut p, t0, MAX_REPLY_DELAY).len(), 1, "STORED");
}

#[test]
fn v2_a_copy_announced_at_the_same_moment_as_rd_lower_ids_goes_with_removed() {
    let t0 = Instant::now();
    let now = t0 + MAX_REPLY_DELAY;
    let removeds = |sent: &[(Duration, Message)]| {
        sent.iter()
            .filter(|(_, m)| matches!(m.kind, MessageKind::Removed { .. }))
            .count()
    };
    let mut p = writing(9, t0);
    p.stored(&chunk(0), Put::Written, now);
    assert_eq!(run(&mut p, now, Duration::ZERO).len(), 1, "STORED");
    p.handle(stored(3, 0), now);
    p.handle(stored(12, 0), now); // a higher id does not count
    p.handle(stored(3, 0), now); // nor a duplicate
    assert!(actions(&mut p)
        .iter()
        .all(|a| !matches!(a, Action::DropHosted { .. })));
    p.handle(stored(4, 0), now + Duration::from_millis(50));
    assert!(actions(&mut p).contains(&Action::DropHosted { chunk: chunk(0) }));
    let sent = run(&mut p, now, Duration::from_secs(1));
    assert_eq!(removeds(&sent), 1 + REMOVED_GAPS.len());
    // Too late: the copy stays.
    let mut p = writing(9, t0);
    p.stored(&chunk(0), Put::Written, now);
    let later = now + TRIM_WINDOW + Duration::from_millis(1);
    p.handle(stored(3, 0), later);
    p.handle(stored(4, 0), later);
    assert!(actions(&mut p)
        .iter()
        .all(|a| !matches!(a, Action::DropHosted { .. })));
}
