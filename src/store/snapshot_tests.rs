use rusqlite::params;

use super::super::catalog::snapshots::after_recover;
use super::*;
use crate::protocol::FileId;
use crate::store::catalog::tests::{self as fixture, schema};

fn row(day: u32, n: u16, at_rd: bool) -> SnapshotRow {
    SnapshotRow {
        file_id: FileId::from_digest(&[(day as u8).wrapping_mul(16) ^ n as u8; 32]),
        slot: SnapshotNo::Dated(Slot { day, n }),
        at_rd,
        taken_ms: None,
    }
}

fn numbered(n: u64, at_rd: bool) -> SnapshotRow {
    let mut digest = [0xEE; 32];
    digest[..8].copy_from_slice(&n.to_be_bytes());
    SnapshotRow {
        file_id: FileId::from_digest(&digest),
        slot: SnapshotNo::Numbered(n),
        at_rd,
        taken_ms: None,
    }
}

fn kept(rows: &[SnapshotRow]) -> Vec<SnapshotNo> {
    let gone = superseded(rows);
    let mut k: Vec<SnapshotNo> = (rows.iter())
        .filter(|r| !gone.contains(&r.file_id))
        .map(|r| r.slot)
        .collect();
    k.sort();
    k
}

#[test]
fn dated_ones_keep_the_newest_at_rd_its_anchor_and_a_few_newer_ones() {
    let s = |day, n| SnapshotNo::Dated(Slot { day, n });
    // Day 10: anchor, 5, 9 (at RD); day 11: anchor (not yet at RD).
    let rows = [
        row(9, 0, true),
        row(10, 0, true),
        row(10, 5, true),
        row(10, 9, true),
        row(11, 0, false),
    ];
    assert_eq!(kept(&rows), vec![s(10, 0), s(10, 9), s(11, 0)]);
    // Once day 11's anchor is at RD, day 10 goes.
    let rows = [row(10, 0, true), row(10, 9, true), row(11, 0, true)];
    assert_eq!(kept(&rows), vec![s(11, 0)]);
    // None at RD (no peer to hold them): the three newest and their anchors.
    let rows: Vec<SnapshotRow> = (0..6).map(|n| row(12, n, false)).collect();
    assert_eq!(kept(&rows), vec![s(12, 0), s(12, 3), s(12, 4), s(12, 5)]);
    assert!(superseded(&[]).is_empty());
    // A numbered one below its RD deletes none of them; at its RD, all.
    let mut rows = vec![row(10, 0, true), row(10, 9, true), numbered(1, false)];
    assert_eq!(kept(&rows).len(), 3);
    rows[2].at_rd = true;
    assert_eq!(kept(&rows), vec![SnapshotNo::Numbered(1)]);
}

/// Issue 24, case 6: snapshots are taken one after another (each kept set as `superseded`
/// leaves it), and at every step a recover's search (`search_start`, `search_round`),
/// asking only for what is kept, finds the newest, in O(log n) rounds; O(log n) are kept.
/// After a recover the numbers jump (`after_recover`) and the search still finds the newest.
#[test]
fn the_newest_numbered_snapshot_is_found_in_log_n_rounds_among_log_n_kept() {
    fn search(kept: &[u64]) -> (Option<u64>, usize) {
        let hit = |probes: Vec<u64>| probes.into_iter().filter(|p| kept.contains(p)).max();
        let Some(mut base) = hit(search_start()) else {
            return (None, 1);
        };
        let (mut bits, mut rounds) = (base.trailing_zeros(), 1);
        while bits > 0 {
            let (probes, left) = search_round(base, bits);
            base = hit(probes).unwrap_or(base);
            (bits, rounds) = (left, rounds + 1);
        }
        (Some(base), rounds)
    }
    let mut rows: Vec<SnapshotRow> = Vec::new();
    let mut next = 1u64;
    for step in 0..1500u64 {
        if step == 700 {
            next = after_recover(next - 1); // a recover that found the newest
        }
        rows.push(numbered(next, true));
        let gone = superseded(&rows);
        rows.retain(|r| !gone.contains(&r.file_id));
        let nos: Vec<u64> = (rows.iter())
            .filter_map(|r| match r.slot {
                SnapshotNo::Numbered(n) => Some(n),
                SnapshotNo::Dated(_) => None,
            })
            .collect();
        let (found, rounds) = search(&nos);
        assert_eq!(found, Some(next), "step {step}, kept {nos:?}");
        let log = 64 - next.leading_zeros() as usize;
        assert!(rounds <= 1 + log.div_ceil(6), "{rounds} rounds for {next}");
        assert!(nos.len() <= log + 2, "{} kept for {next}", nos.len());
        next += 1;
    }
    assert_eq!(search(&[]), (None, 1));
    // The newest below its RD: the newest at RD, its chain and the newer ones stay.
    let rows: Vec<SnapshotRow> = (1..=20).map(|n| numbered(n, n <= 13)).collect();
    let k = kept(&rows);
    for n in [13, 12, 8, 20, 19, 18, 16] {
        assert!(k.contains(&SnapshotNo::Numbered(n)), "{n} kept: {k:?}");
    }
}

/// Issue 24, case 6: the numbers come from the catalog alone: one more each time, never one
/// used before, far above what a recover found; no clock is read.
#[test]
fn restore_all_takes_the_installed_snapshots_time_until_it_ran_then_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    assert_eq!(cat.restore_cutoff_ms().unwrap(), None);
    let (one, two) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
    cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5_000)
        .unwrap();
    cat.claim_snapshot(&two, SnapshotNo::Numbered(2), 9_000)
        .unwrap();
    assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(9_000));
    // Recovered from snapshot 1 (its own row, as it carries it): its time is kept, and is
    // the loss's until restore --all has run, whatever is taken meanwhile.
    cat.adopt_snapshot(&one, SnapshotNo::Numbered(1), 2)
        .unwrap();
    assert_eq!(cat.snapshots().unwrap()[0].taken_ms, Some(5_000));
    let later = FileId::from_digest(&[3; 32]);
    cat.claim_snapshot(&later, SnapshotNo::Numbered(4096), 20_000)
        .unwrap();
    assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(5_000));
    cat.delete_meta(EXPIRY_HOLD).unwrap();
    assert_eq!(cat.restore_cutoff_ms().unwrap(), Some(20_000));
}

#[test]
fn a_snapshot_counts_at_its_rd_only_while_its_holders_are_known_to_hold_it() {
    use crate::protocol::{ChunkNo, PeerId};
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let one = numbered(1, false).file_id;
    cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5_000)
        .unwrap();
    let now = |cat: &Catalog| {
        let r = cat.snapshots().unwrap().pop().unwrap();
        cat.snapshot_at_rd_now(&r, 2).unwrap()
    };
    assert!(!now(&cat), "never reached its RD");
    // Installed by a recover: found whole on the peers, no chunk rows here.
    cat.set_snapshot_at_rd(&one).unwrap();
    assert!(now(&cat));
    assert!(cat.snapshots_below_rd(2).unwrap().is_empty());
    // Sent from here: its chunk rows and their holders decide.
    let version = crate::store::FileRow {
        file_id: one.clone(),
        path: "/var/lib/peerstash/snapshots/1".into(),
        version: 0,
        size: 128_000,
        mtime_ns: 1,
        mode: 0o600,
        content_hash: "h".into(),
        desired_rd: 2,
        complete: true,
        inode: 0,
        uid: 0,
        gid: 0,
        deleted_at: None,
        ctime_ns: 0,
        encrypted: true,
        key_fp: None,
        completed_ms: None,
        random: false,
    };
    cat.insert_version(&version, crate::store::catalog::BackupId::new())
        .unwrap();
    for c in 0..2 {
        cat.record_file_chunk(&one, ChunkNo(c), 64_000, "h")
            .unwrap();
        cat.add_holders(&one, ChunkNo(c), &[PeerId(2), PeerId(3)])
            .unwrap();
    }
    assert!(now(&cat));
    // A holder reclaimed one chunk (REMOVED): below its RD, sent again.
    cat.remove_holder(&one, ChunkNo(1), PeerId(3)).unwrap();
    assert!(!now(&cat));
    assert_eq!(cat.snapshots_below_rd(2).unwrap().len(), 1);
}

#[test]
fn numbers_go_up_by_one_never_repeat_and_jump_after_a_recover() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    assert_eq!(cat.next_snapshot_no().unwrap(), 1);
    // A dated one of before the upgrade: numbers start at 1 all the same.
    cat.claim_snapshot(
        &FileId::from_digest(&[9; 32]),
        SnapshotNo::Dated(Slot::anchor(3)),
        0,
    )
    .unwrap();
    assert_eq!(cat.next_snapshot_no().unwrap(), 1);
    let one = FileId::from_digest(&[1; 32]);
    cat.claim_snapshot(&one, SnapshotNo::Numbered(1), 5)
        .unwrap();
    assert!(cat
        .claim_snapshot(&FileId::from_digest(&[2; 32]), SnapshotNo::Numbered(1), 6)
        .is_err());
    assert_eq!(cat.next_snapshot_no().unwrap(), 2);
    // The time is a label: a snapshot dated a year ahead changes nothing of the order.
    let two = FileId::from_digest(&[2; 32]);
    cat.claim_snapshot(&two, SnapshotNo::Numbered(2), i64::MAX / 2)
        .unwrap();
    assert_eq!(cat.next_snapshot_no().unwrap(), 3);
    assert_eq!(cat.snapshots().unwrap()[2].taken_ms, Some(i64::MAX / 2));
    // Given back before anything was sent: taken again.
    assert!(cat.release_snapshot(&two).unwrap());
    assert_eq!(cat.next_snapshot_no().unwrap(), 2);
    // A recover that saw numbers up to 40: a power of two far above.
    cat.adopt_snapshot(&FileId::from_digest(&[4; 32]), SnapshotNo::Numbered(37), 40)
        .unwrap();
    let jumped = cat.next_snapshot_no().unwrap();
    assert_eq!(jumped, 4096);
    cat.claim_snapshot(
        &FileId::from_digest(&[5; 32]),
        SnapshotNo::Numbered(jumped),
        7,
    )
    .unwrap();
    assert_eq!(cat.next_snapshot_no().unwrap(), jumped + 1);
    assert_eq!(
        cat.meta(EXPIRY_HOLD).unwrap(),
        Some(EXPIRY_HOLD_MS.to_string())
    );
}

/// Issue 24, case 2: with keep_versions = 1, version 1 goes only once a snapshot at its RD,
/// claimed after version 2 completed, names version 2.
#[test]
fn an_old_version_goes_only_once_a_snapshot_at_its_rd_names_its_successor() {
    use crate::store::catalog::Forget;
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let (v1, v2) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
    for (id, version) in [(&v1, 1), (&v2, 2)] {
        cat.conn
            .execute(
                "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
                 VALUES (?1, X'2F66', ?2, 3, 0, 420, 'h', 2)",
                params![id, version],
            )
            .unwrap();
    }
    let keep = Forget::History;
    cat.set_file_complete(&v1).unwrap();
    let early = FileId::from_digest(&[7; 32]);
    cat.claim_snapshot(&early, SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.set_snapshot_at_rd(&early).unwrap();
    cat.set_file_complete(&v2).unwrap();
    assert!(cat.versions_held().unwrap());
    assert!(!cat.forget(&v1, keep, 0).unwrap(), "no snapshot names v2");
    let named = FileId::from_digest(&[8; 32]);
    cat.claim_snapshot(&named, SnapshotNo::Numbered(2), 0)
        .unwrap();
    assert!(!cat.forget(&v1, keep, 0).unwrap(), "not at its RD yet");
    assert_eq!(
        cat.held_paths(0, cat.snapshotted_mark().unwrap())
            .unwrap()
            .len(),
        0
    );
    cat.set_snapshot_at_rd(&named).unwrap();
    assert!(!cat.versions_held().unwrap());
    assert_eq!(
        cat.held_paths(1, cat.snapshotted_mark().unwrap()).unwrap(),
        vec![PathBuf::from("/f")]
    );
    assert!(cat.forget(&v1, keep, 0).unwrap());
}

#[test]
fn a_snapshot_carries_our_files_and_not_what_we_host_and_installs_over_a_new_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let cat = Catalog::open(&live).unwrap();
    cat.set_meta("k", "v").unwrap();
    cat.conn
        .execute_batch(
            "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
             VALUES (X'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', X'2F77', 1, 3, 0, 420, 'h', 2);
             INSERT INTO holders VALUES (X'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 0, 7);
             INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd)
             VALUES (X'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 0, 'BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB', 1, 'h', 1);
             INSERT INTO queue (path, due_at) VALUES (X'2F78', 0);",
        )
        .unwrap();
    cat.note_folders(&[crate::store::catalog::FolderRow {
        path: "/w".into(),
        uid: 1234,
        gid: 99,
        mode: 0o750,
        mtime_ns: 5,
    }])
    .unwrap();
    let copy = dir.path().join("copy.db");
    write_database(&live, &copy).unwrap();
    let snap = Catalog::open(&copy).unwrap();
    let count = |c: &Catalog, t: &str| -> i64 {
        c.conn
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&snap, "files"), 1);
    assert_eq!(count(&snap, "holders"), 1);
    assert_eq!(count(&snap, "holder_counts"), 1, "kept by its triggers");
    assert_eq!(count(&snap, "hosted"), 0);
    assert_eq!(count(&snap, "queue"), 0);
    assert_eq!(
        snap.folders_below(Path::new("/")).unwrap().len(),
        1,
        "folders carried"
    );
    assert_eq!(snap.meta("k").unwrap().as_deref(), Some("v"));
    drop(snap);
    assert_eq!(check_catalog(&copy).unwrap(), 1);

    // Installed in a state folder whose new catalog hosts a chunk: the chunk stays.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = state.join("catalog.db");
    let fresh = Catalog::open(&db).unwrap();
    fresh
        .conn
        .execute_batch(
            "INSERT INTO hosted (file_id, chunk_no, wire_id, size, hash, desired_rd)
             VALUES (X'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', 0, 'CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC', 1, 'h', 1);",
        )
        .unwrap();
    drop(fresh); // installed at start, before the catalog opens
    std::fs::copy(&copy, state.join(RECOVERED)).unwrap();
    assert!(install_recovered(&state).unwrap());
    assert!(!install_recovered(&state).unwrap(), "installed once");
    let installed = Catalog::open(&db).unwrap();
    assert_eq!(count(&installed, "files"), 1);
    assert_eq!(count(&installed, "hosted"), 1);
    assert!(state.join(REPLACED).exists());
}

/// Issue 23, case 6: a snapshot whose backup found its file changed keeps its version row,
/// so its slot (its fileId, its key) is never given back and sealed again with other bytes.
/// A file's abandoned version, inserted by the same backup run, is forgotten as before.
#[test]
fn an_abandoned_snapshot_keeps_its_slot() {
    use crate::store::catalog::{BackupId, Forget};
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let (snap, file) = (FileId::from_digest(&[1; 32]), FileId::from_digest(&[2; 32]));
    let slot = SnapshotNo::Numbered(7);
    cat.claim_snapshot(&snap, slot, 0).unwrap();
    for (id, path) in [(&snap, "X'2F73'"), (&file, "X'2F66'")] {
        cat.conn
            .execute(
                &format!(
                    "INSERT INTO files (file_id, path, version, size, mtime_ns, mode,
                                        content_hash, desired_rd, backup_id, encrypted)
                     VALUES (?1, {path}, 1, 3, 0, 384, 'h', 2, 5, 1)"
                ),
                [&id],
            )
            .unwrap();
    }
    let abandoned = Forget::Abandoned {
        backup: BackupId(5),
    };
    assert!(!cat.forget(&snap, abandoned, 0).unwrap(), "snapshot kept");
    assert!(!cat.release_snapshot(&snap).unwrap());
    assert_eq!(cat.next_snapshot_no().unwrap(), 8);
    assert!(
        cat.forget(&file, abandoned, 0).unwrap(),
        "a file's forgotten"
    );
}

/// Issue 23, case 6: a version is resumed (sealed again under its key) only where every
/// chunk ever sent is recorded, with this content's bytes. An unfinished encrypted version
/// that a resumed backup found changed, or that came with a recovered catalog (more chunks
/// may have been sent after the snapshot), is never resumed; a complete one is.
#[test]
fn an_unfinished_encrypted_version_is_resumed_only_while_its_records_hold() {
    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.conn
        .execute_batch(
            "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash,
                                desired_rd, complete, encrypted)
             VALUES (X'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', X'2F61', 1, 3, 5, 420, 'h', 2, 0, 1),
                    (X'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', X'2F62', 1, 3, 5, 420, 'h', 2, 1, 1),
                    (X'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', X'2F63', 1, 3, 5, 420, 'h', 2, 0, 0);",
        )
        .unwrap();
    let found = |path: &str| {
        cat.sealed_version(Path::new(path), 3, 5, "h")
            .unwrap()
            .map(|f| f.file_id.key())
    };
    assert_eq!(found("/a").as_deref(), Some(A), "unfinished here: resumed");
    assert_eq!(
        cat.sealed_version(Path::new("/a"), 3, 6, "h").unwrap(),
        None
    );
    assert_eq!(found("/c"), None, "not encrypted");
    // A resumed backup found the file changed: resumed no more while unfinished.
    let (a, b) = (FileId::parse(A).unwrap(), FileId::parse(B).unwrap());
    cat.stop_resuming(&b).unwrap();
    assert_eq!(found("/b").as_deref(), Some(B), "complete: still resumed");
    cat.stop_resuming(&a).unwrap();
    assert_eq!(found("/a"), None, "unfinished, found changed: not resumed");
    cat.conn
        .execute_batch("UPDATE files SET no_resume = 0")
        .unwrap();
    assert_eq!(found("/a").as_deref(), Some(A));
    cat.adopt_snapshot(&FileId::from_digest(&[1; 32]), SnapshotNo::Numbered(9), 9)
        .unwrap();
    assert_eq!(found("/a"), None, "unfinished, recovered: not resumed");
    assert_eq!(
        found("/b").as_deref(),
        Some(B),
        "complete: every chunk recorded"
    );
}

#[test]
fn a_snapshot_file_cut_short_or_changed_is_not_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::write(&db, vec![7u8; 10_000]).unwrap();
    let out = dir.path().join("snap");
    write_file(&db, &out).unwrap();
    let open = || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&out)
            .unwrap()
    };
    assert_eq!(check_file(&mut open()), Ok(()));
    let f = open();
    f.set_len((HEADER_LEN + 5_000) as u64).unwrap();
    assert!(check_file(&mut open()).unwrap_err().contains("5000 bytes"));
    std::fs::write(&out, [&header(3, &[0; 32])[..], b"abc"].concat()).unwrap();
    assert!(check_file(&mut open()).unwrap_err().contains("hash"));
}

#[test]
fn headers_round_trip_and_check_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = b"database bytes";
    let hash: [u8; 32] = Sha256::digest(db).into();
    let h = header(db.len() as u64, &hash);
    assert_eq!(parse_header(&h), Some((db.len() as u64, hash)));
    let file = |bytes: &[u8]| {
        let p = dir.path().join("db");
        std::fs::write(&p, bytes).unwrap();
        p
    };
    assert!(check_database(&h, &file(db)).is_ok());
    assert!(check_database(&h, &file(b"database bytez")).is_err());
    assert!(check_database(&h, &file(b"database")).is_err());
    assert!(check_database(&h, &dir.path().join("none")).is_err());
    assert!(parse_header(b"PSCATLG2").is_none(), "short");
    // Snapshots of the releases that kept fileIds as text are read; a newer kind is refused
    // with what to do.
    let mut older = h;
    older[..8].copy_from_slice(b"PSCATLG1");
    assert_eq!(parse_header(&older), Some((db.len() as u64, hash)));
    let mut newer = h;
    newer[..8].copy_from_slice(b"PSCATLG3");
    assert_eq!(parse_header(&newer), None);
    assert!(check_database(&newer, &file(db))
        .unwrap_err()
        .contains("newer peerstash"));
    // A written snapshot file: header, then the database, whole.
    let out = dir.path().join("snap");
    let len = write_file(&file(db), &out).unwrap();
    let written = std::fs::read(&out).unwrap();
    assert_eq!(len as usize, written.len());
    assert_eq!(&written[..HEADER_LEN], &h[..]);
    assert_eq!(&written[HEADER_LEN..], db);
}

#[test]
fn the_snapshot_shown_is_the_newest_a_recover_finds() {
    let newest = |rows: Vec<SnapshotRow>| newest_findable(rows).map(|r| (r.slot, r.at_rd));
    let s = |day, n| SnapshotNo::Dated(Slot { day, n });
    // Numbered: the newest at its RD, whatever the dated ones.
    assert_eq!(
        newest(vec![row(4, 0, true), numbered(1, true), numbered(2, false)]),
        Some((SnapshotNo::Numbered(1), true))
    );
    assert_eq!(newest(vec![]), None);
    assert_eq!(
        newest(vec![row(4, 0, true), row(4, 2, true), row(4, 3, false)]),
        Some((s(4, 2), true))
    );
    // Day 5's anchor reached no peer: a recover finds day 4, not day 5's later snapshot.
    assert_eq!(
        newest(vec![row(4, 0, true), row(5, 0, false), row(5, 1, true)]),
        Some((s(4, 0), true))
    );
    // None found: the newest, below its RD.
    assert_eq!(
        newest(vec![row(5, 0, false), row(5, 1, true)]),
        Some((s(5, 1), false))
    );
}

/// Issue 24, case 11: a recovered catalog expires nothing (every file looks deleted while
/// the watched folders are empty) until the hold is lifted (`restore --all`, or 7 days).
#[test]
fn a_recovered_catalog_expires_nothing_until_the_hold_is_lifted() {
    use crate::store::catalog::Forget;
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let f = FileId::from_digest(&[3; 32]);
    cat.conn
        .execute(
            "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd, complete)
             VALUES (?1, X'2F66', 1, 3, 0, 420, 'h', 2, 1)",
            [&f],
        )
        .unwrap();
    cat.set_meta(WAIT_RECOVER, "1").unwrap();
    cat.adopt_snapshot(&FileId::from_digest(&[4; 32]), SnapshotNo::Numbered(2), 2)
        .unwrap();
    assert_eq!(cat.meta(WAIT_RECOVER).unwrap(), None, "snapshots go on");
    cat.mark_deleted(Path::new("/f"), 5).unwrap();
    let expired = Forget::DeletedExpired { keep_deleted_ms: 0 };
    assert!(!cat.forget(&f, expired, 0).unwrap(), "held");
    cat.delete_meta(EXPIRY_HOLD).unwrap();
    assert!(cat.forget(&f, expired, 0).unwrap());
}

#[test]
fn a_number_is_given_back_only_while_nothing_of_it_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let unsent = FileId::from_digest(&[1; 32]);
    cat.claim_snapshot(&unsent, SnapshotNo::Numbered(1), 0)
        .unwrap();
    assert!(cat.release_snapshot(&unsent).unwrap());
    assert_eq!(cat.next_snapshot_no().unwrap(), 1, "1 is free again");
    // Once its version row exists (its backup began), the number stays used.
    let sent = FileId::from_digest(&[2; 32]);
    cat.claim_snapshot(&sent, SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.conn
        .execute(
            "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash, desired_rd)
             VALUES (?1, X'2F73', 1, 3, 0, 384, 'h', 2)",
            [&sent],
        )
        .unwrap();
    assert!(!cat.release_snapshot(&sent).unwrap());
    assert_eq!(cat.next_snapshot_no().unwrap(), 2);
}

/// A snapshot taken before fileIds were kept as bytes, recovered on a peer whose new catalog
/// already hosts a chunk: both catalogs are brought to this schema before the hosted rows are
/// carried over, so every row is found afterwards.
#[test]
fn a_snapshot_with_text_file_ids_installs_over_a_catalog_with_binary_ones() {
    let dir = tempfile::tempdir().unwrap();
    schema::older_catalog(&dir.path().join(RECOVERED), "");
    let db = dir.path().join("catalog.db");
    let fresh = Catalog::open(&db).unwrap();
    let c = FileId::parse(&"C".repeat(64)).unwrap();
    fresh
        .insert_hosted(&fixture::hosted('c', 0, 5, 2), &[])
        .unwrap();
    drop(fresh);
    assert!(install_recovered(dir.path()).unwrap());
    let cat = Catalog::open(&db).unwrap();
    assert_eq!(cat.hosted_count().unwrap(), 2);
    assert_eq!(
        cat.hosted(&c, crate::protocol::message::ChunkNo(0))
            .unwrap()
            .unwrap()
            .size,
        5
    );
    let h = FileId::parse(&"0123456789abcdef".repeat(4)).unwrap();
    assert_eq!(
        cat.hosted(&h, crate::protocol::message::ChunkNo(0))
            .unwrap()
            .unwrap()
            .size,
        10
    );
    assert!(cat
        .file(&FileId::parse(&"a".repeat(64)).unwrap())
        .unwrap()
        .is_some());
}

/// The other way round: a catalog not opened since the upgrade (text fileIds, hosting a chunk)
/// replaced by a snapshot with binary ones.
#[test]
fn a_snapshot_with_binary_file_ids_installs_over_a_catalog_with_text_ones() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = Catalog::open(&dir.path().join(RECOVERED)).unwrap();
    snapshot.insert_file(&fixture::file('e', "/x/e")).unwrap();
    drop(snapshot);
    schema::older_catalog(&dir.path().join("catalog.db"), "");
    assert!(install_recovered(dir.path()).unwrap());
    let cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
    let h = FileId::parse(&"0123456789abcdef".repeat(4)).unwrap();
    assert_eq!(
        cat.hosted(&h, crate::protocol::message::ChunkNo(0))
            .unwrap()
            .unwrap()
            .size,
        10
    );
    assert!(cat
        .file(&FileId::parse(&"e".repeat(64)).unwrap())
        .unwrap()
        .is_some());
    assert!(
        cat.file(&FileId::parse(&"a".repeat(64)).unwrap())
            .unwrap()
            .is_none(),
        "the recovered catalog's files"
    );
}
