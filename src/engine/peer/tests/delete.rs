//! DELETE, REMOVED and DELETED; re-backups after a REMOVED.

use super::*;

#[test]
fn a_hosted_chunk_below_rd_is_backed_up_again_unless_another_holder_starts() {
    let t0 = Instant::now();
    for other_starts in [false, true] {
        let mut p = Peer::new(ME, 2);
        p.handle(msg(3, MessageKind::Removed { chunk: chunk(0) }), t0);
        assert_eq!(
            actions(&mut p),
            vec![Action::RemoveHolder {
                chunk: chunk(0),
                peer: PeerId(3)
            }]
        );
        p.removed(&chunk(0), Role::Hosted { desired_rd: 2 }, 1, t0);
        if other_starts {
            let put = MessageKind::PutChunk {
                chunk: chunk(0),
                rd: rd(2),
                body: vec![],
            };
            p.handle(msg(4, put), t0 + Duration::from_millis(1));
            actions(&mut p);
        }
        run(&mut p, t0, Duration::from_secs(1));
        let read = actions(&mut p).contains(&Action::ReadForRebackup {
            chunk: chunk(0),
            desired_rd: 2,
        });
        assert_eq!(read, !other_starts);
    }
    // Re-indexed by --rebuild-catalog, its RD unknown: made up for to the count before
    // the REMOVED (2 holders known: 1 left is below; at least 2 when none other is known).
    for (perceived, desired) in [(1, 2), (2, 3), (0, 2)] {
        let mut p = Peer::new(ME, 2);
        let role = Role::Hosted {
            desired_rd: UNKNOWN_RD,
        };
        p.removed(&chunk(0), role, perceived, t0);
        run(&mut p, t0, Duration::from_secs(1));
        assert_eq!(
            actions(&mut p),
            vec![Action::ReadForRebackup {
                chunk: chunk(0),
                desired_rd: desired,
            }],
            "{perceived} holders left"
        );
    }
    // At its RD: nothing; ours below RD: the home peer's repair.
    let mut p = Peer::new(ME, 2);
    p.removed(&chunk(0), Role::Hosted { desired_rd: 2 }, 2, t0);
    p.removed(&chunk(1), Role::Own { desired_rd: 3 }, 2, t0);
    run(&mut p, t0, Duration::from_secs(1));
    assert_eq!(actions(&mut p), vec![Action::Repair]);
}

#[test]
fn a_rebackup_stops_when_its_file_is_deleted_but_our_own_backups_do_not() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 2);
    p.rebackup(&chunk(0), Some((chunk(0), rd(3), vec![1], vec![ME])), t0);
    p.start_job(JobId(1), JobKind::Backup);
    let other = ChunkId {
        file_id: FileId::parse(&"b".repeat(64)).unwrap(),
        chunk_no: ChunkNo(0),
    };
    p.backup_chunk(JobId(1), other.clone(), rd(3), vec![1], vec![], t0);
    actions(&mut p);
    for file_id in [chunk(0).file_id, other.file_id.clone()] {
        p.handle(msg(4, MessageKind::Delete { file_id }), t0);
    }
    let ended: Vec<ChunkId> = actions(&mut p)
        .into_iter()
        .filter_map(|a| match a {
            Action::BackedUp { chunk, outcome, .. } => {
                assert_eq!(outcome.stopped, Some(Stopped::Deleted));
                Some(chunk)
            }
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec![chunk(0)]);
}

#[test]
fn delete_and_removed_are_repeated_on_their_schedule() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.send_delete(vec![chunk(0).file_id, chunk(1).file_id], t0);
    let sent = run(&mut p, t0, Duration::from_secs(10));
    let at: Vec<u128> = sent.iter().map(|(d, _)| d.as_millis()).collect();
    let expected: Vec<u128> = (0..DELETE_SENDS as u128)
        .flat_map(|i| [i * 300, i * 300])
        .collect();
    assert_eq!(at, expected);
    assert_eq!(
        actions(&mut p),
        vec![Action::DeletesSent {
            file_ids: vec![chunk(0).file_id, chunk(1).file_id]
        }]
    );
    p.send_removed(chunk(0), t0);
    let at: Vec<u128> = run(&mut p, t0, Duration::from_secs(10))
        .iter()
        .map(|(d, _)| d.as_millis())
        .collect();
    assert_eq!(at, vec![0, 200, 600]);
}

#[test]
fn our_own_putchunks_of_a_file_we_deleted_are_no_evidence() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.send_delete(vec![chunk(0).file_id], t0);
    actions(&mut p);
    p.handle(put(1, 0, 1), t0 + Duration::from_secs(1));
    assert!(!actions(&mut p)
        .iter()
        .any(|a| matches!(a, Action::CheckOwnId { .. })));
}

#[test]
fn deleting_a_file_stops_its_backup_and_backing_it_up_again_stops_the_deletes() {
    let t0 = Instant::now();
    let mut p = Peer::new(ME, 1);
    p.start_job(JobId(1), JobKind::Backup);
    p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t0);
    actions(&mut p);
    p.send_delete(vec![chunk(0).file_id], t0);
    assert!(actions(&mut p).iter().any(|a| matches!(
        a,
        Action::BackedUp {
            outcome: BackupOutcome {
                stopped: Some(Stopped::Deleted),
                ..
            },
            ..
        }
    )));
    // Backed up again 300 ms later: the 6 DELETEs still to come are not sent.
    let t1 = t0 + Duration::from_millis(300);
    let sent = run(&mut p, t0, Duration::from_millis(300));
    assert_eq!(
        sent.iter()
            .filter(|(_, m)| m.type_name() == "DELETE")
            .count(),
        2
    );
    p.backup_chunk(JobId(1), chunk(0), rd(2), vec![1], vec![], t1);
    let later: Vec<&str> = run(&mut p, t1, Duration::from_secs(5))
        .iter()
        .map(|(_, m)| m.type_name())
        .collect();
    assert!(!later.contains(&"DELETE"), "{later:?}");
    assert!(actions(&mut p)
        .iter()
        .any(|a| matches!(a, Action::DeletesSent { .. })));
}

#[test]
fn v2_deleted_answers_a_burst_of_deletes_once_a_second() {
    let t0 = Instant::now();
    let mut p = enhanced(5, t0);
    let file_id = chunk(0).file_id;
    let deleteds = |p: &mut Peer, now| {
        run(p, now, Duration::ZERO)
            .into_iter()
            .filter(|(_, m)| matches!(m.kind, MessageKind::Deleted { .. }))
            .count()
    };
    // Holding nothing of it: DELETED (it holds nothing now), once a second at most.
    p.handle(delete(2, 0), t0);
    p.file_deleted(&file_id, false, t0);
    assert_eq!(deleteds(&mut p, t0), 1);
    p.file_deleted(&file_id, false, t0);
    assert_eq!(deleteds(&mut p, t0), 0);
    // A holder that just freed chunks answers at once.
    p.file_deleted(&file_id, true, t0);
    assert_eq!(deleteds(&mut p, t0), 1);
    let t1 = t0 + Duration::from_millis(300);
    p.file_deleted(&file_id, false, t1);
    assert_eq!(deleteds(&mut p, t1), 0);
    let t2 = t0 + DELETED_EVERY;
    p.file_deleted(&file_id, false, t2);
    assert_eq!(
        deleteds(&mut p, t2),
        1,
        "the home peer may have lost the first"
    );
    // At 1.0: never.
    let mut p = Peer::new(ME, 5);
    p.file_deleted(&file_id, true, t0);
    assert_eq!(deleteds(&mut p, t0), 0);
}

#[test]
fn v2_a_rebackup_left_to_another_holder_is_looked_at_again() {
    let t0 = Instant::now();
    let mut p = enhanced(7, t0);
    let role = Role::Hosted { desired_rd: 3 };
    p.removed(&chunk(0), role, 2, t0);
    // Another holder starts first (then dies midway).
    p.handle(put(3, 0, 3), t0);
    run(&mut p, t0, RECHECK_AFTER + MAX_REPLY_DELAY * 2);
    let a = actions(&mut p);
    assert!(!a
        .iter()
        .any(|a| matches!(a, Action::ReadForRebackup { .. })));
    assert!(a.contains(&Action::Recheck { chunk: chunk(0) }));
    // Looked at again: still below, so this holder backs it up now.
    let now = t0 + RECHECK_AFTER + MAX_REPLY_DELAY * 2;
    p.removed(&chunk(0), role, 2, now);
    run(&mut p, now, MAX_REPLY_DELAY);
    assert!(actions(&mut p)
        .iter()
        .any(|a| matches!(a, Action::ReadForRebackup { .. })));
    // At 1.0 nobody looks again.
    let mut p = Peer::new(ME, 7);
    p.removed(&chunk(0), role, 2, t0);
    p.handle(put(3, 0, 3), t0);
    run(&mut p, t0, RECHECK_AFTER * 2);
    assert!(!actions(&mut p).contains(&Action::Recheck { chunk: chunk(0) }));
}
