use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::*;

#[test]
fn folders_are_written_only_when_changed_listed_below_a_path_and_forgotten_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let odd = PathBuf::from(OsStr::from_bytes(b"/w/\xff"));
    let row = |path: &Path, mode: u32| FolderRow {
        path: path.to_path_buf(),
        uid: 7,
        gid: 8,
        mode,
        mtime_ns: -5,
    };
    let changes = || cat.conn.changes();
    cat.note_folders(&[row(Path::new("/w"), 0o750), row(&odd, 0o700)])
        .unwrap();
    cat.note_folders(&[row(Path::new("/w"), 0o750)]).unwrap();
    assert_eq!(changes(), 0, "an unchanged row is not written");
    cat.note_folders(&[row(Path::new("/w"), 0o755)]).unwrap();
    assert_eq!(changes(), 1);
    // `/w0` and `/wx` are not below `/w`; `/w` itself and names of any bytes are.
    cat.note_folders(&[row(Path::new("/w0"), 1), row(Path::new("/wx"), 1)])
        .unwrap();
    let below = cat.folders_below(Path::new("/w")).unwrap();
    assert_eq!(below, vec![row(Path::new("/w"), 0o755), row(&odd, 0o700)]);
    // A folder that holds no version any more is forgotten when the last one goes.
    let mut f = file('a', "/unused");
    f.path = odd.join("f");
    cat.insert_file(&f).unwrap();
    cat.insert_file(&file('b', "/w/g")).unwrap();
    assert!(cat.forget(&fid('a'), Forget::UserDelete, 0).unwrap());
    assert_eq!(
        cat.folders_below(Path::new("/w")).unwrap(),
        vec![row(Path::new("/w"), 0o755)],
        "/w still holds /w/g"
    );
    assert!(cat.forget(&fid('b'), Forget::UserDelete, 0).unwrap());
    assert!(cat.folders_below(Path::new("/w")).unwrap().is_empty());
    assert_eq!(cat.folders_below(Path::new("/")).unwrap().len(), 2);
}

#[test]
fn watched_folders_are_kept_once_each_and_odd_names_survive() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    assert!(cat.watched_folders().unwrap().is_empty());
    let odd = PathBuf::from(OsStr::from_bytes(b"/w/\xff\nb"));
    cat.note_watched(&[PathBuf::from("/w/a"), odd.clone()])
        .unwrap();
    cat.note_watched(&[PathBuf::from("/w/c"), odd.clone()])
        .unwrap();
    assert_eq!(
        cat.watched_folders().unwrap(),
        vec![PathBuf::from("/w/a"), odd, PathBuf::from("/w/c")]
    );
    // Whose they are, for a caller other than root.
    let mut row = file('a', "/w/a/x");
    row.uid = 1000;
    cat.insert_file(&row).unwrap();
    assert!(cat.owns_any_under(Path::new("/w/a"), 1000).unwrap());
    assert!(!cat.owns_any_under(Path::new("/w/a"), 1001).unwrap());
    assert!(!cat.owns_any_under(Path::new("/w/c"), 1000).unwrap());
}

#[test]
fn each_encrypted_version_keeps_its_keys_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    assert_eq!(cat.key_facts().unwrap(), KeyFacts::default());
    let sealed = |c: char, path: &str, fp: Option<&str>| FileRow {
        encrypted: true,
        key_fp: fp.map(str::to_owned),
        completed_ms: None,
        random: false,
        ..file(c, path)
    };
    cat.insert_version(&file('c', "/clear"), BackupId::new())
        .unwrap();
    cat.insert_version(&sealed('a', "/a", Some("aa")), BackupId::new())
        .unwrap();
    cat.insert_version(&sealed('b', "/b", None), BackupId::new())
        .unwrap();
    assert_eq!(
        cat.file(&fid('a')).unwrap().unwrap().key_fp.as_deref(),
        Some("aa")
    );
    let facts = cat.key_facts().unwrap();
    assert_eq!((facts.expected.as_deref(), facts.versions), (Some("aa"), 2));
    // The key this peer runs with is what the next start checks against.
    cat.set_meta(MASTER_KEY_FP, "bb").unwrap();
    cat.insert_version(&sealed('d', "/a", Some("bb")), BackupId::new())
        .unwrap();
    let facts = cat.key_facts().unwrap();
    assert_eq!((facts.expected.as_deref(), facts.versions), (Some("bb"), 2));
    // Under "bb": /a's old version is not readable, its newest is; unknown keys count as
    // the running one's.
    assert_eq!(cat.undecryptable(Some("bb"), None).unwrap(), (1, vec![]));
    // A complete version is the newest that counts.
    cat.set_file_complete(&fid('a')).unwrap();
    let (n, paths) = cat.undecryptable(Some("bb"), None).unwrap();
    assert_eq!((n, paths), (1, vec![PathBuf::from("/a")]));
    // No key: every encrypted version.
    let (n, mut paths) = cat.undecryptable(None, None).unwrap();
    paths.sort();
    assert_eq!(
        (n, paths),
        (3, vec![PathBuf::from("/a"), PathBuf::from("/b")])
    );
}

#[test]
fn queue_keeps_work_queued_again_while_busy() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let p = Path::new("/w/a");
    cat.enqueue(p, 100).unwrap();
    let due = cat.due(100, 10).unwrap();
    assert_eq!(due.len(), 1);
    let gen = due[0].1;
    cat.enqueue(p, 200).unwrap(); // changed again while being backed up
    cat.dequeue(p, gen).unwrap();
    assert_eq!(cat.queue_len().unwrap(), 1, "the newer change stays queued");
    let (_, gen, _) = cat.due(100, 10).unwrap()[0].clone();
    cat.retry_later(p, gen, 5000).unwrap();
    assert!(cat.due(4999, 10).unwrap().is_empty());
    assert_eq!(cat.next_due().unwrap(), Some(5000));
    cat.dequeue(p, gen).unwrap();
    assert_eq!(cat.queue_len().unwrap(), 0);
}

#[test]
fn deleted_paths_expire_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/w/f")).unwrap();
    assert_eq!(cat.live_paths_under(Path::new("/w")).unwrap().len(), 1);
    assert_eq!(cat.mark_deleted(Path::new("/w/f"), 50).unwrap(), 1);
    assert_eq!(
        cat.mark_deleted(Path::new("/w/f"), 60).unwrap(),
        0,
        "first time counts"
    );
    cat.add_absent(Path::new("/w/f"), 700).unwrap();
    assert_eq!(
        cat.deleted_paths().unwrap(),
        vec![DeletedPath {
            path: PathBuf::from("/w/f"),
            deleted_at: 50,
            absent_ms: 700
        }]
    );
    assert!(cat.live_paths_under(Path::new("/w")).unwrap().is_empty());
    cat.insert_file(&file('b', "/w/f")).unwrap();
    assert!(cat.deleted_paths().unwrap().is_empty());
    assert_eq!(cat.latest(Path::new("/w/f")).unwrap().unwrap().version, 2);
}

#[test]
fn paths_written_as_text_by_an_older_catalog_are_found_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    {
        let cat = Catalog::open(&db).unwrap();
        cat.insert_file(&file('a', "/x/f")).unwrap();
        cat.enqueue(Path::new("/x/g"), 5).unwrap();
        // As the first release wrote them.
        cat.conn
            .execute_batch(
                "UPDATE files SET path = CAST(path AS TEXT);
                 UPDATE queue SET path = CAST(path AS TEXT);
                 PRAGMA user_version = 0;",
            )
            .unwrap();
    }
    let cat = Catalog::open(&db).unwrap();
    assert_eq!(cat.versions(Path::new("/x/f")).unwrap().len(), 1);
    assert_eq!(cat.insert_file(&file('b', "/x/f")).unwrap(), 2);
    cat.dequeue(Path::new("/x/g"), 0).unwrap();
    assert_eq!(cat.queue_len().unwrap(), 0);
    // Names that are not UTF-8 stay apart.
    let latin1 = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
    let mut e = file('c', "");
    e.path = latin1(b"/x/caf\xe9");
    let mut f = file('d', "");
    f.path = latin1(b"/x/caf\xe8");
    assert_eq!(cat.insert_file(&e).unwrap(), 1);
    assert_eq!(cat.insert_file(&f).unwrap(), 1);
    assert_eq!(cat.latest(&e.path).unwrap().unwrap().file_id, fid('c'));
}

#[test]
fn versions_and_holders() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    assert_eq!(cat.insert_file(&file('a', "/x/f")).unwrap(), 1);
    assert_eq!(cat.insert_file(&file('b', "/x/f")).unwrap(), 2);
    assert_eq!(cat.insert_file(&file('c', "/x/ff")).unwrap(), 1);
    let v: Vec<u32> = cat
        .versions(Path::new("/x/f"))
        .unwrap()
        .iter()
        .map(|f| f.version)
        .collect();
    assert_eq!(v, vec![1, 2]);
    assert_eq!(cat.versions(Path::new("/x")).unwrap().len(), 3);
    // STORED for a chunk we do not know is ignored.
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
        None
    );
    cat.put_file_chunk(&fid('a'), ChunkNo(0), 10, "h0").unwrap();
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
        Some(1)
    );
    // A duplicated STORED never inflates the perceived RD.
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
        Some(1)
    );
    assert_eq!(
        cat.add_holder(&fid('a'), ChunkNo(0), PeerId(3)).unwrap(),
        Some(2)
    );
    assert_eq!(
        cat.remove_holder(&fid('a'), ChunkNo(0), PeerId(2)).unwrap(),
        1
    );
    assert!(cat.forget(&fid('a'), Forget::UserDelete, 1_000).unwrap());
    assert!(cat.file_chunks(&fid('a')).unwrap().is_empty());
    assert_eq!(cat.pending_deletes().unwrap(), vec![fid('a')]);
    // Still ours: a late re-backup of its chunks by a holder is never hosted here.
    assert_eq!(
        cat.role(&fid('a'), ChunkNo(0)).unwrap(),
        ChunkRole::Forgotten
    );
    cat.clear_pending_delete(&fid('a')).unwrap();
    assert!(cat.pending_deletes().unwrap().is_empty());
    assert_eq!(cat.perceived(&fid('a'), ChunkNo(0)).unwrap(), 0);
}

#[test]
fn a_version_backed_up_again_is_owed_no_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let run = BackupId(7);
    cat.insert_version(&file('a', "/w/f"), run).unwrap();
    // Abandoned (the file changed while read): its DELETE is owed...
    assert!(cat
        .forget(&fid('a'), Forget::Abandoned { backup: run }, 1_000)
        .unwrap());
    assert_eq!(cat.pending_deletes().unwrap(), vec![fid('a')]);
    // ...until the same content (the same fileId) is backed up again before it went out.
    cat.insert_version(&file('a', "/w/f"), BackupId(8)).unwrap();
    assert!(cat.pending_deletes().unwrap().is_empty());
}

#[test]
fn complete_versions_are_forgotten_only_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    let (mine, other) = (BackupId(7), BackupId(8));
    assert_eq!(cat.insert_version(&file('a', "/w/f"), mine).unwrap(), 1);
    cat.set_file_complete(&fid('a')).unwrap();
    // A backup that resumed the complete version 1 gives up: version 1 stays.
    assert!(!cat
        .forget(&fid('a'), Forget::Abandoned { backup: mine }, 1_000)
        .unwrap());
    // A version inserted by another backup run is not this backup's to forget.
    assert_eq!(cat.insert_version(&file('b', "/w/f"), other).unwrap(), 2);
    assert!(!cat
        .forget(&fid('b'), Forget::Abandoned { backup: mine }, 1_000)
        .unwrap());
    // keep_versions = 1 does not drop version 1 while version 2 is incomplete.
    assert!(!cat.forget(&fid('a'), Forget::History, 1_000).unwrap());
    // Not marked deleted: does not expire.
    let expired = Forget::DeletedExpired { keep_deleted_ms: 0 };
    assert!(!cat.forget(&fid('a'), expired, 1_000).unwrap());
    // The backup that inserted version 2 abandons it: forgotten, and its number is not
    // given to other content.
    assert!(cat
        .forget(&fid('b'), Forget::Abandoned { backup: other }, 1_000)
        .unwrap());
    assert_eq!(cat.pending_deletes().unwrap(), vec![fid('b')]);
    assert_eq!(cat.insert_version(&file('c', "/w/f"), mine).unwrap(), 3);
    cat.set_file_complete(&fid('c')).unwrap();
    // Issue 24, case 2: not before a catalog snapshot at its RD names version 3.
    assert!(!cat.forget(&fid('a'), Forget::History, 1_000).unwrap());
    let snap = FileId::from_digest(&[0x5A; 32]);
    cat.claim_snapshot(&snap, crate::protocol::seal::SnapshotNo::Numbered(1), 0)
        .unwrap();
    cat.set_snapshot_at_rd(&snap).unwrap();
    assert!(cat.forget(&fid('a'), Forget::History, 1_000).unwrap());
    assert!(!cat.forget(&fid('c'), Forget::History, 1_000).unwrap());
    // Absent for long enough (as counted, whatever the wall clock says), and still marked:
    // expires.
    cat.mark_deleted(Path::new("/w/f"), 50).unwrap();
    cat.add_absent(Path::new("/w/f"), 2999).unwrap();
    let expired = Forget::DeletedExpired {
        keep_deleted_ms: 3000,
    };
    assert!(!cat.forget(&fid('c'), expired, 1_000).unwrap());
    cat.add_absent(Path::new("/w/f"), 1).unwrap();
    assert!(cat.forget(&fid('c'), expired, 1_000).unwrap());
    assert!(cat.versions_of(Path::new("/w/f")).unwrap().is_empty());
}

#[test]
fn one_path_is_not_the_folder_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/w/x")).unwrap();
    cat.insert_file(&file('b', "/w/x/y")).unwrap();
    assert_eq!(cat.versions_of(Path::new("/w/x")).unwrap().len(), 1);
    assert_eq!(cat.versions(Path::new("/w/x")).unwrap().len(), 2);
    // A backup that reuses the row of a path marked deleted clears the mark.
    cat.mark_deleted(Path::new("/w/x"), 5).unwrap();
    cat.mark_deleted(Path::new("/w/x/y"), 5).unwrap();
    assert_eq!(cat.undelete(&fid('a')).unwrap(), 1);
    assert_eq!(
        cat.deleted_paths().unwrap(),
        vec![DeletedPath {
            path: PathBuf::from("/w/x/y"),
            deleted_at: 5,
            absent_ms: 0
        }]
    );
}

#[test]
fn a_recorded_chunk_keeps_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    cat.insert_file(&file('a', "/w/f")).unwrap();
    assert!(cat
        .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h0")
        .unwrap());
    assert!(cat
        .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h0")
        .unwrap());
    assert!(!cat
        .record_file_chunk(&fid('a'), ChunkNo(0), 10, "h1")
        .unwrap());
    assert_eq!(cat.file_chunks(&fid('a')).unwrap()[0].hash, "h0");
}

#[test]
fn an_older_catalog_gains_the_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE files (file_id TEXT PRIMARY KEY, path TEXT NOT NULL,
                version INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                mode INTEGER NOT NULL, content_hash TEXT NOT NULL,
                desired_rd INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0,
                inode INTEGER NOT NULL DEFAULT 0, uid INTEGER NOT NULL DEFAULT 0,
                gid INTEGER NOT NULL DEFAULT 0, deleted_at INTEGER, UNIQUE (path, version));",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO files (file_id, path, version, size, mtime_ns, mode, content_hash,
                                desired_rd, complete)
             VALUES (?1, '/w/f', 4, 10, 1, 420, 'h', 2, 1)",
            [fid('a').key()],
        )
        .unwrap();
    }
    let cat = Catalog::open(&path).unwrap();
    let row = cat.latest(Path::new("/w/f")).unwrap().unwrap();
    assert_eq!((row.version, row.ctime_ns, row.complete), (4, 0, true));
    assert_eq!(cat.insert_file(&file('b', "/w/f")).unwrap(), 5);
    drop(cat);
    // Opening again is harmless.
    Catalog::open(&path).unwrap();
}

#[test]
fn kept_versions_below_rd_are_the_old_and_the_deleted_with_a_copy_left() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.db")).unwrap();
    // /f: versions a (old) and b (newest); /g: version c, deleted locally.
    for (c, path) in [('a', "/f"), ('b', "/f"), ('c', "/g")] {
        cat.insert_version(&file(c, path), BackupId(1)).unwrap();
        cat.put_file_chunk(&fid(c), ChunkNo(0), 10, "h").unwrap();
        cat.put_file_chunk(&fid(c), ChunkNo(1), 10, "h").unwrap();
        for n in 0..2 {
            cat.add_holders(&fid(c), ChunkNo(n), &[PeerId(2), PeerId(3)])
                .unwrap();
        }
        cat.set_file_complete(&fid(c)).unwrap();
    }
    cat.mark_deleted(Path::new("/g"), 5).unwrap();
    assert!(
        cat.kept_versions_below_rd(10).unwrap().is_empty(),
        "all at RD 2"
    );
    cat.drop_lost_holder(PeerId(3), 1_000).unwrap();
    let mut below = cat.kept_versions_below_rd(10).unwrap();
    below.sort_by_key(|f| f.key());
    // The newest version of a file on disk is the queue's (read from the file).
    assert_eq!(below, vec![fid('a'), fid('c')]);
    assert_eq!(cat.paths_below_rd().unwrap(), vec![PathBuf::from("/f")]);
    assert_eq!(cat.kept_versions_below_rd(1).unwrap().len(), 1);
    // No copy left: nothing to fetch from.
    cat.drop_lost_holder(PeerId(2), 2_000).unwrap();
    assert!(cat.kept_versions_below_rd(10).unwrap().is_empty());
}

#[test]
fn the_catalog_is_not_group_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let cat = Catalog::open(&path).unwrap();
    cat.set_meta("k", "v").unwrap();
    for name in ["c.db", "c.db-wal", "c.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

#[tokio::test]
async fn a_batch_that_cannot_begin_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let cat = Catalog::open(&path).unwrap();
    cat.conn
        .busy_timeout(std::time::Duration::from_millis(20))
        .unwrap();
    let handle = CatalogHandle::start(cat);
    // Another writer holds the database: BEGIN IMMEDIATE fails. Were the call run anyway, it
    // would let the other writer go and then write in autocommit.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = handle
        .call(move |c| {
            other.execute_batch("COMMIT")?;
            c.insert_file(&file('a', "/f"))
        })
        .await;
    assert!(r.is_err(), "reported failed");
    // The unrun call was dropped with the other connection: its lock is gone.
    let all = handle.call(|c| c.all_files()).await.unwrap();
    assert!(all.is_empty(), "and not written either: {all:?}");
}

#[tokio::test]
async fn a_read_answers_while_the_catalog_thread_is_busy_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let handle = CatalogHandle::start(Catalog::open(&dir.path().join("c.db")).unwrap());
    handle.call(|c| c.set_meta("k", "v")).await.unwrap();
    // A long call holds the catalog's thread until told to end.
    let (started, is_started) = oneshot::channel();
    let (end, ended) = std_mpsc::channel::<()>();
    let h = handle.clone();
    let busy = tokio::spawn(async move {
        h.call(move |_| {
            started.send(()).unwrap();
            ended.recv().unwrap();
            Ok(())
        })
        .await
    });
    is_started.await.unwrap();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        handle.read(|c| c.meta("k")),
    )
    .await
    .expect("a read does not wait for the catalog's thread");
    assert_eq!(read.unwrap().as_deref(), Some("v"));
    let write = handle.read(|c| c.set_meta("k", "w")).await;
    assert!(write.is_err(), "a read's connection is read-only");
    end.send(()).unwrap();
    busy.await.unwrap().unwrap();
    assert_eq!(
        handle.call(|c| c.meta("k")).await.unwrap().as_deref(),
        Some("v")
    );
}
