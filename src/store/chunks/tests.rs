use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Reserve(u64),
    Commit,
    Release,
    Free,
    SetQuota(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..=64_000).prop_map(Op::Reserve),
        Just(Op::Commit),
        Just(Op::Release),
        Just(Op::Free),
        (0u64..300_000).prop_map(Op::SetQuota),
    ]
}

proptest! {
    /// Whatever the order of reservations, commits, releases and frees, hosted plus promised
    /// bytes never exceed the quota (a lowered quota only stops new reservations; reclaim
    /// then frees the excess).
    #[test]
    fn accounting_never_exceeds_the_quota(ops in proptest::collection::vec(op(), 1..200)) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("c"), 0, 200_000).unwrap();
        let mut held: Vec<Reservation> = Vec::new();
        let mut committed: Vec<u64> = Vec::new();
        let mut quota = 200_000;
        for op in ops {
            let before = store.usage();
            match op {
                Op::Reserve(n) => {
                    if let Some(r) = store.reserve(n) {
                        held.push(r);
                        let u = store.usage();
                        prop_assert!(u.used + u.reserved <= u.quota);
                    } else {
                        prop_assert!(!before.fits(store.charge(n)));
                    }
                }
                Op::Commit => if let Some(r) = held.pop() {
                    committed.push(r.charged);
                    store.commit(r);
                },
                Op::Release => if let Some(r) = held.pop() { store.release(r) },
                // A chunk's charge is a whole number of blocks plus the row: freeing a chunk
                // of that many bytes less its header gives back exactly that charge.
                Op::Free => if let Some(n) = committed.pop() { store.freed(n - ROW_COST - HEADER) },
                Op::SetQuota(q) => { quota = q; store.set_quota(q) },
            }
            let u = store.usage();
            prop_assert_eq!(u.used, committed.iter().sum::<u64>());
            prop_assert_eq!(u.reserved, held.iter().map(|r| r.charged).sum::<u64>());
            prop_assert_eq!(u.quota, quota);
        }
    }
}

#[test]
fn concurrent_reservations_never_exceed_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(ChunkStore::open(dir.path().join("c"), 0, 1_000_000).unwrap());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, peak) = (store.clone(), peak.clone());
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    if let Some(r) = store.reserve(64_000) {
                        let u = store.usage();
                        peak.fetch_max(u.used + u.reserved, std::sync::atomic::Ordering::Relaxed);
                        if i % 3 == 0 {
                            store.release(r);
                        } else {
                            store.commit(r);
                            store.freed(64_000);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 1_000_000);
    assert_eq!(store.usage().used, 0);
}

fn fid(c: char) -> FileId {
    FileId::parse(&c.to_string().repeat(64)).unwrap()
}

#[test]
fn quota_is_never_exceeded_by_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 100_000).unwrap();
    let a = store.reserve(64_000).unwrap();
    assert!(store.reserve(64_000).is_none(), "second chunk would exceed");
    let b = store.reserve(30_000).unwrap();
    store.commit(a);
    store.release(b);
    assert_eq!(store.usage().used, store.charge(64_000));
    assert_eq!(store.usage().reserved, 0);
}

#[test]
fn zero_quota_hosts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 0).unwrap();
    assert!(store.reserve(0).is_none());
}

#[test]
fn write_read_remove_and_scan_cleans_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 1 << 20).unwrap();
    let hash = store.write(&fid('a'), ChunkNo(3), b"hello").unwrap();
    assert_eq!(hash, crate::protocol::sha256_hex(b"hello"));
    assert_eq!(store.read(&fid('a'), ChunkNo(3)).unwrap(), b"hello");
    // A damaged body is never served: its header's hash is checked as it is read.
    store.write(&fid('b'), ChunkNo(0), b"world").unwrap();
    let pack = File::options()
        .write(true)
        .open(store.pack_of(&fid('b')))
        .unwrap();
    pack.write_all_at(b"W", HEADER).unwrap();
    assert!(store.read(&fid('b'), ChunkNo(0)).is_err());
    store.remove(&fid('b'), ChunkNo(0)).unwrap();
    // A write cut by a crash: a header whose body never made it.
    store.write(&fid('a'), ChunkNo(4), b"world").unwrap();
    let pack = File::options()
        .write(true)
        .open(store.pack_of(&fid('a')))
        .unwrap();
    pack.set_len(slot_offset(ChunkNo(4)) + HEADER + 2).unwrap();
    // And a slot of which only part of the header made it (its pack goes with it).
    fs::write(store.pack_of(&fid('c')), MAGIC).unwrap();
    fs::write(store.root().join("junk"), b"x").unwrap();
    let found = store.scan().unwrap();
    assert_eq!(found, vec![(fid('a'), ChunkNo(3), 5)]);
    assert!(
        store.read(&fid('a'), ChunkNo(4)).is_err(),
        "the torn slot is emptied"
    );
    assert!(!store.pack_of(&fid('c')).exists(), "the half header too");
    assert!(!store.root().join("junk").exists(), "quarantined");
    assert_eq!(fs::read_dir(store.quarantine_dir()).unwrap().count(), 1);
    store.remove(&fid('a'), ChunkNo(3)).unwrap();
    assert!(
        !store.pack_of(&fid('a')).exists(),
        "the pack goes with its last chunk"
    );
    store.remove(&fid('a'), ChunkNo(3)).unwrap();
}

#[test]
fn a_batch_is_written_and_removed_chunks_give_their_blocks_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 1 << 30).unwrap();
    let body = vec![7u8; 64_000];
    let (a, b) = (fid('a'), fid('b'));
    let chunks: Vec<NewChunk> = (0..16)
        .map(|n| NewChunk {
            file_id: if n % 2 == 0 { &a } else { &b },
            chunk_no: ChunkNo(n),
            body: &body,
        })
        .collect();
    assert!(store.write_batch(&chunks).iter().all(|r| r.is_ok()));
    assert_eq!(list(store.root()).unwrap().len(), 16);
    assert_eq!(store.read(&b, ChunkNo(15)).unwrap(), body);
    let blocks = || {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(store.pack_of(&a)).unwrap().blocks()
    };
    let before = blocks();
    for n in [0, 2, 4, 6] {
        store.remove(&a, ChunkNo(n)).unwrap();
    }
    assert!(
        blocks() * 2 <= before + 8,
        "{} of {before} blocks left",
        blocks()
    );
    assert_eq!(store.read(&a, ChunkNo(8)).unwrap(), body);
}

#[test]
fn chunk_files_of_older_versions_move_into_packs() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 1 << 20).unwrap();
    let old = store.root().join(fid('b').key());
    fs::create_dir(&old).unwrap();
    fs::write(old.join("0"), b"x").unwrap();
    fs::write(old.join("2"), b"yz").unwrap();
    fs::write(old.join(".tmp-1-99"), b"torn").unwrap();
    let mut found = store.scan().unwrap();
    found.sort();
    assert_eq!(
        found,
        vec![(fid('b'), ChunkNo(0), 1), (fid('b'), ChunkNo(2), 2)]
    );
    assert!(store.pack_of(&fid('b')).is_file());
    assert_eq!(store.read(&fid('b'), ChunkNo(2)).unwrap(), b"yz");
}

#[test]
fn a_chunk_costs_whole_blocks_and_its_row() {
    assert_eq!(
        charge(0, 4096),
        4096 + ROW_COST,
        "an empty chunk costs a block"
    );
    assert_eq!(charge(1, 4096), 4096 + ROW_COST);
    assert_eq!(charge(4096 - HEADER, 4096), 4096 + ROW_COST);
    assert_eq!(charge(4097 - HEADER, 4096), 8192 + ROW_COST);
    assert_eq!(charge(64_000, 4096), 16 * 4096 + ROW_COST, "a whole slot");
    assert_eq!(charge(64_000, 512), 126 * 512 + ROW_COST);
    // 3,000 empty chunks cannot hide in a 64,000-byte quota: at most 13 fit.
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path().join("c"), 0, 64_000).unwrap();
    let held: Vec<_> = (0..3000).map_while(|_| store.reserve(0)).collect();
    assert!(
        held.len() <= 64_000 / 4096,
        "{} empty chunks fit",
        held.len()
    );
    assert!(!held.is_empty());
}

#[test]
fn inodes_keep_a_margin() {
    assert_eq!(inodes_to_spare(0, 0), u64::MAX, "no inode limit");
    assert_eq!(inodes_to_spare(1_000_000, 500_000), 490_000);
    assert_eq!(
        inodes_to_spare(1_000_000, 10_000),
        0,
        "1% of them stay free"
    );
    assert_eq!(inodes_to_spare(1_000_000, 10_001), 1);
    assert_eq!(inodes_to_spare(50_000, 1000), 0, "and at least 1000");
}

#[test]
fn the_store_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o770)).unwrap();
    let store = ChunkStore::open(root.clone(), 0, 1 << 20).unwrap();
    store.write(&fid('b'), ChunkNo(0), b"x").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    let pack = store.pack_of(&fid('b'));
    assert_eq!(mode(&pack), 0o600);
    // A store left group-accessible by an older version is made private at scan.
    fs::set_permissions(&pack, fs::Permissions::from_mode(0o660)).unwrap();
    store.scan().unwrap();
    assert_eq!(mode(&pack), 0o600);
}
