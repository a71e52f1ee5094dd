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

const PACK_SUFFIX: &str = ".pack";

/// The fileId whose pack has this name.
fn pack_name(name: &std::ffi::OsStr) -> Option<FileId> {
    let key = name.to_str()?.strip_suffix(PACK_SUFFIX)?;
    FileId::parse(key).ok()
}

/// Each chunk sits at a fixed place in its file's pack: slot `chunkNo`, 64 KiB from the last
/// (whole blocks, so an emptied slot gives its blocks back), a header then the body.
pub const SLOT: u64 = 65_536;
/// The slot's header: magic, body length (u32 LE), the body's SHA-256. A slot whose body does
/// not match its header (a write cut by a crash) holds no chunk.
const MAGIC: &[u8; 4] = b"PSC1";
pub const HEADER: u64 = 40;
const MAX_BODY: u64 = SLOT - HEADER;

fn slot_offset(chunk_no: ChunkNo) -> u64 {
    u64::from(chunk_no.0) * SLOT
}

/// Writes a chunk's header and body into its slot (not synced).
fn write_slot(pack: &File, chunk_no: ChunkNo, body: &[u8]) -> io::Result<String> {
    if body.len() as u64 > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a chunk longer than a slot",
        ));
    }
    let hash: [u8; 32] = Sha256::digest(body).into();
    let mut slot = Vec::with_capacity(HEADER as usize + body.len());
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&(body.len() as u32).to_le_bytes());
    slot.extend_from_slice(&hash);
    slot.extend_from_slice(body);
    pack.write_all_at(&slot, slot_offset(chunk_no))?;
    Ok(crate::protocol::hex(&hash))
}

/// What a slot holds.
enum Slot {
    /// A whole chunk: its body matches the header's SHA-256.
    Chunk { body: Vec<u8>, hash: [u8; 32] },
    /// Bytes that are not a whole chunk (a write cut by a crash).
    Torn,
}

/// Reads a slot; `Torn` when it holds no whole chunk, NotFound past the end.
fn read_slot(pack: &File, chunk_no: ChunkNo) -> io::Result<Slot> {
    let Some((len, hash)) = read_header(pack, chunk_no)? else {
        return Ok(Slot::Torn);
    };
    let mut body = vec![0; len as usize];
    if read_at_most(pack, &mut body, slot_offset(chunk_no) + HEADER)? < body.len()
        || Sha256::digest(&body)[..] != hash
    {
        return Ok(Slot::Torn);
    }
    Ok(Slot::Chunk { body, hash })
}

/// Reads up to `buf.len()` bytes at `offset`; how many there were.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Every slot of a pack that holds data (holes skipped), with the body length its header
/// gives (None: no whole header).
fn slot_headers(pack: &File) -> io::Result<Vec<(ChunkNo, Option<u64>)>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(data) = next_data(pack, at)? {
        let Some(chunk_no) = u32::try_from(data / SLOT).ok().and_then(ChunkNo::new) else {
            break;
        };
        found.push((chunk_no, read_header(pack, chunk_no)?.map(|(len, _)| len)));
        at = slot_offset(chunk_no) + SLOT;
    }
    Ok(found)
}

/// A slot's header: the body's length and SHA-256 (None: no whole header there).
fn read_header(pack: &File, chunk_no: ChunkNo) -> io::Result<Option<(u64, [u8; 32])>> {
    let mut header = [0u8; HEADER as usize];
    let n = read_at_most(pack, &mut header, slot_offset(chunk_no))?;
    if n < header.len() || &header[..4] != MAGIC {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as u64;
    let hash: [u8; 32] = header[8..].try_into().unwrap_or_default();
    Ok((len <= MAX_BODY).then_some((len, hash)))
}

/// Where the next data at or after `offset` is (None: only holes after it).
fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    use nix::unistd::{lseek, Whence};
    match lseek(file.as_raw_fd(), offset as i64, Whence::SeekData) {
        Ok(at) => Ok(Some(at as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Empties a slot: a hole (its blocks given back), or, where the filesystem cannot punch
/// holes, a zeroed header (no chunk there any more).
fn punch_slot(pack: &File, chunk_no: ChunkNo) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let at = slot_offset(chunk_no);
    match fallocate(pack.as_raw_fd(), flags, at as i64, SLOT as i64) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => pack.write_all_at(&[0; HEADER as usize], at),
        Err(e) => Err(e.into()),
    }
}

/// The same error again (an `io::Error` cannot be cloned), for each chunk of a batch.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Sets a mode if it is not already the one (a chmod dirties the inode).
fn make_private(path: &Path, mode: u32) -> io::Result<()> {
    if fs::symlink_metadata(path)?.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// How many more chunks the filesystem has inodes for while keeping enough free: 1% of them and at
/// least 1000 (a flood of empty chunks must not use up the inodes the system needs).
/// Filesystems without an inode limit report 0 inodes.
fn inodes_to_spare(total: u64, available: u64) -> u64 {
    if total == 0 {
        return u64::MAX;
    }
    let margin = (total / 100).max(1000).min(total / 2);
    available.saturating_sub(margin)
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
}
