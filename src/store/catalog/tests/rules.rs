//! The multi-step rules that callers reach through one named verb.
use super::*;

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
    let snap = FileId::from_digest(&[0x5A; 32]);
    cat.claim_snapshot(&snap, crate::protocol::seal::SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.set_snapshot_at_rd(&snap).unwrap();
    let keep_one = Policy::KeepVersions(1);
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
