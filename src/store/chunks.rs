//! Hosted chunk files under `<state_dir>/chunks/<fileId>/<chunkNo>` and the quota they count
//! against. A chunk file is complete or absent: it is written to a temporary name, synced, then
//! renamed. Blocking: call from a blocking thread.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::protocol::message::{ChunkNo, FileId};

const TMP_PREFIX: &str = ".tmp-";

/// Bytes hosted, bytes promised to writes under way, and the limit. Reserving before writing is
/// what keeps hosted bytes under the quota even under concurrent PUTCHUNKs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub reserved: u64,
    pub quota: u64,
}

impl Usage {
    /// Quota 0 means "host nothing", even empty chunks.
    pub fn fits(&self, size: u64) -> bool {
        self.quota > 0 && self.used + self.reserved + size <= self.quota
    }
}

pub struct ChunkStore {
    root: PathBuf,
    usage: Mutex<Usage>,
}

/// A claim on quota for one chunk; give it back with `release` or turn it into used bytes with
/// `commit`.
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    size: u64,
}

impl ChunkStore {
    pub fn open(root: PathBuf, used: u64, quota: u64) -> io::Result<ChunkStore> {
        fs::create_dir_all(&root)?;
        Ok(ChunkStore {
            root,
            usage: Mutex::new(Usage {
                used,
                reserved: 0,
                quota,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn usage(&self) -> Usage {
        *self.lock()
    }

    pub fn set_quota(&self, quota: u64) {
        self.lock().quota = quota;
    }

    pub fn reserve(&self, size: u64) -> Option<Reservation> {
        let mut usage = self.lock();
        if !usage.fits(size) {
            return None;
        }
        usage.reserved += size;
        Some(Reservation { size })
    }

    pub fn release(&self, r: Reservation) {
        self.lock().reserved -= r.size;
    }

    pub fn commit(&self, r: Reservation) {
        let mut usage = self.lock();
        usage.reserved -= r.size;
        usage.used += r.size;
    }

    /// The hosted bytes as the catalog counts them (at start, after reconciling).
    pub fn set_used(&self, used: u64) {
        self.lock().used = used;
    }

    /// Space given back after a chunk file was removed.
    pub fn freed(&self, size: u64) {
        let mut usage = self.lock();
        usage.used = usage.used.saturating_sub(size);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        // A panic while holding this lock cannot leave the numbers half-updated (each update is a
        // single statement), so a poisoned lock is still consistent.
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir_of(&self, file_id: &FileId) -> PathBuf {
        // The lower-case key is 64 hex digits (checked by the parser): no path can escape the store.
        self.root.join(file_id.key())
    }

    pub fn path_of(&self, file_id: &FileId, chunk_no: ChunkNo) -> PathBuf {
        self.dir_of(file_id).join(chunk_no.0.to_string())
    }

    /// Whether the disk has room for `len` more bytes while keeping a margin free: the catalog
    /// lives on the same disk and must always be able to commit, deletes included.
    fn disk_has_room(&self, len: u64) -> io::Result<bool> {
        let st = nix::sys::statvfs::statvfs(&self.root)?;
        let frsize = st.fragment_size() as u64;
        let total = st.blocks() as u64 * frsize;
        let available = st.blocks_available() as u64 * frsize;
        let margin = (total / 20).clamp(256 * 1024, 64 * 1024 * 1024);
        Ok(available >= len + margin)
    }

    /// Writes a chunk for good: temp file, fsync, rename, fsync of the directory. Refused (an
    /// error of kind StorageFull) when the disk is nearly full, whatever the quota says.
    pub fn write(&self, file_id: &FileId, chunk_no: ChunkNo, body: &[u8]) -> io::Result<()> {
        if !self.disk_has_room(body.len() as u64)? {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the disk holding {} is nearly full: chunk refused (free space, or lower storage.quota)",
                    self.root.display()
                ),
            ));
        }
        let dir = self.dir_of(file_id);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            chunk_no.0,
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path_of(file_id, chunk_no))?;
            File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn read(&self, file_id: &FileId, chunk_no: ChunkNo) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(file_id, chunk_no))
    }

    /// Removes a chunk file (absent is fine) and its directory once empty.
    pub fn remove(&self, file_id: &FileId, chunk_no: ChunkNo) -> io::Result<()> {
        match fs::remove_file(self.path_of(file_id, chunk_no)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Fails harmlessly while other chunks of the file remain.
        let _ = fs::remove_dir(self.dir_of(file_id));
        Ok(())
    }

    /// Every chunk file on disk as (fileId, chunkNo, size), after deleting leftovers of writes
    /// interrupted by a crash and anything that is not a chunk.
    pub fn scan(&self) -> io::Result<Vec<(FileId, ChunkNo, u64)>> {
        let mut found = Vec::new();
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            let name = dir.file_name();
            let file_id = name.to_str().and_then(|n| FileId::parse(n).ok());
            let Some(file_id) = file_id.filter(|_| dir.file_type().is_ok_and(|t| t.is_dir()))
            else {
                tracing::warn!("removing stray entry {:?} from the chunk store", dir.path());
                let _ = fs::remove_file(dir.path()).or_else(|_| fs::remove_dir_all(dir.path()));
                continue;
            };
            for entry in fs::read_dir(dir.path())? {
                let entry = entry?;
                let chunk_no = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(ChunkNo::new);
                match (chunk_no, entry.metadata()) {
                    (Some(no), Ok(meta)) if meta.is_file() => {
                        found.push((file_id.clone(), no, meta.len()))
                    }
                    _ => {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            let _ = fs::remove_dir(dir.path());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
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
                            prop_assert!(!before.fits(n));
                        }
                    }
                    Op::Commit => if let Some(r) = held.pop() {
                        committed.push(r.size);
                        store.commit(r);
                    },
                    Op::Release => if let Some(r) = held.pop() { store.release(r) },
                    Op::Free => if let Some(n) = committed.pop() { store.freed(n) },
                    Op::SetQuota(q) => { quota = q; store.set_quota(q) },
                }
                let u = store.usage();
                prop_assert_eq!(u.used, committed.iter().sum::<u64>());
                prop_assert_eq!(u.reserved, held.iter().map(|r| r.size).sum::<u64>());
                prop_assert_eq!(u.quota, quota);
            }
        }
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(ChunkStore::open(dir.path().join("c"), 0, 1_000_000).unwrap());
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, peak) = (store.clone(), peak.clone());
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        if let Some(r) = store.reserve(64_000) {
                            let u = store.usage();
                            peak.fetch_max(
                                u.used + u.reserved,
                                std::sync::atomic::Ordering::Relaxed,
                            );
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
        let b = store.reserve(36_000).unwrap();
        store.commit(a);
        store.release(b);
        assert_eq!(store.usage().used, 64_000);
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
        store.write(&fid('a'), ChunkNo(3), b"hello").unwrap();
        assert_eq!(store.read(&fid('a'), ChunkNo(3)).unwrap(), b"hello");
        fs::write(store.dir_of(&fid('a')).join(".tmp-4-1"), b"torn").unwrap();
        fs::write(store.root().join("junk"), b"x").unwrap();
        let found = store.scan().unwrap();
        assert_eq!(found, vec![(fid('a'), ChunkNo(3), 5)]);
        assert!(!store.dir_of(&fid('a')).join(".tmp-4-1").exists());
        assert!(!store.root().join("junk").exists());
        store.remove(&fid('a'), ChunkNo(3)).unwrap();
        assert!(!store.dir_of(&fid('a')).exists());
    }
}
