//! Hosted chunks and the quota they count against. The chunks of one file live in one pack,
//! `<state_dir>/chunks/<fileId>.pack`, each in its own 64 KiB slot (`SLOT`): a header with the body's
//! length and SHA-256, then the body. One file per fileId rather than per chunk: creating an
//! inode per chunk was most of what a backup cost the holders. A chunk is complete or absent:
//! written, synced (a whole batch with one sync of the filesystem), and only then recorded in
//! the catalog, which is the source of truth; a slot cut by a crash fails its header's hash and
//! is emptied at the next start. Removing a chunk punches a hole in its pack (its blocks go back
//! to the filesystem); the pack goes with its last chunk. The store is the daemon's alone:
//! folders 0700, files 0600, whatever the umask.
//! Blocking: call from a blocking thread.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::protocol::message::{ChunkNo, FileId};

mod pack;
pub use pack::*;

const TMP_PREFIX: &str = ".tmp-";
/// What one hosted chunk's catalog row (and its share of the catalog's pages) costs on disk.
pub const ROW_COST: u64 = 512;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// What hosting a chunk of `size` bytes costs against the quota: what the disk pays, that is
/// its slot's header and body rounded up to whole filesystem blocks (at least one block, even
/// for an empty chunk) plus its catalog row. Reservation, the used bytes at start,
/// reclaim and `state` all count with this one function.
pub fn charge(size: u64, block: u64) -> u64 {
    let block = block.max(1);
    (HEADER + size).div_ceil(block) * block + ROW_COST
}

/// Bytes hosted, bytes promised to writes under way, and the limit, all as charged by `charge`.
/// Reserving before writing is what keeps hosted bytes under the quota even under concurrent
/// PUTCHUNKs. The accounting itself, pure: `ChunkStore` keeps one behind a lock, the
/// simulation (tests/simulation.rs) one per simulated store.
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

    /// Claims `charged` bytes for a chunk about to be written, if they fit.
    pub fn reserve(&mut self, charged: u64) -> Option<Reservation> {
        if !self.fits(charged) {
            return None;
        }
        self.reserved += charged;
        Some(Reservation { charged })
    }

    /// The write failed: its claim is given back.
    pub fn release(&mut self, r: Reservation) {
        self.reserved -= r.charged;
    }

    /// The chunk is written: its claim becomes used bytes.
    pub fn commit(&mut self, r: Reservation) {
        self.reserved -= r.charged;
        self.used += r.charged;
    }

    /// A chunk that cost `charged` bytes was removed.
    pub fn free(&mut self, charged: u64) {
        self.used = self.used.saturating_sub(charged);
    }
}

/// A chunk to write (`ChunkStore::write_batch`).
pub struct NewChunk<'a> {
    pub file_id: &'a FileId,
    pub chunk_no: ChunkNo,
    pub body: &'a [u8],
}

/// Bytes and inodes the disk can still give chunks.
struct Room {
    bytes: u64,
    inodes: u64,
}

pub struct ChunkStore {
    root: PathBuf,
    /// The filesystem's allocation unit, read once at open.
    block: u64,
    usage: Mutex<Usage>,
    /// Held while chunks are written into packs and while a pack is emptied, so a pack is never
    /// deleted as empty while a chunk goes into it.
    packs: Mutex<()>,
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
    make_private(path, DIR_MODE)?;
    Ok(created)
}

/// The bytes a disk has free beyond what it keeps free of chunks and of anything else the
/// daemon writes there (5 %, 256 KB to 64 MB): the catalog must always be able to commit.
pub fn free_beyond_margin(st: &nix::sys::statvfs::Statvfs) -> u64 {
    let frsize = st.fragment_size();
    let total = st.blocks() * frsize;
    let margin = (total / 20).clamp(256 * 1024, 64 * 1024 * 1024);
    (st.blocks_available() * frsize).saturating_sub(margin)
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
            packs: Mutex::new(()),
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
        self.lock().reserve(charged)
    }

    pub fn release(&self, r: Reservation) {
        self.lock().release(r);
    }

    pub fn commit(&self, r: Reservation) {
        self.lock().commit(r);
    }

    /// The charged bytes of the hosted chunks (at start, after reconciling).
    pub fn set_used(&self, used: u64) {
        self.lock().used = used;
    }

    /// Space given back after a chunk file of `size` bytes was removed.
    pub fn freed(&self, size: u64) {
        let charged = self.charge(size);
        self.lock().free(charged);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        // A panic while holding this lock cannot leave the numbers half-updated (each update is a
        // single statement), so a poisoned lock is still consistent.
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pack of a file's chunks (`<fileId>.pack`). The lower-case key is 64 hex digits
    /// (checked by the parser): no path can escape the store.
    pub fn pack_of(&self, file_id: &FileId) -> PathBuf {
        self.root.join(format!("{}{PACK_SUFFIX}", file_id.key()))
    }

    /// What the disk has room for while keeping a margin of both bytes and inodes free: the
    /// catalog lives on the same disk and must always be able to commit, deletes included; and
    /// packs cost inodes.
    fn disk_room(&self) -> io::Result<Room> {
        let st = nix::sys::statvfs::statvfs(&self.root)?;
        Ok(Room {
            bytes: free_beyond_margin(&st),
            inodes: inodes_to_spare(st.files() as u64, st.files_available() as u64),
        })
    }

    /// Writes a chunk for good (a batch of one); its SHA-256 (hex).
    pub fn write(&self, file_id: &FileId, chunk_no: ChunkNo, body: &[u8]) -> io::Result<String> {
        let chunk = NewChunk {
            file_id,
            chunk_no,
            body,
        };
        (self.write_batch(&[chunk]).pop()).unwrap_or_else(|| Err(io::Error::other("no result")))
    }

    /// Writes chunks into their packs, then syncs the filesystem once for the whole batch
    /// (group commit). Each chunk's SHA-256 (hex), in order, once it is on disk for good; the
    /// caller records it in the catalog, which is what makes the chunk hosted. A chunk is
    /// refused (an error of kind StorageFull) when the disk would be nearly full, whatever the
    /// quota says.
    pub fn write_batch(&self, chunks: &[NewChunk]) -> Vec<io::Result<String>> {
        let mut room = match self.disk_room() {
            Ok(room) => room,
            Err(e) => return chunks.iter().map(|_| Err(copy_error(&e))).collect(),
        };
        let mut packs: HashMap<&FileId, File> = HashMap::new();
        let guard = self.lock_packs();
        let mut results: Vec<io::Result<String>> = chunks
            .iter()
            .map(|c| {
                let len = c.body.len() as u64;
                if room.bytes < len {
                    return Err(self.disk_full());
                }
                if !packs.contains_key(c.file_id) {
                    let pack = self.open_pack(c.file_id, &mut room)?;
                    packs.insert(c.file_id, pack);
                }
                room.bytes -= len;
                write_slot(&packs[c.file_id], c.chunk_no, c.body)
            })
            .collect();
        drop(guard);
        if results.iter().any(|r| r.is_ok()) {
            // On disk before any STORED promises them (and before their rows exist).
            let synced = File::open(&self.root)
                .and_then(|root| nix::unistd::syncfs(root.as_raw_fd()).map_err(io::Error::from));
            if let Err(e) = synced {
                for (r, c) in results.iter_mut().zip(chunks) {
                    if r.is_ok() {
                        let _ = self.remove(c.file_id, c.chunk_no);
                        *r = Err(copy_error(&e));
                    }
                }
            }
        }
        results
    }

    /// Opens a file's pack for writing, created if missing (one inode from `room`).
    fn open_pack(&self, file_id: &FileId, room: &mut Room) -> io::Result<File> {
        let path = self.pack_of(file_id);
        let open = |create: bool| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .mode(FILE_MODE)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
        };
        match open(false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if room.inodes == 0 {
                    return Err(self.disk_full());
                }
                room.inodes -= 1;
                let f = open(true)?;
                // The umask may only take bits away; set the mode explicitly all the same.
                f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
                Ok(f)
            }
            other => other,
        }
    }

    fn disk_full(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "the disk holding {} is nearly full: chunk refused (free space, or lower storage.quota)",
                self.root.display()
            ),
        )
    }

    /// A hosted chunk's bytes, as its slot's header says (the caller checks them against the
    /// catalog's hash).
    pub fn read(&self, file_id: &FileId, chunk_no: ChunkNo) -> io::Result<Vec<u8>> {
        self.read_hashed(file_id, chunk_no).map(|(body, _)| body)
    }

    /// `read`, with the body's SHA-256 (hex): the slot's header, which the body was checked
    /// against as it was read, so the caller need not hash it again.
    pub fn read_hashed(
        &self,
        file_id: &FileId,
        chunk_no: ChunkNo,
    ) -> io::Result<(Vec<u8>, String)> {
        let pack = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(self.pack_of(file_id))?;
        let pack_path = || self.pack_of(file_id).display().to_string();
        match read_slot(&pack, chunk_no)? {
            Slot::Chunk { body, hash } => Ok((body, crate::protocol::hex(&hash))),
            Slot::Torn if read_header(&pack, chunk_no)?.is_some() => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chunk {} in {} is damaged: its bytes do not match its SHA-256",
                    chunk_no.0,
                    pack_path()
                ),
            )),
            Slot::Torn => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no chunk {} in {}", chunk_no.0, pack_path()),
            )),
        }
    }

    /// Removes a chunk (absent is fine): its slot becomes a hole, and the pack goes with its
    /// last chunk.
    pub fn remove(&self, file_id: &FileId, chunk_no: ChunkNo) -> io::Result<()> {
        let path = self.pack_of(file_id);
        let _guard = self.lock_packs();
        let pack = match File::options()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        punch_slot(&pack, chunk_no)?;
        if next_data(&pack, 0)?.is_none() {
            fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Every chunk on disk as (fileId, chunkNo, size), from the slots' headers alone: a start
    /// costs a read per chunk of 40 bytes, not of its body (a body is checked against its
    /// header's SHA-256 whenever it is read, and a slot the catalog has no row for, such as a
    /// write a crash cut before its sync, is quarantined). Slots cut by a crash (no whole
    /// header, or a body past the pack's end) are emptied, as are leftovers of older versions' writes; chunk files of
    /// older versions (one file per chunk) are moved into packs; anything else that is not a
    /// chunk is moved to the quarantine, never deleted on a guess.
    pub fn scan(&self) -> io::Result<Vec<(FileId, ChunkNo, u64)>> {
        // First the chunk folders of older versions, so their packs are read below.
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Ok(file_id) = FileId::parse(&entry.file_name().to_string_lossy()) {
                    self.move_into_pack(&file_id, &entry.path())?;
                }
            }
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let file_id = match pack_name(&entry.file_name()) {
                Some(file_id) if entry.file_type()?.is_file() => file_id,
                _ => {
                    self.quarantine_path(&entry.path(), "it is not a chunk pack")?;
                    continue;
                }
            };
            let path = self.pack_of(&file_id);
            // Stores written by older versions were group-accessible under the unit's umask.
            make_private(&path, FILE_MODE)?;
            let pack = File::options().read(true).write(true).open(&path)?;
            let end = pack.metadata()?.len();
            for (chunk_no, len) in slot_headers(&pack)? {
                match len {
                    Some(len) if slot_offset(chunk_no) + HEADER + len <= end => {
                        found.push((file_id.clone(), chunk_no, len))
                    }
                    _ => punch_slot(&pack, chunk_no)?,
                }
            }
            if next_data(&pack, 0)?.is_none() {
                fs::remove_file(&path)?;
            }
        }
        Ok(found)
    }

    /// A chunk folder of an older version (`<fileId>/<chunkNo>`, one file per chunk) moved into
    /// the file's pack: each chunk written, all synced, then the old files removed.
    fn move_into_pack(&self, file_id: &FileId, dir: &Path) -> io::Result<()> {
        let mut olds = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let chunk_no = (name.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(ChunkNo::new);
            match chunk_no {
                Some(no) if entry.file_type()?.is_file() => {
                    olds.push((no, fs::read(entry.path())?, entry.path()))
                }
                _ if name.to_string_lossy().starts_with(TMP_PREFIX) => {
                    let _ = fs::remove_file(entry.path());
                }
                _ => self.quarantine_path(&entry.path(), "it is not a chunk file")?,
            }
        }
        let chunks: Vec<NewChunk> = (olds.iter())
            .map(|(no, body, _)| NewChunk {
                file_id,
                chunk_no: *no,
                body,
            })
            .collect();
        for (r, (_, _, old)) in self.write_batch(&chunks).into_iter().zip(&olds) {
            r?;
            fs::remove_file(old)?;
        }
        fs::remove_dir(dir)?;
        tracing::info!(
            "moved {} chunks of {file_id} into {}",
            olds.len(),
            self.pack_of(file_id).display()
        );
        Ok(())
    }

    /// Where what the catalog does not account for is kept for a while
    /// (`<state_dir>/quarantine`), instead of being deleted.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.parent().unwrap_or(&self.root).join("quarantine")
    }

    /// Moves a chunk out of the store into the quarantine (absent is fine): its body (or the
    /// slot's bytes if it holds no whole chunk) is copied there, then the slot is emptied.
    pub fn quarantine(&self, file_id: &FileId, chunk_no: ChunkNo, why: &str) -> io::Result<()> {
        // Never through a link: the pack is a regular file of the store's own.
        let opened = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(self.pack_of(file_id));
        let Ok(pack) = opened else {
            return Ok(());
        };
        let bytes = match read_slot(&pack, chunk_no)? {
            Slot::Chunk { body, .. } => body,
            Slot::Torn => {
                let mut bytes = vec![0; SLOT as usize];
                let n = read_at_most(&pack, &mut bytes, slot_offset(chunk_no))?;
                bytes.truncate(n);
                bytes
            }
        };
        let name = format!("{}.{}", file_id.key(), chunk_no.0);
        self.keep_in_quarantine(&name, why, |to| {
            use std::io::Write;
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(to)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })?;
        self.remove(file_id, chunk_no)
    }

    fn quarantine_path(&self, path: &Path, why: &str) -> io::Result<()> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let name = rel.to_string_lossy().replace('/', ".");
        self.keep_in_quarantine(&name, why, |to| fs::rename(path, to))
    }

    fn keep_in_quarantine(
        &self,
        name: &str,
        why: &str,
        put: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let q = self.quarantine_dir();
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .recursive(true)
            .create(&q)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let to = q.join(format!("{stamp}-{name}"));
        tracing::warn!(
            "moved {name} out of the chunk store to {} ({why}); it is deleted after {} days",
            to.display(),
            QUARANTINE_DAYS
        );
        put(&to)?;
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

    /// Whether the store holds anything (a quick look, for the start checks).
    pub fn holds_chunks(&self) -> io::Result<bool> {
        Ok(fs::read_dir(&self.root)?.flatten().next().is_some())
    }

    fn lock_packs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.packs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long what is moved out of the chunk store is kept before it is deleted.
pub const QUARANTINE_DAYS: u64 = 7;

/// The chunks in a store's packs, read only (for tests and tools): (fileId, chunkNo, size).
pub fn list(root: &Path) -> io::Result<Vec<(FileId, ChunkNo, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let Some(file_id) = pack_name(&entry.file_name()) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            let pack = File::open(entry.path())?;
            for (chunk_no, _) in slot_headers(&pack)? {
                if let Slot::Chunk { body, .. } = read_slot(&pack, chunk_no)? {
                    found.push((file_id.clone(), chunk_no, body.len() as u64));
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
