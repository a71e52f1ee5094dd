//! Hosted chunk files under `<state_dir>/chunks/<fileId>/<chunkNo>` and the quota they count
//! against. A chunk file is complete or absent: it is written to a temporary name, synced, then
//! renamed. The store is the daemon's alone: folders 0700, files 0600, whatever the umask.
//! Blocking: call from a blocking thread.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::protocol::message::{ChunkNo, FileId};

const TMP_PREFIX: &str = ".tmp-";
/// What one hosted chunk's catalog row (and its share of the catalog's pages) costs on disk.
pub const ROW_COST: u64 = 512;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// What hosting a chunk of `size` bytes costs against the quota: what the disk pays, that is
/// its size rounded up to whole filesystem blocks (at least one block, even for an empty chunk:
/// its folder and inode are not free) plus its catalog row. Reservation, the used bytes at start,
/// reclaim and `state` all count with this one function.
pub fn charge(size: u64, block: u64) -> u64 {
    let block = block.max(1);
    size.div_ceil(block).max(1) * block + ROW_COST
}

/// Bytes hosted, bytes promised to writes under way, and the limit, all as charged by `charge`.
/// Reserving before writing is what keeps hosted bytes under the quota even under concurrent
/// PUTCHUNKs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub reserved: u64,
    pub quota: u64,
}

impl Usage {
    /// Quota 0 means "host nothing", even empty chunks.
    pub fn fits(&self, charged: u64) -> bool {
        self.quota > 0 && self.used + self.reserved + charged <= self.quota
    }
}

pub struct ChunkStore {
    root: PathBuf,
    /// The filesystem's allocation unit, read once at open.
    block: u64,
    usage: Mutex<Usage>,
}

/// A claim on quota for one chunk; give it back with `release` or turn it into used bytes with
/// `commit`.
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    charged: u64,
}

/// Creates a folder of the daemon's alone (or makes an existing one so): mode 0700 whatever the
/// umask. Returns whether it was created.
pub fn private_dir(path: &Path) -> io::Result<bool> {
    let created = match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => false,
        Err(e) => return Err(e),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    Ok(created)
}

impl ChunkStore {
    pub fn open(root: PathBuf, used: u64, quota: u64) -> io::Result<ChunkStore> {
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent)?;
        }
        private_dir(&root)?;
        let st = nix::sys::statvfs::statvfs(&root)?;
        let block = match st.fragment_size() as u64 {
            0 => st.block_size() as u64,
            f => f,
        }
        .clamp(512, 1 << 20);
        Ok(ChunkStore {
            root,
            block,
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

    /// What a chunk of `size` bytes costs against the quota on this store's disk.
    pub fn charge(&self, size: u64) -> u64 {
        charge(size, self.block)
    }

    /// Claims quota for a chunk of `size` bytes, if its charge fits.
    pub fn reserve(&self, size: u64) -> Option<Reservation> {
        let charged = self.charge(size);
        let mut usage = self.lock();
        if !usage.fits(charged) {
            return None;
        }
        usage.reserved += charged;
        Some(Reservation { charged })
    }

    pub fn release(&self, r: Reservation) {
        self.lock().reserved -= r.charged;
    }

    pub fn commit(&self, r: Reservation) {
        let mut usage = self.lock();
        usage.reserved -= r.charged;
        usage.used += r.charged;
    }

    /// The charged bytes of the hosted chunks (at start, after reconciling).
    pub fn set_used(&self, used: u64) {
        self.lock().used = used;
    }

    /// Space given back after a chunk file of `size` bytes was removed.
    pub fn freed(&self, size: u64) {
        let charged = self.charge(size);
        let mut usage = self.lock();
        usage.used = usage.used.saturating_sub(charged);
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

    /// Whether the disk has room for `len` more bytes and a few more inodes while keeping a
    /// margin of both free: the catalog lives on the same disk and must always be able to
    /// commit, deletes included; and empty chunks cost inodes, not bytes.
    fn disk_has_room(&self, len: u64) -> io::Result<bool> {
        let st = nix::sys::statvfs::statvfs(&self.root)?;
        let frsize = st.fragment_size() as u64;
        let total = st.blocks() as u64 * frsize;
        let available = st.blocks_available() as u64 * frsize;
        let margin = (total / 20).clamp(256 * 1024, 64 * 1024 * 1024);
        Ok(available >= len + margin
            && inodes_to_spare(st.files() as u64, st.files_available() as u64))
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
        if private_dir(&dir)? {
            // The new folder's entry must be on disk before a file in it can be.
            File::open(&self.root)?.sync_all()?;
        }
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            chunk_no.0,
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)?;
            // The umask may only take bits away; set the mode explicitly all the same.
            f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
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

    /// Every chunk file on disk as (fileId, chunkNo, size). Leftovers of writes interrupted by a
    /// crash (temp files) are deleted; anything else that is not a chunk is moved to the
    /// quarantine, never deleted on a guess.
    pub fn scan(&self) -> io::Result<Vec<(FileId, ChunkNo, u64)>> {
        let mut found = Vec::new();
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            let name = dir.file_name();
            let file_id = name.to_str().and_then(|n| FileId::parse(n).ok());
            let Some(file_id) = file_id.filter(|_| dir.file_type().is_ok_and(|t| t.is_dir()))
            else {
                self.quarantine_path(&dir.path(), "it is not a chunk folder")?;
                continue;
            };
            // Stores written by older versions were group-accessible under the unit's umask.
            make_private(&dir.path(), DIR_MODE)?;
            for entry in fs::read_dir(dir.path())? {
                let entry = entry?;
                let file_name = entry.file_name();
                let chunk_no = file_name
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .and_then(ChunkNo::new);
                match (chunk_no, entry.metadata()) {
                    (Some(no), Ok(meta)) if meta.is_file() => {
                        make_private(&entry.path(), FILE_MODE)?;
                        found.push((file_id.clone(), no, meta.len()))
                    }
                    _ if file_name.to_string_lossy().starts_with(TMP_PREFIX) => {
                        let _ = fs::remove_file(entry.path());
                    }
                    _ => self.quarantine_path(&entry.path(), "it is not a chunk file")?,
                }
            }
            let _ = fs::remove_dir(dir.path());
        }
        Ok(found)
    }

    /// Where chunk files that the catalog does not account for are kept for a while
    /// (`<state_dir>/quarantine`), instead of being deleted.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.parent().unwrap_or(&self.root).join("quarantine")
    }

    /// Moves a chunk file out of the store into the quarantine (absent is fine).
    pub fn quarantine(&self, file_id: &FileId, chunk_no: ChunkNo, why: &str) -> io::Result<()> {
        let path = self.path_of(file_id, chunk_no);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        self.quarantine_path(&path, why)?;
        let _ = fs::remove_dir(self.dir_of(file_id));
        Ok(())
    }

    fn quarantine_path(&self, path: &Path, why: &str) -> io::Result<()> {
        let q = self.quarantine_dir();
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .recursive(true)
            .create(&q)?;
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("{stamp}-{}", rel.to_string_lossy().replace('/', "."));
        tracing::warn!(
            "moved {} out of the chunk store to {} ({why}); it is deleted after {} days",
            path.display(),
            q.join(&name).display(),
            QUARANTINE_DAYS
        );
        fs::rename(path, q.join(name))?;
        File::open(&q)?.sync_all()
    }

    /// Deletes what has been in the quarantine for longer than QUARANTINE_DAYS (the name starts
    /// with the time it was put there). Returns how many entries were deleted.
    pub fn purge_quarantine(&self, now_secs: u64) -> io::Result<usize> {
        let Ok(entries) = fs::read_dir(self.quarantine_dir()) else {
            return Ok(0);
        };
        let mut purged = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let since = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|t| t.parse::<u64>().ok());
            if since.is_some_and(|t| now_secs.saturating_sub(t) > QUARANTINE_DAYS * 86_400) {
                let path = e.path();
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Whether the store holds at least one chunk file (a quick look, for the start checks).
    pub fn holds_chunks(&self) -> io::Result<bool> {
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            if dir.file_type()?.is_dir() {
                if let Some(_first) = fs::read_dir(dir.path())?.flatten().next() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// How long a file moved out of the chunk store is kept before it is deleted.
pub const QUARANTINE_DAYS: u64 = 7;

/// Sets a mode if it is not already the one (a chmod dirties the inode).
fn make_private(path: &Path, mode: u32) -> io::Result<()> {
    if fs::symlink_metadata(path)?.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Whether the filesystem keeps enough inodes free after one more chunk: 1% of them and at
/// least 1000 (a flood of empty chunks must not use up the inodes the system needs).
/// Filesystems without an inode limit report 0 inodes.
fn inodes_to_spare(total: u64, available: u64) -> bool {
    if total == 0 {
        return true;
    }
    let margin = (total / 100).max(1000).min(total / 2);
    available > margin
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
                            prop_assert!(!before.fits(store.charge(n)));
                        }
                    }
                    Op::Commit => if let Some(r) = held.pop() {
                        committed.push(r.charged);
                        store.commit(r);
                    },
                    Op::Release => if let Some(r) = held.pop() { store.release(r) },
                    // A chunk's charge is a whole number of blocks plus the row: freeing that
                    // many bytes gives back exactly that charge.
                    Op::Free => if let Some(n) = committed.pop() { store.freed(n - ROW_COST) },
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

    #[test]
    fn a_chunk_costs_whole_blocks_and_its_row() {
        assert_eq!(
            charge(0, 4096),
            4096 + ROW_COST,
            "an empty chunk costs a block"
        );
        assert_eq!(charge(1, 4096), 4096 + ROW_COST);
        assert_eq!(charge(4096, 4096), 4096 + ROW_COST);
        assert_eq!(charge(4097, 4096), 8192 + ROW_COST);
        assert_eq!(charge(64_000, 4096), 16 * 4096 + ROW_COST);
        assert_eq!(charge(64_000, 512), 125 * 512 + ROW_COST);
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
        assert!(inodes_to_spare(0, 0), "no inode limit");
        assert!(inodes_to_spare(1_000_000, 500_000));
        assert!(!inodes_to_spare(1_000_000, 10_000), "1% of them stay free");
        assert!(inodes_to_spare(1_000_000, 10_001));
        assert!(!inodes_to_spare(50_000, 1000), "and at least 1000");
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
        assert_eq!(mode(&store.dir_of(&fid('b'))), 0o700);
        assert_eq!(mode(&store.path_of(&fid('b'), ChunkNo(0))), 0o600);
        // A store left group-accessible by an older version is made private at scan.
        fs::set_permissions(store.dir_of(&fid('b')), fs::Permissions::from_mode(0o770)).unwrap();
        let file = store.path_of(&fid('b'), ChunkNo(0));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o660)).unwrap();
        store.scan().unwrap();
        assert_eq!(mode(&store.dir_of(&fid('b'))), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
