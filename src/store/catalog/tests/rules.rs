//! The multi-step rules that callers reach through one named verb.
use super::*;

/// A catalog snapshot at its RD, naming every version there is (the history lets older
/// versions go only once one does).
fn snapshot_at_rd(cat: &Catalog) {
    let snap = FileId::from_digest(&[0x5A; 32]);
    cat.claim_snapshot(&snap, crate::protocol::seal::SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.set_snapshot_at_rd(&snap).unwrap();
}

fn no(n: u32) -> ChunkNo {
    ChunkNo::new(n).unwrap()
}

#[test]
fn a_version_is_resumed_by_its_content_and_never_under_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let sealed = |c: char, key: &str| FileRow {
        encrypted: true,
        key_fp: Some(key.into()),
        ..file(c, "/w/f")
    };
    let first = cat
        .begin_or_resume_version(&sealed('a', "k1"), true, BackupId(1))
        .unwrap();
    assert_eq!((first.file_id.clone(), first.resumed), (fid('a'), false));
    cat.mark_deleted(Path::new("/w/f"), 5).unwrap();
    // The same content under the same key (another fileId: encrypted ones are random) resumes
    // it, at the RD asked now, and it is no longer deleted.
    let again = FileRow {
        desired_rd: 4,
        ..sealed('b', "k1")
    };
    let resumed = cat
        .begin_or_resume_version(&again, true, BackupId(2))
        .unwrap();
    assert_eq!(resumed.file_id, fid('a'));
    assert!(resumed.resumed && !resumed.was_complete);
    let row = cat.file(&fid('a')).unwrap().unwrap();
    assert_eq!((row.desired_rd, row.deleted_at), (4, None));
    // Under another master key: a new version.
    let other = cat
        .begin_or_resume_version(&sealed('c', "k2"), true, BackupId(3))
        .unwrap();
    assert_eq!(
        (other.file_id, other.version, other.resumed),
        (fid('c'), 2, false)
    );
}

/// Issue 27: `touch`, or the same bytes written again, is no new version: the newest version
/// takes the file's new times, mode and owner; only other content is a new version.
#[test]
fn only_a_change_of_content_is_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let content = |c: char, hash: &str, mtime_ns: i64| FileRow {
        content_hash: hash.into(),
        mtime_ns,
        mode: 0o600 + mtime_ns as u32 % 8,
        ..file(c, "/w/f")
    };
    let begin = |row: &FileRow| {
        cat.begin_or_resume_version(row, false, BackupId(1))
            .unwrap()
    };
    let first = begin(&content('a', "h1", 1));
    assert_eq!((first.version, first.retouched), (1, false));
    cat.set_file_complete(&fid('a')).unwrap();
    // Touched (another fileId: the mtime is part of it): the same version, with the new times.
    let touched = begin(&content('b', "h1", 2));
    assert_eq!((touched.file_id.clone(), touched.version), (fid('a'), 1));
    assert!(touched.retouched && touched.resumed && touched.was_complete);
    let row = cat.file(&fid('a')).unwrap().unwrap();
    assert_eq!((row.mtime_ns, row.mode, row.complete), (2, 0o602, true));
    assert!(cat.file(&fid('b')).unwrap().is_none());
    // Other bytes: a new version; then the first bytes again: a new version too (the newest
    // is what a file is compared with).
    assert_eq!(begin(&content('c', "h2", 3)).version, 2);
    cat.set_file_complete(&fid('c')).unwrap();
    let back = begin(&content('d', "h1", 4));
    assert_eq!((back.version, back.retouched), (3, false));
    // Same bytes, another size is impossible; encrypted vs not is another version.
    let sealed = FileRow {
        encrypted: true,
        key_fp: Some("k".into()),
        ..content('e', "h1", 5)
    };
    assert_eq!(begin(&sealed).version, 4);
    assert_eq!(cat.versions_of(Path::new("/w/f")).unwrap().len(), 4);
}

/// A catalog snapshot is never the same version as the snapshot before it: its fileId (and
/// key) is its own slot's.
#[test]
fn a_snapshot_with_the_content_of_the_one_before_is_its_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let snap = |c: char| FileRow {
        content_hash: "same".into(),
        ..file(c, "/snapshot")
    };
    use crate::protocol::seal::SnapshotNo;
    cat.claim_snapshot(&fid('a'), SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.begin_or_resume_version(&snap('a'), false, BackupId(1))
        .unwrap();
    cat.claim_snapshot(&fid('b'), SnapshotNo::Numbered(2), 0)
        .unwrap();
    let second = cat
        .begin_or_resume_version(&snap('b'), false, BackupId(2))
        .unwrap();
    assert_eq!((second.file_id, second.retouched), (fid('b'), false));
}

#[test]
fn chunks_are_recorded_up_to_the_first_that_differs_with_their_known_holders() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_version(&file('a', "/w/f"), BackupId(1)).unwrap();
    let rows = vec![(no(0), 10, "h0".to_owned()), (no(1), 10, "h1".to_owned())];
    assert_eq!(cat.record_chunks(&fid('a'), &rows, false).unwrap().len(), 2);
    cat.add_holder(&fid('a'), no(0), PeerId(7)).unwrap();
    // Resumed: each chunk comes with its holders; a chunk read with other bytes stops it.
    let changed = vec![
        (no(0), 10, "h0".to_owned()),
        (no(1), 10, "other".to_owned()),
    ];
    let known = cat.record_chunks(&fid('a'), &changed, true).unwrap();
    assert_eq!(known, vec![vec![PeerId(7)]]);
    assert_eq!(cat.file_chunks(&fid('a')).unwrap()[1].hash, "h1");
    // Complete only while it is kept.
    assert!(cat.complete_version(&fid('a'), 42, 9).unwrap());
    let row = cat.file(&fid('a')).unwrap().unwrap();
    assert_eq!((row.complete, row.inode, row.ctime_ns), (true, 42, 9));
}

#[test]
fn keep_versions_forgets_the_older_complete_and_the_superseded_unfinished_of_that_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    for (c, path, complete) in [
        ('a', "/w/f", true),
        ('b', "/w/f", false),
        ('c', "/w/f", true),
        ('d', "/w/f/g", true),
        ('e', "/w/f/g", true),
    ] {
        cat.insert_version(&file(c, path), BackupId(1)).unwrap();
        if complete {
            cat.set_file_complete(&fid(c)).unwrap();
        }
    }
    // A snapshot at its RD names the newer versions (else the older ones are kept).
    snapshot_at_rd(&cat);
    let keep_one = Policy::History {
        keep: crate::history::Keep::all(),
        cap: 1,
        sealed: false,
        grace_ms: 0,
    };
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), keep_one, 1_000)
            .unwrap(),
        2
    );
    let left: Vec<FileId> = (cat.versions_of(Path::new("/w/f")).unwrap().into_iter())
        .map(|f| f.file_id)
        .collect();
    assert_eq!(left, vec![fid('c')]);
    assert_eq!(cat.versions_of(Path::new("/w/f/g")).unwrap().len(), 2);
    // Not marked deleted: nothing expires.
    let expired = Policy::Expired { keep_deleted_ms: 0 };
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f/g"), expired, 1_000)
            .unwrap(),
        0
    );
    // The user's word takes every version of the path.
    assert_eq!(cat.forget_path(Path::new("/w/f/g"), 1_000).unwrap(), 2);
}

#[test]
fn a_removed_takes_its_sender_out_only_of_a_chunk_we_know() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_version(&file('a', "/w/f"), BackupId(1)).unwrap();
    cat.record_chunks(&fid('a'), &[(no(0), 10, "h".to_owned())], false)
        .unwrap();
    cat.record_storeds(&[(
        ChunkId {
            file_id: fid('a'),
            chunk_no: no(0),
        },
        vec![PeerId(2), PeerId(3)],
    )])
    .unwrap();
    let (role, rd) = cat.role_and_rd(&fid('a'), no(0), None).unwrap();
    assert_eq!((role, rd), (ChunkRole::Own { desired_rd: 2 }, 2));
    assert_eq!(
        cat.role_and_rd(&fid('a'), no(0), Some(PeerId(2)))
            .unwrap()
            .1,
        1
    );
    assert_eq!(
        cat.role_and_rd(&fid('f'), no(0), Some(PeerId(3))).unwrap(),
        (ChunkRole::Unknown, 0)
    );
}

/// Issue 27: the history thins versions as they age on the running clock; a wall clock set a
/// year ahead ages nothing.
#[test]
fn history_thins_versions_by_their_age_on_the_running_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    const MIN: i64 = 60_000;
    // a at 0, b 5 min later, c at 2 h, d at 2 h 10 min (the running clock, in ms).
    for (c, at) in [('a', 0), ('b', 5 * MIN), ('c', 120 * MIN), ('d', 130 * MIN)] {
        cat.advance_run_clock(at - cat.run_clock().unwrap())
            .unwrap();
        cat.insert_version(&file(c, "/w/f"), BackupId(1)).unwrap();
        cat.set_file_complete(&fid(c)).unwrap();
    }
    snapshot_at_rd(&cat);
    let keep = crate::history::Keep::parse("1h:all, 1d:hourly").unwrap();
    let policy = || Policy::History {
        keep: keep.clone(),
        cap: 100,
        sealed: false,
        grace_ms: 0,
    };
    let left = |cat: &Catalog| -> Vec<FileId> {
        (cat.versions_of(Path::new("/w/f")).unwrap().into_iter())
            .map(|f| f.file_id)
            .collect()
    };
    // The wall clock a year ahead: a and b are 2 h 10 and 2 h 05 old on the running clock, one
    // hourly stretch: the older stays, b goes; c (10 min old) and d are within the hour.
    let year_ahead = crate::clock::unix_ms() + 365 * 86_400_000;
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), policy(), year_ahead)
            .unwrap(),
        1
    );
    assert_eq!(left(&cat), vec![fid('a'), fid('c'), fid('d')]);
    // A day and more later on the running clock: a, c and d are past every tier; d, the
    // newest, stays.
    cat.advance_run_clock(2 * 86_400_000).unwrap();
    let now = crate::clock::unix_ms() + 3 * 86_400_000;
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), policy(), now)
            .unwrap(),
        2
    );
    assert_eq!(left(&cat), vec![fid('d')]);
}

/// A folder switched to `encrypt`: its versions in clear go once an encrypted one is complete,
/// whatever the history would keep (no clear copy stays on the peers).
#[test]
fn in_an_encrypted_folder_the_clear_versions_go_once_an_encrypted_one_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let sealed = FileRow {
        encrypted: true,
        key_fp: Some("k".into()),
        ..file('b', "/w/f")
    };
    for row in [file('a', "/w/f"), sealed, file('c', "/w/f")] {
        cat.insert_version(&row, BackupId(1)).unwrap();
        cat.set_file_complete(&row.file_id).unwrap();
    }
    snapshot_at_rd(&cat);
    let history = |sealed| Policy::History {
        keep: crate::history::Keep::all(),
        cap: 100,
        sealed,
        grace_ms: 0,
    };
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), history(false), 1_000)
            .unwrap(),
        0
    );
    // a (clear, older than b) goes; c (clear, the newest) stays: the next backup seals it.
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), history(true), 1_000)
            .unwrap(),
        1
    );
    let left: Vec<FileId> = (cat.versions_of(Path::new("/w/f")).unwrap().into_iter())
        .map(|f| f.file_id)
        .collect();
    assert_eq!(left, vec![fid('b'), fid('c')]);
}

/// Issue 27's guard: while a folder's history is held, no policy forgets anything below it
/// (not the history, not keep_deleted); the user's own `delete` still does.
#[test]
fn a_held_history_loses_nothing_to_a_policy_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    for c in ['a', 'b'] {
        cat.insert_version(&file(c, "/w/f"), BackupId(1)).unwrap();
        cat.set_file_complete(&fid(c)).unwrap();
    }
    snapshot_at_rd(&cat);
    let newest_only = || Policy::History {
        keep: crate::history::Keep::parse("none").unwrap(),
        cap: 1,
        sealed: false,
        grace_ms: 0,
    };
    assert!(cat
        .hold_history(Path::new("/w"), 5, "300 of 300 files changed")
        .unwrap());
    assert!(
        !cat.hold_history(Path::new("/w"), 6, "again").unwrap(),
        "held once"
    );
    let holds = cat.history_holds().unwrap();
    assert_eq!(
        (holds.len(), holds[0].since_ms, holds[0].why.as_str()),
        (1, 5, "300 of 300 files changed")
    );
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), newest_only(), 1_000)
            .unwrap(),
        0
    );
    cat.mark_deleted(Path::new("/w/f"), 1).unwrap();
    let expired = Policy::Expired { keep_deleted_ms: 0 };
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), expired, 1_000)
            .unwrap(),
        0
    );
    // Another folder is not held.
    assert!(cat
        .history_holds()
        .unwrap()
        .iter()
        .all(|h| !Path::new("/wx/f").starts_with(&h.root)));
    assert!(cat.resume_history(Path::new("/w")).unwrap());
    assert!(!cat.resume_history(Path::new("/w")).unwrap());
    assert_eq!(
        cat.forget_by_policy(Path::new("/w/f"), newest_only(), 1_000)
            .unwrap(),
        1
    );
}
