use super::*;

/// The file as the catalog recorded it: version 3, complete, desired RD 2.
fn row(stamp: &Stamp) -> FileRow {
    FileRow {
        file_id: FileId::from_digest(&[7; 32]),
        path: PathBuf::from("/w/f"),
        version: 3,
        size: stamp.size,
        mtime_ns: stamp.mtime_ns,
        mode: stamp.mode,
        content_hash: "00".repeat(32),
        desired_rd: 2,
        complete: true,
        inode: stamp.inode,
        uid: stamp.uid,
        gid: stamp.gid,
        deleted_at: None,
        ctime_ns: stamp.ctime_ns,
        encrypted: false,
        key_fp: None,
        completed_ms: None,
        random: false,
    }
}

fn stamp() -> Stamp {
    Stamp {
        size: 1000,
        mtime_ns: 1_700_000_000_000_000_001,
        ctime_ns: 1_700_000_000_500_000_000,
        inode: 42,
        uid: 1000,
        gid: 1000,
        mode: 0o644,
        nlink: 1,
    }
}

#[test]
fn the_same_file_complete_at_its_rd_is_already_backed_up() {
    let now = stamp();
    let f = row(&now);
    assert_eq!(
        standing(Some(&f), 2, &now, 2, false),
        Standing::AtRd { version: 3 }
    );
    // More holders than asked: still at RD (the surplus settles at the next reclaim).
    assert_eq!(
        standing(Some(&f), 4, &now, 2, false),
        Standing::AtRd { version: 3 }
    );
    // Owner, mode and links are no part of it (a chmod moves the ctime, which is).
    let other = Stamp {
        uid: 0,
        mode: 0o600,
        nlink: 2,
        ..now
    };
    assert_eq!(
        standing(Some(&f), 2, &other, 2, false),
        Standing::AtRd { version: 3 }
    );
}

#[test]
fn a_file_not_at_the_rd_asked_is_resumed_not_read_as_new() {
    let now = stamp();
    let f = row(&now);
    // A chunk with one holder short.
    assert_eq!(
        standing(Some(&f), 1, &now, 2, false),
        Standing::BelowRd { version: 3 }
    );
    // Another RD asked, higher or lower: the version is backed up again under it.
    assert_eq!(
        standing(Some(&f), 3, &now, 3, false),
        Standing::BelowRd { version: 3 }
    );
    assert_eq!(
        standing(Some(&f), 2, &now, 1, false),
        Standing::BelowRd { version: 3 }
    );
    // No chunk recorded with a holder at all.
    assert_eq!(
        standing(Some(&f), 0, &now, 1, false),
        Standing::BelowRd { version: 3 }
    );
}

#[test]
fn a_file_other_than_its_newest_version_must_be_read() {
    let now = stamp();
    let f = row(&now);
    assert_eq!(standing(None, 0, &now, 2, false), Standing::Read(Why::New));
    for changed in [
        Stamp { size: 999, ..now },
        Stamp {
            mtime_ns: now.mtime_ns + 1,
            ..now
        },
    ] {
        assert_eq!(
            standing(Some(&f), 2, &changed, 2, false),
            Standing::Read(Why::Changed)
        );
    }
    for touched in [
        Stamp {
            ctime_ns: now.ctime_ns + 1,
            ..now
        },
        Stamp { inode: 43, ..now },
    ] {
        assert_eq!(
            standing(Some(&f), 2, &touched, 2, false),
            Standing::Read(Why::Touched)
        );
    }
    let unfinished = FileRow {
        complete: false,
        ..f.clone()
    };
    assert_eq!(
        standing(Some(&unfinished), 2, &now, 2, false),
        Standing::Read(Why::Unfinished)
    );
    let deleted = FileRow {
        deleted_at: Some(1_700_000_100),
        ..f.clone()
    };
    assert_eq!(
        standing(Some(&deleted), 2, &now, 2, false),
        Standing::Read(Why::Deleted)
    );
    // Encrypted now, in clear before (or the other way round): a new version.
    assert_eq!(
        standing(Some(&f), 2, &now, 2, true),
        Standing::Read(Why::Encryption)
    );
    // The scans ask only this half: whatever the RD, the same file is unchanged.
    assert!(unchanged(Some(&f), &now).is_ok());
    assert_eq!(unchanged(Some(&deleted), &now).err(), Some(Why::Deleted));
}

#[test]
fn a_file_is_read_no_further_than_its_size_at_open() {
    // /dev/zero says 0 bytes and reads forever (as /proc/PID/pagemap does): the read must
    // end, and find the file changed. On a thread, so that a read without end fails the
    // test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let zero = File::open("/dev/zero").unwrap();
        let _ = tx.send(scan_file(zero).map(|(_, s)| s.stable));
    });
    let scanned = rx.recv_timeout(std::time::Duration::from_secs(20));
    assert!(matches!(scanned, Ok(Ok(false))), "{scanned:?}");
    // A regular file is read whole, and stable.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), vec![7u8; 3_000_000]).unwrap();
    let (_, s) = scan_file(File::open(d.path().join("f")).unwrap()).unwrap();
    assert!(s.stable);
    assert_eq!(s.content_hash, sha256_hex(&vec![7u8; 3_000_000]));
}

#[test]
fn a_file_is_stable_while_read_unless_its_size_mtime_or_content_moved() {
    let before = stamp();
    assert!(stable(&before, &before, false));
    let touched = Stamp {
        ctime_ns: before.ctime_ns + 1,
        ..before
    };
    assert!(stable(&before, &touched, true), "a chmod while it was read");
    assert!(!stable(&before, &touched, false), "a write, then touch -r");
    let grown = Stamp {
        size: before.size + 1,
        ..touched
    };
    assert!(!stable(&before, &grown, true));
}
